"""Races between OS processes contending for the same ids. Every assertion is an exact count."""

from __future__ import annotations

import asyncio
import multiprocessing as mp
import random
from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import Any

import pytest
from prometheus_client import CollectorRegistry

from resource_router import ResourceLimitExceededError, ResourceRegistry
from tests.support.scale import SLOW_SCALE

SVC = "race"
IDS = [f"id-{i:04d}" for i in range(1000)]
NPROC = 4
ROUNDS = 6 * SLOW_SCALE


@dataclass
class Race:
    registry: ResourceRegistry
    url: str
    rounds: int


@pytest.fixture(params=["redis-p1", "redis-p16", "cluster-p16"])
async def race(request: pytest.FixtureRequest, redis_url: str, namespace: str) -> AsyncIterator[Race]:
    """One partition on a single Redis (the full rounds); 16 partitions on a single Redis and on a
    3-master Redis Cluster (fewer rounds)."""
    backend, _, count = request.param.partition("-")
    url: str = request.getfixturevalue("cluster_url") if backend == "cluster" else redis_url
    partitions = int(count[1:])
    reg = ResourceRegistry(url, namespace=namespace, partitions=partitions, metrics_registry=CollectorRegistry())
    try:
        yield Race(reg, url, ROUNDS if request.param == "redis-p1" else max(2, ROUNDS // 3))
    finally:
        await reg.aclose()


def _contender(
    url: str,
    namespace: str,
    partitions: int,
    instance_id: str,
    limit: int,
    force: bool,
    rounds: int,
    barrier: Any,
    results: Any,
) -> None:
    """Each round: register the 1000 ids in shuffled chunks; report what the responses granted."""

    async def main() -> None:
        reg = ResourceRegistry(
            url,
            namespace=namespace,
            max_resources_per_instance=limit,
            partitions=partitions,
            metrics_registry=CollectorRegistry(),
        )
        rng = random.Random(instance_id)
        async with reg:
            await reg.register_instance(SVC, instance_id, ttl=60)
            for rnd in range(rounds):
                ids = IDS[:]
                rng.shuffle(ids)
                granted: dict[str, int] = {}
                rejected = 0
                await asyncio.to_thread(barrier.wait)
                pos = 0
                while pos < len(ids):
                    size = rng.randint(1, 120)
                    chunk = ids[pos : pos + size]
                    pos += size
                    try:
                        resp = await reg.register_resource(SVC, instance_id, chunk, force=force)
                    except ResourceLimitExceededError as exc:
                        assert exc.current + exc.requested > limit
                        rejected += len(chunk)
                        continue
                    assert set(resp.registered) | set(resp.conflicts) == set(chunk)
                    granted.update(resp.fencing_tokens)
                results.put((rnd, instance_id, granted, rejected))
                await asyncio.to_thread(barrier.wait)  # everyone done registering; parent checks
                await asyncio.to_thread(barrier.wait)  # parent has checked; clean up for next round
                owned = [r.resource_id for r in await reg.list_resources(SVC, instance_id)]
                if owned:
                    await reg.release_resource(SVC, instance_id, owned)
                await reg.heartbeat(SVC, instance_id, ttl=60)  # drain lost reports
                await asyncio.to_thread(barrier.wait)

    asyncio.run(main())


async def _run_race(race: Race, namespace: str, *, limit: int, force: bool) -> list[dict[str, Any]]:
    registry, url, rounds = race.registry, race.url, race.rounds
    ctx = mp.get_context("spawn")
    barrier = ctx.Barrier(NPROC + 1)
    results = ctx.Queue()
    names = [f"proc-{i}" for i in range(NPROC)]
    p = registry.partitions
    procs = [
        ctx.Process(target=_contender, args=(url, namespace, p, n, limit, force, rounds, barrier, results))
        for n in names
    ]
    for p in procs:
        p.start()
    summaries = []
    try:
        for rnd in range(rounds):
            await asyncio.to_thread(barrier.wait, 60)  # start
            await asyncio.to_thread(barrier.wait, 120)  # all registered
            reports = [results.get(timeout=30) for _ in names]
            assert {r[0] for r in reports} == {rnd}
            granted = {r[1]: r[2] for r in reports}
            stored = await registry.list_resources(SVC)
            stored_owner = {r.resource_id: r.owner_instance_id for r in stored}
            stored_token = {r.resource_id: r.fencing_token for r in stored}
            summaries.append(
                {
                    "granted": granted,
                    "rejected": {r[1]: r[3] for r in reports},
                    "stored_owner": stored_owner,
                    "stored_token": stored_token,
                    "counts": {i.instance_id: i.resource_count for i in await registry.list_instances(SVC)},
                }
            )
            await asyncio.to_thread(barrier.wait, 60)  # let them release
            await asyncio.to_thread(barrier.wait, 60)  # released
    finally:
        for p in procs:
            p.join(30)
            if p.is_alive():
                p.kill()
    assert all(p.exitcode == 0 for p in procs), [p.exitcode for p in procs]
    return summaries


@pytest.mark.slow
async def test_every_id_is_granted_to_exactly_one_process(race: Race, namespace: str) -> None:
    for s in await _run_race(race, namespace, limit=1000, force=False):
        granted: dict[str, dict[str, int]] = s["granted"]
        holders: dict[str, list[str]] = {}
        for iid, tokens in granted.items():
            for rid in tokens:
                holders.setdefault(rid, []).append(iid)
        assert sorted(holders) == IDS  # every id granted...
        assert all(len(h) == 1 for h in holders.values())  # ...to exactly one instance
        assert s["stored_owner"] == {rid: h[0] for rid, h in holders.items()}  # responses == storage
        assert s["stored_token"] == {rid: granted[h[0]][rid] for rid, h in holders.items()}
        assert sum(s["counts"].values()) == 1000
        assert s["counts"] == {iid: len(t) for iid, t in granted.items()}


@pytest.mark.slow
async def test_limit_is_never_exceeded_under_contention(race: Race, namespace: str) -> None:
    limit = 150  # 4 x 150 < 1000: every process hits the limit
    for s in await _run_race(race, namespace, limit=limit, force=False):
        granted: dict[str, dict[str, int]] = s["granted"]
        assert all(len(t) <= limit for t in granted.values())
        assert all(c <= limit for c in s["counts"].values())
        all_granted = [rid for t in granted.values() for rid in t]
        assert len(all_granted) == len(set(all_granted))  # no id granted twice
        assert s["stored_owner"] == {rid: iid for iid, t in granted.items() for rid in t}
        assert s["counts"] == {iid: len(t) for iid, t in granted.items()}
        assert sum(s["rejected"].values()) > 0


@pytest.mark.slow
async def test_forced_takeovers_agree_with_storage_and_tokens(race: Race, namespace: str) -> None:
    for s in await _run_race(race, namespace, limit=1000, force=True):
        granted: dict[str, dict[str, int]] = s["granted"]
        # With force, every process is granted every id; the last grant wins and has the top token.
        for rid in IDS:
            tokens = {iid: t[rid] for iid, t in granted.items()}
            assert len(tokens) == NPROC
            assert len(set(tokens.values())) == NPROC  # tokens are unique...
            winner = max(tokens, key=lambda i: tokens[i])  # ...and the latest grant holds the key
            assert s["stored_owner"][rid] == winner
            assert s["stored_token"][rid] == tokens[winner]
        assert sum(s["counts"].values()) == 1000
