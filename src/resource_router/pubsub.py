"""One pub/sub connection per process, fanned out to callbacks; one pipelined command connection.

``PubSubHub.acquire(redis)`` returns the hub shared by every instance and client of one event loop
that talks to the same Redis server. A hub holds two connections of its own:

* a **subscriber** connection with a single reader task. Each subscribed channel has one callback
  (``callback(data: bytes) -> None``), called synchronously from the reader for every message;
  callbacks must not block (they decode and hand work to futures or tasks).
* a **command** connection used for the routing hot path (``PUBLISH`` and the owner ``GET``).
  Commands issued in the same event-loop iteration are written together in one ``write()`` and
  their replies are read in order by one reader task: concurrent callers share round trips the
  way nats-py batches its writes, and a lone caller pays no extra wait.

On a real Redis (``redis.asyncio.Redis``) both connections are made and authenticated by redis-py
(TLS, AUTH, HELLO, SELECT, CLIENT SETNAME all as configured on the client), then read and written
directly with a hiredis parser. Other clients (the embedded ``memory://`` server, or when hiredis is
missing) go through redis-py's own ``PubSub`` object and commands; they behave the same, slower.

When the subscriber connection drops, the hub reconnects with backoff and subscribes again; while it
is down, publishers see ``PUBLISH`` reach nobody, which routing reports at once as unavailable.
Pub/sub delivery is at most once: a message published while the connection was down is lost.
"""

from __future__ import annotations

import asyncio
import contextlib
import importlib
import weakref
from collections import deque
from collections.abc import Callable
from typing import Any

import redis.asyncio as aredis
from redis.asyncio.connection import AbstractConnection
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import RedisError, ResponseError

from .connection import binary_connection_kwargs
from .errors import InvalidRequestError, RedisUnavailableError, ResourceRouterError
from .retry import TRANSIENT_ERRORS, redis_unavailable
from .tracing import get_logger

hiredis: Any
try:  # hiredis comes with redis[hiredis]; without it every hub uses the generic backend
    hiredis = importlib.import_module("hiredis")
except ImportError:  # pragma: no cover
    hiredis = None

logger = get_logger(__name__)

__all__ = ["MessageCallback", "PubSubHub"]

#: Called with the raw payload of every message on a subscribed channel.
MessageCallback = Callable[[bytes], None]

_REDIS_FAILURES: tuple[type[BaseException], ...] = (*TRANSIENT_ERRORS, RedisError)
#: What ends a direct read: the connection failed, or the stream could not be parsed.
_READ_FAILURES: tuple[type[BaseException], ...] = _REDIS_FAILURES + (
    (hiredis.HiredisError,) if hiredis is not None else ()
)
#: What ends a read of redis-py's ``PubSub`` (RuntimeError: its connection is gone).
_GENERIC_READ_FAILURES: tuple[type[BaseException], ...] = (*_REDIS_FAILURES, RuntimeError)
_READ_SIZE = 1 << 16
_MAX_BACKOFF = 2.0
_NOT_ENOUGH = object()


def _pack(*parts: bytes) -> bytes:
    """RESP encoding of one command (bulk strings only)."""
    out = [b"*%d\r\n" % len(parts)]
    for part in parts:
        out.append(b"$%d\r\n" % len(part))
        out.append(part)
        out.append(b"\r\n")
    return b"".join(out)


def _hashable(value: Any) -> Any:
    if value is None or isinstance(value, str | int | float | bool | bytes):
        return value
    if isinstance(value, tuple | list):
        return tuple(_hashable(v) for v in value)
    return ("id", id(value))


def _target(client: aredis.Redis) -> tuple[Any, ...]:
    """What identifies a server connection: the connection class and its (hashable) arguments."""
    pool = client.connection_pool
    kwargs = pool.connection_kwargs
    if "server" in kwargs:  # the embedded server: one per memory:// name, whatever the client
        return (pool.connection_class, ("server", id(kwargs["server"]), kwargs.get("db", 0)))
    items = tuple(
        sorted(
            (k, _hashable(v))
            for k, v in kwargs.items()
            if k not in ("decode_responses", "encoding", "encoding_errors", "retry", "health_check_interval")
        )
    )
    return (pool.connection_class, items)


