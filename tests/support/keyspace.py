"""A snapshot of a namespace's keys, to check that a refused request changed nothing."""

from __future__ import annotations

from typing import Any


async def keyspace(redis: Any, namespace: str) -> dict[bytes, bytes]:
    """Every key of the namespace with a dump of its value (detects any change)."""
    out = {}
    async for key in redis.scan_iter(match=f"{namespace}:*", count=1000):
        kind = await redis.type(key)
        if kind == b"string":
            out[key] = await redis.get(key)
        elif kind == b"set":
            out[key] = repr(sorted(await redis.smembers(key))).encode()
        elif kind == b"hash":
            out[key] = repr(sorted((await redis.hgetall(key)).items())).encode()
        elif kind == b"zset":
            out[key] = repr(await redis.zrange(key, 0, -1)).encode()
        elif kind == b"stream":
            out[key] = repr(await redis.xlen(key)).encode()
    return out
