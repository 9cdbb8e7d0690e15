"""Lifecycle hooks and one request at a time per resource, on a running instance."""

from __future__ import annotations

import asyncio
import random
import time
from collections import defaultdict
from typing import Any

import pytest
from prometheus_client import CollectorRegistry

from resource_router import RemoteHandlerError, ResourceNotFoundError, RouteRequest, ServiceClient, ServiceInstance
from resource_router.transport.connection import connect
from tests.procs.peer import RawPeer
from tests.support.waiting import wait_for

SVC = "rooms"


@pytest.fixture
def make(backend_url: str, namespace: str, metrics_registry: CollectorRegistry) -> Any:
    def factory(instance_id: str, **kw: Any) -> ServiceInstance:
        kw.setdefault("ttl", 30.0)
        return ServiceInstance(
            backend_url, SVC, instance_id, namespace=namespace, metrics_registry=metrics_registry, **kw
        )

    return factory


# -- hooks -----------------------------------------------------------------------------------------
async def test_on_activate_runs_once_before_the_first_request(make: Any, client: ServiceClient) -> None:
    loaded: dict[str, int] = {}
    activations: list[str] = []
    async with make("a") as a:

        @a.on_activate
        async def load(rid: str) -> None:
            activations.append(rid)
            await asyncio.sleep(0.05)  # e.g. reading the room's state from a database
            loaded[rid] = 0

        @a.handler("bump")
        async def bump(request: RouteRequest) -> int:
            assert request.resource_id is not None
            loaded[request.resource_id] += 1  # KeyError if it ran before on_activate finished
            return loaded[request.resource_id]

        await a.register_resource(["r1", "r2", "never-called"])
        results = await asyncio.gather(*(client.call(SVC, "bump", resource_id="r1") for _ in range(20)))
        await client.call(SVC, "bump", resource_id="r2")
    assert sorted(results) == list(range(1, 21))
    assert sorted(activations) == ["r1", "r2"]


async def test_a_failing_on_activate_fails_the_call_and_releases_the_resource(make: Any, client: ServiceClient) -> None:
    deactivated: list[tuple[str, str]] = []
    async with make("a") as a:

        @a.on_activate
        def load(rid: str) -> None:
            raise ConnectionError(f"no state for {rid}")

        a.on_deactivate(lambda rid, reason: deactivated.append((rid, reason)))
        a.add_handler("get", lambda request: "ran")
        await a.register_resource(["r1"])
        with pytest.raises(RemoteHandlerError) as info:
            await client.call(SVC, "get", resource_id="r1")
        assert info.value.code == 500
        assert info.value.remote_type == "ConnectionError"
        assert "no state for r1" in info.value.message
        assert "r1" not in a.owned_resources
        end = time.monotonic() + 3.0
        while (await a.registry.get_owner_id(SVC, "r1")) is not None:  # the release is on its way
            assert time.monotonic() < end, "the resource was not released"
            await asyncio.sleep(0.01)
        with pytest.raises(ResourceNotFoundError):
            await a.registry.get_resource_owner(SVC, "r1")
    assert deactivated == []  # never activated, never deactivated


async def test_on_deactivate_says_why_each_activated_resource_left(
    make: Any, client: ServiceClient, backend_url: str
) -> None:
    seen: list[tuple[str, str]] = []
    a = make("a")

    @a.on_deactivate
    async def save(rid: str, reason: str) -> None:
        seen.append((rid, reason))

    a.add_handler("get", lambda request: request.resource_id)
    redis = connect(backend_url)
    try:
        async with a, make("b") as b:
            await a.register_resource(["released", "taken", "expired", "never-called"])
            for rid in ("released", "taken", "expired"):
                assert await client.call(SVC, "get", resource_id=rid) == rid
            await a.release_resource(["released"])
            await b.register_resource(["taken"], force=True)
            await wait_for(lambda: ("taken", "taken") in seen)
            await redis.delete(a.registry.keys.service(SVC).instance("a"))  # its lease ran out in Redis
            await a.heartbeat()  # registers again, empty-handed
            await wait_for(lambda: ("expired", "expired") in seen)
            await a.register_resource(["stopped"])
            assert await client.call(SVC, "get", resource_id="stopped") == "stopped"
    finally:
        await redis.aclose()
    # The never-called resource was never activated: no on_deactivate for it.
    assert sorted(seen) == sorted(
        [("released", "released"), ("taken", "taken"), ("expired", "expired"), ("stopped", "stopped")]
    )


