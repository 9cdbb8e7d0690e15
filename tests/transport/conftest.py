"""Fixtures of the transport tests."""

from __future__ import annotations

from collections.abc import AsyncIterator

import pytest

from tests.support.redis_server import RedisServer
from tests.support.tcp_proxy import TcpProxy


@pytest.fixture
async def proxy(private_redis: RedisServer) -> AsyncIterator[TcpProxy]:
    """A TCP proxy in front of the test's own redis-server, which can make connections half-open."""
    async with TcpProxy(private_redis.port) as p:
        yield p
