"""The measured fast path of ``wire.Wire``: the only module that touches redis-py internals.

After redis-py has connected and authenticated a connection (public ``connect()``), this reads its
``asyncio.StreamReader`` (``conn._reader``) in 64 KiB chunks, parses every complete reply of a chunk
with one hiredis reader, and writes to its ``StreamWriter`` (``conn._writer``) without awaiting a
drain per command. Compared with ``ConnectionWire`` (one ``read_response()`` coroutine per reply and
an awaited send per batch), this removes most of the per-message Python work of the routed-call hot
path (see ``benchmarks/README.md``, rows ``routed_call`` with and without the fast wire).

``_reader`` and ``_writer`` exist with the same meaning on every supported redis-py (5.2 to 8.x);
``tests/transport/test_wire.py`` runs on the oldest and the newest. ``supports()`` falls back to the public
path whenever they are missing, or hiredis is not installed, or the connection is not redis-py's.
"""

from __future__ import annotations

import asyncio
import contextlib
import importlib
from typing import Any

from redis.asyncio.connection import AbstractConnection
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import ResponseError

from resource_router.transport.wire import ReplyCallback, Wire

__all__ = ["FastWire"]

hiredis: Any
try:  # hiredis comes with redis[hiredis]
    hiredis = importlib.import_module("hiredis")
except ImportError:  # pragma: no cover
    hiredis = None

_READ_SIZE = 1 << 16
_NOT_ENOUGH = object()


class FastWire(Wire):
    """A ``Wire`` reading and writing the streams of a redis-py connection directly."""

    @staticmethod
    def supports(conn: AbstractConnection) -> bool:
        return (
            hiredis is not None
            and type(conn).__module__.startswith("redis.")
            and hasattr(conn, "_reader")
            and hasattr(conn, "_writer")
        )

    def __init__(self, conn: AbstractConnection) -> None:
        self.conn = conn
        self._reader: asyncio.StreamReader | None = None
        self._writer: asyncio.StreamWriter | None = None
        self._parser: Any = None

    async def open(self) -> None:
        await self.conn.connect()  # type: ignore[no-untyped-call]
        self._reader = self.conn._reader
        self._writer = self.conn._writer
        self._parser = hiredis.Reader(notEnoughData=_NOT_ENOUGH, replyError=ResponseError)

    def pack(self, *args: bytes | str | int | float) -> bytes:
        packed: bytes = hiredis.pack_command(args)
        return packed

    async def request(self, *args: bytes | str | int | float) -> Any:
        reader, writer, parser = self._reader, self._writer, self._parser
        if reader is None or writer is None:
            raise RedisConnectionError("not connected")
        writer.write(self.pack(*args))
        reply = parser.gets()
        while reply is _NOT_ENOUGH:
            try:
                data = await reader.read(_READ_SIZE)
            except OSError as exc:
                raise RedisConnectionError(f"read failed: {exc}") from exc
            if not data:
                raise RedisConnectionError("connection closed by the server")
            parser.feed(data)
            reply = parser.gets()
        return reply

    def write(self, data: bytes) -> None:
        writer = self._writer
        if writer is not None and not writer.is_closing():
            writer.write(data)

    async def read_into(self, on_reply: ReplyCallback) -> None:
        reader, parser = self._reader, self._parser
        if reader is None:
            raise RedisConnectionError("not connected")
        reply = parser.gets()  # replies that arrived with the answer to a ``request``
        while reply is not _NOT_ENOUGH:
            on_reply(reply)
            reply = parser.gets()
        while True:
            try:
                data = await reader.read(_READ_SIZE)
            except OSError as exc:
                raise RedisConnectionError(f"read failed: {exc}") from exc
            if not data:
                raise RedisConnectionError("connection closed by the server")
            try:
                parser.feed(data)
                reply = parser.gets()
                while reply is not _NOT_ENOUGH:
                    on_reply(reply)
                    reply = parser.gets()
            except hiredis.ProtocolError as exc:
                raise RedisConnectionError(f"unparsable reply stream: {exc}") from exc

    async def close(self) -> None:
        self._reader = self._writer = None
        with contextlib.suppress(Exception):
            await self.conn.disconnect(nowait=True)
