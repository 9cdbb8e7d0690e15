"""Transports: where a channel or a key lives, for a single Redis, a Redis Cluster and ``memory://``.

The pub/sub hub talks to Redis only through this interface (like saq's multiplexer over redis-py's
``PubSub``, or httpx's transports):

* ``subscribe(channel)`` / ``unsubscribe(channel)``: confirmed by Redis;
* ``publish(channel, data) -> int`` / ``publish_nowait(channel, data)``;
* ``execute(operation, key, *command)``: one command on the hot path (owner lookups), sent to the
  server that holds ``key``; redis-py failures come back as library errors (``redis_errors``).

``SingleTransport`` has one ``NodeLink``. ``MemoryTransport`` is the same over the embedded server's
connections, read through redis-py's public API. ``ClusterTransport`` uses sharded pub/sub
(``SSUBSCRIBE``/``SPUBLISH``): a channel lives on the shard of its own hash slot, so a message crosses
only that shard; it keeps one link per master it needs, and when a slot moves (``MOVED``, a
``sunsubscribe`` pushed by Redis, a master that stays unreachable) it refreshes the slot map and
subscribes again where the slot went.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Callable
from typing import Any

import redis.asyncio as aredis
from redis.asyncio.connection import AbstractConnection
from redis.commands.core import AsyncScript
from redis.exceptions import NoScriptError, RedisError, ResponseError

from .connection import Client, client_options, describe, is_cluster, is_memory
from .deadline import stop_task
from .errors import InvalidRequestError
from .link import MessageHandler, NodeLink
from .redis_errors import CLUSTER_HINT, is_redirect, map_redis_error, redis_errors
from .settings import RouterSettings
from .tracing import get_logger
from .wire import ConnectionWire

__all__ = ["ClusterTransport", "MemoryTransport", "SingleTransport", "StateCallback", "Transport", "make_transport"]

logger = get_logger(__name__)

#: ``on_state(channels, heard)``: channels no longer heard (False) or heard again (True).
StateCallback = Callable[[frozenset[bytes], bool], None]


def _connection_factory(
    conn_class: type[AbstractConnection], kwargs: dict[str, Any], settings: RouterSettings
) -> Callable[[], AbstractConnection]:
    """Connections of the library's own (``connection.client_options``) to one server."""
    options = {**kwargs, **client_options(settings)}
    return lambda: conn_class(**options)


class Transport:
    """The interface the hub uses (see the module docstring)."""

    sharded = False

    def __init__(self, settings: RouterSettings, on_message: MessageHandler, on_state: StateCallback) -> None:
        self.settings = settings
        self._on_message = on_message
        self._on_state = on_state
        self._publish = b"SPUBLISH" if self.sharded else b"PUBLISH"

    async def start(self) -> None:
        raise NotImplementedError

    async def aclose(self) -> None:
        raise NotImplementedError

    async def subscribe(self, channel: bytes) -> None:
        raise NotImplementedError

    async def unsubscribe(self, channel: bytes) -> None:
        raise NotImplementedError

    def heard(self, channel: bytes) -> bool:
        """True while Redis has confirmed the subscription on a live connection."""
        raise NotImplementedError

    async def execute(self, operation: str, key: bytes, *command: Any) -> Any:
        """One command on the server holding ``key``; failures come back as library errors."""
        try:
            return await self._raw(key, *command)
        except (RedisError, OSError) as exc:
            raise map_redis_error(operation, exc) from exc

    async def evalsha(self, operation: str, key: bytes, script: AsyncScript, keys: list[Any], args: list[Any]) -> Any:
        """Run a registered script on the server holding ``key`` (loading it there when the server
        does not know it yet: after a restart, on a new node)."""
        command = (b"EVALSHA", script.sha, len(keys), *keys, *args)
        try:
            try:
                return await self._raw(key, *command)
            except ResponseError as exc:
                if not isinstance(exc, NoScriptError) and not str(exc).startswith("NOSCRIPT"):
                    raise
                await self._raw(key, b"SCRIPT", b"LOAD", script.script)
                return await self._raw(key, *command)
        except (RedisError, OSError) as exc:
            raise map_redis_error(operation, exc) from exc

    async def _raw(self, key: bytes, *command: Any) -> Any:
        """The command's reply; redis-py errors raised as they are."""
        raise NotImplementedError

    def execute_nowait(self, key: bytes, *command: Any) -> bool:
        """Send without waiting for the reply; False when it could not be queued (connection down)."""
        raise NotImplementedError

    async def publish(self, channel: bytes, data: bytes) -> int:
        """How many subscribers received ``data`` (on a cluster: on the channel's shard)."""
        count: int = await self.execute("publish", channel, self._publish, channel, data)
        return count

    def publish_nowait(self, channel: bytes, data: bytes) -> bool:
        return self.execute_nowait(channel, self._publish, channel, data)

    def _link_state(self, link: NodeLink, channels: frozenset[bytes], heard: bool) -> None:
        self._on_state(channels, heard)


