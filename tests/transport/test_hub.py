"""PubSubHub: one subscriber connection fanned out to callbacks, pipelined commands, reconnection."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator
from typing import Any

import pytest
import redis.asyncio as aredis

from resource_router import RedisUnavailableError, ResourceRouterError
from resource_router.transport.connection import connect
from resource_router.transport.hub import PubSubHub
from tests.support.logs import capture_logs
from tests.support.redis_server import free_port


@pytest.fixture
async def client(backend_url: str) -> AsyncIterator[aredis.Redis]:
    c = connect(backend_url)
    try:
        yield c  # type: ignore[misc]
    finally:
        await c.aclose()


async def eventually(check: Any, timeout: float = 5.0) -> None:
    end = time.monotonic() + timeout
    while True:
        try:
            if await check():
                return
        except RedisUnavailableError:
            pass
        assert time.monotonic() < end, "condition not met in time"
        await asyncio.sleep(0.05)


async def test_callbacks_share_a_channel_and_the_last_one_unsubscribes(client: aredis.Redis) -> None:
    hub = await PubSubHub.acquire(client)
    first: list[bytes] = []
    second: list[bytes] = []
    try:
        await hub.subscribe("ch", first.append)
        await hub.subscribe("ch", second.append)
        with pytest.raises(ValueError, match="already listens"):
            await hub.subscribe("ch", first.append)
        assert await hub.publish("ch", b"one") == 1  # one connection, two callbacks
        await eventually(lambda: _true(first == [b"one"] and second == [b"one"]))
        await hub.unsubscribe("ch", first.append)
        assert await hub.publish("ch", b"two") == 1
        await eventually(lambda: _true(second == [b"one", b"two"]))
        await hub.unsubscribe("ch", second.append)
        assert await hub.publish("ch", b"three") == 0
        assert first == [b"one"]
        await hub.unsubscribe("ch", second.append)  # unknown callbacks are ignored
    finally:
        await hub.release()


async def _true(value: bool) -> bool:
    return value


async def test_commands_are_pipelined_and_replies_matched_in_order(client: aredis.Redis) -> None:
    await client.set("k1", b"v1")
    hub = await PubSubHub.acquire(client)
    try:
        replies = await asyncio.gather(*(hub.get("k1" if i % 2 else "missing") for i in range(200)))
        assert replies == [b"v1" if i % 2 else None for i in range(200)]
        got: list[bytes] = []
        await hub.subscribe("ch", got.append)
        for i in range(50):
            hub.publish_nowait("ch", str(i).encode())
        await eventually(lambda: _true(len(got) == 50))
        assert sorted(int(x) for x in got) == list(range(50))
    finally:
        await hub.release()


async def test_a_failing_callback_does_not_stop_the_reader(client: aredis.Redis) -> None:
    hub = await PubSubHub.acquire(client)
    got: list[bytes] = []

    def broken(data: bytes) -> None:
        raise RuntimeError("bug in a callback")

    try:
        await hub.subscribe("bad", broken)
        await hub.subscribe("good", got.append)
        with capture_logs() as logs:
            await hub.publish("bad", b"x")
            await hub.publish("good", b"y")
            await eventually(lambda: _true(got == [b"y"]))
        assert any(e["event"] == "pubsub.callback_failed" for e in logs)
    finally:
        await hub.release()


async def test_hubs_are_shared_per_server_and_closed_by_the_last_user(backend_url: str) -> None:
    a, b = connect(backend_url), connect(backend_url)
    try:
        hub1 = await PubSubHub.acquire(a)
        hub2 = await PubSubHub.acquire(b)
        assert hub1 is hub2
        await hub1.release()
        got: list[bytes] = []
        await hub2.subscribe("ch", got.append)  # still open for the second user
        assert await hub2.publish("ch", b"x") == 1
        await hub2.release()
        hub3 = await PubSubHub.acquire(a)
        assert hub3 is not hub1
        assert await hub3.publish("ch", b"x") == 0
        await hub3.release()
    finally:
        await a.aclose()
        await b.aclose()


async def test_unreachable_redis_is_a_redis_unavailable_error() -> None:
    dead = connect(f"redis://127.0.0.1:{free_port()}/0")
    try:
        with pytest.raises(RedisUnavailableError):
            await PubSubHub.acquire(dead)
    finally:
        await dead.aclose()


async def test_an_unreachable_cluster_is_a_redis_unavailable_error() -> None:
    cluster = connect(f"redis+cluster://127.0.0.1:{free_port()}/")
    try:
        with pytest.raises(RedisUnavailableError):
            await PubSubHub.acquire(cluster)
    finally:
        await cluster.aclose()


@pytest.mark.chaos
async def test_subscriber_and_command_connections_come_back_after_being_killed(redis_url: str) -> None:
    client = connect(redis_url)
    admin = aredis.Redis.from_url(redis_url)
    hub = await PubSubHub.acquire(client)
    got: list[bytes] = []
    channel = f"chaos-{time.monotonic_ns()}"
    try:
        await hub.subscribe(channel, got.append)
        assert await hub.publish(channel, b"before") == 1
        with capture_logs() as logs:
            await admin.execute_command("CLIENT", "KILL", "TYPE", "pubsub")
            await admin.execute_command("CLIENT", "KILL", "TYPE", "normal", "SKIPME", "yes")

            async def delivered_again() -> bool:
                return await hub.publish(channel, b"after") == 1

            await eventually(delivered_again)
        await eventually(lambda: _true(b"after" in got))
        assert got[0] == b"before"
        events = {e["event"] for e in logs}
        assert "pubsub.disconnected" in events
        assert "pubsub.reconnected" in events
    finally:
        await hub.release()
        await admin.aclose()
        await client.aclose()


async def test_closing_the_hub_fails_waiting_commands(redis_url: str) -> None:
    client = connect(redis_url)
    admin = aredis.Redis.from_url(redis_url)
    hub = await PubSubHub.acquire(client)
    try:
        await admin.execute_command("CLIENT", "PAUSE", "5000", "WRITE")  # PUBLISH waits in Redis
        pending = asyncio.create_task(hub.publish("x", b"y"))
        await asyncio.sleep(0.05)
        start = time.monotonic()
        await hub.release()  # waits (up to 1 s) for what was sent to be answered, then gives up
        assert time.monotonic() - start < 1.5
        with pytest.raises(RedisUnavailableError):
            await pending
    finally:
        await admin.execute_command("CLIENT", "UNPAUSE")
        await admin.aclose()
        await client.aclose()


async def test_redis_error_replies_become_library_errors(client: aredis.Redis) -> None:
    await client.rpush("a-list", b"x")
    hub = await PubSubHub.acquire(client)
    try:
        with pytest.raises(ResourceRouterError, match="WRONGTYPE"):
            await hub.get("a-list")
        await client.set("k", b"v")
        assert await hub.get("k") == b"v"  # the connection is still in step
    finally:
        await hub.release()


async def test_what_was_published_just_before_closing_still_goes_out(redis_url: str) -> None:
    """An instance that stops answers its last requests and closes at once: those replies must not
    be dropped with the connection (found by tests/system/test_soak.py)."""
    listener = aredis.Redis.from_url(redis_url)
    pubsub = listener.pubsub()
    channel = f"last-words-{time.monotonic_ns()}"
    await pubsub.subscribe(channel)
    await pubsub.get_message(timeout=2)
    try:
        for _ in range(20):
            client = connect(redis_url)
            hub = await PubSubHub.acquire(client)
            for i in range(50):
                hub.publish_nowait(channel, str(i).encode())
            await hub.release()  # in the same event-loop iteration as the last publish
            await client.aclose()
        got = []
        while (msg := await pubsub.get_message(ignore_subscribe_messages=True, timeout=0.5)) is not None:
            got.append(msg["data"])
        assert len(got) == 20 * 50
    finally:
        await pubsub.aclose()
        await listener.aclose()


async def test_subscribing_while_the_last_callback_unsubscribes_keeps_the_channel(client: aredis.Redis) -> None:
    hub = await PubSubHub.acquire(client)
    first: list[bytes] = []
    second: list[bytes] = []
    try:
        await hub.subscribe("ch", first.append)
        leaving = asyncio.create_task(hub.unsubscribe("ch", first.append))
        await asyncio.sleep(0)  # UNSUBSCRIBE sent; the first callback still hears until Redis confirms
        await hub.subscribe("ch", second.append)
        await leaving
        await eventually(lambda: _true(hub.heard("ch")))
        assert await hub.publish("ch", b"x") == 1
        await eventually(lambda: _true(second == [b"x"]))
        assert first == []
    finally:
        await hub.release()