class _RawConnection:
    """A redis-py connection, connected (and authenticated) by redis-py, then used directly."""

    def __init__(self, conn: AbstractConnection) -> None:
        self.conn = conn
        self.reader: asyncio.StreamReader | None = None
        self.writer: asyncio.StreamWriter | None = None
        self.parser: Any = None

    async def open(self) -> None:
        await self.conn.connect()  # type: ignore[no-untyped-call]
        self.reader = self.conn._reader
        self.writer = self.conn._writer
        self.parser = hiredis.Reader(notEnoughData=_NOT_ENOUGH)

    async def read_into(self, on_reply: Callable[[Any], None]) -> None:
        """Read replies until the connection fails; raises ``ConnectionError`` at EOF."""
        reader, parser = self.reader, self.parser
        if reader is None:
            raise RedisConnectionError("not connected")
        while True:
            data = await reader.read(_READ_SIZE)
            if not data:
                raise RedisConnectionError("connection closed by the server")
            parser.feed(data)
            while True:
                reply = parser.gets()
                if reply is _NOT_ENOUGH:
                    break
                on_reply(reply)

    async def close(self) -> None:
        with contextlib.suppress(Exception):
            await self.conn.disconnect(nowait=True)


class PubSubHub:
    """Shared per (event loop, Redis server); see the module docstring. Use ``acquire``/``release``."""

    _shared: weakref.WeakKeyDictionary[asyncio.AbstractEventLoop, dict[tuple[Any, ...], PubSubHub]] = (
        weakref.WeakKeyDictionary()
    )

    def __init__(self, key: tuple[Any, ...]) -> None:
        self._key = key
        self._users = 0
        self._callbacks: dict[bytes, tuple[MessageCallback, ...]] = {}
        self._started = False
        self._closed = False
        self._start_lock = asyncio.Lock()
        self.messages_received = 0

    # -- sharing ---------------------------------------------------------------------------------
    @classmethod
    async def acquire(cls, redis: aredis.Redis | aredis.RedisCluster) -> PubSubHub:
        """The started hub for ``redis``'s server in this event loop (created on first use)."""
        if isinstance(redis, aredis.RedisCluster):
            raise InvalidRequestError(
                "routing over Redis Cluster is not supported yet: pass a client of one node", field="redis"
            )
        loop = asyncio.get_running_loop()
        conn_class = redis.connection_pool.connection_class
        # Direct reads only for redis-py's own socket connections (TCP, TLS, unix), never for the
        # embedded server's fake connections.
        raw = (
            hiredis is not None
            and conn_class.__module__.startswith("redis.")
            and issubclass(conn_class, AbstractConnection)
        )
        key = ("raw" if raw else "client", *_target(redis))
        hubs = cls._shared.setdefault(loop, {})
        hub = hubs.get(key)
        if hub is None or hub._closed:
            hub = _RawHub(key, redis) if raw else _ClientHub(key, redis)
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
        await self.aclose()

    async def _ensure_started(self) -> None:
        if self._started:
            return
        async with self._start_lock:
            if not self._started:
                await self._start()
                self._started = True

    # -- subscriptions ---------------------------------------------------------------------------
    async def subscribe(self, channel: str, callback: MessageCallback) -> None:
        """Add ``callback`` for ``channel``; the first one subscribes and waits for Redis to confirm."""
        name = channel.encode()
        existing = self._callbacks.get(name)
        if existing is not None:
            if callback in existing:
                raise ValueError(f"this callback already listens on {channel!r}")
            self._callbacks[name] = (*existing, callback)
            return
        self._callbacks[name] = (callback,)
        try:
            await self._subscribe(name)
        except BaseException:
            self._remove(name, callback)
            raise

    def _remove(self, name: bytes, callback: MessageCallback) -> bool:
        """Remove one callback; True when the channel has none left (and was dropped)."""
        existing = self._callbacks.get(name)
        if existing is None or callback not in existing:
            return False
        rest = tuple(cb for cb in existing if cb != callback)
        if rest:
            self._callbacks[name] = rest
            return False
        del self._callbacks[name]
        return True

    async def unsubscribe(self, channel: str, callback: MessageCallback) -> None:
        """Remove ``callback``; the last one unsubscribes the channel."""
        name = channel.encode()
        if self._remove(name, callback):
            await self._unsubscribe(name)

    def _dispatch(self, channel: bytes, data: bytes) -> None:
        self.messages_received += 1
        callbacks = self._callbacks.get(channel)
        if callbacks is None:
            return  # unsubscribed a moment ago
        for callback in callbacks:
            try:
                callback(data)
            except Exception:  # a callback bug must never stop the reader
                logger.exception("pubsub.callback_failed", channel=channel.decode("utf-8", "replace"))

    # -- to implement ----------------------------------------------------------------------------
    async def _start(self) -> None:
        raise NotImplementedError

    async def aclose(self) -> None:
        raise NotImplementedError

    async def _subscribe(self, name: bytes) -> None:
        raise NotImplementedError

    async def _unsubscribe(self, name: bytes) -> None:
        raise NotImplementedError

    async def publish(self, channel: str, data: bytes) -> int:
        """PUBLISH; returns how many subscribers received it. Raises ``RedisUnavailableError``."""
        raise NotImplementedError

    def publish_nowait(self, channel: str, data: bytes) -> None:
        """PUBLISH without waiting for the reply (replies to callers; errors are logged)."""
        raise NotImplementedError

    async def get(self, key: str) -> bytes | None:
        """GET on the command connection (the owner lookup). Raises ``RedisUnavailableError``."""
        raise NotImplementedError