class SingleTransport(Transport):
    """One Redis server (TCP, TLS or unix socket)."""

    def __init__(
        self, client: aredis.Redis, settings: RouterSettings, on_message: MessageHandler, on_state: StateCallback
    ) -> None:
        super().__init__(settings, on_message, on_state)
        pool = client.connection_pool
        self._link = NodeLink(
            describe(client),
            _connection_factory(pool.connection_class, dict(pool.connection_kwargs), settings),
            sharded=False,
            settings=settings,
            on_message=on_message,
            on_state=self._link_state,
            **self._wire_options(),
        )

    def _wire_options(self) -> dict[str, Any]:
        return {}

    async def start(self) -> None:
        await self._link.start()
        await self._refuse_cluster_node()

    async def _refuse_cluster_node(self) -> None:
        """A ``redis://`` URL that reaches a node of a Redis Cluster fails at once, naming the right form."""
        try:
            info = await self._link.execute(b"INFO", b"cluster")
        except RedisError:
            return  # INFO disabled by ACL or renamed: nothing to learn here
        if isinstance(info, bytes) and b"cluster_enabled:1" in info:
            await self._link.aclose()
            raise InvalidRequestError(CLUSTER_HINT, field="redis")

    async def aclose(self) -> None:
        await self._link.aclose()

    async def subscribe(self, channel: bytes) -> None:
        await self._link.subscribe(channel)

    async def unsubscribe(self, channel: bytes) -> None:
        await self._link.unsubscribe(channel)

    def heard(self, channel: bytes) -> bool:
        return channel in self._link.heard

    async def _raw(self, key: bytes, *command: Any) -> Any:
        return await self._link.execute(*command)

    def execute_nowait(self, key: bytes, *command: Any) -> bool:
        return self._link.execute_nowait(*command)


class MemoryTransport(SingleTransport):
    """The embedded ``memory://`` server: its connections read through redis-py's public API."""

    def _wire_options(self) -> dict[str, Any]:
        return {"wire_factory": ConnectionWire}

    async def _refuse_cluster_node(self) -> None:
        return None


class ClusterTransport(Transport):
    """Sharded pub/sub over the masters of a Redis Cluster (see the module docstring)."""

    sharded = True
    #: While some wanted channel is not heard, the slot map is read again this often (seconds).
    REPAIR_INTERVAL = 0.5

    def __init__(
        self, client: aredis.RedisCluster, settings: RouterSettings, on_message: MessageHandler, on_state: StateCallback
    ) -> None:
        super().__init__(settings, on_message, on_state)
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
                    _connection_factory(node.connection_class, dict(node.connection_kwargs), self.settings),
                    sharded=True,
                    settings=self.settings,
                    on_message=self._on_message,
                    on_state=self._state_of_link,
                    on_moved=self._moved,
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
        for channel, link in list(self._channel_link.items()):
            try:
                node = self._node(channel)
            except Exception:
                continue
            if node.name == link.name and not link.closed and channel in link.channels:
                continue
            link.channels.discard(channel)
            try:
                new = await self._link_for(channel)
                self._channel_link[channel] = new
                await new.subscribe(channel)
                logger.info("pubsub.channel_moved", channel=channel.decode("utf-8", "replace"), to=new.name)
            except Exception as exc:
                self._channel_link[channel] = link
                logger.debug("pubsub.channel_move_failed", error=f"{type(exc).__name__}: {exc}")


def make_transport(
    client: Client, settings: RouterSettings, on_message: MessageHandler, on_state: StateCallback
) -> Transport:
    """The transport for ``client``'s kind of server."""
    if is_cluster(client):
        return ClusterTransport(client, settings, on_message, on_state)  # type: ignore[arg-type]
    if is_memory(client):
        return MemoryTransport(client, settings, on_message, on_state)  # type: ignore[arg-type]
    return SingleTransport(client, settings, on_message, on_state)  # type: ignore[arg-type]
