"""Redis Cluster: sharded pub/sub over the masters, following slots when they move."""

from __future__ import annotations

import asyncio
import contextlib
from typing import Any

import redis.asyncio as aredis
from redis.exceptions import RedisError, ResponseError

from resource_router.observability.logs import get_logger
from resource_router.settings import RouterSettings
from resource_router.transport.base import MasterCallback, StateCallback, Transport, connection_factory
from resource_router.transport.link import MessageHandler, NodeLink
from resource_router.transport.redis_errors import is_redirect, redis_errors
from resource_router.transport.tasks import stop_task

__all__ = ["ClusterTransport"]

logger = get_logger(__name__)


class ClusterTransport(Transport):
    """Sharded pub/sub over the masters of a Redis Cluster (see the module docstring)."""

    sharded = True
    #: While some wanted channel is not heard, the slot map is read again this often (seconds).
    REPAIR_INTERVAL = 0.5

    def __init__(
        self,
        client: aredis.RedisCluster,
        settings: RouterSettings,
        on_message: MessageHandler,
        on_state: StateCallback,
        on_master: MasterCallback | None = None,
    ) -> None:
        super().__init__(settings, on_message, on_state, on_master)
        self._client = client
        self._links: dict[str, NodeLink] = {}
        self._link_lock = asyncio.Lock()
        self._channel_link: dict[bytes, NodeLink] = {}
        self._repair_task: asyncio.Task[None] | None = None
        self._closed = False

    async def start(self) -> None:
        with redis_errors("connect"):
            await self._client.initialize()

    async def aclose(self) -> None:
        self._closed = True
        await stop_task(self._repair_task)
        for link in list(self._links.values()):
            await link.aclose()
        self._links.clear()

    def _node(self, key: bytes) -> Any:
        return self._client.get_node_from_key(key)  # type: ignore[arg-type]  # bytes keys are fine

    async def _link_for(self, key: bytes) -> NodeLink:
        with redis_errors("route"):
            node = self._node(key)
        link = self._links.get(node.name)
        if link is not None and not link.closed:
            return link
        async with self._link_lock:
            link = self._links.get(node.name)
            if link is None or link.closed:
                link = NodeLink(
                    node.name,
                    connection_factory(node.connection_class, dict(node.connection_kwargs), self.settings),
                    sharded=True,
                    settings=self.settings,
                    on_message=self._on_message,
                    on_state=self._state_of_link,
                    on_moved=self._moved,
                    on_server=self._server_seen,
                )
                try:
                    await link.start()
                except BaseException:
                    await link.aclose()
                    self._need_repair()
                    raise
                self._links[node.name] = link
            return link

    async def subscribe(self, channel: bytes) -> None:
        link = await self._link_for(channel)
        self._channel_link[channel] = link
        await link.subscribe(channel)

    async def unsubscribe(self, channel: bytes) -> None:
        link = self._channel_link.pop(channel, None)
        if link is not None:
            await link.unsubscribe(channel)

    def heard(self, channel: bytes) -> bool:
        link = self._channel_link.get(channel)
        return link is not None and channel in link.heard

    async def _raw(self, key: bytes, *command: Any) -> Any:
        for attempt in (1, 2):
            link = await self._link_for(key)
            try:
                return await link.execute(*command)
            except (RedisError, OSError) as exc:
                if attempt == 1 and is_redirect(exc):
                    await self._refresh()  # the slot moved: the command did not run; send it where it went
                    continue
                if not isinstance(exc, ResponseError) or str(exc).startswith(("CLUSTERDOWN", "TRYAGAIN")):
                    self._need_repair()  # a node may be gone, or its slots moving
                raise
        raise AssertionError("unreachable")  # pragma: no cover

    def execute_nowait(self, key: bytes, *command: Any) -> bool:
        try:
            node = self._node(key)
        except Exception:
            return False
        link = self._links.get(node.name)
        if link is None or link.closed:
            return False
        return link.execute_nowait(*command)

    # -- topology changes --------------------------------------------------------------------------
    def _state_of_link(self, link: NodeLink, channels: frozenset[bytes], heard: bool) -> None:
        self._on_state(channels, heard)
        if not heard:
            self._need_repair()

    def _moved(self, link: NodeLink, channel: bytes) -> None:
        self._on_state(frozenset((channel,)), False)
        self._need_repair()

    def _need_repair(self) -> None:
        if self._closed or (self._repair_task is not None and not self._repair_task.done()):
            return
        self._repair_task = asyncio.get_running_loop().create_task(
            self._repair(), name="resource-router-cluster-repair"
        )

    async def _repair(self) -> None:
        """Until every wanted channel is heard: read the slot map, move channels whose slot moved."""
        while not self._closed:
            await asyncio.sleep(self.REPAIR_INTERVAL)
            with contextlib.suppress(Exception):
                await self._refresh()
            if all(self.heard(channel) for channel in self._channel_link):
                return

    async def _refresh(self) -> None:
        try:
            await self._client.nodes_manager.initialize()
        except Exception as exc:
            logger.debug("pubsub.cluster_refresh_failed", error=f"{type(exc).__name__}: {exc}")
            return
        moved_from: set[str] = set()
        for channel, link in list(self._channel_link.items()):
            try:
                node = self._node(channel)
            except Exception:
                continue
            if node.name == link.name and not link.closed and channel in link.channels:
                continue
            if node.name != link.name:
                moved_from.add(f"{link.name} -> {node.name}")
            link.channels.discard(channel)
            try:
                new = await self._link_for(channel)
                self._channel_link[channel] = new
                await new.subscribe(channel)
                logger.info("pubsub.channel_moved", channel=channel.decode("utf-8", "replace"), to=new.name)
            except Exception as exc:
                self._channel_link[channel] = link
                logger.debug("pubsub.channel_move_failed", error=f"{type(exc).__name__}: {exc}")
        if moved_from:  # another master serves those slots now (a failover of the shard, a resharding)
            self.master_changed(", ".join(sorted(moved_from)))
