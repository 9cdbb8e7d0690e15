"""One Redis server (TCP, TLS or a unix socket), and the embedded ``memory://`` server."""

from __future__ import annotations

from typing import Any

import redis.asyncio as aredis
from redis.exceptions import RedisError

from resource_router.errors import InvalidRequestError
from resource_router.settings import RouterSettings
from resource_router.transport.base import MasterCallback, StateCallback, Transport, connection_factory
from resource_router.transport.connection import describe
from resource_router.transport.link import MessageHandler, NodeLink
from resource_router.transport.redis_errors import CLUSTER_HINT
from resource_router.transport.sentinel import SwitchWatch, sentinels_of
from resource_router.transport.wire import ConnectionWire

__all__ = ["MemoryTransport", "SingleTransport"]


class SingleTransport(Transport):
    """One Redis server (TCP, TLS or unix socket)."""

    def __init__(
        self,
        client: aredis.Redis,
        settings: RouterSettings,
        on_message: MessageHandler,
        on_state: StateCallback,
        on_master: MasterCallback | None = None,
    ) -> None:
        super().__init__(settings, on_message, on_state, on_master)
        pool = client.connection_pool
        self._link = NodeLink(
            describe(client),
            connection_factory(pool.connection_class, dict(pool.connection_kwargs), settings),
            sharded=False,
            settings=settings,
            on_message=on_message,
            on_state=self._link_state,
            on_server=self._server_seen,
            **self._wire_options(),
        )

        self._switch = SwitchWatch(client, self._switched) if sentinels_of(client) is not None else None

    def _wire_options(self) -> dict[str, Any]:
        return {}

    async def start(self) -> None:
        await self._link.start()
        await self._refuse_cluster_node()
        if self._switch is not None:
            self._switch.start()

    def _switched(self) -> None:
        self._link.wake("a Sentinel announced a new master")

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
        if self._switch is not None:
            await self._switch.aclose()
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
