"""ResourceRegistry behaviour, on a real Redis and on the embedded memory:// backend."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest
from prometheus_client import CollectorRegistry, generate_latest

from resource_router import (
    InstanceNotAliveError,
    ResourceConflictError,
    ResourceLimitExceededError,
    ResourceNotFoundError,
    ResourceRegistry,
    ResourceReleaseError,
)
from resource_router.transport.hub import PubSubHub
from tests.support.logs import capture_logs

SVC = "user-service"


async def owners(reg: ResourceRegistry, ids: list[str]) -> dict[str, str | None]:
    return {rid: await reg.get_owner_id(SVC, rid) for rid in ids}


# -- instances -----------------------------------------------------------------------------------


async def test_register_instance_and_list(registry: ResourceRegistry) -> None:
    info = await registry.register_instance(SVC, "i1", ttl=5, metadata={"zone": "a"})
    assert (info.service_name, info.instance_id, info.ttl, info.metadata) == (SVC, "i1", 5.0, {"zone": "a"})
    await registry.register_instance(SVC, "i2", ttl=7)
    listed = await registry.list_instances(SVC)
    assert [(i.instance_id, i.ttl, i.metadata, i.resource_count) for i in listed] == [
        ("i1", 5.0, {"zone": "a"}, 0),
        ("i2", 7.0, {}, 0),
    ]
    assert await registry.live_instance_ids(SVC) == ["i1", "i2"]
    assert await registry.list_services() == [SVC]


async def test_reregistering_a_live_instance_keeps_registered_at(registry: ResourceRegistry) -> None:
    first = await registry.register_instance(SVC, "i1", ttl=5)
    await registry.register_resource(SVC, "i1", ["a"])
    await asyncio.sleep(0.01)
    again = await registry.register_instance(SVC, "i1", ttl=5)
    assert again.registered_at == first.registered_at
    assert again.last_heartbeat > first.last_heartbeat
    assert (await registry.get_resource_owner(SVC, "a")).owner_instance_id == "i1"


async def test_deregister_releases_everything(registry: ResourceRegistry) -> None:
    await registry.register_instance(SVC, "i1", ttl=5)
    await registry.register_resource(SVC, "i1", ["a", "b", "c"])
    released = await registry.deregister_instance(SVC, "i1")
    assert sorted(released) == ["a", "b", "c"]
    assert await owners(registry, ["a", "b", "c"]) == {"a": None, "b": None, "c": None}
    assert await registry.list_instances(SVC) == []
    with pytest.raises(InstanceNotAliveError):
        await registry.register_resource(SVC, "i1", ["a"])
    # idempotent
    assert await registry.deregister_instance(SVC, "i1") == []


# -- registration --------------------------------------------------------------------------------


async def test_register_free_owned_and_conflicting_ids(registry: ResourceRegistry) -> None:
    await registry.register_instance(SVC, "i1", ttl=5)
    await registry.register_instance(SVC, "i2", ttl=5)
    first = await registry.register_resource(SVC, "i1", ["a", "b"], metadata={"room": 1})
    assert first.success and first.registered == ["a", "b"] and first.conflicts == {}
    # one call's grants are ordered within a partition; "a" and "b" may live on different ones
    assert first.fencing_tokens["a"] > 0 and first.fencing_tokens["b"] > 0

    second = await registry.register_resource(SVC, "i2", ["b", "c", "a"])
    assert second.success is False
    assert second.registered == ["c"]
    assert second.conflicts == {"b": "i1", "a": "i1"}
    with pytest.raises(ResourceConflictError) as err:
        second.raise_for_conflicts()
    assert err.value.code == 409 and err.value.conflicts == {"b": "i1", "a": "i1"}

    # Re-registering what you own refreshes it and keeps the token.
    again = await registry.register_resource(SVC, "i1", ["a", "b"])
    assert again.success and again.fencing_tokens == first.fencing_tokens

    res = await registry.get_resource_owner(SVC, "a")
    assert (res.owner_instance_id, res.fencing_token, res.metadata, res.service_name) == (
        "i1",
        first.fencing_tokens["a"],
        {"room": 1},
        SVC,
    )
    assert await owners(registry, ["a", "b", "c"]) == {"a": "i1", "b": "i1", "c": "i2"}


async def test_duplicates_in_one_call_are_registered_once(registry: ResourceRegistry) -> None:
    await registry.register_instance(SVC, "i1", ttl=5)
    resp = await registry.register_resource(SVC, "i1", ["x", "y", "x", "y", "x"])
    assert resp.registered == ["x", "y"]
    assert [i.resource_count for i in await registry.list_instances(SVC)] == [2]


async def test_force_takes_over_and_previous_owner_learns_at_heartbeat(registry: ResourceRegistry) -> None:
    await registry.register_instance(SVC, "old", ttl=5)
    await registry.register_instance(SVC, "new", ttl=5)
    before = await registry.register_resource(SVC, "old", ["a", "b"])
    taken = await registry.register_resource(SVC, "new", ["a"], force=True)
    assert taken.success and taken.taken_over == {"a": "old"}
    assert taken.fencing_tokens["a"] > before.fencing_tokens["a"]
    assert await registry.get_owner_id(SVC, "a") == "new"

    hb = await registry.heartbeat(SVC, "old", ttl=5)
    assert hb.lost == ["a"] and hb.owned_count == 1
    # reported once only
    assert (await registry.heartbeat(SVC, "old", ttl=5)).lost == []
    assert [r.resource_id for r in await registry.list_resources(SVC, "old")] == ["b"]
    assert [r.resource_id for r in await registry.list_resources(SVC, "new")] == ["a"]


async def test_taking_back_a_lost_id_is_not_reported_lost(registry: ResourceRegistry) -> None:
    await registry.register_instance(SVC, "A", ttl=10)
    await registry.register_instance(SVC, "B", ttl=10)
    await registry.register_resource(SVC, "A", ["x", "y"])
    await registry.register_resource(SVC, "B", ["x", "y"], force=True)
    await registry.register_resource(SVC, "A", ["x"], force=True)  # A owns x again, not y
    assert (await registry.heartbeat(SVC, "A", ttl=10)).lost == ["y"]
    assert (await registry.heartbeat(SVC, "B", ttl=10)).lost == ["x"]
    assert [r.resource_id for r in await registry.list_resources(SVC, "A")] == ["x"]


async def test_register_requires_a_live_instance(registry: ResourceRegistry) -> None:
    with pytest.raises(InstanceNotAliveError) as err:
        await registry.register_resource(SVC, "ghost", ["a"])
    assert err.value.code == 410 and err.value.instance_id == "ghost"
    assert await registry.get_owner_id(SVC, "a") is None


async def test_limit_is_atomic_and_exact(backend_url: str, namespace: str) -> None:
    reg = ResourceRegistry(
        backend_url, namespace=namespace, max_resources_per_instance=5, metrics_registry=CollectorRegistry()
    )
    async with reg:
        await reg.register_instance(SVC, "i1", ttl=5)
        await reg.register_instance(SVC, "i2", ttl=5)
        await reg.register_resource(SVC, "i2", ["taken"])
        assert (await reg.register_resource(SVC, "i1", ["a", "b", "c"])).success
        with pytest.raises(ResourceLimitExceededError) as err:
            await reg.register_resource(SVC, "i1", ["d", "e", "f"])
        assert err.value.code == 429
        assert (err.value.limit, err.value.current, err.value.requested) == (5, 3, 3)
        assert await owners(reg, ["d", "e", "f"]) == {"d": None, "e": None, "f": None}
        # Owned and conflicting ids do not count; exactly the limit is fine.
        resp = await reg.register_resource(SVC, "i1", ["a", "b", "c", "d", "e", "taken"])
        assert resp.registered == ["a", "b", "c", "d", "e"] and resp.conflicts == {"taken": "i2"}
        with pytest.raises(ResourceLimitExceededError):
            await reg.register_resource(SVC, "i1", ["f"])
        assert [i.resource_count for i in await reg.list_instances(SVC)] == [5, 1]


async def test_limit_applies_to_forced_takeovers(backend_url: str, namespace: str) -> None:
    reg = ResourceRegistry(
        backend_url, namespace=namespace, max_resources_per_instance=2, metrics_registry=CollectorRegistry()
    )
    async with reg:
        await reg.register_instance(SVC, "i1", ttl=5)
        await reg.register_instance(SVC, "i2", ttl=5)
        await reg.register_resource(SVC, "i2", ["a", "b"])
        await reg.register_resource(SVC, "i1", ["x", "y"])
        with pytest.raises(ResourceLimitExceededError):
            await reg.register_resource(SVC, "i1", ["a"], force=True)
        assert await reg.get_owner_id(SVC, "a") == "i2"


# -- release -------------------------------------------------------------------------------------


async def test_release_is_owner_checked_and_all_or_nothing(registry: ResourceRegistry) -> None:
    await registry.register_instance(SVC, "i1", ttl=5)
    await registry.register_instance(SVC, "i2", ttl=5)
    await registry.register_resource(SVC, "i1", ["a", "b"])
    await registry.register_resource(SVC, "i2", ["c"])
    with pytest.raises(ResourceReleaseError) as err:
        await registry.release_resource(SVC, "i1", ["a", "c", "b"])
    assert err.value.code == 403 and err.value.owners == {"c": "i2"}
    assert await owners(registry, ["a", "b", "c"]) == {"a": "i1", "b": "i1", "c": "i2"}

    resp = await registry.release_resource(SVC, "i1", ["a", "free"])
    assert resp.success and resp.released == ["a"] and resp.not_found == ["free"]
    again = await registry.release_resource(SVC, "i1", ["a"])
    assert again.released == [] and again.not_found == ["a"]
    assert await owners(registry, ["a", "b"]) == {"a": None, "b": "i1"}
    assert [i.resource_count for i in await registry.list_instances(SVC)] == [1, 1]


async def test_lookup_of_unowned_resource_is_404(registry: ResourceRegistry) -> None:
    with pytest.raises(ResourceNotFoundError) as err:
        await registry.get_resource_owner(SVC, "nobody-owns-me")
    assert err.value.code == 404
    assert err.value.to_dict() == {
        "type": "ResourceNotFoundError",
        "code": 404,
        "message": "resource 'nobody-owns-me' of service 'user-service' has no owner",
        "resource_id": "nobody-owns-me",
        "service_name": SVC,
    }


async def test_services_are_isolated(registry: ResourceRegistry) -> None:
    await registry.register_instance("svc-a", "i1", ttl=5)
    await registry.register_instance("svc-b", "i1", ttl=5)
    assert (await registry.register_resource("svc-a", "i1", ["same"])).success
    assert (await registry.register_resource("svc-b", "i1", ["same"])).success
    await registry.deregister_instance("svc-a", "i1")
    assert await registry.get_owner_id("svc-b", "same") == "i1"
    assert await registry.get_owner_id("svc-a", "same") is None


async def test_list_resources_per_service_and_instance(registry: ResourceRegistry) -> None:
    await registry.register_instance(SVC, "i1", ttl=5)
    await registry.register_instance(SVC, "i2", ttl=5)
    await registry.register_resource(SVC, "i1", ["b", "a"])
    await registry.register_resource(SVC, "i2", ["c"])
    all_res = await registry.list_resources(SVC)
    assert [(r.resource_id, r.owner_instance_id) for r in all_res] == [("a", "i1"), ("b", "i1"), ("c", "i2")]
    assert [r.resource_id for r in await registry.list_resources(SVC, "i2")] == ["c"]
    assert await registry.list_resources("empty-service") == []


# -- events, metrics, logs -----------------------------------------------------------------------


@pytest.mark.one_partition  # one event per call; with partitions, one per partition touched
async def test_every_change_is_recorded_in_the_audit_stream(registry: ResourceRegistry) -> None:
    await registry.register_instance(SVC, "i1", ttl=5)
    await registry.register_instance(SVC, "i2", ttl=5)
    await registry.register_resource(SVC, "i1", ["a", "b"], trace_id="t-1")
    await registry.register_resource(SVC, "i2", ["a"], force=True, trace_id="t-2")
    await registry.release_resource(SVC, "i1", ["b"], trace_id="t-3")
    await registry.deregister_instance(SVC, "i2")
    events = await registry.events.recent(SVC)
    summary = [(e.type, e.instance_id, e.reason, e.resource_ids, e.trace_id) for e in events]
    assert summary == [
        ("InstanceRegistered", "i1", "registered", [], None),
        ("InstanceRegistered", "i2", "registered", [], None),
        ("ResourceRegistered", "i1", "registered", ["a", "b"], "t-1"),
        ("ResourceRegistered", "i2", "forced", ["a"], "t-2"),
        ("ResourceReleased", "i1", "released", ["b"], "t-3"),
        ("ResourceReleased", "i2", "deregistered", ["a"], None),
    ]
    assert events[3].previous_owners == {"a": "i1"}
    assert all(e.service_name == SVC and e.ts_ms > 0 and e.stream_id for e in events)


async def test_events_are_published_on_the_events_channel(registry: ResourceRegistry) -> None:
    hub = await PubSubHub.acquire(registry.redis, registry.settings)
    seen: list[bytes] = []
    channels = registry.store.service_keys(SVC).events_channels  # one, or the service's and each partition's
    for channel in channels:
        await hub.subscribe(channel, seen.append)
    try:
        await registry.register_instance(SVC, "i1", ttl=5)
        await registry.register_resource(SVC, "i1", ["a"])
        for _ in range(100):
            if len(seen) == 2:
                break
            await asyncio.sleep(0.01)
        assert [b'"type":"InstanceRegistered"' in m for m in seen] == [True, False]
        assert b'"resource_ids":["a"]' in seen[1]
    finally:
        for channel in channels:
            await hub.unsubscribe(channel, seen.append)
        await hub.release()


async def test_metrics_use_the_contract_names(registry: ResourceRegistry, metrics_registry: CollectorRegistry) -> None:
    await registry.register_instance(SVC, "i1", ttl=5)
    await registry.register_instance(SVC, "i2", ttl=5)
    await registry.register_resource(SVC, "i1", ["a", "b"])
    await registry.register_resource(SVC, "i2", ["a"])
    await registry.release_resource(SVC, "i1", ["b"])
    await registry.get_resource_owner(SVC, "a")
    with pytest.raises(ResourceNotFoundError):
        await registry.get_resource_owner(SVC, "zz")
    text = generate_latest(metrics_registry).decode()
    for line in (
        'ipc_resource_registrations_total{service_name="user-service",status="granted"} 2.0',
        'ipc_resource_registrations_total{service_name="user-service",status="conflict"} 1.0',
        'ipc_resource_conflicts_total{service_name="user-service"} 1.0',
        'ipc_resource_releases_total{reason="released",service_name="user-service"} 1.0',
        'ipc_resource_lookups_total{found="true",service_name="user-service"} 1.0',
        'ipc_resource_lookups_total{found="false",service_name="user-service"} 1.0',
        'ipc_resources_per_instance{instance_id="i1",service_name="user-service"} 1.0',
        'ipc_resource_operation_duration_seconds_count{operation="register_resource"} 2.0',
    ):
        assert line in text, line


async def test_log_events_carry_ids_and_duration(registry: ResourceRegistry) -> None:
    await registry.register_instance(SVC, "i1", ttl=5)
    with capture_logs() as logs:
        await registry.register_resource(SVC, "i1", ["a"], trace_id="trace-xyz")
        await registry.release_resource(SVC, "i1", ["a"], trace_id="trace-abc")
    reg_log, rel_log = logs
    assert reg_log["event"] == "resource.register" and rel_log["event"] == "resource.release"
    for entry, trace in ((reg_log, "trace-xyz"), (rel_log, "trace-abc")):
        assert entry["trace_id"] == trace
        assert entry["resource_id"] == "a"
        assert entry["instance_id"] == "i1"
        assert entry["service_name"] == SVC
        assert entry["duration_ms"] >= 0
    assert reg_log["operation"] == "register_resource"


async def test_trace_id_is_generated_when_absent(registry: ResourceRegistry) -> None:
    await registry.register_instance(SVC, "i1", ttl=5)
    resp = await registry.register_resource(SVC, "i1", ["a"])
    assert resp.trace_id is not None and len(resp.trace_id) == 32
    events = await registry.events.recent(SVC, count=1)
    assert events[0].trace_id == resp.trace_id


async def test_lookup_models_equal_validated_models(registry: ResourceRegistry) -> None:
    from resource_router import Resource

    await registry.register_instance(SVC, "i1", ttl=5)
    await registry.register_resource(SVC, "i1", ["a"], metadata={"k": [1, 2]})
    fast = await registry.get_resource_owner(SVC, "a")
    slow = Resource.model_validate(fast.model_dump())
    assert fast == slow
    assert fast.model_dump_json() == slow.model_dump_json()
    assert fast.model_fields_set == slow.model_fields_set
    fast.metadata["k"] = []  # an ordinary, mutable model
    assert fast.metadata == {"k": []}


# -- chunked registration (settings.register_chunk_size) -----------------------------------------


async def chunked(backend_url: str, namespace: str, *, chunk: int, limit: int = 1000) -> ResourceRegistry:
    from resource_router import RouterSettings

    return ResourceRegistry(
        backend_url,
        namespace=namespace,
        max_resources_per_instance=limit,
        settings=RouterSettings(register_chunk_size=chunk),
        metrics_registry=CollectorRegistry(),
    )


async def test_chunked_registration_matches_a_single_step(backend_url: str, namespace: str) -> None:
    reg = await chunked(backend_url, namespace, chunk=7)
    async with reg:
        await reg.register_instance(SVC, "i1", ttl=5)
        await reg.register_instance(SVC, "i2", ttl=5)
        await reg.register_resource(SVC, "i2", ["r3", "r10", "r33"])
        await reg.register_resource(SVC, "i1", ["r0", "r1"])
        ids = [f"r{i}" for i in range(40)]
        resp = await reg.register_resource(SVC, "i1", ids)
        assert resp.registered == [r for r in ids if r not in ("r3", "r10", "r33")]
        assert resp.conflicts == {"r3": "i2", "r10": "i2", "r33": "i2"}
        assert len(set(resp.fencing_tokens.values())) == 37
        forced = await reg.register_resource(SVC, "i1", ids, force=True)
        assert forced.success
        assert forced.taken_over == {"r3": "i2", "r10": "i2", "r33": "i2"}
        assert {i.instance_id: i.resource_count for i in await reg.list_instances(SVC)} == {"i1": 40, "i2": 0}
        events = [e for e in await reg.events.recent(SVC, 100) if e.type == "ResourceRegistered"]
        # one event per step that took something: 6 steps of the first call, and the 3 steps of the
        # forced call that hold r3, r10 and r33 (the other steps only refresh owned ids)
        assert len(events) == 2 + 6 + 3


async def test_chunked_registration_checks_the_whole_batch_against_the_limit(backend_url: str, namespace: str) -> None:
    reg = await chunked(backend_url, namespace, chunk=5, limit=20)
    async with reg:
        await reg.register_instance(SVC, "i1", ttl=5)
        await reg.register_resource(SVC, "i1", [f"old{i}" for i in range(10)])
        with pytest.raises(ResourceLimitExceededError) as err:
            await reg.register_resource(SVC, "i1", [f"old{i}" for i in range(10)] + [f"n{i}" for i in range(11)])
        assert (err.value.current, err.value.requested, err.value.limit) == (10, 11, 20)
        assert [i.resource_count for i in await reg.list_instances(SVC)] == [10]
        # owned ids do not count: exactly the limit fits
        ok = await reg.register_resource(SVC, "i1", [f"old{i}" for i in range(10)] + [f"n{i}" for i in range(10)])
        assert len(ok.registered) == 20
        with pytest.raises(InstanceNotAliveError):
            await reg.register_resource(SVC, "ghost", [f"g{i}" for i in range(12)])


async def test_chunked_registration_rolls_back_when_a_later_step_hits_the_limit(
    backend_url: str, namespace: str
) -> None:
    """A concurrent registration between the steps makes a later step exceed the limit: what this call
    took is released again, and the call fails as a single step would have."""
    reg = await chunked(backend_url, namespace, chunk=4, limit=10)
    async with reg:
        await reg.register_instance(SVC, "i1", ttl=5)
        await reg.register_resource(SVC, "i1", ["mine"])
        original = reg.grants._step
        calls = 0

        async def racing_step(*args: Any) -> Any:
            nonlocal calls
            calls += 1
            if calls == 2:  # someone else registers for i1 between the first and second step
                part = reg.store.service_keys(SVC).parts[0]
                await original(part, "i1", ["x1", "x2", "x3", "x4", "x5"], False, "", "other", "")
            return await original(*args)

        reg.grants._step = racing_step  # type: ignore[method-assign]
        with pytest.raises(ResourceLimitExceededError) as err:
            await reg.register_resource(SVC, "i1", ["mine"] + [f"n{i}" for i in range(8)])
        owned = sorted(r.resource_id for r in await reg.list_resources(SVC, "i1"))
        assert owned == ["mine", "x1", "x2", "x3", "x4", "x5"]  # n0..n2 were rolled back; 'mine' kept
        assert err.value.current == 6
        rolled = [e for e in await reg.events.recent(SVC, 50) if e.reason == "rolled_back"]
        assert [e.resource_ids for e in rolled] == [["n0", "n1", "n2"]]


async def test_a_chunked_rollback_releases_its_own_grants_id_by_id(backend_url: str, namespace: str) -> None:
    """One of the ids this call took is force-taken by another instance before a later step hits the
    limit: the rollback still releases every other id it took (owner-checked, per id), leaves the
    force-taken one to its new owner, and the call reports the limit as a single step would."""
    reg = await chunked(backend_url, namespace, chunk=3, limit=8)
    async with reg:
        await reg.register_instance(SVC, "i1", ttl=5)
        await reg.register_instance(SVC, "thief", ttl=5)
        original = reg.grants._step
        calls = 0

        async def racing_step(*args: Any) -> Any:
            nonlocal calls
            calls += 1
            if calls == 2:
                part = reg.store.service_keys(SVC).parts[0]
                await original(part, "thief", ["n0"], True, "", "theft", "")  # takes one of ours by force
                await original(part, "i1", [f"x{i}" for i in range(6)], False, "", "other", "")  # fills i1 up
            return await original(*args)

        reg.grants._step = racing_step  # type: ignore[method-assign]
        with pytest.raises(ResourceLimitExceededError):
            await reg.register_resource(SVC, "i1", [f"n{i}" for i in range(7)])
        reg.grants._step = original  # type: ignore[method-assign]
        owners = await reg.get_owner_ids(SVC, [f"n{i}" for i in range(7)])
        assert owners == {"n0": "thief", **{f"n{i}": None for i in range(1, 7)}}
        assert sorted(r.resource_id for r in await reg.list_resources(SVC, "i1")) == [f"x{i}" for i in range(6)]
        rolled = [e for e in await reg.events.recent(SVC, 50) if e.reason == "rolled_back"]
        assert [sorted(e.resource_ids) for e in rolled] == [["n1", "n2"]]
