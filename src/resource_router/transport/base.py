"""The transport seam: where a channel or a key lives, for a single Redis, a Redis Cluster and ``memory://``.

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

from collections.abc import Callable
from typing import Any

from redis.asyncio.connection import AbstractConnection
from redis.commands.core import AsyncScript
from redis.exceptions import NoScriptError, RedisError, ResponseError

from resource_router.settings import RouterSettings
from resource_router.transport.connection import client_options
from resource_router.transport.link import MessageHandler, NodeLink
from resource_router.transport.redis_errors import map_redis_error

__all__ = ["MasterCallback", "StateCallback", "Transport", "connection_factory"]


#: ``on_state(channels, heard)``: channels no longer heard (False) or heard again (True).
StateCallback = Callable[[frozenset[bytes], bool], None]
#: ``on_master(where)``: another server now answers for ``where`` (a failover, a restart): what it
#: wrote before may be lost. Called before anything else is sent to the new server.
MasterCallback = Callable[[str], None]


def connection_factory(
    conn_class: type[AbstractConnection], kwargs: dict[str, Any], settings: RouterSettings
) -> Callable[[], AbstractConnection]:
    """Connections of the library's own (``connection.client_options``) to one server."""
    options = {**kwargs, **client_options(settings)}
    return lambda: conn_class(**options)


class Transport:
    """The interface the hub uses (see the module docstring)."""

    sharded = False

    def __init__(
        self,
        settings: RouterSettings,
        on_message: MessageHandler,
        on_state: StateCallback,
        on_master: MasterCallback | None = None,
    ) -> None:
        self.settings = settings
        self._on_message = on_message
        self._on_state = on_state
        self._on_master = on_master
        self._run_ids: dict[str, str] = {}  # link name -> run_id of the server it reached last
        self._publish = b"SPUBLISH" if self.sharded else b"PUBLISH"

    def _server_seen(self, link: NodeLink, run_id: str) -> None:
        """A connection of ``link`` reached the server ``run_id``: another one than before means
        a failover or a restart there (``on_master``)."""
        before = self._run_ids.get(link.name)
        self._run_ids[link.name] = run_id
        if before is not None and before != run_id:
            self.master_changed(f"{link.name} (run_id {before[:8]} -> {run_id[:8]})")

    def master_changed(self, where: str) -> None:
        if self._on_master is not None:
            self._on_master(where)

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
