"""Fixtures of the routing tests."""

from __future__ import annotations

from collections.abc import AsyncIterator

import pytest

from tests.procs.peer import RawPeer


@pytest.fixture
async def peer(backend_url: str, namespace: str) -> AsyncIterator[RawPeer]:
    """A raw pub/sub peer on every backend: hand-made envelopes in, replies read without the library."""
    async with RawPeer(backend_url, namespace) as p:
        yield p
