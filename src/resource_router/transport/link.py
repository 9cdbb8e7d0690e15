"""A link to one Redis server: a subscriber connection and a pipelined command connection.

The **subscriber** has one read loop. It (re)subscribes every channel wanted on this server, hands
each message to ``on_message(channel, data)`` and reports channels lost when the connection drops
and heard again once Redis confirms the subscription (``on_state``). Reconnects back off with jitter.

The **command** connection carries the hot path's commands (``PUBLISH``/``SPUBLISH``, owner lookups):
commands issued in one event-loop iteration go out in one write and their replies are matched in
order to futures, so concurrent callers share round trips the way nats-py batches its writes.

**Health**: a check every quarter of ``min(health_check_interval, health_check_timeout)`` sends
``PING`` on a connection that has been silent for ``health_check_interval``, and ends a connection
that leaves a PING or a command unanswered for ``health_check_timeout`` (a half-open socket: a NAT
or load balancer that forgot the flow, a peer host gone), together with the other connection to the
same server (the path is suspect; an instance must not re-subscribe and then publish its replies
into a dead connection). The subscriber then reconnects and re-subscribes; pending commands fail at
once with ``ConnectionError`` and the next command opens a new connection. A dead connection is thus
noticed within ``health_check_interval + health_check_timeout`` plus two check periods
(``tests/transport/test_link_health.py`` measures it: 2.0-3.2 s with the defaults, bound 3.5 s).
"""

from __future__ import annotations

import asyncio
import contextlib
from collections import deque
from collections.abc import Callable, Iterable
from typing import Any, Final

from redis.asyncio.connection import AbstractConnection
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import RedisError

from resource_router.errors import RedisUnavailableError
from resource_router.observability.logs import get_logger
from resource_router.settings import RouterSettings
from resource_router.transport._fastwire import FastWire
from resource_router.transport.redis_errors import map_redis_error
from resource_router.transport.retry import Backoff
from resource_router.transport.tasks import stop_task
from resource_router.transport.wire import ConnectionWire, Wire

__all__ = ["MessageHandler", "NodeLink", "StateHandler", "make_wire", "server_run_id"]

logger = get_logger(__name__)

#: ``on_message(channel, data)``: called from the read loop for every message; must not block.
MessageHandler = Callable[[bytes, bytes], None]
#: ``on_state(link, channels, heard)``: channels lost (False) or confirmed again (True).
StateHandler = Callable[["NodeLink", frozenset[bytes], bool], None]

_FAILURES: Final = (RedisError, OSError, asyncio.TimeoutError)
_PING_MARK: Final = object()  # a pending slot for a health-check PING on the command connection
_SUBSCRIBE_CHUNK: Final = 1000


async def server_run_id(wire: Wire) -> str | None:
    """The ``run_id`` of the server behind ``wire`` (``INFO server``): it changes when another
    process answers at the address, as after a failover or a restart. None when the server does not
    say (the embedded server, an ACL user without ``INFO``)."""
    reply = await wire.request(b"INFO", b"server")
    if not isinstance(reply, bytes):
        return None
    for line in reply.split(b"\r\n"):
        if line.startswith(b"run_id:"):
            return line[7:].decode("ascii", "replace")
    return None


def make_wire(conn: AbstractConnection) -> Wire:
    """The fastest ``Wire`` that works for ``conn``: the measured fast path when it can read the
    connection's streams (``_fastwire.py``), else redis-py's public connection API."""
    if FastWire.supports(conn):
        return FastWire(conn)
    return ConnectionWire(conn)