class _RawHub(PubSubHub):
    """Hub over redis-py-made connections read with hiredis directly (real Redis servers)."""

    def __init__(self, key: tuple[Any, ...], client: aredis.Redis) -> None:
        super().__init__(key)
        pool = client.connection_pool
        kwargs = binary_connection_kwargs(client)
        self._make: Callable[[], AbstractConnection] = lambda: pool.connection_class(**kwargs)
        # subscriber
        self._sub: _RawConnection | None = None
        self._sub_task: asyncio.Task[None] | None = None
        self._confirm: dict[tuple[bytes, bytes], deque[asyncio.Future[None]]] = {}
        # commands
        self._cmd: _RawConnection | None = None
        self._cmd_task: asyncio.Task[None] | None = None
        self._cmd_lock = asyncio.Lock()
        self._pending: deque[asyncio.Future[Any] | None] = deque()
        self._buffer: list[bytes] = []
        self._flush_handle: asyncio.Handle | None = None

    async def _start(self) -> None:
        try:
            self._sub = await self._open()
        except _REDIS_FAILURES as exc:
            raise redis_unavailable("subscribe", exc) from exc
        self._sub_task = asyncio.create_task(self._subscriber_loop(), name="resource-router-pubsub")
        await self._ensure_cmd()

    async def _open(self) -> _RawConnection:
        raw = _RawConnection(self._make())
        try:
            await raw.open()
        except BaseException:
            await raw.close()
            raise
        return raw

    async def aclose(self) -> None:
        self._closed = True
        for task in (self._sub_task, self._cmd_task):
            if task is not None:
                task.cancel()
                with contextlib.suppress(asyncio.CancelledError, Exception):
                    await task
        self._sub_task = self._cmd_task = None
        if self._flush_handle is not None:
            self._flush_handle.cancel()
            self._flush_handle = None
        for conn in (self._sub, self._cmd):
            if conn is not None:
                await conn.close()
        self._sub = self._cmd = None
        self._fail_commands(RedisConnectionError("the pub/sub hub was closed"))
        self._fail_confirmations(RedisConnectionError("the pub/sub hub was closed"))

    # -- subscriber ------------------------------------------------------------------------------
    def _on_push(self, reply: Any) -> None:
        if not isinstance(reply, list):
            return
        if len(reply) == 3:
            kind = reply[0]
            if kind == b"message":
                self._dispatch(reply[1], reply[2])
                return
            if kind in (b"subscribe", b"unsubscribe"):
                waiters = self._confirm.get((kind, reply[1]))
                if waiters:
                    fut = waiters.popleft()
                    if not waiters:
                        del self._confirm[(kind, reply[1])]
                    if not fut.done():
                        fut.set_result(None)

    async def _subscriber_loop(self) -> None:
        backoff = 0.05
        while not self._closed:
            conn = self._sub
            if conn is not None:
                try:
                    await conn.read_into(self._on_push)
                except _READ_FAILURES as exc:
                    logger.warning("pubsub.disconnected", error=f"{type(exc).__name__}: {exc}")
                except Exception:  # a bug must not end the subscriptions for good: start over
                    logger.exception("pubsub.reader_failed")
                self._fail_confirmations(RedisConnectionError("the pub/sub connection was lost"))
                await conn.close()
                self._sub = None
            await asyncio.sleep(backoff)
            backoff = min(backoff * 2, _MAX_BACKOFF)
            try:
                conn = await self._open()
            except _REDIS_FAILURES as exc:
                logger.debug("pubsub.reconnect_failed", error=f"{type(exc).__name__}: {exc}")
                continue
            self._sub = conn
            backoff = 0.05
            if self._callbacks and conn.writer is not None:
                conn.writer.write(_pack(b"SUBSCRIBE", *self._callbacks))
            logger.info("pubsub.reconnected", channels=len(self._callbacks))

    def _fail_confirmations(self, exc: BaseException) -> None:
        confirm, self._confirm = self._confirm, {}
        for waiters in confirm.values():
            for fut in waiters:
                if not fut.done():
                    fut.set_exception(exc)

    async def _confirmed(self, kind: bytes, name: bytes, operation: str) -> None:
        conn = self._sub
        if conn is None or conn.writer is None:
            raise RedisUnavailableError(f"the pub/sub connection is down during {operation}", operation=operation)
        fut: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self._confirm.setdefault((kind, name), deque()).append(fut)
        conn.writer.write(_pack(kind.upper(), name))
        try:
            await fut
        except RedisConnectionError as exc:
            raise redis_unavailable(operation, exc) from exc

    async def _subscribe(self, name: bytes) -> None:
        await self._confirmed(b"subscribe", name, "subscribe")

    async def _unsubscribe(self, name: bytes) -> None:
        if self._sub is None:
            return  # resubscription after a reconnect only covers current callbacks
        with contextlib.suppress(RedisUnavailableError):
            await self._confirmed(b"unsubscribe", name, "unsubscribe")

    # -- commands --------------------------------------------------------------------------------
    async def _ensure_cmd(self) -> _RawConnection:
        conn = self._cmd
        if conn is not None:
            return conn
        async with self._cmd_lock:
            if self._cmd is None:
                if self._closed:
                    raise RedisUnavailableError("the pub/sub hub is closed", operation="publish")
                try:
                    conn = await self._open()
                except _REDIS_FAILURES as exc:
                    raise redis_unavailable("connect", exc) from exc
                self._cmd = conn
                self._cmd_task = asyncio.create_task(self._command_loop(conn), name="resource-router-commands")
            return self._cmd

    async def _command_loop(self, conn: _RawConnection) -> None:
        error: BaseException = RedisConnectionError("the pub/sub hub was closed")
        try:
            await conn.read_into(self._on_command_reply)
        except _READ_FAILURES as exc:
            logger.warning("pubsub.command_connection_lost", error=f"{type(exc).__name__}: {exc}")
            error = (
                exc if isinstance(exc, RedisConnectionError) else RedisConnectionError(f"{type(exc).__name__}: {exc}")
            )
        except Exception as exc:  # a bug: fail what waits; the next command reconnects
            logger.exception("pubsub.command_reader_failed")
            error = RedisConnectionError(f"{type(exc).__name__}: {exc}")
        finally:
            if self._cmd is conn:
                self._cmd = None
                self._buffer.clear()
                self._fail_commands(error)
            await conn.close()

    def _on_command_reply(self, reply: Any) -> None:
        if not self._pending:
            return  # a push we did not ask for (client tracking is never enabled)
        fut = self._pending.popleft()
        if fut is None or fut.done():
            if fut is None and isinstance(reply, Exception):
                logger.warning("pubsub.publish_failed", error=str(reply))
            return
        if isinstance(reply, Exception):
            fut.set_exception(ResponseError(str(reply)))
        else:
            fut.set_result(reply)

    def _fail_commands(self, exc: BaseException) -> None:
        pending, self._pending = self._pending, deque()
        for fut in pending:
            if fut is not None and not fut.done():
                fut.set_exception(exc)

    def _flush(self) -> None:
        self._flush_handle = None
        conn = self._cmd
        if conn is None or conn.writer is None or not self._buffer:
            return
        data = b"".join(self._buffer)
        self._buffer.clear()
        conn.writer.write(data)

    def _enqueue(self, packed: bytes, fut: asyncio.Future[Any] | None) -> None:
        self._pending.append(fut)
        self._buffer.append(packed)
        if self._flush_handle is None:
            self._flush_handle = asyncio.get_running_loop().call_soon(self._flush)

    async def _command(self, operation: str, packed: bytes) -> Any:
        if self._cmd is None:
            await self._ensure_cmd()
        fut: asyncio.Future[Any] = asyncio.get_running_loop().create_future()
        self._enqueue(packed, fut)
        try:
            return await fut
        except RedisConnectionError as exc:
            raise redis_unavailable(operation, exc) from exc
        except ResponseError as exc:
            raise ResourceRouterError(f"Redis error during {operation}: {exc}") from exc

    async def publish(self, channel: str, data: bytes) -> int:
        result: int = await self._command("publish", _pack(b"PUBLISH", channel.encode(), data))
        return result

    def publish_nowait(self, channel: str, data: bytes) -> None:
        if self._cmd is None:
            task = asyncio.get_running_loop().create_task(self._publish_logged(channel, data))
            _BACKGROUND.add(task)
            task.add_done_callback(_BACKGROUND.discard)
            return
        self._enqueue(_pack(b"PUBLISH", channel.encode(), data), None)

    async def _publish_logged(self, channel: str, data: bytes) -> None:
        try:
            await self.publish(channel, data)
        except ResourceRouterError as exc:
            logger.warning("pubsub.publish_failed", channel=channel, error=str(exc))

    async def get(self, key: str) -> bytes | None:
        result: bytes | None = await self._command("lookup", _pack(b"GET", key.encode()))
        return result


