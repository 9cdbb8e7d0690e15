"""The embedded ``memory://`` server: fakeredis with Lua, one per name and process (extra ``memory``).

Every client made from the same ``memory://NAME`` URL in one process shares one server. Without the
extra, using it raises an ``ImportError`` that names the pip command to run.
"""

from __future__ import annotations

import importlib.util
import threading
from typing import Any
from urllib.parse import urlsplit

import redis.asyncio as aredis

__all__ = ["is_memory_url", "memory_client", "memory_server"]

_MEMORY_LOCK = threading.Lock()
_MEMORY_SERVERS: dict[str, Any] = {}


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


def memory_client(url: str) -> tuple[aredis.Redis, Any]:
    """A client of the embedded server ``url`` names, and that server."""
    parts = urlsplit(url)
    server = memory_server((parts.netloc + parts.path).strip("/"))
    client: aredis.Redis = _fakeredis().FakeAsyncRedis(server=server)
    return client, server
