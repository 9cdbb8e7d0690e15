"""Redis connections: a URL or a ready client, including the embedded ``memory://`` server.

``memory://`` and ``memory://NAME`` give an in-process Redis-compatible server (fakeredis with Lua,
the ``memory`` extra: ``pip install 'resource-router[memory]'``). Every client made from the same URL
in one process talks to the same server, so a demo can run a registry, instances and clients side by
side without any Redis installed. A real URL is never replaced by the embedded server.
"""

from __future__ import annotations

import importlib.util
import threading
from typing import Any
from urllib.parse import urlsplit

import redis.asyncio as aredis

from .errors import InvalidRequestError
from .settings import DEFAULT_TIMEOUT, redact_url

__all__ = [
    "RedisLike",
    "binary_client",
    "binary_connection_kwargs",
    "connect",
    "describe",
    "is_memory_url",
    "memory_server",
]

#: What every entry object accepts: a URL or an asyncio client (``Redis`` or ``RedisCluster``).
RedisLike = str | aredis.Redis | aredis.RedisCluster

_MEMORY_LOCK = threading.Lock()
_MEMORY_SERVERS: dict[str, Any] = {}

_REAL_SCHEMES = ("redis", "rediss", "unix")


def is_memory_url(url: str) -> bool:
    return url.startswith("memory:")


def _fakeredis() -> Any:
    """The fakeredis module, or an ImportError that names the extra to install."""
    try:
        import fakeredis  # imported lazily: only the embedded mode needs it

        if importlib.util.find_spec("lupa") is None:  # fakeredis' Lua runtime, needed by every script
            raise ModuleNotFoundError("No module named 'lupa'", name="lupa")
    except ModuleNotFoundError as exc:
        raise ImportError(
            f"memory:// needs the 'memory' extra (fakeredis with Lua; {exc.name} is not installed): "
            "pip install 'resource-router[memory]'",
            name=exc.name,
        ) from exc
    return fakeredis


def memory_server(name: str = "") -> Any:
    """The process-wide embedded server for ``memory://NAME`` (created on first use)."""
    fakeredis = _fakeredis()
    with _MEMORY_LOCK:
        server = _MEMORY_SERVERS.get(name)
        if server is None:
            server = fakeredis.FakeServer(version=(7,))
            _MEMORY_SERVERS[name] = server
        return server


def _memory_name(url: str) -> str:
    parts = urlsplit(url)
    return (parts.netloc + parts.path).strip("/")


def connect(redis: RedisLike, **kwargs: Any) -> aredis.Redis | aredis.RedisCluster:
    """Return an asyncio client for ``redis`` (a URL, or a client that is returned as is)."""
    if isinstance(redis, aredis.Redis | aredis.RedisCluster):
        return redis
    if not isinstance(redis, str) or not redis:
        raise InvalidRequestError("redis must be a URL or a redis.asyncio client", field="redis")
    if is_memory_url(redis):
        server = memory_server(_memory_name(redis))
        client: aredis.Redis = _fakeredis().FakeAsyncRedis(server=server, **kwargs)
        return client
    scheme = urlsplit(redis).scheme
    if scheme not in _REAL_SCHEMES:
        raise InvalidRequestError(
            f"unsupported Redis URL scheme {scheme!r}: use redis://, rediss://, unix:// or memory://",
            field="redis",
        )
    kwargs.setdefault("socket_connect_timeout", DEFAULT_TIMEOUT)
    kwargs.setdefault("health_check_interval", 0)
    try:
        real: aredis.Redis = aredis.Redis.from_url(redis, **kwargs)
    except ValueError as exc:  # e.g. a port that is not a number
        raise InvalidRequestError(f"invalid Redis URL {redact_url(redis)}: {exc}", field="redis") from exc
    return real


def binary_client(client: aredis.Redis | aredis.RedisCluster) -> aredis.Redis | aredis.RedisCluster:
    """A client on the same server whose replies are bytes (needed for msgpack on pub/sub).

    Returns ``client`` itself when it already returns bytes.
    """
    if isinstance(client, aredis.RedisCluster):
        if not client.get_encoder().decode_responses:
            return client
        raise InvalidRequestError("pass a RedisCluster client created with decode_responses=False", field="redis")
    pool = client.connection_pool
    if not pool.connection_kwargs.get("decode_responses", False):
        return client
    new_pool = type(pool)(connection_class=pool.connection_class, **binary_connection_kwargs(client))
    return aredis.Redis.from_pool(new_pool)  # closes its own pool on aclose()


def binary_connection_kwargs(client: aredis.Redis) -> dict[str, Any]:
    """The connection arguments of ``client``'s pool, with replies as bytes."""
    kwargs = dict(client.connection_pool.connection_kwargs)
    kwargs["decode_responses"] = False
    return kwargs


def describe(client: aredis.Redis | aredis.RedisCluster) -> str:
    """A printable, password-free description of where ``client`` points."""
    if isinstance(client, aredis.RedisCluster):
        return "redis-cluster"
    kw = client.connection_pool.connection_kwargs
    if "server" in kw or type(client).__module__.startswith("fakeredis"):
        return "memory://"
    if "path" in kw:
        return f"unix://{kw['path']}"
    return f"redis://{kw.get('host', 'localhost')}:{kw.get('port', 6379)}/{kw.get('db', 0)}"