_BACKGROUND: set[asyncio.Task[Any]] = set()


class _ClientHub(PubSubHub):
    """Hub over redis-py's ``PubSub`` and commands (the embedded server, or any other client)."""

    def __init__(self, key: tuple[Any, ...], client: aredis.Redis) -> None:
        super().__init__(key)
        pool = client.connection_pool
        kwargs = binary_connection_kwargs(client)
        self._client = aredis.Redis.from_pool(type(pool)(connection_class=pool.connection_class, **kwargs))
        self._pubsub: Any = None
        self._task: asyncio.Task[None] | None = None
        self._confirm: dict[tuple[str, bytes], deque[asyncio.Future[None]]] = {}
        self._tasks: set[asyncio.Task[Any]] = set()

    async def _start(self) -> None:
        self._pubsub = self._client.pubsub()

    async def aclose(self) -> None:
        self._closed = True
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await self._task
            self._task = None
        for task in list(self._tasks):
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await task
        if self._pubsub is not None:
            with contextlib.suppress(Exception):
                if self._callbacks:  # the embedded server keeps subscriptions of closed clients
                    await self._pubsub.unsubscribe()
                await self._pubsub.aclose()
            self._pubsub = None
        with contextlib.suppress(Exception):
            await self._client.aclose()
        confirm, self._confirm = self._confirm, {}
        for waiters in confirm.values():
            for fut in waiters:
                if not fut.done():
                    fut.set_exception(RedisConnectionError("the pub/sub hub was closed"))

    async def _reader(self) -> None:
        backoff = 0.05
        while not self._closed:
            try:
                msg = await self._pubsub.get_message(timeout=1.0)
            except asyncio.CancelledError:
                raise
            except _GENERIC_READ_FAILURES as exc:
                logger.warning("pubsub.disconnected", error=f"{type(exc).__name__}: {exc}")
                await asyncio.sleep(backoff)
                backoff = min(backoff * 2, _MAX_BACKOFF)
                continue
            backoff = 0.05
            if msg is None:
                continue
            kind = msg["type"]
            if kind == "message":
                self._dispatch(msg["channel"], msg["data"])
            elif kind in ("subscribe", "unsubscribe"):
                waiters = self._confirm.get((kind, msg["channel"]))
                if waiters:
                    fut = waiters.popleft()
                    if not waiters:
                        del self._confirm[(kind, msg["channel"])]
                    if not fut.done():
                        fut.set_result(None)

    async def _confirmed(self, kind: str, name: bytes) -> None:
        fut: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self._confirm.setdefault((kind, name), deque()).append(fut)
        try:
            if kind == "subscribe":
                await self._pubsub.subscribe(name)
            else:
                await self._pubsub.unsubscribe(name)
            if self._task is None:
                self._task = asyncio.create_task(self._reader(), name="resource-router-pubsub")
            await fut
        except _REDIS_FAILURES as exc:
            raise redis_unavailable(kind, exc) from exc

    async def _subscribe(self, name: bytes) -> None:
        await self._confirmed("subscribe", name)

    async def _unsubscribe(self, name: bytes) -> None:
        with contextlib.suppress(RedisUnavailableError):
            await self._confirmed("unsubscribe", name)

    async def publish(self, channel: str, data: bytes) -> int:
        try:
            return int(await self._client.publish(channel, data))
        except TRANSIENT_ERRORS as exc:
            raise redis_unavailable("publish", exc) from exc
        except RedisError as exc:
            raise ResourceRouterError(f"Redis error during publish: {exc}") from exc

    def publish_nowait(self, channel: str, data: bytes) -> None:
        task = asyncio.get_running_loop().create_task(self._publish_logged(channel, data))
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def _publish_logged(self, channel: str, data: bytes) -> None:
        try:
            await self.publish(channel, data)
        except ResourceRouterError as exc:
            logger.warning("pubsub.publish_failed", channel=channel, error=str(exc))

    async def get(self, key: str) -> bytes | None:
        try:
            value: bytes | None = await self._client.get(key)
        except TRANSIENT_ERRORS as exc:
            raise redis_unavailable("lookup", exc) from exc
        except RedisError as exc:
            raise ResourceRouterError(f"Redis error during lookup: {exc}") from exc
        return value
