"""Leases: TTL expiry with and without heartbeats, lost ids, fencing tokens, the sweeper."""

from __future__ import annotations

import asyncio
import itertools
import multiprocessing as mp

import pytest
import redis.asyncio as aredis
from prometheus_client import CollectorRegistry

from resource_router import InstanceNotAliveError, ResourceNotFoundError, ResourceRegistry, Sweeper

SVC = "game-rooms"
TTL = 0.4


async def wait_until_free(reg: ResourceRegistry, rid: str, timeout: float = 3.0) -> float:
    loop = asyncio.get_running_loop()
    start = loop.time()
    while await reg.get_owner_id(SVC, rid) is not None:
        if loop.time() - start > timeout:
            raise AssertionError(f"{rid} still owned after {timeout}s")
        await asyncio.sleep(0.02)
    return loop.time() - start


async def sweep_when_due(reg: ResourceRegistry, timeout: float = 3.0) -> dict[str, list[str]]:
    """Sweep until something is swept: with several partitions, a dead instance's lease keys run out
    moments apart, and a sweep that finds one still living leaves the instance for the next sweep."""
    loop = asyncio.get_running_loop()
    start = loop.time()
    while not (swept := await reg.sweep(SVC)):
        if loop.time() - start > timeout:
            raise AssertionError(f"nothing swept after {timeout}s")
        await asyncio.sleep(0.02)
    return swept


async def test_ownership_expires_without_heartbeats(registry: ResourceRegistry) -> None:
    await registry.register_instance(SVC, "i1", ttl=TTL)
    await registry.register_resource(SVC, "i1", ["a", "b"])
    elapsed = await wait_until_free(registry, "a")
    assert elapsed <= TTL + 0.3
    assert await registry.get_owner_id(SVC, "b") is None
    assert await registry.list_instances(SVC) == []
    with pytest.raises(InstanceNotAliveError):
        await registry.heartbeat(SVC, "i1", ttl=TTL)


async def test_heartbeats_keep_everything_alive(registry: ResourceRegistry) -> None:
    await registry.register_instance(SVC, "i1", ttl=TTL)
    await registry.register_resource(SVC, "i1", [f"r{i}" for i in range(50)])
    for _ in range(8):  # 8 x TTL/3 > 2.5 TTLs
        await asyncio.sleep(TTL / 3)
        hb = await registry.heartbeat(SVC, "i1", ttl=TTL)
        assert hb.lost == [] and hb.owned_count == 50
    assert len(await registry.list_resources(SVC, "i1")) == 50


async def test_owner_keys_are_valid_while_their_owners_lease_lives(real_registry: ResourceRegistry) -> None:
    reg = real_registry
    await reg.register_instance(SVC, "i1", ttl=2)
    await reg.register_resource(SVC, "i1", ["a"])
    sk = reg.store.service_keys(SVC)
    part = sk.part_of("a")
    # The owner key carries no TTL; the lease key (one per instance and partition) does.
    assert await reg.redis.pttl(sk.owner("a")) == -1
    assert 0 < await reg.redis.pttl(part.lease("i1")) <= 2000
    await asyncio.sleep(0.3)
    await reg.heartbeat(SVC, "i1", ttl=2)
    assert abs(await reg.redis.pttl(part.lease("i1")) - await reg.redis.pttl(sk.instance("i1"))) <= 5
    # the owner key's value is the owner's id in plain text
    assert await reg.redis.get(sk.owner("a")) == b"i1"
    await reg.redis.delete(part.lease("i1"))  # the lease runs out: the owner key means nothing now
    with pytest.raises(ResourceNotFoundError):
        await reg.get_resource_owner(SVC, "a")
    assert await reg.get_owner_id(SVC, "a") is None


