"""Placement: a call for a resource nobody owns activates it on a volunteer (in-process instances)."""

from __future__ import annotations

import asyncio
import time
from collections import Counter
from typing import Any

import httpx
import pytest
from prometheus_client import CollectorRegistry

from resource_router import (
    InvalidRequestError,
    ResourceLimitExceededError,
    ResourceNotFoundError,
    ResourceRegistry,
    RouteRequest,
    ServiceClient,
    ServiceInstance,
)
from resource_router.ownership.volunteers import Volunteer
from resource_router.placement.strategies import rank, rendezvous_score, service_strategy
from tests.support.metrics import sample

SVC = "rooms"


@pytest.fixture
def make(backend_url: str, namespace: str, metrics_registry: CollectorRegistry) -> Any:
    def factory(instance_id: str, *, activations: list[tuple[str, str]] | None = None, **kw: Any) -> ServiceInstance:
        kw.setdefault("ttl", 30.0)
        inst = ServiceInstance(
            backend_url, SVC, instance_id, namespace=namespace, metrics_registry=metrics_registry, **kw
        )

        @inst.handler("whoami")
        async def whoami(request: RouteRequest) -> dict[str, Any]:
            return {"iid": inst.instance_id, "token": request.fencing_token, "rid": request.resource_id}

        if activations is not None:
            inst.on_activate(lambda rid: activations.append((inst.instance_id, rid)))
        return inst

    return factory


# -- strategies on their own -------------------------------------------------------------------------
def test_rendezvous_ranking_is_stable_and_moves_little() -> None:
    three = [Volunteer(i) for i in ("a", "b", "c")]
    four = [*three, Volunteer("d")]
    ids = [f"r{i}" for i in range(2000)]
    before = {rid: rank("hash", rid, three)[0].instance_id for rid in ids}
    after = {rid: rank("hash", rid, four)[0].instance_id for rid in ids}
    moved = [rid for rid in ids if before[rid] != after[rid]]
    assert all(after[rid] == "d" for rid in moved)  # only what the newcomer wins moves
    assert 350 < len(moved) < 650  # about a quarter
    assert rank("hash", "r1", list(reversed(three))) == rank("hash", "r1", three)
    assert rendezvous_score("r1", "a") == rendezvous_score("r1", "a")


def test_least_loaded_and_full_volunteers() -> None:
    vols = [
        Volunteer("a", "least_loaded", 10, 9),
        Volunteer("b", "least_loaded", 10, 2),
        Volunteer("c", limit=3, owned=3),
    ]
    order = [v.instance_id for v in rank("least_loaded", "x", vols)]
    assert order == ["b", "a", "c"]  # c is full: last
    assert service_strategy(vols) == "least_loaded"
    assert service_strategy([]) == "hash"
    assert sorted(v.instance_id for v in rank("random", "x", vols)[:2]) == ["a", "b"]


def test_the_placement_arguments_are_checked(backend_url: str) -> None:
    with pytest.raises(InvalidRequestError) as info:
        ServiceInstance(backend_url, SVC, "a", accept_placement=True, placement="round_robin")
    assert info.value.field == "placement"
    with pytest.raises(InvalidRequestError):
        ServiceInstance(backend_url, SVC, "a", idle_timeout=-1)


# -- activation on the first call --------------------------------------------------------------------
async def test_the_first_call_activates_the_resource_on_the_hash_choice(
    make: Any, client: ServiceClient, backend_url: str, namespace: str
) -> None:
    activations: list[tuple[str, str]] = []
    async with (
        make("a", accept_placement=True, activations=activations),
        make("b", accept_placement=True, activations=activations),
        make("c", activations=activations),  # not a volunteer: never chosen
    ):
        rids = [f"room-{i}" for i in range(30)]
        results = [await client.call(SVC, "whoami", resource_id=rid) for rid in rids]
        again = [await client.call(SVC, "whoami", resource_id=rid) for rid in rids]
        registry = ResourceRegistry(backend_url, namespace=namespace)
        try:
            owners = {r.resource_id: r for r in await registry.list_resources(SVC)}
        finally:
            await registry.aclose()
    expected = {rid: rank("hash", rid, [Volunteer("a"), Volunteer("b")])[0].instance_id for rid in rids}
    assert {r["rid"]: r["iid"] for r in results} == expected
    assert again == results  # served by the same owner, same token
    assert {rid: o.owner_instance_id for rid, o in owners.items()} == expected
    assert {r["rid"]: r["token"] for r in results} == {rid: o.fencing_token for rid, o in owners.items()}
    assert sorted(activations) == sorted((iid, rid) for rid, iid in expected.items())  # once each
    assert set(expected.values()) == {"a", "b"}


