"""Exact routing with instances in separate OS processes (``tests/procs/instance_proc.py``)."""

from __future__ import annotations

import asyncio
import json
import random
import time
from collections import Counter
from pathlib import Path
from typing import Any

import pytest

from resource_router import OwnerUnavailableError, ResourceNotFoundError, ResourceRegistry, ServiceClient
from tests.procs.control import InstanceProcess, start_all
from tests.support.scale import SLOW_SCALE

SERVICE = "orders"


@pytest.fixture(params=["redis", "cluster"])
def redis_url(request: pytest.FixtureRequest, redis_url: str) -> str:
    """Every test here runs on a single Redis and on a 3-master Redis Cluster (real processes both)."""
    if request.param == "cluster":
        url: str = request.getfixturevalue("cluster_url")
        return url
    return redis_url


def _spec(redis_url: str, namespace: str, iid: str, **kw: Any) -> dict[str, Any]:
    return {"url": redis_url, "namespace": namespace, "service": SERVICE, "instance_id": iid, **kw}


@pytest.mark.slow
async def test_thousands_of_calls_reach_exactly_the_owner(
    redis_url: str, namespace: str, real_client: ServiceClient, real_registry: ResourceRegistry
) -> None:
    per_proc = 100
    owners = {f"p{i}": [f"p{i}-r{j}" for j in range(per_proc)] for i in range(4)}
    procs = await start_all([_spec(redis_url, namespace, iid, resources=rids) for iid, rids in owners.items()])
    try:
        all_rids = [r for rids in owners.values() for r in rids]
        calls = 5000 * SLOW_SCALE
        rng = random.Random(1)
        plan = [rng.choice(all_rids) for _ in range(calls)]
        results: list[tuple[str, dict[str, Any]]] = []

        async def worker(chunk: list[str]) -> None:
            for i, rid in enumerate(chunk):
                result = await real_client.call(SERVICE, "whoami", {"n": i}, resource_id=rid)
                results.append((rid, result))

        await asyncio.gather(*(worker(plan[k::32]) for k in range(32)))

        registered = {r.resource_id: r for r in await real_registry.list_resources(SERVICE)}
        misrouted = [
            (rid, res)
            for rid, res in results
            if res["iid"] != registered[rid].owner_instance_id
            or res["token"] != registered[rid].fencing_token
            or res["rid"] != rid
        ]
        assert len(results) == calls
        assert misrouted == []
        by_instance = Counter(res["iid"] for _, res in results)
        expected = Counter(next(iid for iid, rids in owners.items() if rid in rids) for rid in plan)
        assert by_instance == expected
        # The tokens are the ones each process got when it registered.
        for proc in procs:
            for rid, token in proc.ready["tokens"].items():
                assert registered[rid].fencing_token == token
    finally:
        for proc in procs:
            await proc.stop()


@pytest.mark.chaos
async def test_sigkill_of_owner_fails_fast_then_another_takes_over(
    redis_url: str, namespace: str, real_client: ServiceClient, real_registry: ResourceRegistry
) -> None:
    ttl = 1.0
    rids = [f"acct-{i}" for i in range(10)]
    victim, survivor = await start_all(
        [
            _spec(redis_url, namespace, "victim", ttl=ttl, resources=rids),
            _spec(redis_url, namespace, "survivor", ttl=ttl),
        ]
    )
    try:
        first = await real_client.call(SERVICE, "whoami", resource_id=rids[0])
        assert first["iid"] == "victim"
        old_tokens = {r: victim.ready["tokens"][r] for r in rids}

        await victim.kill()
        started = time.perf_counter()
        with pytest.raises(OwnerUnavailableError) as info:
            await real_client.call(SERVICE, "whoami", resource_id=rids[0], timeout=5.0)
        elapsed = time.perf_counter() - started
        assert elapsed < 0.5
        assert info.value.code == 503
        assert info.value.instance_id == "victim"
        assert info.value.resource_id == rids[0]

        # Within the TTL (plus slack) the owner keys expire: the ids are free (404).
        deadline = time.monotonic() + ttl + 2.0
        while True:
            try:
                await real_registry.get_resource_owner(SERVICE, rids[0])
            except ResourceNotFoundError:
                break
            assert time.monotonic() < deadline, "the dead owner's resources never expired"
            await asyncio.sleep(0.05)
        with pytest.raises(ResourceNotFoundError):
            await real_client.call(SERVICE, "whoami", resource_id=rids[0])

        claimed = await real_client.call(SERVICE, "claim", {"ids": rids}, resource_id="ctl-survivor")
        assert sorted(claimed["registered"]) == sorted(rids)
        assert claimed["conflicts"] == {}
        for rid in rids:
            res = await real_client.call(SERVICE, "whoami", resource_id=rid)
            assert res["iid"] == "survivor"
            assert res["token"] == claimed["fencing_tokens"][rid]
            assert res["token"] > old_tokens[rid]
    finally:
        await victim.kill()
        await survivor.stop()


