"""One pub/sub hub per process and Redis (or Redis Cluster), fanned out to callbacks.

``PubSubHub.acquire(client, settings)`` returns the hub shared by every instance and client of one
event loop that talks to the same server(s) (``connection.server_identity``). The hub sits once on
top of a ``Transport`` (``base.py``) (single Redis, Redis Cluster or ``memory://``) and adds:

* callbacks per channel: ``subscribe(channel, callback, on_state=None)``. ``callback(data)`` is
  called from the read loop for every message (it must not block: decode and hand work to futures
  or tasks). ``on_state(heard)`` says when the channel stops being heard (the connection dropped:
  messages published meanwhile are lost) and when it is heard again (re-subscribed);
* the hot path's commands: ``publish``, ``publish_nowait``, ``get`` (owner lookups) and ``evalsha``,
  batched per event-loop iteration by the transport's links;
* master changes: every new connection is identified (the server's ``run_id``), and when another
  server answers than before (a failover, a restart, a cluster shard's failover) the listeners of
  ``on_master_change`` are told before anything else is sent to it.

Pub/sub delivery is at most once. The first user's settings (health checks, timeouts) configure
the hub's connections.
"""

from __future__ import annotations

import asyncio
import weakref
from collections.abc import Callable
from typing import Any

from redis.commands.core import AsyncScript

from resource_router.errors import ResourceRouterError
from resource_router.observability.logs import get_logger
from resource_router.settings import RouterSettings
from resource_router.transport.base import MasterCallback, StateCallback, Transport
from resource_router.transport.cluster import ClusterTransport
from resource_router.transport.connection import Client, is_cluster, is_memory, server_identity
from resource_router.transport.link import MessageHandler
from resource_router.transport.single import MemoryTransport, SingleTransport

__all__ = ["MessageCallback", "PubSubHub", "StateListener", "make_transport"]

logger = get_logger(__name__)

#: Called with the raw payload of every message on a subscribed channel.
MessageCallback = Callable[[bytes], None]
#: Called with False when a channel stops being heard, True when it is heard again.
StateListener = Callable[[bool], None]

_BACKGROUND: set[asyncio.Task[Any]] = set()


