"""Optional parts are extras: using one without it installed says which pip command to run."""

from __future__ import annotations

import sys

import pytest

from resource_router import ResourceRegistry
from resource_router.transport.connection import connect
from resource_router.transport.memory import memory_server

MEMORY_HINT = "pip install 'resource-router[memory]'"


@pytest.mark.parametrize("missing", ["fakeredis", "lupa"])
def test_memory_urls_need_the_memory_extra(monkeypatch: pytest.MonkeyPatch, missing: str) -> None:
    if missing == "lupa":
        import importlib.util

        real = importlib.util.find_spec
        monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None if name == "lupa" else real(name, *a))
    else:
        monkeypatch.setitem(sys.modules, "fakeredis", None)  # import fakeredis -> ModuleNotFoundError
    for attempt in (lambda: connect("memory://x"), lambda: memory_server("x"), lambda: ResourceRegistry("memory://")):
        with pytest.raises(ImportError) as caught:
            attempt()
        assert str(caught.value) == (
            f"memory:// needs the 'memory' extra (fakeredis with Lua; {missing} is not installed): {MEMORY_HINT}"
        )
        assert caught.value.name == missing


def test_real_urls_do_not_need_the_memory_extra(monkeypatch: pytest.MonkeyPatch, redis_url: str) -> None:
    monkeypatch.setitem(sys.modules, "fakeredis", None)
    client = connect(redis_url)
    assert type(client).__module__.startswith("redis.")
