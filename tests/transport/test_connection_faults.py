"""Instances and clients under dead connections.

1. A half-open connection (``tests/tcp_proxy.py`` stops forwarding without closing) under an
   instance is noticed within the health-check bound; meanwhile the instance says it is not
   listening (``listening``, the ``ipc_instance_listening`` gauge, ``instance.not_listening``), then
   it re-subscribes and serves again. Under a client: calls waiting for replies fail with a
   retryable error, and a replica's ``/readyz`` says 503 until the reply channel is back.
2. Redis disconnecting a client's reply connection (its ``client-output-buffer-limit pubsub``): every
   call in flight fails at once with ``RedisUnavailableError(operation="reply")``, not at its
   timeout; calls work again after the re-subscription.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable
from typing import Any

import pytest
import redis.asyncio as aredis
from prometheus_client import CollectorRegistry

from resource_router import (
    OwnerUnavailableError,
    RedisUnavailableError,
    RouteRequest,
    RouterSettings,
    RouteTimeoutError,
    ServiceClient,
    ServiceInstance,
)
from tests.procs.peer import RawPeer
from tests.support.logs import capture_logs
from tests.support.metrics import sample
from tests.support.redis_server import RedisServer
from tests.support.tcp_proxy import TcpProxy
from tests.support.waiting import wait_for

pytestmark = pytest.mark.chaos

SVC = "faults"
NS = "faults"
FAST = RouterSettings(health_check_interval=0.2, health_check_timeout=0.4, operation_timeout=2.0, connect_timeout=2.0)
PERIOD = min(FAST.health_check_interval, FAST.health_check_timeout) / 4
BOUND = FAST.health_check_interval + FAST.health_check_timeout + 2 * PERIOD + 0.25


def make_instance(
    url: str, metrics: CollectorRegistry, release: asyncio.Event | None = None, instance_id: str = "i1"
) -> ServiceInstance:
    inst = ServiceInstance(url, SVC, instance_id, ttl=10, namespace=NS, settings=FAST, metrics_registry=metrics)

    @inst.handler("echo")
    async def echo(request: RouteRequest) -> Any:
        return request.params

    @inst.handler("wait")
    async def wait(request: RouteRequest) -> Any:
        if release is not None:
            await release.wait()
        return "done"

    @inst.handler("big")
    async def big(request: RouteRequest) -> Any:
        return b"x" * request.params

    return inst


async def eventually(check: Callable[[], Awaitable[bool]], timeout: float = 5.0) -> None:
    end = time.monotonic() + timeout
    while not await check():
        assert time.monotonic() < end, "condition not met in time"
        await asyncio.sleep(0.005)


def listening(metrics: CollectorRegistry) -> float | None:
    return metrics.get_sample_value("ipc_instance_listening", {"service_name": SVC, "instance_id": "i1"})


# -- 1. half-open connections ----------------------------------------------------------------------
@pytest.mark.parametrize("close_upstream", [False, True], ids=["server-keeps-it", "server-forgot-it"])
async def test_an_instance_on_a_half_open_connection_says_so_and_serves_again_within_the_bound(
    proxy: TcpProxy, private_redis: RedisServer, close_upstream: bool
) -> None:
    metrics = CollectorRegistry()
    inst = make_instance(proxy.url, metrics)
    async with (
        inst,
        ServiceClient(private_redis.url, namespace=NS, settings=FAST, metrics_registry=CollectorRegistry()) as client,
    ):
        await inst.register_resource(["a"])
        assert await client.call(SVC, "echo", 1, resource_id="a") == 1
        assert inst.listening and listening(metrics) == 1.0

        outcomes: list[tuple[str, bool]] = []  # (error, whether it came before the instance heard again)
        heard_again = asyncio.Event()
        with capture_logs() as logs:
            proxy.blackhole(close_upstream=close_upstream)
            start = time.monotonic()
            if close_upstream:  # calls begin once Redis has noticed (one in flight before may time out)
                admin = aredis.Redis(port=private_redis.port)

                async def forgotten() -> bool:
                    return not (await admin.pubsub_numsub(inst.channel))[0][1]

                await eventually(forgotten)
                await admin.aclose()

            async def caller() -> float:
                """Calls until one succeeds; returns when (seconds after the blackhole)."""
                while True:
                    try:
                        await client.call(SVC, "echo", 2, resource_id="a", timeout=0.3)
                        return time.monotonic() - start
                    except (RouteTimeoutError, OwnerUnavailableError) as exc:
                        outcomes.append((type(exc).__name__, not heard_again.is_set()))
                        await asyncio.sleep(0.02)

            calls = asyncio.create_task(caller())
            detected = await wait_for(lambda: not inst.listening, BOUND + 1)
            assert listening(metrics) == 0.0
            await wait_for(lambda: inst.listening, 5)
            heard_again.set()
            assert listening(metrics) == 1.0
            served_again = await asyncio.wait_for(calls, 5)
        assert detected <= BOUND
        assert served_again <= BOUND + 1.0
        events = [e["event"] for e in logs if e.get("instance_id") == "i1"]
        assert events.count("instance.not_listening") == 1
        assert events.count("instance.listening") == 1
        if close_upstream:
            # Redis forgot the subscription: until the instance hears again, callers are told at once
            # that nobody listens. (A call delivered as it re-subscribes may still time out on a loaded
            # machine: it ends after.)
            while_deaf = [name for name, before in outcomes if before]
            assert while_deaf and set(while_deaf) == {"OwnerUnavailableError"}
        # The lease held throughout (its heartbeats go through the registry's own connections).
        assert (await client.get_resource_owner(SVC, "a")).owner_instance_id == "i1"
    assert listening(metrics) is None  # the stopped instance's gauge is gone


async def test_calls_waiting_on_a_half_open_client_fail_with_a_retryable_error_and_readyz_says_so(
    proxy: TcpProxy, private_redis: RedisServer
) -> None:
    from resource_router.gateway.replica_settings import GatewaySettings
    from resource_router.gateway.state import GatewayState

    release = asyncio.Event()
    inst = make_instance(private_redis.url, CollectorRegistry(), release)
    router = RouterSettings(**{**FAST.model_dump(), "redis_url": proxy.url, "namespace": NS})
    settings = GatewaySettings(router=router)
    state = GatewayState(settings, metrics_registry=CollectorRegistry())
    async with inst:
        await inst.register_resource(["a"])
        await state.start()
        try:
            client = await state.client()
            assert await client.call(SVC, "echo", 1, resource_id="a") == 1
            await state.ready()
            waiting = [
                asyncio.create_task(client.call(SVC, "wait", None, resource_id="a", timeout=30)) for _ in range(5)
            ]
            await wait_for(lambda: inst.in_flight == 5, 2)
            start = time.monotonic()
            # The subscriber alone: PING through the registry's pool still works, so readiness
            # depends on the reply channel only.
            proxy.hold_new = True  # and it cannot come back until the network does
            assert proxy.blackhole(lambda c: c.saw(b"SUBSCRIBE")) == 1
            for task in waiting:
                with pytest.raises(RedisUnavailableError) as err:
                    await task
                assert err.value.operation == "reply"
            assert time.monotonic() - start <= BOUND
            assert not client.listening
            with pytest.raises(RedisUnavailableError, match="reply channel"):
                await state.ready()
            proxy.hold_new = False
            await wait_for(lambda: client.listening, 10)
            await state.ready()
            release.set()
            assert await client.call(SVC, "echo", 3, resource_id="a") == 3
        finally:
            release.set()
            await state.stop()


# -- 2. Redis drops the reply connection -----------------------------------------------------------
async def test_calls_in_flight_fail_at_once_when_redis_drops_the_reply_connection(private_redis: RedisServer) -> None:
    release = asyncio.Event()
    # The instance talks to "localhost", the client to "127.0.0.1": two hubs, two subscriber connections.
    inst = make_instance(f"redis://localhost:{private_redis.port}/0", CollectorRegistry(), release)
    admin = aredis.Redis(port=private_redis.port)
    async with (
        inst,
        ServiceClient(private_redis.url, namespace=NS, metrics_registry=CollectorRegistry()) as client,
    ):
        await inst.register_resource(["a"])
        assert await client.call(SVC, "echo", 1, resource_id="a") == 1
        await admin.config_set("client-output-buffer-limit", "pubsub 32kb 0 0")
        try:
            waiting = [
                asyncio.create_task(client.call(SVC, "wait", None, resource_id="a", timeout=30)) for _ in range(10)
            ]
            await wait_for(lambda: inst.in_flight == 10, 2)
            start = time.monotonic()
            with capture_logs() as logs:
                # A 64 KiB reply overflows the reply connection's output buffer: Redis closes it.
                with pytest.raises(RedisUnavailableError) as err:
                    await client.call(SVC, "big", 64 * 1024, resource_id="a", timeout=30)
                assert err.value.operation == "reply" and err.value.code == 503
                for task in waiting:
                    with pytest.raises(RedisUnavailableError):
                        await task
            assert time.monotonic() - start < 1.0  # at once, not after 30 s
            lost = [e for e in logs if e["event"] == "route.reply_channel_lost"]
            assert [e["failed_calls"] for e in lost] == [11]
        finally:
            await admin.config_set("client-output-buffer-limit", "pubsub 32mb 8mb 60")
            release.set()
        await wait_for(lambda: client.listening, 5)
        assert await client.call(SVC, "echo", 2, resource_id="a") == 2
        assert await client.call(SVC, "big", 64 * 1024, resource_id="a") == b"x" * 64 * 1024
    await admin.aclose()


async def test_a_call_made_while_the_reply_channel_is_down_fails_fast_instead_of_sending(
    private_redis: RedisServer,
) -> None:
    metrics = CollectorRegistry()
    inst = make_instance(f"redis://localhost:{private_redis.port}/0", metrics)
    async with (
        inst,
        ServiceClient(private_redis.url, namespace=NS, settings=FAST, metrics_registry=CollectorRegistry()) as client,
    ):
        await inst.register_resource(["a"])
        assert await client.call(SVC, "echo", 1, resource_id="a") == 1
        # The reply channel as seen while its connection is being re-established.
        client._calls._on_reply_state(False)
        start = time.monotonic()
        with pytest.raises(RedisUnavailableError, match="reply channel is not subscribed"):
            await client.call(SVC, "echo", 2, resource_id="a", timeout=30)
        assert time.monotonic() - start < FAST.health_check_timeout + 0.3
        assert sample(metrics, "ipc_route_requests_total", service_name=SVC, outcome="ok") == 1.0  # not sent
        client._calls._on_reply_state(True)
        assert await client.call(SVC, "echo", 3, resource_id="a") == 3


# -- found by the soak: an instance that stops answers every request it was sent ---------------------
async def test_every_request_delivered_to_a_stopping_instance_is_answered(
    proxy: TcpProxy, private_redis: RedisServer
) -> None:
    """Requests that reach an instance while it unsubscribes are answered "not owner" (the caller
    re-resolves), not dropped. Before, the hub forgot the instance's callback before Redis confirmed
    the UNSUBSCRIBE, and the instance let go of its hub first: requests delivered in between were
    dropped and their callers waited out their timeout (the soak test lost 3-4 calls per run at
    instance restarts). A slow link from the instance to Redis (50 ms) makes the window wide."""
    proxy.upstream_delay = 0.05
    inst = make_instance(proxy.url, CollectorRegistry())
    await inst.start()
    async with RawPeer(private_redis.url, NS) as peer:
        stopping = asyncio.create_task(inst.stop())
        delivered = 0
        while not stopping.done():
            delivered += await peer.publish(inst.channel, peer.envelope(SVC, "echo", rid="a"))
            await asyncio.sleep(0.002)
        replies = []
        while (reply := await peer.next_reply(timeout=0.5)) is not None:
            replies.append(reply)
    assert delivered > 10  # the window was there
    assert len(replies) == delivered
    assert {r["s"] for r in replies} == {"not_owner"}
