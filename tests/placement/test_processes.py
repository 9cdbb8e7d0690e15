"""Placement with volunteers in separate OS processes: activation races across processes, failover
after SIGKILL, and a rolling restart under load (``tests/procs/instance_proc.py``).

Figures (failover time, calls made and failed) are printed: ``pytest -s -k 'failover or rolling'``.
"""

from __future__ import annotations

import asyncio
import json
import os
import sys
import time
from collections import Counter
from pathlib import Path
from typing import Any

import pytest
from prometheus_client import CollectorRegistry

from resource_router import OwnerUnavailableError, ResourceRegistry, ResourceRouterError, ServiceClient
from tests.procs.control import ROOT, InstanceProcess, start_all
from tests.support.scale import SLOW_SCALE

SERVICE = "rooms"


def _spec(redis_url: str, namespace: str, iid: str, **kw: Any) -> dict[str, Any]:
    return {"url": redis_url, "namespace": namespace, "service": SERVICE, "instance_id": iid, **kw}


def journal(path: Path) -> list[list[Any]]:
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


async def _caller(redis_url: str, namespace: str, rid: str, calls: int) -> asyncio.subprocess.Process:
    proc = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "tests.procs.caller_proc",
        "--url",
        redis_url,
        "--namespace",
        namespace,
        "--service",
        SERVICE,
        "--resource",
        rid,
        "--calls",
        str(calls),
        cwd=str(ROOT),
        stdin=asyncio.subprocess.PIPE,
        stdout=asyncio.subprocess.PIPE,
        env={**os.environ, "PYTHONPATH": str(ROOT)},
    )
    assert proc.stdout is not None
    async with asyncio.timeout(30):
        assert (await proc.stdout.readline()).strip() == b"ARMED"
    return proc


@pytest.mark.chaos
@pytest.mark.parametrize("strategy", ["random", "hash"])
async def test_callers_in_many_processes_activate_one_id_exactly_once(
    redis_url: str, namespace: str, tmp_path: Path, real_registry: ResourceRegistry, strategy: str
) -> None:
    logs = {iid: tmp_path / f"{iid}.jsonl" for iid in ("v1", "v2", "v3")}
    volunteers = await start_all(
        [_spec(redis_url, namespace, iid, placement=strategy, log_path=log) for iid, log in logs.items()]
    )
    callers: list[asyncio.subprocess.Process] = []
    try:
        callers = list(await asyncio.gather(*(_caller(redis_url, namespace, "the-room", 20) for _ in range(6))))
        for proc in callers:  # fire: all at (nearly) the same moment
            assert proc.stdin is not None
            proc.stdin.write(b"go\n")
        results: list[dict[str, Any]] = []
        for proc in callers:
            out, _ = await asyncio.wait_for(proc.communicate(), 30)
            line = next(x for x in out.decode().splitlines() if x.startswith("RESULTS "))
            results += json.loads(line[len("RESULTS ") :])
        owner = await real_registry.get_resource_owner(SERVICE, "the-room")
    finally:
        for proc in callers:
            if proc.returncode is None:
                proc.kill()
                await proc.wait()
        for v in volunteers:
            await v.stop()
    assert len(results) == 120
    assert [r for r in results if not r["ok"]] == []
    assert {(r["iid"], r["token"]) for r in results} == {(owner.owner_instance_id, owner.fencing_token)}
    activations = Counter(
        (iid, e[1]) for iid, log in logs.items() for e in journal(log) if e[0] == "activate" and e[1] == "the-room"
    )
    assert activations == Counter({(owner.owner_instance_id, "the-room"): 1})