@pytest.mark.chaos
async def test_forced_takeover_under_load_never_runs_a_request_twice_or_after_loss(
    redis_url: str, namespace: str, real_client: ServiceClient, tmp_path: Path
) -> None:
    rids = [f"doc-{i}" for i in range(20)]
    moved = rids[:10]
    logs = {"old": tmp_path / "old.jsonl", "new": tmp_path / "new.jsonl"}
    old, new = await start_all(
        [
            _spec(redis_url, namespace, "old", ttl=3.0, resources=rids, log_path=logs["old"], exec_delay=0.002),
            _spec(redis_url, namespace, "new", ttl=3.0, log_path=logs["new"], exec_delay=0.002),
        ]
    )
    outcomes: dict[int, Any] = {}
    op_counter = iter(range(10**9))
    stop = asyncio.Event()

    async def worker(seed: int) -> None:
        rng = random.Random(seed)
        while not stop.is_set():
            op = next(op_counter)
            rid = rng.choice(rids)
            try:
                outcomes[op] = (rid, await real_client.call(SERVICE, "exec", op, resource_id=rid, timeout=5.0))
            except OwnerUnavailableError as exc:  # refused twice while ownership moved: never ran
                outcomes[op] = (rid, exc)

    try:
        workers = [asyncio.create_task(worker(k)) for k in range(16)]
        await asyncio.sleep(0.4)
        claimed = await real_client.call(SERVICE, "claim", {"ids": moved, "force": True}, resource_id="ctl-new")
        assert sorted(claimed["registered"]) == sorted(moved)
        assert sorted(claimed["taken_over"]) == sorted(moved)
        await asyncio.sleep(0.4 * SLOW_SCALE)
        stop.set()
        await asyncio.gather(*workers)
    finally:
        stop.set()
        await old.stop()
        await new.stop()

    journals = {name: [json.loads(line) for line in path.read_text().splitlines()] for name, path in logs.items()}
    executed: Counter[int] = Counter()
    executor: dict[int, str] = {}
    for name, journal in journals.items():
        for entry in journal:
            if entry[0] == "exec":
                executed[entry[1]] += 1
                executor[entry[1]] = name
    # Every op ran at most once overall; every successful call ran exactly once, where it said.
    assert [op for op, n in executed.items() if n > 1] == []
    successes = {op: res for op, (rid, res) in outcomes.items() if isinstance(res, dict)}
    assert successes, "no call succeeded"
    for op, res in successes.items():
        assert executed[op] == 1
        assert executor[op] == res["iid"]
    failures = [op for op, (rid, res) in outcomes.items() if not isinstance(res, dict)]
    assert [op for op in failures if op in executed] == []

    # The old owner learned of the loss once, and never ran a request for a moved id afterwards.
    lost_entries = [e for e in journals["old"] if e[0] == "lost"]
    assert sorted(rid for e in lost_entries for rid in e[1]) == sorted(moved)
    learned_at = {rid: i for i, e in enumerate(journals["old"]) if e[0] == "lost" for rid in e[1]}
    late = [e for i, e in enumerate(journals["old"]) if e[0] == "exec" and i > learned_at.get(e[2], 10**9)]
    assert late == []
    # The new owner ran moved ids with larger tokens than the old one ever used.
    old_tokens = {e[2]: e[3] for e in journals["old"] if e[0] == "exec"}
    new_execs = [e for e in journals["new"] if e[0] == "exec"]
    assert new_execs, "the new owner never served"
    assert {e[2] for e in new_execs} <= set(moved)
    for e in new_execs:
        assert e[3] == claimed["fencing_tokens"][e[2]]
        if e[2] in old_tokens:
            assert e[3] > old_tokens[e[2]]
    # Calls for ids that did not move kept going to the old owner.
    for op, res in successes.items():
        rid = outcomes[op][0]
        if rid not in moved:
            assert res["iid"] == "old"


async def test_graceful_exit_releases_everything_at_once(
    redis_url: str, namespace: str, real_client: ServiceClient, real_registry: ResourceRegistry
) -> None:
    rids = [f"cart-{i}" for i in range(50)]
    (proc,) = await start_all([_spec(redis_url, namespace, "leaver", ttl=30.0, resources=rids)])
    assert (await real_client.call(SERVICE, "whoami", resource_id="cart-7"))["iid"] == "leaver"
    await proc.stop()
    # With a 30 s lease, anything still registered now was not released by the exit.
    assert await real_registry.list_resources(SERVICE) == []
    assert await real_registry.list_instances(SERVICE) == []
    with pytest.raises(ResourceNotFoundError) as info:
        await real_client.call(SERVICE, "whoami", resource_id="cart-7")
    assert info.value.code == 404


async def test_service_routing_reaches_every_live_instance(
    redis_url: str, namespace: str, real_client: ServiceClient
) -> None:
    procs = await start_all([_spec(redis_url, namespace, f"svc-{i}") for i in range(3)])
    try:
        seen = Counter([(await real_client.call(SERVICE, "whoami"))["iid"] for _ in range(60)])
        assert set(seen) == {"svc-0", "svc-1", "svc-2"}
        assert sum(seen.values()) == 60
        assert min(seen.values()) >= 10
    finally:
        for proc in procs:
            await proc.stop()


async def test_instance_process_is_sigkilled_cleanly(redis_url: str, namespace: str) -> None:
    """The helper itself: a killed process is reaped and reported dead."""
    (proc,) = await start_all([_spec(redis_url, namespace, "short")])
    await proc.kill()
    assert proc.proc.returncode == -9
    assert isinstance(proc, InstanceProcess)
