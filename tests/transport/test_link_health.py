"""The links' health checks against dead connections.

Half-open connections are made with ``tests/tcp_proxy.py``: the proxy stops forwarding both ways
without closing anything, as a NAT or load balancer that forgot the flow does. Nothing tells the
client; only its health checks (PING with a deadline on quiet connections, a deadline on commands
waiting for replies) can notice.
"""

from __future__ import annotations

import asyncio
import time
from typing import Any

import pytest
import redis.asyncio as aredis

from resource_router import RedisUnavailableError, RouterSettings
from resource_router.transport.connection import connect
from resource_router.transport.hub import PubSubHub
from tests.support.logs import capture_logs
from tests.support.redis_server import RedisServer
from tests.support.tcp_proxy import TcpProxy
from tests.support.waiting import wait_for

#: Small health-check settings so that the tests take well under a second per detection.
FAST = RouterSettings(health_check_interval=0.2, health_check_timeout=0.4, operation_timeout=2.0, connect_timeout=2.0)
#: One check period of the link (see ``NodeLink.health_check_period``).
PERIOD = min(FAST.health_check_interval, FAST.health_check_timeout) / 4
#: The bound the docs state: interval + timeout + two check periods, plus scheduling slack.
BOUND = FAST.health_check_interval + FAST.health_check_timeout + 2 * PERIOD + 0.25


# -- half-open connections -------------------------------------------------------------------------
async def _hub(url: str, settings: RouterSettings) -> tuple[PubSubHub, Any]:
    client = connect(url, settings)
    return await PubSubHub.acquire(client, settings), client


@pytest.mark.chaos
@pytest.mark.parametrize("close_upstream", [False, True], ids=["server-keeps-it", "server-forgot-it"])
async def test_a_half_open_subscriber_is_noticed_within_the_bound_and_resubscribed(
    proxy: TcpProxy, private_redis: RedisServer, close_upstream: bool
) -> None:
    hub, client = await _hub(proxy.url, FAST)
    admin = aredis.Redis(port=private_redis.port)
    got: list[bytes] = []
    states: list[bool] = []
    try:
        await hub.subscribe("ch", got.append, states.append)
        assert await admin.publish("ch", b"before") == 1
        await wait_for(lambda: got == [b"before"], 2)
        await asyncio.sleep(FAST.health_check_interval * 2)  # idle: the health check PINGs; nothing happens
        assert hub.heard("ch") and states == [True]  # confirmed once; the PINGs changed nothing

        with capture_logs() as logs:
            assert proxy.blackhole(close_upstream=close_upstream) == 2  # subscriber and command connections
            detected = await wait_for(lambda: not hub.heard("ch"), BOUND + 1)
            back = await wait_for(lambda: hub.heard("ch"), 5)
        assert detected <= BOUND
        assert states == [True, False, True]
        events = [e["event"] for e in logs]
        assert "pubsub.connection_dead" in events and "pubsub.reconnected" in events
        # Re-subscribed on a new connection: messages arrive again (and only once).
        await admin.publish("ch", b"after")
        await wait_for(lambda: got == [b"before", b"after"], 2)
        await asyncio.sleep(0.1)
        assert got == [b"before", b"after"]
        assert back < 5
    finally:
        await hub.release()
        await client.aclose()
        await admin.aclose()


@pytest.mark.chaos
async def test_without_health_checks_a_half_open_subscriber_goes_unnoticed(
    proxy: TcpProxy, private_redis: RedisServer
) -> None:
    """The failure the health checks fix: with them effectively off, nothing notices for as long as it lasts."""
    off = FAST.model_copy(update={"health_check_interval": 300.0, "health_check_timeout": 300.0})
    hub, client = await _hub(proxy.url, off)
    admin = aredis.Redis(port=private_redis.port)
    got: list[bytes] = []
    try:
        await hub.subscribe("ch", got.append)
        proxy.blackhole()
        await asyncio.sleep(BOUND + 0.5)
        assert hub.heard("ch")  # it still believes it listens...
        assert await admin.publish("ch", b"lost") == 1  # ...Redis still delivers to the dead flow...
        await asyncio.sleep(0.2)
        assert got == []  # ...and nothing arrives
    finally:
        await hub.release()
        await client.aclose()
        await admin.aclose()


