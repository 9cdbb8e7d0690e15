"""A TCP proxy for tests that can make connections half-open.

``blackhole()`` stops forwarding on the connections open at that moment, both ways, without closing
them: what either side sends is read and thrown away, so writes succeed and nothing ever arrives,
as when a NAT or a load balancer forgets a flow or the peer host dies. The client's socket stays
open; only a health check (PING with a deadline) or TCP keepalive can notice. With
``close_upstream=True`` the proxy also closes its side towards the server, so the server forgets the
client (its subscriptions go: ``PUBSUB NUMSUB`` drops) while the client still believes it is
connected. Connections opened afterwards are forwarded normally, unless ``hold_new`` is set: then
they are accepted and blackholed at once (the network is still down). ``upstream_delay`` (seconds)
delays what clients send on its way to the server (a slow link).

    async with TcpProxy(port) as proxy:
        url = proxy.url              # redis://127.0.0.1:<proxy port>/0
        ...
        proxy.blackhole(lambda c: c.saw(b"SUBSCRIBE"))   # only the subscriber connections
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Callable

__all__ = ["ProxiedConnection", "TcpProxy"]

_CHUNK = 1 << 16
_SEEN_LIMIT = 1 << 16


class ProxiedConnection:
    """One client connection through the proxy."""

    def __init__(self, client: asyncio.StreamWriter, upstream: asyncio.StreamWriter) -> None:
        self.client = client
        self.upstream = upstream
        self.blackholed = False
        self.closed = False
        self.sent = bytearray()  # the first bytes the client sent (to pick connections by their commands)
        self.tasks: list[asyncio.Task[None]] = []

    def saw(self, command: bytes) -> bool:
        """True when the client sent ``command`` (as a RESP bulk string) on this connection."""
        return command.upper() in bytes(self.sent).upper()


class TcpProxy:
    """Forwards 127.0.0.1:<port> to ``target_host:target_port``; see the module docstring."""

    def __init__(self, target_port: int, target_host: str = "127.0.0.1") -> None:
        self.target_host = target_host
        self.target_port = target_port
        self.connections: list[ProxiedConnection] = []
        self.hold_new = False
        self.upstream_delay = 0.0
        self._server: asyncio.Server | None = None
        self.port = 0

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    async def __aenter__(self) -> TcpProxy:
        self._server = await asyncio.start_server(self._accept, "127.0.0.1", 0)
        self.port = self._server.sockets[0].getsockname()[1]
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self.aclose()

    async def aclose(self) -> None:
        if self._server is not None:
            self._server.close()
            self._server = None
        for conn in self.connections:
            await self._close(conn)

    def live(self) -> list[ProxiedConnection]:
        return [c for c in self.connections if not c.closed and not c.blackholed]

    def blackhole(
        self, which: Callable[[ProxiedConnection], bool] | None = None, *, close_upstream: bool = False
    ) -> int:
        """Make the open connections (those ``which`` selects) half-open; returns how many."""
        count = 0
        for conn in self.live():
            if which is None or which(conn):
                conn.blackholed = True
                count += 1
                if close_upstream:
                    conn.upstream.close()
        return count

    async def _accept(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            up_reader, up_writer = await asyncio.open_connection(self.target_host, self.target_port)
        except OSError:
            writer.close()
            return
        conn = ProxiedConnection(writer, up_writer)
        conn.blackholed = self.hold_new
        self.connections.append(conn)
        conn.tasks = [
            asyncio.create_task(self._pipe(conn, reader, up_writer, record=True)),
            asyncio.create_task(self._pipe(conn, up_reader, writer, record=False)),
        ]

    async def _pipe(
        self, conn: ProxiedConnection, reader: asyncio.StreamReader, writer: asyncio.StreamWriter, *, record: bool
    ) -> None:
        try:
            while True:
                data = await reader.read(_CHUNK)
                if not data:
                    break
                if conn.blackholed:
                    continue  # read and thrown away: the sender's writes succeed, nothing arrives
                if record and len(conn.sent) < _SEEN_LIMIT:
                    conn.sent += data[: _SEEN_LIMIT - len(conn.sent)]
                if record and self.upstream_delay:
                    await asyncio.sleep(self.upstream_delay)
                writer.write(data)
                await writer.drain()
        except (OSError, asyncio.IncompleteReadError):
            pass
        if conn.blackholed:
            return  # a half-open connection never tells the other side anything
        conn.closed = True
        for w in (conn.client, conn.upstream):
            w.close()

    async def _close(self, conn: ProxiedConnection) -> None:
        conn.closed = True
        for task in conn.tasks:
            task.cancel()
        for w in (conn.client, conn.upstream):
            w.close()
            with contextlib.suppress(Exception):
                await w.wait_closed()
