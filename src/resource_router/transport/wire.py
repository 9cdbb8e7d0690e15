"""One connection to one Redis server, as the pub/sub links drive it: buffered writes, one read loop.

A ``Wire`` is made and authenticated by redis-py (TLS, AUTH, HELLO, SELECT, CLIENT SETNAME and
SETINFO, all as configured) and then used through redis-py's public connection API only:
``connect``, ``pack_command``, ``send_packed_command``, ``read_response`` and ``disconnect``.
Writes made in one event-loop iteration go out together; replies (and pushed messages) are handed
to one callback in order. Error replies are handed over as exception objects, not raised.

``_fastwire.FastWire`` is the measured fast path for redis-py's own socket connections with hiredis:
the same interface, reading the socket directly (the only module that touches redis-py internals).
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Callable
from typing import Any

from redis.asyncio.connection import AbstractConnection
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import ResponseError

__all__ = ["ConnectionWire", "ReplyCallback", "Wire"]

#: Called with each reply or pushed message, in order (an error reply is an exception object).
ReplyCallback = Callable[[Any], None]


class Wire:
    """The interface (and the public-API implementation is ``ConnectionWire``)."""

    async def open(self) -> None:
        raise NotImplementedError

    def pack(self, *args: bytes | str | int | float) -> bytes:
        raise NotImplementedError

    async def request(self, *args: bytes | str | int | float) -> Any:
        """One command and its reply, before the read loop starts (an error reply is returned as an
        exception object)."""
        raise NotImplementedError

    def write(self, data: bytes) -> None:
        """Queue ``data``; everything queued is sent in order, without waiting."""
        raise NotImplementedError

    async def read_into(self, on_reply: ReplyCallback) -> None:
        """Hand every reply to ``on_reply`` until the connection fails (then raise ``ConnectionError``)."""
        raise NotImplementedError

    async def close(self) -> None:
        raise NotImplementedError


class ConnectionWire(Wire):
    """A ``Wire`` over redis-py's public connection API (any connection class, the embedded server's too)."""

    def __init__(self, conn: AbstractConnection) -> None:
        self.conn = conn
        self._buffer: list[bytes] = []
        self._sender: asyncio.Task[None] | None = None
        self._failed: BaseException | None = None

    async def open(self) -> None:
        await self.conn.connect()  # type: ignore[no-untyped-call]

    def pack(self, *args: bytes | str | int | float) -> bytes:
        return b"".join(self.conn.pack_command(*args))

    async def request(self, *args: bytes | str | int | float) -> Any:
        await self.conn.send_packed_command(self.pack(*args), check_health=False)
        try:
            return await self.conn.read_response(disconnect_on_error=True)
        except ResponseError as exc:
            return exc

    def write(self, data: bytes) -> None:
        if self._failed is not None:
            return
        self._buffer.append(data)
        if self._sender is None:
            self._sender = asyncio.get_running_loop().create_task(self._send())

    async def _send(self) -> None:
        try:
            while self._buffer:
                data = b"".join(self._buffer)
                self._buffer.clear()
                await self.conn.send_packed_command(data, check_health=False)
        except Exception as exc:  # the read loop sees the connection fail and reports it
            self._failed = exc
            self._buffer.clear()
            with contextlib.suppress(Exception):
                await self.conn.disconnect(nowait=True)
        finally:
            self._sender = None

    async def read_into(self, on_reply: ReplyCallback) -> None:
        conn = self.conn
        while True:
            if self._failed is not None:
                raise RedisConnectionError(f"write failed: {self._failed}")
            try:
                reply = await conn.read_response(disconnect_on_error=True)
            except ResponseError as exc:  # an error reply: the connection is fine
                reply = exc
            if reply is None and not conn.is_connected:
                raise RedisConnectionError("connection closed")
            on_reply(reply)

    async def close(self) -> None:
        sender = self._sender
        if sender is not None and self._failed is None:  # let queued writes go out first (briefly)
            with contextlib.suppress(Exception):
                await asyncio.wait_for(asyncio.shield(sender), 0.5)
        sender, self._sender = self._sender, None
        if sender is not None:
            sender.cancel()
        self._failed = self._failed or RedisConnectionError("closed")
        with contextlib.suppress(Exception):
            await self.conn.disconnect(nowait=True)