async def test_without_volunteers_an_unowned_resource_is_still_404(make: Any, client: ServiceClient) -> None:
    async with make("a"):
        with pytest.raises(ResourceNotFoundError) as info:
            await client.call(SVC, "whoami", resource_id="room-1")
    assert info.value.code == 404


async def test_least_loaded_fills_the_emptier_volunteer_first(make: Any, client: ServiceClient) -> None:
    async with (
        make("a", accept_placement=True, placement="least_loaded") as a,
        make("b", accept_placement=True, placement="least_loaded") as b,
    ):
        await a.register_resource([f"pinned-{i}" for i in range(6)])
        for i in range(10):
            await client.call(SVC, "whoami", resource_id=f"room-{i}")
        assert (len(a.owned_resources), len(b.owned_resources)) == (8, 8)


async def test_random_placement_spreads_over_volunteers(make: Any, client: ServiceClient) -> None:
    async with (
        make("a", accept_placement=True, placement="random"),
        make("b", accept_placement=True, placement="random"),
    ):
        served = Counter([(await client.call(SVC, "whoami", resource_id=f"r{i}"))["iid"] for i in range(40)])
    assert set(served) == {"a", "b"}
    assert sum(served.values()) == 40


async def test_a_full_volunteer_is_skipped_and_all_full_is_429(
    make: Any, client: ServiceClient, metrics_registry: CollectorRegistry
) -> None:
    async with (
        make("a", accept_placement=True, max_resources_per_instance=2) as a,
        make("b", accept_placement=True, max_resources_per_instance=3) as b,
    ):
        served = [(await client.call(SVC, "whoami", resource_id=f"r{i}"))["iid"] for i in range(5)]
        assert Counter(served) == {"a": 2, "b": 3}
        with pytest.raises(ResourceLimitExceededError) as info:
            await client.call(SVC, "whoami", resource_id="r-one-too-many")
        assert info.value.code == 429
        assert len(a.owned_resources) + len(b.owned_resources) == 5
        assert sample(metrics_registry, "ipc_placement_activations_total", service_name=SVC, outcome="activated") == 5


async def test_concurrent_first_calls_activate_exactly_once(
    make: Any, backend_url: str, namespace: str, metrics_registry: CollectorRegistry
) -> None:
    """Many callers, volunteers chosen at random (so the volunteers race too): one owner, one activation."""
    activations: list[tuple[str, str]] = []
    clients = [ServiceClient(backend_url, namespace=namespace, metrics_registry=metrics_registry) for _ in range(4)]
    async with (
        make("a", accept_placement=True, placement="random", activations=activations),
        make("b", accept_placement=True, placement="random", activations=activations),
        make("c", accept_placement=True, placement="random", activations=activations),
    ):
        try:
            calls = [c.call(SVC, "whoami", resource_id="the-room") for c in clients for _ in range(25)]
            results = await asyncio.gather(*calls)
        finally:
            for c in clients:
                await c.aclose()
    owners = {(r["iid"], r["token"]) for r in results}
    assert len(results) == 100
    assert len(owners) == 1
    ((owner, _token),) = owners
    assert activations == [(owner, "the-room")]
    assert sample(metrics_registry, "ipc_placement_activations_total", service_name=SVC, outcome="activated") == 1