async def test_late_heartbeat_reports_expired_ids_and_instance_must_reregister(
    registry: ResourceRegistry,
) -> None:
    await registry.register_instance(SVC, "i1", ttl=TTL)
    await registry.register_resource(SVC, "i1", ["a"])
    await wait_until_free(registry, "a")
    with pytest.raises(InstanceNotAliveError):
        await registry.heartbeat(SVC, "i1", ttl=TTL)
    # Coming back cleans the previous incarnation and records it once.
    info = await registry.register_instance(SVC, "i1", ttl=5)
    assert info.resource_count == 0
    assert await registry.list_resources(SVC, "i1") == []
    offline = [e for e in await registry.events.recent(SVC) if e.reason == "instance_offline"]
    assert [(e.instance_id, e.resource_ids) for e in offline] == [("i1", ["a"])]


async def test_ids_of_an_owner_whose_lease_ran_out_are_free_for_the_taking(registry: ResourceRegistry) -> None:
    await registry.register_instance(SVC, "slow", ttl=5)
    await registry.register_instance(SVC, "fast", ttl=5)
    await registry.register_resource(SVC, "slow", ["a", "b"])
    # Simulate the lease of "slow" running out (its record too, as a missed heartbeat would).
    sk = registry.store.service_keys(SVC)
    await registry.redis.delete(sk.instance("slow"))
    for part in sk.parts:
        await registry.redis.delete(part.lease("slow"))
    taken = await registry.register_resource(SVC, "fast", ["a"])
    assert taken.success and taken.taken_over == {}  # free, not taken from a live owner
    with pytest.raises(InstanceNotAliveError):  # the late heartbeat: everything is gone
        await registry.heartbeat(SVC, "slow", ttl=5)
    await registry.register_instance(SVC, "slow", ttl=5)  # comes back empty-handed
    assert await registry.list_resources(SVC, "slow") == []
    assert (await registry.get_resource_owner(SVC, "a")).owner_instance_id == "fast"
    with pytest.raises(ResourceNotFoundError):
        await registry.get_resource_owner(SVC, "b")


async def test_fencing_tokens_strictly_increase_through_force_release_and_expiry(
    registry: ResourceRegistry,
) -> None:
    tokens: list[int] = []
    await registry.register_instance(SVC, "i1", ttl=5)
    await registry.register_instance(SVC, "i2", ttl=5)
    tokens.append((await registry.register_resource(SVC, "i1", ["a"])).fencing_tokens["a"])
    tokens.append((await registry.register_resource(SVC, "i2", ["a"], force=True)).fencing_tokens["a"])
    tokens.append((await registry.register_resource(SVC, "i1", ["a"], force=True)).fencing_tokens["a"])
    await registry.release_resource(SVC, "i1", ["a"])
    tokens.append((await registry.register_resource(SVC, "i2", ["a"])).fencing_tokens["a"])
    # expiry: a short-lived owner
    await registry.release_resource(SVC, "i2", ["a"])
    await registry.register_instance(SVC, "short", ttl=TTL)
    tokens.append((await registry.register_resource(SVC, "short", ["a"])).fencing_tokens["a"])
    await wait_until_free(registry, "a")
    tokens.append((await registry.register_resource(SVC, "i1", ["a"])).fencing_tokens["a"])
    # re-registering by the same owner keeps the token
    assert (await registry.register_resource(SVC, "i1", ["a"])).fencing_tokens["a"] == tokens[-1]
    assert all(b > a for a, b in itertools.pairwise(tokens)), tokens
    assert (await registry.get_resource_owner(SVC, "a")).fencing_token == tokens[-1]


# -- sweeper ---------------------------------------------------------------------------------------


