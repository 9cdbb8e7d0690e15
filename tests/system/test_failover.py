"""Failover of a replicated Redis under load, on real servers.

The scenario: a master with one replica whose link goes through a TCP proxy; instance A registers
ids in batches of 50 (each acknowledged call counted); the link is cut for 0.3 s while the master
keeps answering; the master is SIGKILLed and the replica promoted (``REPLICAOF NO ONE``, what a
Sentinel or a cluster failover does). Then: how many grants A was told it owns are missing on the
new master, how many a second instance B obtains while A's lease lives, and whether B's tokens are
larger than A's. With ``min_replicas=1`` nothing unreplicated is ever acknowledged. Figures are
printed (``pytest -s``); ``RR_SLOW_SCALE`` lengthens the load.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import time

import pytest

from resource_router import ResourceRegistry, RouteRequest, RouterSettings, ServiceClient, ServiceInstance
from resource_router.errors import ResourceRouterError
from tests.support.redis_cluster import RedisCluster3
from tests.support.replicas import ReplicaSet, Sentinels
from tests.support.scale import SLOW_SCALE
from tests.support.tcp_proxy import TcpProxy

pytestmark = [pytest.mark.real_redis, pytest.mark.chaos]

SVC = "failover"
BATCH = 50


async def _register_batches(
    registry: ResourceRegistry, instance_id: str, acked: dict[str, int], stop: asyncio.Event, prefix: str
) -> int:
    """Register batches of ``BATCH`` new ids until ``stop``; every acknowledged id goes to ``acked``
    (id -> token). Returns how many calls were refused (not acknowledged)."""
    refused = 0
    for n in itertools.count():
        if stop.is_set():
            return refused
        ids = [f"{prefix}-{n}-{i}" for i in range(BATCH)]
        try:
            response = await registry.register_resource(SVC, instance_id, ids)
            acked.update(response.fencing_tokens)
        except ResourceRouterError:
            refused += 1
            await asyncio.sleep(0.01)
    raise AssertionError("unreachable")


@pytest.mark.parametrize("min_replicas", [0, 1])
async def test_grants_acknowledged_before_a_failover_and_the_second_owner(min_replicas: int, namespace: str) -> None:
    settings = RouterSettings(min_replicas=min_replicas, replica_timeout=0.2)
    replicas = ReplicaSet(replicas=1)
    proxy = TcpProxy(replicas.master.port)
    await proxy.__aenter__()
    try:
        await asyncio.to_thread(replicas.start, [proxy.port])
        await asyncio.to_thread(replicas.wait)
        master, replica = replicas.master, replicas.replicas[0]
        acked: dict[str, int] = {}
        async with ResourceRegistry(
            master.url, namespace=namespace, settings=settings, max_resources_per_instance=1_000_000
        ) as a:
            await a.register_instance(SVC, "A", ttl=30)
            await asyncio.to_thread(replicas.wait)  # A's lease is on the replica
            stop = asyncio.Event()
            load = asyncio.ensure_future(_register_batches(a, "A", acked, stop, "r"))
            await asyncio.sleep(0.5 * SLOW_SCALE)
            before_cut = len(acked)
            assert proxy.blackhole() == 1  # the replica's link: the master goes on answering
            await asyncio.sleep(0.3)
            master.kill()  # with acknowledged grants the replica never received (min_replicas=0)
            stop.set()
            refused = await load
        replicas.promote(replica)
        async with ResourceRegistry(replica.url, namespace=namespace) as b:
            owners = await _owners(b, list(acked))
            missing = [rid for rid, owner in owners.items() if owner != "A"]
            await b.register_instance(SVC, "B", ttl=30)
            sample = list(acked)[:: max(1, len(acked) // 1000)][:1000]
            taken = await b.register_resource(SVC, "B", sample)
        print(
            f"\nmin_replicas={min_replicas}: {len(acked)} grants acknowledged ({before_cut} before the cut, "
            f"{refused} calls refused), {len(missing)} missing after the promotion, "
            f"{len(taken.registered)} of {len(sample)} sampled ids granted to B while A's lease lives"
        )
        assert len(acked) > BATCH  # the load ran
        # B's tokens exceed every token A got for those ids, across the failover.
        assert all(token > acked[rid] for rid, token in taken.fencing_tokens.items())
        if min_replicas:
            assert refused > 0  # the calls made during the cut were not acknowledged
            assert missing == []
            assert taken.registered == []  # every sampled id is A's on the new master
            assert set(taken.conflicts.values()) == {"A"}
        else:
            assert missing  # what a failover loses when nobody waits for the replica
            assert set(taken.registered) == set(sample) & set(missing)
    finally:
        await proxy.aclose()
        replicas.stop()


async def _owners(registry: ResourceRegistry, ids: list[str]) -> dict[str, str | None]:
    out: dict[str, str | None] = {}
    for start in range(0, len(ids), 5000):
        out.update(await registry.get_owner_ids(SVC, ids[start : start + 5000]))
    return out


async def test_instances_under_calls_through_sentinel_never_run_one_id_twice_at_once(namespace: str) -> None:
    """``min_replicas=0`` and Sentinel: two volunteer instances, ~1,000 calls/s, the replica's link cut
    while A takes more ids, then the master SIGKILLed. A notices the master change, holds its ids,
    reports the lost ones (``failover``) and takes back the free ones; B may activate some. Every
    handler execution is recorded: no two instances run one id at overlapping times, and tokens of
    every id only grow."""
    replicas = ReplicaSet(replicas=1)
    proxy = TcpProxy(replicas.master.port)
    await proxy.__aenter__()
    sentinels: Sentinels | None = None
    try:
        await asyncio.to_thread(replicas.start, [proxy.port])
        await asyncio.to_thread(replicas.wait)
        sentinels = Sentinels(replicas.master.port)
        await asyncio.to_thread(sentinels.start)
        url = sentinels.url
        runs: list[tuple[str, str, float, float, int]] = []  # instance, id, start, end, token
        lost: dict[str, list[str]] = {"A": [], "B": []}

        def volunteer(name: str) -> ServiceInstance:
            inst = ServiceInstance(url, SVC, name, namespace=namespace, ttl=10, accept_placement=True)

            @inst.handler("work")
            async def work(request: RouteRequest) -> str:
                started = time.monotonic()
                await asyncio.sleep(0.002)
                assert request.resource_id is not None and request.fencing_token is not None
                runs.append((name, request.resource_id, started, time.monotonic(), request.fencing_token))
                return name

            inst.on_resource_lost = lost[name].extend
            return inst

        a, b = volunteer("A"), volunteer("B")
        ids = [f"room-{i}" for i in range(150)]
        cut_ids = [f"cut-{i}" for i in range(50)]  # granted to A during the cut, called after the kill
        async with a, b, ServiceClient(url, namespace=namespace) as client:
            await a.register_resource(ids[:100])
            await b.register_resource(ids[100:])
            stop = asyncio.Event()
            errors: list[int] = []

            async def calls() -> None:
                for n in itertools.count():
                    if stop.is_set():
                        return
                    started = time.monotonic()
                    try:
                        await client.call(SVC, "work", resource_id=ids[n % len(ids)], timeout=1.0)
                    except ResourceRouterError as exc:
                        errors.append(exc.code)
                    await asyncio.sleep(max(0.0, 0.001 - (time.monotonic() - started)))

            load = asyncio.ensure_future(calls())
            await asyncio.sleep(1.0)
            await asyncio.to_thread(replicas.wait)
            proxy.blackhole()
            cut_grants = await a.register_resource(cut_ids)  # acknowledged by the master only
            assert cut_grants.registered == cut_ids
            await asyncio.sleep(0.3)
            replicas.master.kill()
            killed = time.monotonic()
            ids.extend(cut_ids)
            failover = await asyncio.to_thread(sentinels.wait_master, replicas.replicas[0].port)
            await asyncio.sleep(2.0 + SLOW_SCALE)
            stop.set()
            await load
            owners = {rid: (await client.get_resource_owner(SVC, rid)).owner_instance_id for rid in ids}
        overlaps = _overlaps(runs)
        after_kill = [r for r in runs if r[2] > killed]
        print(
            f"\nsentinel failover {failover:.2f} s; {len(runs)} executions ({len(after_kill)} after the kill), "
            f"{len(errors)} failed calls, lost by A: {len(lost['A'])}, overlapping executions: {overlaps}, "
            f"master changes seen by A: {a._keeper.failovers}"
        )
        assert overlaps == 0
        assert set(cut_ids) <= set(lost["A"])  # never replicated: reported lost (reason failover)
        assert not set(lost["A"]) - set(cut_ids)  # nothing else was lost
        assert {owner for owner in owners.values()} <= {"A", "B"}
        tokens: dict[str, int] = {}
        for _name, rid, _s, _e, token in sorted(runs, key=lambda r: r[2]):
            assert token >= tokens.get(rid, 0)  # a later execution never has an older grant
            tokens[rid] = token
        # A grant made after the failover (A's reclaim, or B's activation) has a larger token than
        # the lost one, though the new master never saw it: A raised the fence first.
        assert all(tokens[rid] > cut_grants.fencing_tokens[rid] for rid in cut_ids if rid in tokens)
        assert after_kill  # service came back
    finally:
        if sentinels is not None:
            sentinels.stop()
        await proxy.aclose()
        replicas.stop()


def _overlaps(runs: list[tuple[str, str, float, float, int]]) -> int:
    """Pairs of executions of one id by two instances at overlapping times."""
    by_id: dict[str, list[tuple[float, float, str]]] = {}
    for name, rid, start, end, _token in runs:
        by_id.setdefault(rid, []).append((start, end, name))
    count = 0
    for spans in by_id.values():
        spans.sort()
        last_end, last_name = float("-inf"), ""
        for start, end, name in spans:
            if start < last_end and name != last_name:
                count += 1
            if end > last_end:
                last_end, last_name = end, name
    return count


async def test_a_cluster_failover_keeps_every_acknowledged_grant_with_min_replicas(namespace: str) -> None:
    """Three masters with one replica each; ``min_replicas=1``; a master SIGKILLed under registrations
    over 16 partitions: after the cluster promotes its replica, every acknowledged grant is there and
    a second instance obtains none of them."""
    cluster = RedisCluster3(replicas=1)
    await asyncio.to_thread(cluster.start)
    try:
        deadline = time.monotonic() + 15
        while not cluster.replicas_synced():
            assert time.monotonic() < deadline
            await asyncio.sleep(0.05)
        # a generous timeout: on a loaded machine an acknowledgement can take a while, and the timeout
        # only bounds how long a write waits for one (writes to the killed master fail at once)
        settings = RouterSettings(min_replicas=1, replica_timeout=3.0, partitions=16)
        acked: dict[str, int] = {}
        async with ResourceRegistry(
            cluster.url, namespace=namespace, settings=settings, max_resources_per_instance=1_000_000
        ) as a:
            await a.register_instance(SVC, "A", ttl=30)
            stop = asyncio.Event()
            load = asyncio.ensure_future(_register_batches(a, "A", acked, stop, "c"))
            await asyncio.sleep(1.0)
            cluster.servers[1].kill()
            await asyncio.sleep(4.0)  # cluster-node-timeout 1.5 s, then the replica's election
            stop.set()
            refused = await load
            await asyncio.to_thread(cluster.wait_ok, 20.0)
        async with ResourceRegistry(cluster.url, namespace=namespace, partitions=16) as b:
            owners = await _owners(b, list(acked))
            missing = [rid for rid, owner in owners.items() if owner != "A"]
            await b.register_instance(SVC, "B", ttl=30)
            with contextlib.suppress(ResourceRouterError):
                await b.heartbeat(SVC, "B", ttl=30)
            taken = await b.register_resource(SVC, "B", list(acked)[:2000])
        print(f"\ncluster: {len(acked)} grants acknowledged, {refused} calls refused, {len(missing)} missing")
        assert len(acked) > BATCH
        assert missing == []
        assert taken.registered == []
    finally:
        cluster.stop()
