"""What an ownership change costs as the instances of a service grow: a driver registers and releases
batches of 10 ids for a few seconds while K idle instance processes of the same service listen
(K = 0, 20, 40; 0 and 4 in the smoke run). Each row gives the driver's changes per second (ids
registered or released), Redis's CPU per 1,000 changes and the listeners' CPU per 1,000 changes, all
measured in the same run. Instances hear only the grants that concern them (their notice channels),
so the figures with 20 and 40 listening should stay near those with 0 (goal: Redis CPU per change at
most 1.5x, the driver's rate at least 0.6x).
"""

from __future__ import annotations

import asyncio
import itertools
import sys
import time

from .common import LONG_TTL, REPO_ROOT, Ctx, child_env
from .harness import Row
from .servers import proc_cpu_s

__all__ = ["FANOUT_ROWS", "fanout_counts", "run_fanout"]

SVC = "fanout-svc"
DRIVER = "driver"
BATCH = 10
FANOUT_ROWS = tuple(f"ownership_changes@{k}" for k in (0, 4, 20, 40))


def fanout_counts(mode: str) -> tuple[int, ...]:
    return (0, 4) if mode == "smoke" else (0, 20, 40)


async def _spawn(ctx: Ctx, count: int) -> list[asyncio.subprocess.Process]:
    procs = [
        await asyncio.create_subprocess_exec(
            sys.executable,
            "-m",
            "benchmarks.listener",
            "--redis-url",
            ctx.url,
            "--service",
            SVC,
            "--instance-id",
            f"listener-{i}",
            cwd=REPO_ROOT,
            env=child_env(),
            stdin=asyncio.subprocess.PIPE,
            stdout=asyncio.subprocess.PIPE,
        )
        for i in range(count)
    ]
    for proc in procs:
        assert proc.stdout is not None
        line = await asyncio.wait_for(proc.stdout.readline(), 120)
        if line.strip() != b"ready":
            raise RuntimeError(f"a listener did not start: {line!r}")
    return procs


async def _stop(procs: list[asyncio.subprocess.Process]) -> None:
    for proc in procs:
        assert proc.stdin is not None
        proc.stdin.close()
    for proc in procs:
        await asyncio.wait_for(proc.wait(), 30)


async def _drive(ctx: Ctx, seconds: float) -> int:
    reg = ctx.registry()
    await reg.register_instance(SVC, DRIVER, ttl=LONG_TTL)
    counter = itertools.count()
    changes = 0
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        ids = [f"r-{next(counter)}" for _ in range(BATCH)]
        await reg.register_resource(SVC, DRIVER, ids)
        await reg.release_resource(SVC, DRIVER, ids)
        changes += 2 * BATCH
    await reg.deregister_instance(SVC, DRIVER)
    return changes


async def run_fanout(ctx: Ctx) -> list[Row]:
    counts = fanout_counts(ctx.mode.name)
    ids = [f"ownership_changes@{k}" for k in counts]
    if not ctx.want(*ids):
        return []
    redis_pid = ctx.cpu.pids.get("redis")
    seconds = {"smoke": 1.0, "quick": 3.0, "full": 5.0}[ctx.mode.name]
    rows: list[Row] = []
    for k, rid in zip(counts, ids, strict=True):
        row = Row(rid, f"ownership changes (register + release, batches of {BATCH}) with {k} idle instances", "fanout")
        if redis_pid is None:
            row.skipped = "the benchmark's redis-server is not a local process (no CPU figures)"
            rows.append(row)
            continue
        procs = await _spawn(ctx, k)
        try:
            listeners_before = [proc_cpu_s(p.pid) for p in procs]
            await asyncio.sleep(0.5)
            redis_before = proc_cpu_s(redis_pid)
            t0 = time.monotonic()
            changes = await _drive(ctx, seconds)
            wall = time.monotonic() - t0
            redis_after = proc_cpu_s(redis_pid)
            listeners_after = [proc_cpu_s(p.pid) for p in procs]
        finally:
            await _stop(procs)
        per_1000 = 1000.0 / max(changes, 1)
        listeners_ms = sum(a - b for a, b in zip(listeners_after, listeners_before, strict=True)) * 1000 * per_1000
        row.extras.update(
            listeners=k,
            changes=changes,
            changes_per_s=round(changes / wall, 1),
            redis_cpu_ms_per_1000=round((redis_after - redis_before) * 1000 * per_1000, 3),
            listeners_cpu_ms_per_1000=round(listeners_ms, 3),
        )
        row.ops_override = row.extras["changes_per_s"]
        row.p50_override = row.p99_override = round(wall / max(changes, 1) * 1e6, 2)
        row.note = "p50/p99: wall time per change"
        rows.append(row)
    return rows