async def test_a_volunteer_that_stops_leaves_the_volunteers(
    make: Any, client: ServiceClient, backend_url: str, namespace: str
) -> None:
    registry = ResourceRegistry(backend_url, namespace=namespace)
    try:
        async with make("a", accept_placement=True), make("b", accept_placement=True) as b:
            assert [v.instance_id for v in await registry.list_volunteers(SVC)] == ["a", "b"]
            await b.stop()
            assert [v.instance_id for v in await registry.list_volunteers(SVC)] == ["a"]
            for i in range(10):
                assert (await client.call(SVC, "whoami", resource_id=f"r{i}"))["iid"] == "a"
        assert await registry.list_volunteers(SVC) == []
    finally:
        await registry.aclose()


async def test_an_aborted_volunteer_is_skipped_until_its_lease_ends(make: Any, client: ServiceClient) -> None:
    async with make("a", accept_placement=True, ttl=1.0), make("b", accept_placement=True, ttl=1.0) as b:
        await b.abort()  # still listed (its lease runs), but silent
        started = time.perf_counter()
        served = {(await client.call(SVC, "whoami", resource_id=f"r{i}"))["iid"] for i in range(10)}
        assert served == {"a"}
        assert time.perf_counter() - started < 2.0


async def test_listed_volunteers_that_cannot_take_it_are_a_503(make: Any, client: ServiceClient) -> None:
    from resource_router import ServiceUnavailableError

    async with make("a", accept_placement=True, ttl=5.0) as a:
        await a.abort()  # listed until its lease ends, but nobody listens
        with pytest.raises(ServiceUnavailableError) as info:
            await client.call(SVC, "whoami", resource_id="room-1")
    assert info.value.code == 503


async def test_wait_for_owner_waits_for_a_volunteer_to_appear(make: Any, client: ServiceClient) -> None:
    async def late_volunteer() -> ServiceInstance:
        await asyncio.sleep(0.3)
        inst = make("late", accept_placement=True)
        await inst.start()
        return inst

    starter = asyncio.create_task(late_volunteer())
    started = time.perf_counter()
    result = await client.call(SVC, "whoami", resource_id="room-1", timeout=5.0, wait_for_owner=True)
    late = await starter
    try:
        assert result["iid"] == "late"
        assert 0.3 <= time.perf_counter() - started < 2.0
    finally:
        await late.stop()


async def test_wait_for_owner_gives_up_at_the_timeout_with_the_last_error(client: ServiceClient) -> None:
    started = time.perf_counter()
    with pytest.raises(ResourceNotFoundError):
        await client.call(SVC, "whoami", resource_id="room-1", timeout=0.5, wait_for_owner=True)
    assert 0.3 <= time.perf_counter() - started < 1.0


# -- through a router replica (POST /v1/route) -------------------------------------------------------
async def _hammer(http: httpx.AsyncClient, rids: list[str], rounds: int) -> list[int]:
    codes = []
    for _ in range(rounds):
        for rid in rids:
            body = {"service_name": SVC, "resource_id": rid, "method": "whoami"}
            codes.append((await http.post("/v1/route", json=body)).status_code)
    return codes


async def test_a_replica_activates_and_follows_a_drain(
    redis_url: str, namespace: str, metrics_registry: CollectorRegistry
) -> None:
    from tests.support.gateway import open_gateway

    def volunteer(iid: str) -> ServiceInstance:
        inst = ServiceInstance(
            redis_url, SVC, iid, namespace=namespace, metrics_registry=metrics_registry, accept_placement=True
        )
        inst.add_handler("whoami", lambda request: {"iid": iid})
        return inst

    async for gw in open_gateway(redis_url, namespace, metrics_registry):
        async with volunteer("a") as a, volunteer("b"):
            rids = [f"room-{i}" for i in range(20)]
            first = {}
            for rid in rids:
                r = await gw.http.post("/v1/route", json={"service_name": SVC, "resource_id": rid, "method": "whoami"})
                assert r.status_code == 200, r.text
                first[rid] = r.json()["instance_id"]
            owner = await gw.http.get(f"/v1/resources/{SVC}/{rids[0]}")
            assert owner.json()["owner_instance_id"] == first[rids[0]]
            assert set(first.values()) == {"a", "b"}
            load = asyncio.create_task(_hammer(gw.http, rids, 5))
            report = await a.drain(timeout=5.0)
            codes = await load
            assert set(codes) == {200}
            assert set(report.moved.values()) == {"b"}
            body = {"service_name": SVC, "resource_id": rids[0], "method": "whoami"}
            assert (await gw.http.post("/v1/route", json=body)).json()["instance_id"] == "b"