async def test_release_waits_for_running_requests_before_on_deactivate(make: Any, client: ServiceClient) -> None:
    events: list[str] = []
    async with make("a") as a:

        @a.handler("slow")
        async def slow(request: RouteRequest) -> str:
            events.append("handler start")
            await asyncio.sleep(0.2)
            events.append("handler end")
            return "done"

        a.on_deactivate(lambda rid, reason: events.append(f"deactivate {reason}"))
        await a.register_resource(["r"])
        call = asyncio.create_task(client.call(SVC, "slow", resource_id="r"))
        await wait_for(lambda: events == ["handler start"])
        await a.release_resource(["r"])
        events.append("released")
        assert await call == "done"
    assert events == ["handler start", "handler end", "deactivate released", "released"]


async def test_a_handler_may_release_its_own_resource(make: Any, client: ServiceClient) -> None:
    async with make("a", drain_timeout=5.0) as a:

        @a.handler("close")
        async def close(request: RouteRequest) -> str:
            assert request.resource_id is not None
            await a.release_resource([request.resource_id])
            return "closed"

        await a.register_resource(["game-1"])
        started = time.perf_counter()
        assert await client.call(SVC, "close", resource_id="game-1") == "closed"
        assert time.perf_counter() - started < 1.0  # the release did not wait for its own handler
        assert a.owned_resources == frozenset()


# -- one request at a time per resource --------------------------------------------------------------
async def test_serial_per_resource_runs_requests_in_arrival_order(make: Any, peer: RawPeer) -> None:
    per_resource = 40
    running: dict[str, int] = defaultdict(int)
    overlap: dict[str, int] = defaultdict(int)
    order: dict[str, list[int]] = defaultdict(list)
    peak_total = 0
    rng = random.Random(3)
    async with make("a", serial_per_resource=True) as a:

        @a.handler("step")
        async def step(request: RouteRequest) -> int:
            nonlocal peak_total
            rid = request.resource_id
            assert rid is not None
            running[rid] += 1
            overlap[rid] = max(overlap[rid], running[rid])
            peak_total = max(peak_total, sum(running.values()))
            order[rid].append(request.params)
            await asyncio.sleep(rng.random() * 0.005)
            running[rid] -= 1
            return int(request.params)

        await a.register_resource(["r", "s", "t"])
        for i in range(per_resource):  # published in this order on one connection
            for rid in ("r", "s", "t"):
                await peer.publish(a.channel, peer.envelope(SVC, "step", rid=rid, p=i))
        statuses = []
        for _ in range(3 * per_resource):
            reply = await peer.next_reply(timeout=5.0)
            assert reply is not None
            statuses.append(reply["s"])
    assert statuses == ["ok"] * 3 * per_resource
    assert order == {rid: list(range(per_resource)) for rid in ("r", "s", "t")}
    assert overlap == {"r": 1, "s": 1, "t": 1}  # never two handlers of one resource at once
    assert peak_total > 1  # different resources still ran concurrently


async def test_without_serial_requests_of_one_resource_overlap(make: Any, client: ServiceClient) -> None:
    running = peak = 0
    async with make("a") as a:

        @a.handler("step")
        async def step(request: RouteRequest) -> None:
            nonlocal running, peak
            running += 1
            peak = max(peak, running)
            await asyncio.sleep(0.02)
            running -= 1

        await a.register_resource(["r"])
        await asyncio.gather(*(client.call(SVC, "step", resource_id="r") for _ in range(10)))
    assert peak > 1