class PubSubHub:
    """Shared per (event loop, Redis server); see the module docstring. Use ``acquire``/``release``."""

    _shared: weakref.WeakKeyDictionary[asyncio.AbstractEventLoop, dict[tuple[Any, ...], PubSubHub]] = (
        weakref.WeakKeyDictionary()
    )

    def __init__(self, key: tuple[Any, ...], client: Client, settings: RouterSettings) -> None:
        self._key = key
        self._users = 0
        self._callbacks: dict[bytes, tuple[MessageCallback, ...]] = {}
        self._listeners: dict[bytes, tuple[StateListener, ...]] = {}
        self._started = False
        self._closed = False
        self._start_lock = asyncio.Lock()
        self._master_listeners: tuple[MasterCallback, ...] = ()
        self.transport: Transport = make_transport(client, settings, self._dispatch, self._on_state, self._on_master)

    # -- sharing ---------------------------------------------------------------------------------
    @classmethod
    async def acquire(cls, client: Client, settings: RouterSettings | None = None) -> PubSubHub:
        """The started hub for ``client``'s server in this event loop (created on first use)."""
        loop = asyncio.get_running_loop()
        key = server_identity(client)
        hubs = cls._shared.setdefault(loop, {})
        hub = hubs.get(key)
        if hub is None or hub._closed:
            hub = cls(key, client, settings or RouterSettings())
            hubs[key] = hub
        hub._users += 1
        try:
            await hub._ensure_started()
        except BaseException:
            await hub.release()
            raise
        return hub

    async def release(self) -> None:
        """Drop one user; the last one closes the connections."""
        self._users -= 1
        if self._users > 0:
            return
        hubs = self._shared.get(asyncio.get_running_loop(), {})
        if hubs.get(self._key) is self:
            del hubs[self._key]
        self._closed = True
        await self.transport.aclose()

    async def _ensure_started(self) -> None:
        if self._started:
            return
        async with self._start_lock:
            if not self._started:
                await self.transport.start()
                self._started = True

    # -- subscriptions ---------------------------------------------------------------------------
    async def subscribe(self, channel: str, callback: MessageCallback, on_state: StateListener | None = None) -> None:
        """Add ``callback`` for ``channel``; the first one subscribes and waits for Redis to confirm."""
        name = channel.encode()
        if on_state is not None:
            self._listeners[name] = (*self._listeners.get(name, ()), on_state)
        existing = self._callbacks.get(name)
        if existing is not None:
            if callback in existing:
                raise ValueError(f"this callback already listens on {channel!r}")
            self._callbacks[name] = (*existing, callback)
            return
        self._callbacks[name] = (callback,)
        try:
            await self.transport.subscribe(name)
        except BaseException:
            self._remove(name, callback, on_state)
            raise

    def _remove(self, name: bytes, callback: MessageCallback, on_state: StateListener | None) -> bool:
        """Remove one callback (and its listener); True when the channel has none left (and was dropped)."""
        if on_state is not None:
            rest_listeners = tuple(cb for cb in self._listeners.get(name, ()) if cb != on_state)
            if rest_listeners:
                self._listeners[name] = rest_listeners
            else:
                self._listeners.pop(name, None)
        existing = self._callbacks.get(name)
        if existing is None or callback not in existing:
            return False
        rest = tuple(cb for cb in existing if cb != callback)
        if rest:
            self._callbacks[name] = rest
            return False
        del self._callbacks[name]
        return True

    async def unsubscribe(self, channel: str, callback: MessageCallback, on_state: StateListener | None = None) -> None:
        """Remove ``callback``; the last one unsubscribes the channel. Until Redis confirms, messages
        still reach the callback: they were published to a subscriber, and their senders wait for
        an answer (an instance that stops answers "not owner" rather than dropping them)."""
        name = channel.encode()
        if self._callbacks.get(name) != (callback,):
            self._remove(name, callback, on_state)
            return
        try:
            await self.transport.unsubscribe(name)
        finally:
            if not self._remove(name, callback, on_state) and name in self._callbacks and not self._closed:
                await self.transport.subscribe(name)  # someone subscribed meanwhile: keep it heard

    def on_master_change(self, listener: MasterCallback) -> None:
        """Call ``listener(where)`` whenever another server answers for this hub (a failover or a
        restart: what the old one acknowledged may be missing). It is called from the connection's
        own task, before anything else is sent to the new server: it must not block."""
        self._master_listeners = (*self._master_listeners, listener)

    def off_master_change(self, listener: MasterCallback) -> None:
        self._master_listeners = tuple(cb for cb in self._master_listeners if cb != listener)

    def _on_master(self, where: str) -> None:
        logger.warning("pubsub.master_changed", where=where, listeners=len(self._master_listeners))
        for listener in self._master_listeners:
            try:
                listener(where)
            except Exception:
                logger.exception("pubsub.listener_failed", channel="(master change)")

    def heard(self, channel: str) -> bool:
        """True while the channel's subscription is confirmed on a live connection."""
        return self.transport.heard(channel.encode())

    def _dispatch(self, channel: bytes, data: bytes) -> None:
        callbacks = self._callbacks.get(channel)
        if callbacks is None:
            return  # unsubscribed a moment ago
        for callback in callbacks:
            try:
                callback(data)
            except Exception:  # a callback bug must never stop the reader
                logger.exception("pubsub.callback_failed", channel=channel.decode("utf-8", "replace"))

    def _on_state(self, channels: frozenset[bytes], heard: bool) -> None:
        for name in channels:
            for listener in self._listeners.get(name, ()):
                try:
                    listener(heard)
                except Exception:
                    logger.exception("pubsub.listener_failed", channel=name.decode("utf-8", "replace"))

    # -- commands --------------------------------------------------------------------------------
    async def publish(self, channel: str, data: bytes) -> int:
        """PUBLISH (SPUBLISH on a cluster); how many subscribers received it. Raises library errors."""
        return await self.transport.publish(channel.encode(), data)

    def publish_nowait(self, channel: str, data: bytes) -> None:
        """Publish without waiting for the reply (replies to callers; failures are logged)."""
        name = channel.encode()
        if self.transport.publish_nowait(name, data):
            return
        task = asyncio.get_running_loop().create_task(self._publish_logged(name, data))
        _BACKGROUND.add(task)
        task.add_done_callback(_BACKGROUND.discard)

    async def _publish_logged(self, name: bytes, data: bytes) -> None:
        try:
            await self.transport.publish(name, data)
        except ResourceRouterError as exc:
            logger.warning("pubsub.publish_failed", channel=name.decode("utf-8", "replace"), error=str(exc))

    async def evalsha(self, operation: str, script: AsyncScript, keys: list[str], args: list[Any]) -> Any:
        """Run a registered script on the command connection of the server holding ``keys[0]``."""
        return await self.transport.evalsha(operation, keys[0].encode(), script, keys, args)

    async def get(self, key: str) -> bytes | None:
        """GET (the owner lookup). Raises ``RedisUnavailableError`` when Redis cannot be reached."""
        name = key.encode()
        value: bytes | None = await self.transport.execute("lookup", name, b"GET", name)
        return value


def make_transport(
    client: Client,
    settings: RouterSettings,
    on_message: MessageHandler,
    on_state: StateCallback,
    on_master: MasterCallback | None = None,
) -> Transport:
    """The transport for ``client``'s kind of server."""
    if is_cluster(client):
        return ClusterTransport(client, settings, on_message, on_state, on_master)  # type: ignore[arg-type]
    if is_memory(client):
        return MemoryTransport(client, settings, on_message, on_state, on_master)  # type: ignore[arg-type]
    return SingleTransport(client, settings, on_message, on_state, on_master)  # type: ignore[arg-type]