# -- the registry's volunteer records ----------------------------------------------------------------
async def test_volunteer_records_events_and_cleanup(
    backend_url: str, namespace: str, metrics_registry: CollectorRegistry
) -> None:
    from resource_router.ownership.events import parse_event
    from resource_router.transport.connection import connect
    from resource_router.transport.hub import PubSubHub

    registry = ResourceRegistry(backend_url, namespace=namespace, metrics_registry=metrics_registry)
    redis = connect(backend_url)
    sk = registry.keys.service(SVC)
    heard: list[bytes] = []
    hub = await PubSubHub.acquire(redis)
    try:
        await hub.subscribe(sk.members_channel, heard.append)
        await registry.register_instance(SVC, "v1", ttl=30)
        await registry.register_instance(SVC, "v2", ttl=0.2)
        assert await registry.add_volunteer(SVC, "v1", placement="hash", limit=10) is True
        assert await registry.add_volunteer(SVC, "v1", placement="hash", limit=10) is False  # idempotent
        assert await registry.add_volunteer(SVC, "v2", placement="random", limit=5) is True
        assert await registry.add_volunteer(SVC, "ghost", placement="hash", limit=5) is True  # no instance
        await registry.register_resource(SVC, "v1", ["r1", "r2"])
        listed = await registry.list_volunteers(SVC)
        assert [(v.instance_id, v.placement, v.limit, v.owned) for v in listed] == [
            ("v1", "hash", 10, 2),
            ("v2", "random", 5, 0),
        ]
        assert sorted(await redis.hkeys(sk.volunteers)) == [b"v1", b"v2"]  # the ghost's record was removed
        await asyncio.sleep(0.3)  # v2's lease runs out: not listed (its record stays until it is swept)
        assert [v.instance_id for v in await registry.list_volunteers(SVC)] == ["v1"]
        assert await registry.remove_volunteer(SVC, "v1") is True
        assert await registry.remove_volunteer(SVC, "v1") is False
        await asyncio.sleep(0.1)
        events = [(e.type, e.instance_id) for e in map(parse_event, heard) if e.type.startswith("Volunteer")]
        assert events == [
            ("VolunteerJoined", "v1"),
            ("VolunteerJoined", "v2"),
            ("VolunteerJoined", "ghost"),
            ("VolunteerLeft", "v1"),
        ]
    finally:
        await hub.unsubscribe(sk.members_channel, heard.append)
        await hub.release()
        await redis.aclose()
        await registry.aclose()


async def test_concurrent_activations_beyond_the_limit_take_what_fits(make: Any, client: ServiceClient) -> None:
    async with make("a", accept_placement=True, max_resources_per_instance=3) as a:
        await a.register_resource(["pinned"])
        results = await asyncio.gather(
            *(client.call(SVC, "whoami", resource_id=f"r{i}") for i in range(5)), return_exceptions=True
        )
    served = [r for r in results if isinstance(r, dict)]
    refused = [r for r in results if isinstance(r, ResourceLimitExceededError)]
    assert (len(served), len(refused)) == (2, 3)  # one registration took the 2 that fit


async def test_a_claim_that_cannot_reach_redis_fails_the_call_with_503(
    make: Any, client: ServiceClient, monkeypatch: pytest.MonkeyPatch
) -> None:
    from resource_router import RedisUnavailableError

    async with make("a", accept_placement=True) as a:

        async def unreachable(*args: Any, **kwargs: Any) -> Any:
            raise RedisUnavailableError("Redis is unreachable during register_resource", operation="register_resource")

        monkeypatch.setattr(a.registry, "register_resource", unreachable)
        with pytest.raises(RedisUnavailableError) as info:
            await client.call(SVC, "whoami", resource_id="room-1")
        assert info.value.code == 503
        assert a.owned_resources == frozenset()
