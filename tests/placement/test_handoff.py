"""Drain, rebalance and idle release: resources handed between volunteers (in-process instances)."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator
from typing import Any

import pytest
from prometheus_client import CollectorRegistry

from resource_router import ResourceNotFoundError, ResourceRegistry, RouteRequest, ServiceClient, ServiceInstance
from resource_router.ownership.volunteers import Volunteer
from resource_router.placement.strategies import rank
from tests.support.metrics import sample
from tests.support.waiting import wait_for

SVC = "rooms"


@pytest.fixture
def journal() -> list[tuple[str, ...]]:
    return []


@pytest.fixture
def make(backend_url: str, namespace: str, metrics_registry: CollectorRegistry, journal: list[tuple[str, ...]]) -> Any:
    def factory(instance_id: str, **kw: Any) -> ServiceInstance:
        kw.setdefault("ttl", 30.0)
        kw.setdefault("accept_placement", True)
        inst = ServiceInstance(
            backend_url, SVC, instance_id, namespace=namespace, metrics_registry=metrics_registry, **kw
        )

        @inst.handler("whoami")
        async def whoami(request: RouteRequest) -> dict[str, Any]:
            if isinstance(request.params, int | float):
                await asyncio.sleep(request.params)
            return {"iid": inst.instance_id, "token": request.fencing_token, "rid": request.resource_id}

        inst.on_activate(lambda rid: journal.append(("activate", inst.instance_id, rid)))
        inst.on_deactivate(lambda rid, reason: journal.append(("deactivate", inst.instance_id, rid, reason)))
        return inst

    return factory


@pytest.fixture
async def registry(backend_url: str, namespace: str) -> AsyncIterator[ResourceRegistry]:
    reg = ResourceRegistry(backend_url, namespace=namespace)
    try:
        yield reg
    finally:
        await reg.aclose()


def hash_choice(rid: str, *volunteers: str) -> str:
    return rank("hash", rid, [Volunteer(v) for v in volunteers])[0].instance_id


# -- drain -----------------------------------------------------------------------------------------
async def test_drain_hands_every_resource_to_the_strategy_choice(
    make: Any, client: ServiceClient, registry: ResourceRegistry, journal: list[tuple[str, ...]]
) -> None:
    async with make("a") as a, make("b") as b, make("c") as c:
        rids = [f"room-{i}" for i in range(40)]
        first = {rid: await client.call(SVC, "whoami", resource_id=rid) for rid in rids}
        await a.register_resource(["pinned"])  # explicit registrations move too
        mine = sorted([rid for rid in rids if first[rid]["iid"] == "a"] + ["pinned"])
        report = await a.drain(timeout=5.0)
        assert sorted(report.moved) == mine
        assert report.released == [] and report.kept == []
        assert a.owned_resources == frozenset()
        assert not a.accepting_placement
        assert [v.instance_id for v in await registry.list_volunteers(SVC)] == ["b", "c"]
        for rid in mine:
            assert report.moved[rid] == hash_choice(rid, "b", "c")
        owners = {r.resource_id: r for r in await registry.list_resources(SVC)}
        after = {rid: await client.call(SVC, "whoami", resource_id=rid) for rid in rids}
        await wait_for(lambda: {"b", "c"} >= {iid for iid in (r["iid"] for r in after.values())})
        for rid in rids:
            assert after[rid]["iid"] == owners[rid].owner_instance_id
            if rid in mine:
                assert after[rid]["iid"] == report.moved[rid]
                assert after[rid]["token"] > first[rid]["token"]  # a new grant, a larger fencing token
            else:
                assert after[rid] == first[rid]
        # Hooks: A deactivated what it had activated (reason drained); the new owner activated it
        # before serving it.
        drained = sorted(e[2] for e in journal if e[0] == "deactivate" and e[1] == "a")
        assert drained == sorted(rid for rid in mine if rid != "pinned")
        assert {e[3] for e in journal if e[0] == "deactivate" and e[1] == "a"} == {"drained"}
        for rid in mine:
            if rid == "pinned":
                continue
            new_owner = report.moved[rid]
            assert journal.index(("deactivate", "a", rid, "drained")) < journal.index(("activate", new_owner, rid))
        assert len(b.owned_resources) + len(c.owned_resources) == 41


async def test_a_drain_carries_each_resources_metadata_to_its_new_owner(make: Any, registry: ResourceRegistry) -> None:
    async with make("a") as a, make("b", max_resources_per_instance=3), make("c"):
        await a.register_resource(["blue-1", "blue-2"], metadata={"colour": "blue", "n": [1, 2]})
        await a.register_resource(["red-1"], metadata={"colour": "red"})
        await a.register_resource(["plain-1", "plain-2", "plain-3"])  # no metadata
        before = {r.resource_id: r for r in await registry.list_resources(SVC, "a")}
        report = await a.drain(timeout=5.0)
        assert sorted(report.moved) == sorted(before)
        after = {r.resource_id: r for r in await registry.list_resources(SVC)}
        for rid, old in before.items():
            assert after[rid].owner_instance_id == report.moved[rid] != "a"
            assert after[rid].metadata == old.metadata, rid
            assert after[rid].fencing_token > old.fencing_token
        assert after["blue-1"].metadata == {"colour": "blue", "n": [1, 2]}
        assert after["plain-1"].metadata == {}


async def test_calls_made_during_a_drain_do_not_fail(make: Any, client: ServiceClient) -> None:
    async with make("a") as a, make("b"):
        rids = [f"room-{i}" for i in range(20)]
        for rid in rids:
            await a.register_resource([rid])
        stop = asyncio.Event()
        served: list[str] = []
        failures: list[BaseException] = []

        async def caller(rid: str) -> None:
            while not stop.is_set():
                try:
                    served.append((await client.call(SVC, "whoami", 0.01, resource_id=rid))["iid"])
                except Exception as exc:
                    failures.append(exc)

        callers = [asyncio.create_task(caller(rid)) for rid in rids for _ in range(2)]
        await wait_for(lambda: "a" in served)  # a loaded machine may need more than a moment for the first
        await asyncio.sleep(0.3)
        report = await a.drain(timeout=5.0)
        await asyncio.sleep(0.3)
        stop.set()
        await asyncio.gather(*callers)
    assert failures == []
    assert report.moved_count == 20
    assert set(report.moved.values()) == {"b"}
    assert served[-1] == "b"


def moves(reg: CollectorRegistry, reason: str, result: str) -> float:
    return sample(reg, "ipc_resource_moves_total", service_name=SVC, reason=reason, result=result)


async def test_drain_without_other_volunteers_releases(
    make: Any, client: ServiceClient, metrics_registry: CollectorRegistry
) -> None:
    async with make("a") as a, make("plain", accept_placement=False):
        await client.call(SVC, "whoami", resource_id="room-1")
        report = await a.drain(timeout=2.0)
        assert report.released == ["room-1"]
        assert (moves(metrics_registry, "drained", "released"), moves(metrics_registry, "drained", "moved")) == (1, 0)
        with pytest.raises(ResourceNotFoundError):  # no volunteer left to activate it on
            await client.call(SVC, "whoami", resource_id="room-1")


async def test_drain_skips_a_full_volunteer(
    make: Any, client: ServiceClient, metrics_registry: CollectorRegistry
) -> None:
    async with make("a") as a, make("b", max_resources_per_instance=2) as b, make("c") as c:
        rids = [f"r{i}" for i in range(10)]
        assert sum(hash_choice(rid, "b", "c") == "b" for rid in rids) == 5  # more than b can take
        await a.register_resource(rids)
        report = await a.drain(timeout=5.0)
        assert report.moved_count == 10
        assert sum(1 for owner in report.moved.values() if owner == "b") == 2
        await wait_for(lambda: len(b.owned_resources) + len(c.owned_resources) == 10)  # adopted from the event
        assert len(b.owned_resources) == 2
        assert (moves(metrics_registry, "drained", "moved"), moves(metrics_registry, "drained", "released")) == (10, 0)


# -- rebalance ---------------------------------------------------------------------------------------
async def test_a_joining_volunteer_gets_exactly_what_now_hashes_to_it(
    make: Any, client: ServiceClient, registry: ResourceRegistry
) -> None:
    rids = [f"room-{i}" for i in range(60)]
    async with make("a", rebalance=True), make("b", rebalance=True):
        before = {rid: await client.call(SVC, "whoami", resource_id=rid) for rid in rids}
        assert {r["iid"] for r in before.values()} == {"a", "b"}
        expected = {rid: hash_choice(rid, "a", "b", "c") for rid in rids}
        async with make("c", rebalance=True):

            async def placed() -> dict[str, str]:
                return {r.resource_id: r.owner_instance_id for r in await registry.list_resources(SVC)}

            end = time.monotonic() + 10.0
            while (now := await placed()) != expected:
                assert time.monotonic() < end, f"not rebalanced: {sum(now.get(r) != expected[r] for r in rids)} off"
                await asyncio.sleep(0.05)
            after = {rid: await client.call(SVC, "whoami", resource_id=rid) for rid in rids}
    for rid in rids:
        if expected[rid] == "c":
            assert before[rid]["iid"] != "c"
            assert after[rid]["iid"] == "c"
            assert after[rid]["token"] > before[rid]["token"]
        else:
            assert after[rid] == before[rid]  # nothing else moved


async def test_rebalance_is_opt_in(make: Any, client: ServiceClient) -> None:
    async with make("a") as a, make("b") as b:
        for i in range(20):
            await client.call(SVC, "whoami", resource_id=f"r{i}")
        async with make("c", rebalance=True) as c:
            await asyncio.sleep(0.5)
            assert c.owned_resources == frozenset()
            assert len(a.owned_resources) + len(b.owned_resources) == 20


async def test_least_loaded_rebalance_moves_the_surplus(make: Any, client: ServiceClient) -> None:
    async with make("a", placement="least_loaded", rebalance=True) as a:
        for i in range(30):
            await client.call(SVC, "whoami", resource_id=f"r{i}")
        async with make("b", placement="least_loaded", rebalance=True) as b:
            await wait_for(lambda: len(b.owned_resources) == 15)
            await asyncio.sleep(0.3)
            assert (len(a.owned_resources), len(b.owned_resources)) == (15, 15)


# -- idle --------------------------------------------------------------------------------------------
async def test_placed_resources_not_called_for_idle_timeout_are_released(
    make: Any, client: ServiceClient, journal: list[tuple[str, ...]]
) -> None:
    async with make("a", idle_timeout=0.3) as a:
        await a.register_resource(["pinned"])
        await client.call(SVC, "whoami", resource_id="busy")
        await client.call(SVC, "whoami", resource_id="quiet")
        await client.call(SVC, "whoami", resource_id="pinned")
        for _ in range(10):
            await client.call(SVC, "whoami", resource_id="busy")
            await asyncio.sleep(0.08)
        assert a.owned_resources == {"busy", "pinned"}
        assert ("deactivate", "a", "quiet", "idle") in journal
        # Called again, it is simply activated again (on_activate runs again).
        assert (await client.call(SVC, "whoami", resource_id="quiet"))["iid"] == "a"
    assert journal.count(("activate", "a", "quiet")) == 2


# -- moves that meet failures ------------------------------------------------------------------------
async def test_a_drain_follows_ids_taken_meanwhile_and_survives_a_failed_handover(
    make: Any, registry: ResourceRegistry, monkeypatch: pytest.MonkeyPatch
) -> None:
    from resource_router import RedisUnavailableError, ResourceReleaseError

    async with make("a") as a, make("b") as b:
        await a.register_resource(["x", "y", "z"])
        real_release = a.registry.release_resource
        calls = 0

        async def taken_once(service: str, iid: str, ids: list[str], **kw: Any) -> Any:
            nonlocal calls
            calls += 1
            if calls == 1:  # x was taken by force in the meantime: nothing released, owners named
                raise ResourceReleaseError("x is elsewhere", owners={"x": "thief"})
            return await real_release(service, iid, ids, **kw)

        monkeypatch.setattr(a.registry, "release_resource", taken_once)
        handed = 0
        real_register = ResourceRegistry.register_resource

        async def first_handover_fails(self: ResourceRegistry, *args: Any, **kw: Any) -> Any:
            nonlocal handed
            handed += 1
            if handed == 1:
                raise RedisUnavailableError("Redis is unreachable", operation="register_resource")
            return await real_register(self, *args, **kw)

        monkeypatch.setattr(ResourceRegistry, "register_resource", first_handover_fails)
        report = await a.drain(timeout=2.0)
        assert report.moved == {"x": "thief"}  # redirect hint for callers of x
        assert sorted(report.released) == ["y", "z"]  # released; the next call activates them on b
        assert a.owned_resources == frozenset()
        assert b.owned_resources == frozenset()


async def test_a_drain_whose_release_fails_keeps_serving(make: Any, monkeypatch: pytest.MonkeyPatch) -> None:
    from resource_router import RedisUnavailableError

    async with make("a") as a, make("b"):
        await a.register_resource(["x"])

        async def unreachable(*args: Any, **kwargs: Any) -> Any:
            raise RedisUnavailableError("Redis is unreachable", operation="release_resource")

        monkeypatch.setattr(a.registry, "release_resource", unreachable)
        report = await a.drain(timeout=1.0)
        assert report.kept == ["x"]
        assert a.owned_resources == {"x"}  # still served; re-read at the next heartbeat