@pytest.mark.chaos
async def test_commands_on_a_half_open_connection_fail_within_the_bound_and_the_next_reconnects(
    proxy: TcpProxy, private_redis: RedisServer
) -> None:
    hub, client = await _hub(proxy.url, FAST)
    admin = aredis.Redis(port=private_redis.port)
    try:
        await admin.set("k", b"v")
        assert await hub.get("k") == b"v"
        # Only the command connection: the subscriber stays healthy.
        assert proxy.blackhole(lambda c: not c.saw(b"SUBSCRIBE") and not c.saw(b"PING")) in (1, 2)
        start = time.monotonic()
        waiting = [asyncio.create_task(hub.get("k")) for _ in range(20)]
        for task in waiting:
            with pytest.raises(RedisUnavailableError) as err:
                await task
            assert err.value.code == 503
        failed_after = time.monotonic() - start
        assert failed_after <= FAST.health_check_timeout + 2 * PERIOD + 0.25
        assert await hub.get("k") == b"v"  # a new connection
        assert await hub.publish("nobody", b"x") == 0
    finally:
        await hub.release()
        await client.aclose()
        await admin.aclose()


@pytest.mark.chaos
async def test_an_idle_half_open_command_connection_is_dropped_so_the_next_command_does_not_wait_on_it(
    proxy: TcpProxy, private_redis: RedisServer
) -> None:
    hub, client = await _hub(proxy.url, FAST)
    try:
        await hub.subscribe("ch", lambda data: None)
        assert await hub.get("k") is None
        connections = len(proxy.connections)
        proxy.blackhole(lambda c: not c.saw(b"SUBSCRIBE"))
        with capture_logs() as logs:
            await asyncio.sleep(BOUND + 0.2)  # the idle PING goes unanswered
        dead = {e["connection"] for e in logs if e["event"] == "pubsub.connection_dead"}
        assert dead == {"command", "subscriber"}  # the path is suspect: both are replaced
        start = time.monotonic()
        assert await hub.get("k") is None
        assert time.monotonic() - start < 1.0
        await wait_for(lambda: hub.heard("ch"), 5)
        assert len(proxy.connections) == connections + 2
    finally:
        await hub.release()
        await client.aclose()


@pytest.mark.chaos
async def test_detection_time_with_the_default_settings(proxy: TcpProxy) -> None:
    """The figure the docs give: a dead subscriber is noticed within interval + timeout (+ 2 periods)."""
    defaults = RouterSettings()
    hub, client = await _hub(proxy.url, defaults)
    try:
        await hub.subscribe("ch", lambda data: None)
        await asyncio.sleep(0.3)
        proxy.blackhole()
        period = min(defaults.health_check_interval, defaults.health_check_timeout) / 4
        bound = defaults.health_check_interval + defaults.health_check_timeout + 2 * period
        detected = await wait_for(lambda: not hub.heard("ch"), bound + 2)
        assert detected <= bound + 0.25
    finally:
        await hub.release()
        await client.aclose()


@pytest.mark.chaos
async def test_a_dead_subscriber_takes_the_command_connection_with_it(
    proxy: TcpProxy, private_redis: RedisServer
) -> None:
    """Re-subscribed on a new connection, an instance must not publish its replies into the old,
    dead command connection (its callers would wait out their timeout until that one is noticed)."""
    hub, client = await _hub(proxy.url, FAST)
    listener = aredis.Redis(port=private_redis.port)
    pubsub = listener.pubsub()
    await pubsub.subscribe("replies")
    await pubsub.get_message(timeout=2)
    try:
        await hub.subscribe("ch", lambda data: None)
        assert await hub.get("k") is None  # the command connection is open (and idle from now on)
        proxy.blackhole(lambda c: c.saw(b"SUBSCRIBE"), close_upstream=True)
        await asyncio.sleep(FAST.health_check_interval * 1.5)
        # The command connection dies a moment later: on its own it would be noticed only after the
        # subscriber has been noticed and replaced.
        assert proxy.blackhole(lambda c: not c.saw(b"SUBSCRIBE"), close_upstream=True) == 1
        await wait_for(lambda: not hub.heard("ch"), BOUND + 1)
        await wait_for(lambda: hub.heard("ch"), 5)
        hub.publish_nowait("replies", b"answer")  # at once, as an instance answers its first request
        msg = await pubsub.get_message(ignore_subscribe_messages=True, timeout=1.0)
        assert msg is not None and msg["data"] == b"answer"
    finally:
        await pubsub.aclose()
        await listener.aclose()
        await hub.release()
        await client.aclose()