@pytest.mark.chaos
async def test_a_dead_owners_resources_are_served_by_a_volunteer_within_ttl_plus_1s(
    redis_url: str, namespace: str, real_client: ServiceClient
) -> None:
    ttl = 1.0
    victim, survivor = await start_all(
        [
            _spec(redis_url, namespace, "victim", ttl=ttl, placement="hash"),
            _spec(redis_url, namespace, "survivor", ttl=ttl, placement="hash"),
        ]
    )
    try:
        rids = [f"room-{i}" for i in range(40)]
        first: dict[str, dict[str, Any]] = {}
        for rid in rids:
            first[rid] = await real_client.call(SERVICE, "whoami", resource_id=rid)
        orphans = [rid for rid in rids if first[rid]["iid"] == "victim"]
        assert 5 < len(orphans) < 35

        await victim.kill()
        killed = time.monotonic()
        # Default: fail fast while the dead owner's lease runs (503, not a timeout).
        with pytest.raises(OwnerUnavailableError):
            await real_client.call(SERVICE, "whoami", resource_id=orphans[0], timeout=5.0)
        assert time.monotonic() - killed < 0.5

        # Asked to, a call waits and is served once a volunteer could activate the resource.
        async def wait_for_owner() -> tuple[dict[str, Any], float]:
            result = await real_client.call(
                SERVICE, "whoami", resource_id=orphans[1], timeout=ttl + 3.0, wait_for_owner=True
            )
            return result, time.monotonic() - killed

        waiting = asyncio.create_task(wait_for_owner())
        healed: dict[str, float] = {}
        served: dict[str, dict[str, Any]] = {}
        while len(healed) < len(orphans):
            assert time.monotonic() - killed < ttl + 3.0, f"{len(orphans) - len(healed)} resources never came back"
            for rid in orphans:
                if rid in healed:
                    continue
                try:
                    served[rid] = await real_client.call(SERVICE, "whoami", resource_id=rid, timeout=1.0)
                except OwnerUnavailableError:
                    continue
                healed[rid] = time.monotonic() - killed
            await asyncio.sleep(0.01)
        waited, waited_s = await waiting
    finally:
        await victim.kill()
        await survivor.stop()
    worst = max(healed.values())
    print(
        f"\nfailover after SIGKILL (ttl {ttl:g}s): {len(orphans)} resources served again after "
        f"{min(healed.values()):.3f}s (first) .. {worst:.3f}s (last); "
        f"a wait_for_owner call returned after {waited_s:.3f}s"
    )
    assert worst <= ttl + 1.0
    assert waited["iid"] == "survivor"
    assert waited_s <= ttl + 1.0
    for rid in orphans:
        assert served[rid]["iid"] == "survivor"
        assert served[rid]["token"] > first[rid]["token"]  # never two owners: a later grant


@pytest.mark.chaos
@pytest.mark.slow
async def test_a_rolling_restart_of_three_volunteers_under_load_fails_no_call(
    redis_url: str, namespace: str, metrics_registry: CollectorRegistry, tmp_path: Path
) -> None:
    rate = 2000.0  # calls per second, spread over the rooms
    rooms = [f"room-{i}" for i in range(300)]
    rounds = SLOW_SCALE
    specs = [_spec(redis_url, namespace, f"v{i}-0", ttl=2.0, placement="hash", rebalance=True) for i in range(3)]
    procs: dict[int, InstanceProcess] = dict(enumerate(await start_all(specs)))
    made = 0
    failures: Counter[str] = Counter()
    served_by: Counter[str] = Counter()
    stop = asyncio.Event()
    started = time.monotonic()

    async with ServiceClient(redis_url, namespace=namespace, metrics_registry=metrics_registry) as client:

        async def worker(k: int, workers: int) -> None:
            nonlocal made
            n = 0
            while not stop.is_set():
                due = started + (n * workers + k) / rate
                delay = due - time.monotonic()
                if delay > 0:
                    await asyncio.sleep(delay)
                rid = rooms[(n * workers + k) % len(rooms)]
                n += 1
                made += 1
                try:
                    result = await client.call(SERVICE, "whoami", resource_id=rid, timeout=5.0)
                    served_by[result["iid"]] += 1
                except ResourceRouterError as exc:
                    failures[f"{exc.type}: {exc.message}"] += 1

        workers = [asyncio.create_task(worker(k, 64)) for k in range(64)]
        try:
            await asyncio.sleep(2.0)
            for generation in range(1, rounds + 1):
                for i in range(3):
                    old = procs[i]
                    report = await old.terminate()
                    assert report["journal"] >= 1
                    procs[i] = await InstanceProcess.start(
                        redis_url, namespace, SERVICE, f"v{i}-{generation}", ttl=2.0, placement="hash", rebalance=True
                    )
                    await asyncio.sleep(1.5)
            await asyncio.sleep(1.0)
        finally:
            stop.set()
            await asyncio.gather(*workers, return_exceptions=True)
            for proc in procs.values():
                await proc.stop()
    elapsed = time.monotonic() - started
    print(
        f"\nrolling restart of 3 volunteers x{rounds} under load: {made} calls in {elapsed:.1f}s "
        f"({made / elapsed:.0f}/s), {sum(failures.values())} failed; served by {dict(served_by)}"
        + (f"; failures: {dict(failures)}" if failures else "")
    )
    assert dict(failures) == {}
    assert made >= rate * elapsed * 0.5  # the load really was there
    assert {iid for iid in served_by if iid.endswith(f"-{rounds}")}  # the new generation serves