class NodeLink:
    """Subscriber and command connections to one server; see the module docstring."""

    def __init__(
        self,
        name: str,
        make_conn: Callable[[], AbstractConnection],
        *,
        sharded: bool,
        settings: RouterSettings,
        on_message: MessageHandler,
        on_state: StateHandler,
        on_moved: Callable[[NodeLink, bytes], None] | None = None,
        on_server: Callable[[NodeLink, str], None] | None = None,
        wire_factory: Callable[[AbstractConnection], Wire] = make_wire,
    ) -> None:
        self.name = name
        self._make_conn = make_conn
        self._wire_factory = wire_factory
        self.settings = settings
        self._on_message = on_message
        self._on_state = on_state
        self._on_moved = on_moved
        self._on_server = on_server  # told the server's run_id on every new connection
        self._wake = asyncio.Event()
        if sharded:
            self._sub_cmd, self._unsub_cmd = b"SSUBSCRIBE", b"SUNSUBSCRIBE"
            self._message, self._confirms = b"smessage", (b"ssubscribe", b"sunsubscribe")
        else:
            self._sub_cmd, self._unsub_cmd = b"SUBSCRIBE", b"UNSUBSCRIBE"
            self._message, self._confirms = b"message", (b"subscribe", b"unsubscribe")
        self.closed = False
        # subscriber
        self.channels: set[bytes] = set()  # wanted on this server
        self.heard: set[bytes] = set()  # confirmed on the current connection
        self._sub: Wire | None = None
        self._sub_task: asyncio.Task[None] | None = None
        self._confirm: dict[tuple[bytes, bytes], deque[asyncio.Future[None]]] = {}
        self._sub_traffic = False
        self._sub_quiet_since = 0.0
        self._sub_ping_at: float | None = None
        # commands
        self._cmd: Wire | None = None
        self._cmd_task: asyncio.Task[None] | None = None
        self._cmd_lock = asyncio.Lock()
        self._pending: deque[Any] = deque()
        self._buffer: list[bytes] = []
        self._flush_handle: asyncio.Handle | None = None
        self._cmd_progress = True
        self._cmd_quiet_since = 0.0
        self._health_handle: asyncio.TimerHandle | None = None
        self._drained: asyncio.Future[None] | None = None  # set while closing, until the answers are in
        self._readers: dict[int, asyncio.Task[None]] = {}

    # -- lifecycle -------------------------------------------------------------------------------
    async def start(self) -> None:
        """Open both connections (``RedisUnavailableError`` when the server cannot be reached)."""
        try:
            wire = await self._open()
        except _FAILURES as exc:
            raise map_redis_error("subscribe", exc) from exc
        if self.closed:
            await wire.close()
            raise RedisUnavailableError(f"the link to {self.name} is closed", operation="subscribe")
        self._sub = wire
        self._sub_task = asyncio.get_running_loop().create_task(
            self._subscriber_loop(wire), name=f"resource-router-subscriber-{self.name}"
        )
        await self._ensure_cmd()
        self._schedule_health()

    async def _open(self) -> Wire:
        """A new connection, identified (``server_run_id``) before anything else is sent on it."""
        wire = self._wire_factory(self._make_conn())
        try:
            await asyncio.wait_for(wire.open(), self.settings.connect_timeout + self.settings.operation_timeout)
            if self._on_server is not None:
                run_id = await asyncio.wait_for(server_run_id(wire), self.settings.operation_timeout)
                if run_id is not None:
                    self._on_server(self, run_id)
        except BaseException:
            await wire.close()
            raise
        return wire

    async def aclose(self) -> None:
        self.closed = True
        if self._health_handle is not None:
            self._health_handle.cancel()
            self._health_handle = None
        await self._drain_commands()
        if self._flush_handle is not None:
            self._flush_handle.cancel()
            self._flush_handle = None
        sub = self._sub
        if sub is not None and self.heard:
            # Say goodbye (not awaited): some servers (the embedded one) keep the subscriptions of
            # connections that were closed without it.
            self._write_subscriptions(sub, self._unsub_cmd, self.heard)
        for task in (self._sub_task, self._cmd_task):
            await stop_task(task)
        self._sub_task = self._cmd_task = None
        for wire in (self._sub, self._cmd):
            if wire is not None:
                await wire.close()
        self._sub = self._cmd = None
        closed = RedisConnectionError("the pub/sub link was closed")
        self._fail_commands(closed)
        self._fail_confirmations(closed)

    async def _drain_commands(self) -> None:
        """Send what is queued and wait (up to a second) for Redis to answer it: replies published to
        callers just before closing still go out instead of being dropped with the connection."""
        if self._cmd is None:
            return
        if self._flush_handle is not None:
            self._flush_handle.cancel()
            self._flush_handle = None
        self._flush()
        if not self._pending:
            return
        waiter: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self._drained = waiter
        try:
            await asyncio.wait_for(waiter, min(1.0, self.settings.health_check_timeout))
        except TimeoutError:
            logger.debug("pubsub.close_undrained", link=self.name, pending=len(self._pending))
        finally:
            self._drained = None

    # -- subscriber ------------------------------------------------------------------------------
    def wake(self, why: str) -> None:
        """The server moved (a Sentinel announced a new master): end the connections and reconnect
        at once rather than after the current backoff."""
        self._wake.set()
        self._end_both(why)

    async def _subscriber_loop(self, wire: Wire | None) -> None:
        backoff = Backoff(0.05, self.settings.retry_max_backoff * 2)
        while not self.closed:
            if wire is None:
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(self._wake.wait(), backoff.next_delay())
                if self._wake.is_set():
                    self._wake.clear()
                    backoff.reset()
                try:
                    wire = await self._open()
                except _FAILURES as exc:
                    logger.debug("pubsub.reconnect_failed", link=self.name, error=f"{type(exc).__name__}: {exc}")
                    continue
                if self.closed:
                    await wire.close()
                    return
                backoff.reset()
                self._sub = wire
                self._write_subscriptions(wire, self._sub_cmd, self.channels)
                logger.info("pubsub.reconnected", link=self.name, channels=len(self.channels))
            self._sub_traffic = True
            self._sub_ping_at = None
            error = await self._read(wire, self._on_push)
            if isinstance(error, _FAILURES):
                if not self.closed:
                    logger.warning("pubsub.disconnected", link=self.name, error=f"{type(error).__name__}: {error}")
            elif error is not None:  # a bug must not end the subscriptions for good: start over
                logger.error("pubsub.reader_failed", link=self.name, exc_info=error)
            self._sub = None
            lost = frozenset(self.heard)
            self.heard.clear()
            self._fail_confirmations(RedisConnectionError("the pub/sub connection was lost"))
            await wire.close()
            wire = None
            if lost and not self.closed:
                self._on_state(self, lost, False)

    def _write_subscriptions(self, wire: Wire, command: bytes, channels: Iterable[bytes]) -> None:
        names = list(channels)
        for start in range(0, len(names), _SUBSCRIBE_CHUNK):
            wire.write(wire.pack(command, *names[start : start + _SUBSCRIBE_CHUNK]))

    def _on_push(self, reply: Any) -> None:
        self._sub_traffic = True
        if type(reply) is not list or len(reply) != 3:
            if isinstance(reply, Exception):  # a refused (S)SUBSCRIBE, e.g. MOVED: fail who waits
                self._fail_confirmations(reply)
            return
        kind = reply[0]
        if kind == self._message:
            self._on_message(reply[1], reply[2])
            return
        if kind in self._confirms:
            channel = reply[1]
            subscribed = kind == self._confirms[0]
            waiters = self._confirm.get((kind, channel))
            fut = None
            if waiters:
                fut = waiters.popleft()
                if not waiters:
                    del self._confirm[(kind, channel)]
            if subscribed:
                self.heard.add(channel)
                self._on_state(self, frozenset((channel,)), True)
            else:
                self.heard.discard(channel)
                if fut is None and channel in self.channels:
                    # Unsubscribed by the server: the channel's slot moved to another node.
                    self.channels.discard(channel)
                    if self._on_moved is not None:
                        self._on_moved(self, channel)
            if fut is not None and not fut.done():
                fut.set_result(None)

    def _fail_confirmations(self, exc: BaseException) -> None:
        confirm, self._confirm = self._confirm, {}
        for waiters in confirm.values():
            for fut in waiters:
                if not fut.done():
                    fut.set_exception(exc)

    async def subscribe(self, channel: bytes) -> None:
        """Subscribe and wait for Redis to confirm; ``RedisUnavailableError`` if it cannot be heard."""
        self.channels.add(channel)
        wire = self._sub
        if wire is None:
            raise RedisUnavailableError(
                f"the pub/sub connection to {self.name} is down; it will subscribe when it is back",
                operation="subscribe",
            )
        try:
            await self._confirmed(wire, self._confirms[0], self._sub_cmd, channel)
        except _FAILURES as exc:
            raise map_redis_error("subscribe", exc) from exc

    async def unsubscribe(self, channel: bytes) -> None:
        self.channels.discard(channel)
        wire = self._sub
        if wire is None or channel not in self.heard:
            return
        with contextlib.suppress(*_FAILURES):
            await self._confirmed(wire, self._confirms[1], self._unsub_cmd, channel)

    async def _confirmed(self, wire: Wire, kind: bytes, command: bytes, channel: bytes) -> None:
        fut: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self._confirm.setdefault((kind, channel), deque()).append(fut)
        wire.write(wire.pack(command, channel))
        await asyncio.wait_for(fut, self.settings.operation_timeout)

    # -- commands --------------------------------------------------------------------------------
    async def _ensure_cmd(self) -> Wire:
        wire = self._cmd
        if wire is not None:
            return wire
        async with self._cmd_lock:
            if self._cmd is None:
                if self.closed:
                    raise RedisUnavailableError(f"the link to {self.name} is closed", operation="command")
                try:
                    wire = await self._open()
                except _FAILURES as exc:
                    raise map_redis_error("connect", exc) from exc
                if self.closed:  # closed while connecting: do not leave a connection behind
                    await wire.close()
                    raise RedisUnavailableError(f"the link to {self.name} is closed", operation="command")
                self._cmd = wire
                self._cmd_progress = True
                self._cmd_task = asyncio.get_running_loop().create_task(
                    self._command_loop(wire), name=f"resource-router-commands-{self.name}"
                )
            return self._cmd

    async def _command_loop(self, wire: Wire) -> None:
        error: BaseException = RedisConnectionError("the pub/sub link was closed")
        try:
            failure = await self._read(wire, self._on_command_reply)
            if failure is not None and not self.closed:
                if isinstance(failure, _FAILURES):
                    logger.warning(
                        "pubsub.command_connection_lost", link=self.name, error=f"{type(failure).__name__}: {failure}"
                    )
                else:  # a bug: fail what waits; the next command reconnects
                    logger.error("pubsub.command_reader_failed", link=self.name, exc_info=failure)
                error = RedisConnectionError(f"{type(failure).__name__}: {failure}")
        finally:
            if self._cmd is wire:
                self._cmd = None
                self._buffer.clear()
                self._fail_commands(error)
            await wire.close()

    def _on_command_reply(self, reply: Any) -> None:
        self._cmd_progress = True
        if not self._pending:
            return  # nothing asked for this (never expected: no client tracking, RESP2)
        fut = self._pending.popleft()
        if not self._pending and self._drained is not None and not self._drained.done():
            self._drained.set_result(None)  # closing: everything sent was answered
        if fut is None or fut is _PING_MARK or fut.done():
            if fut is None and isinstance(reply, Exception):
                logger.warning("pubsub.publish_failed", link=self.name, error=str(reply))
            return
        if isinstance(reply, Exception):
            fut.set_exception(reply)
        else:
            fut.set_result(reply)

    def _fail_commands(self, exc: BaseException) -> None:
        pending, self._pending = self._pending, deque()
        if self._drained is not None and not self._drained.done():
            self._drained.set_result(None)
        for fut in pending:
            if fut is not None and fut is not _PING_MARK and not fut.done():
                fut.set_exception(exc)

    def _flush(self) -> None:
        self._flush_handle = None
        wire = self._cmd
        if wire is None or not self._buffer:
            return
        data = b"".join(self._buffer)
        self._buffer.clear()
        wire.write(data)

    def _enqueue(self, wire: Wire, args: tuple[Any, ...], fut: Any) -> None:
        if not self._pending:
            self._cmd_progress = True  # the stall clock starts with the first command waiting
        self._pending.append(fut)
        self._buffer.append(wire.pack(*args))
        if self._flush_handle is None:
            self._flush_handle = asyncio.get_running_loop().call_soon(self._flush)

    async def execute(self, *args: Any) -> Any:
        """Send one command on the command connection and return its reply (error replies raise)."""
        wire = self._cmd
        if wire is None:
            wire = await self._ensure_cmd()
        fut: asyncio.Future[Any] = asyncio.get_running_loop().create_future()
        self._enqueue(wire, args, fut)
        return await fut

    def execute_nowait(self, *args: Any) -> bool:
        """Send a command whose reply nobody waits for; False when the connection is down."""
        wire = self._cmd
        if wire is None:
            return False
        self._enqueue(wire, args, None)
        return True

    # -- health ----------------------------------------------------------------------------------
    @property
    def health_check_period(self) -> float:
        """Seconds between two health checks."""
        return min(self.settings.health_check_interval, self.settings.health_check_timeout) / 4

    def _schedule_health(self) -> None:
        if not self.closed:
            loop = asyncio.get_running_loop()
            self._health_handle = loop.call_later(self.health_check_period, self._health)

    def _health(self) -> None:
        now = asyncio.get_running_loop().time()
        interval, timeout = self.settings.health_check_interval, self.settings.health_check_timeout
        sub = self._sub
        if sub is not None:
            if self._sub_traffic:
                self._sub_traffic = False
                self._sub_quiet_since = now
                self._sub_ping_at = None
            elif self._sub_ping_at is not None:
                if now - self._sub_ping_at >= timeout:
                    self._end_both(f"the subscriber connection left a PING unanswered for {timeout:g}s")
            elif now - self._sub_quiet_since >= interval:
                sub.write(sub.pack(b"PING"))
                self._sub_ping_at = now
        cmd = self._cmd
        if cmd is not None:
            if self._cmd_progress:
                self._cmd_progress = False
                self._cmd_quiet_since = now
            elif self._pending:
                if now - self._cmd_quiet_since >= timeout:
                    self._end_both(f"the command connection left a command unanswered for {timeout:g}s")
            elif now - self._cmd_quiet_since >= interval:
                self._enqueue(cmd, (b"PING",), _PING_MARK)
        self._schedule_health()

    def _end_both(self, why: str) -> None:
        """A dead connection means the path to the server is suspect: replace both (an instance that
        re-subscribed on a new connection must not publish its replies into a dead one)."""
        for wire, which in ((self._sub, "subscriber"), (self._cmd, "command")):
            if wire is not None:
                self._end(wire, which, why)
        self._sub_ping_at = None

    def _end(self, wire: Wire, which: str, why: str) -> None:
        """End a connection that looks dead: its read stops at once, and its loop reports and recovers."""
        reader = self._readers.get(id(wire))
        if reader is None or reader.done() or reader.cancelling():
            return
        logger.warning("pubsub.connection_dead", link=self.name, connection=which, reason=why)
        reader.cancel()

    async def _read(self, wire: Wire, on_reply: Callable[[Any], None]) -> BaseException | None:
        """Run ``wire``'s read loop in a task of its own (which ``_end`` may cancel); returns why it
        ended (a health check's cancel becomes a ``ConnectionError``)."""
        reader = asyncio.get_running_loop().create_task(wire.read_into(on_reply))
        self._readers[id(wire)] = reader
        try:
            await asyncio.wait({reader})
        finally:
            self._readers.pop(id(wire), None)
            if not reader.done():  # this loop itself is being stopped
                reader.cancel()
                await asyncio.wait({reader})
        if reader.cancelled():
            return RedisConnectionError("ended by the health check")
        return reader.exception()
