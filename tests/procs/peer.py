"""A raw pub/sub peer for tests: publishes hand-made envelopes and reads replies without the library."""

from __future__ import annotations

import asyncio
import time
from typing import Any

import msgpack

from resource_router.ownership.keys import KeySpace
from resource_router.transport.connection import Client, connect
from resource_router.transport.hub import PubSubHub

__all__ = ["RawPeer"]


class RawPeer:
    """Publishes envelopes it builds itself and reads the raw replies (through the library's hub, the
    one piece of the library it uses: it speaks pub/sub on every backend, Redis Cluster included)."""

    def __init__(self, url: str, namespace: str, name: str = "raw-peer") -> None:
        self.redis: Client = connect(url)
        self.reply_channel = KeySpace(namespace).reply_channel(name)
        self.hub: PubSubHub | None = None
        self._replies: asyncio.Queue[bytes] = asyncio.Queue()
        self._n = 0

    async def __aenter__(self) -> RawPeer:
        self.hub = await PubSubHub.acquire(self.redis)
        await self.hub.subscribe(self.reply_channel, self._replies.put_nowait)
        return self

    async def __aexit__(self, *exc: object) -> None:
        if self.hub is not None:
            await self.hub.unsubscribe(self.reply_channel, self._replies.put_nowait)
            await self.hub.release()
        await self.redis.aclose()

    def envelope(self, service: str, method: str, **fields: Any) -> dict[str, Any]:
        self._n += 1
        message: dict[str, Any] = {
            "v": 1,
            "k": "req",
            "id": f"peer:{self._n}",
            "rc": self.reply_channel,
            "svc": service,
            "m": method,
            "rid": None,
            "p": None,
            "dl": time.time() + 5.0,
            "tr": f"trace-{self._n}",
        }
        message.update(fields)
        return message

    async def publish(self, channel: str, message: dict[str, Any] | bytes) -> int:
        assert self.hub is not None
        data = message if isinstance(message, bytes) else msgpack.packb(message, use_bin_type=True)
        return await self.hub.publish(channel, data)

    async def next_reply(self, timeout: float = 2.0) -> dict[str, Any] | None:
        """The next reply on the peer's channel, decoded; None when nothing came within ``timeout``."""
        try:
            data = await asyncio.wait_for(self._replies.get(), timeout)
        except TimeoutError:
            return None
        reply: dict[str, Any] = msgpack.unpackb(data, raw=False)
        return reply
