"""A raw pub/sub peer for tests: publishes hand-made envelopes and reads replies without the library."""

from __future__ import annotations

import asyncio
import time
from typing import Any

import msgpack
import redis.asyncio as aredis

from resource_router.connection import connect
from resource_router.keys import KeySpace

__all__ = ["RawPeer"]


class RawPeer:
    def __init__(self, url: str, namespace: str, name: str = "raw-peer") -> None:
        self.redis: aredis.Redis = connect(url)  # type: ignore[assignment]
        self.reply_channel = KeySpace(namespace).reply_channel(name)
        self.pubsub: Any = None
        self._n = 0

    async def __aenter__(self) -> RawPeer:
        self.pubsub = self.redis.pubsub()
        await self.pubsub.subscribe(self.reply_channel)
        msg = await self.pubsub.get_message(timeout=2.0)
        assert msg is not None
        assert msg["type"] == "subscribe"
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.pubsub.aclose()
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
        data = message if isinstance(message, bytes) else msgpack.packb(message, use_bin_type=True)
        return int(await self.redis.publish(channel, data))

    async def next_reply(self, timeout: float = 2.0) -> dict[str, Any] | None:
        """The next reply on the peer's channel, decoded; None when nothing came within ``timeout``."""
        end = time.monotonic() + timeout
        while True:
            left = end - time.monotonic()
            if left <= 0:
                return None
            msg = await self.pubsub.get_message(ignore_subscribe_messages=True, timeout=min(left, 0.2))
            if msg is not None and msg["type"] == "message":
                reply: dict[str, Any] = msgpack.unpackb(msg["data"], raw=False)
                return reply
            await asyncio.sleep(0)