async def test_two_sweepers_clean_a_dead_instance_exactly_once(backend_url: str, namespace: str) -> None:
    regs = [ResourceRegistry(backend_url, namespace=namespace, metrics_registry=CollectorRegistry()) for _ in range(2)]
    try:
        await regs[0].register_instance(SVC, "dead", ttl=TTL)
        await regs[0].register_instance(SVC, "alive", ttl=30)
        await regs[0].register_resource(SVC, "dead", [f"d{i}" for i in range(20)])
        await regs[0].register_resource(SVC, "alive", ["x"])
        await asyncio.sleep(TTL + 0.1)
        results = await asyncio.gather(*(r.sweep(SVC) for r in regs), regs[0].sweep(SVC), regs[1].sweep(SVC))
        cleaned = [res for res in results if res]
        assert len(cleaned) == 1 and list(cleaned[0]) == ["dead"]
        assert sorted(cleaned[0]["dead"]) == sorted(f"d{i}" for i in range(20))
        offline = [e for e in await regs[0].events.recent(SVC, 100) if e.reason == "instance_offline"]
        assert len(offline) == 1 and offline[0].instance_id == "dead" and len(offline[0].resource_ids) == 20
        part = regs[0].keys.service(SVC).parts[0]
        assert await regs[0].redis.exists(part.owned("dead"), part.lost("dead"), part.owner("d0")) == 0
        assert await regs[0].live_instance_ids(SVC) == ["alive"]
        assert await regs[0].get_owner_id(SVC, "x") == "alive"
        assert await regs[1].sweep(SVC) == {}
    finally:
        for r in regs:
            await r.aclose()


def _sweep_in_process(url: str, namespace: str, barrier: mp.synchronize.Barrier, out: mp.Queue[int]) -> None:
    async def main() -> int:
        reg = ResourceRegistry(url, namespace=namespace, metrics_registry=CollectorRegistry())
        async with reg:
            barrier.wait()
            return len(await reg.sweep(SVC))

    out.put(asyncio.run(main()))


@pytest.mark.chaos
async def test_sweepers_in_many_processes_record_each_dead_instance_once(
    real_registry: ResourceRegistry, redis_url: str, namespace: str
) -> None:
    reg = real_registry
    dead = [f"dead-{i}" for i in range(10)]
    for iid in dead:
        await reg.register_instance(SVC, iid, ttl=TTL)
        await reg.register_resource(SVC, iid, [f"{iid}-r{j}" for j in range(30)])
    await asyncio.sleep(TTL + 0.1)
    ctx = mp.get_context("spawn")
    nproc = 4
    barrier = ctx.Barrier(nproc)
    out: mp.Queue[int] = ctx.Queue()
    procs = [ctx.Process(target=_sweep_in_process, args=(redis_url, namespace, barrier, out)) for _ in range(nproc)]
    for p in procs:
        p.start()
    counts = [out.get(timeout=60) for _ in procs]
    for p in procs:
        p.join(30)
    assert sum(counts) == len(dead)
    offline = [e for e in await reg.events.recent(SVC, 1000) if e.reason == "instance_offline"]
    assert sorted(e.instance_id for e in offline) == sorted(dead)
    assert all(len(e.resource_ids) == 30 for e in offline)


async def test_background_sweeper_cleans_up(registry: ResourceRegistry) -> None:
    await registry.register_instance(SVC, "dead", ttl=TTL)
    await registry.register_resource(SVC, "dead", ["a"])
    async with Sweeper(registry, interval=0.05) as sweeper:
        for _ in range(100):
            if sweeper.swept_instances:
                break
            await asyncio.sleep(0.05)
    assert sweeper.swept_instances == 1
    assert await registry.live_instance_ids(SVC) == []
    all_services = Sweeper(registry)  # services=None: every service in the namespace
    assert await all_services.run_once() == {}


async def test_sweeper_leaves_ids_someone_else_took(registry: ResourceRegistry) -> None:
    await registry.register_instance(SVC, "dead", ttl=TTL)
    await registry.register_instance(SVC, "heir", ttl=30)
    await registry.register_resource(SVC, "dead", ["a", "b"])
    await wait_until_free(registry, "a")
    await registry.register_resource(SVC, "heir", ["a"])
    swept = await sweep_when_due(registry)
    assert swept == {"dead": ["b"]}
    res = await registry.get_resource_owner(SVC, "a")
    assert res.owner_instance_id == "heir" and res.fencing_token > 0


async def test_sweeper_ignores_foreign_index_entries(real_registry: ResourceRegistry, raw_redis: aredis.Redis) -> None:
    sk = real_registry.keys.service(SVC)
    await raw_redis.zadd(sk.instances, {"bad id with spaces": 1})
    assert await real_registry.sweep(SVC) == {}
