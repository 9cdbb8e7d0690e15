"""Garbage on the channels does not flood the logs: every dropped message is
counted, the warnings about them are rate-limited and say how many were left out."""

from __future__ import annotations

import asyncio
import time
from typing import Any

import pytest
import redis.asyncio as aredis
from prometheus_client import CollectorRegistry

from resource_router import RouteRequest, ServiceClient, ServiceInstance
from resource_router.observability.logs import LogThrottle
from tests.support.logs import capture_logs
from tests.support.metrics import sample
from tests.support.scale import SLOW_SCALE

SVC = "hostile"
FLOOD = 20_000 * SLOW_SCALE


async def _flood(redis_url: str, channel: str, count: int) -> None:
    raw = aredis.Redis.from_url(redis_url)
    try:
        for start in range(0, count, 2000):
            async with raw.pipeline(transaction=False) as pipe:
                for i in range(start, min(start + 2000, count)):
                    pipe.publish(channel, b"\xc1garbage-%d" % i)
                assert set(await pipe.execute()) == {1}
    finally:
        await raw.aclose()


async def _until(check: Any, timeout: float = 30.0) -> None:
    end = time.monotonic() + timeout
    while not check():
        assert time.monotonic() < end, "condition not met in time"
        await asyncio.sleep(0.02)


async def test_a_flood_of_garbage_is_counted_exactly_and_logged_a_few_times(redis_url: str, namespace: str) -> None:
    metrics = CollectorRegistry()
    inst = ServiceInstance(redis_url, SVC, "i1", namespace=namespace, metrics_registry=metrics)

    @inst.handler("echo")
    async def echo(request: RouteRequest) -> Any:
        return request.params

    async with inst, ServiceClient(redis_url, namespace=namespace, metrics_registry=metrics) as client:
        with capture_logs() as logs:
            await _flood(redis_url, inst.channel, FLOOD)
            await _flood(redis_url, client.reply_channel, FLOOD)
            await _until(lambda: sample(metrics, "ipc_dropped_messages_total", reason="malformed") == 2 * FLOOD)
        assert await client.call(SVC, "echo", "still here") == "still here"
    dropped = [e for e in logs if e["event"] == "route.dropped"]
    reply_dropped = [e for e in logs if e["event"] == "route.reply_dropped"]
    assert 1 <= len(dropped) <= 10 and 1 <= len(reply_dropped) <= 10  # not 20,000 each
    assert all(e["reason"] == "malformed" and e["log_level"] == "warning" for e in dropped + reply_dropped)


def test_the_throttle_lets_a_burst_through_per_interval_and_reports_what_it_left_out(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    now = [1000.0]
    monkeypatch.setattr(time, "monotonic", lambda: now[0])
    throttle = LogThrottle(burst=3, interval=10.0)
    assert [throttle.allow() for _ in range(5)] == [0, 0, 0, None, None]
    now[0] += 5
    assert throttle.allow() is None
    now[0] += 5  # a new window: the first event says how many were left out
    assert [throttle.allow() for _ in range(4)] == [3, 0, 0, None]
