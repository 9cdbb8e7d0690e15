"""Lookups, single registrations, locks, 1000-id batches and heartbeats, next to their anchors."""

from __future__ import annotations

import asyncio
import itertools
import json
import sys
import tempfile
import time
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import redis

from resource_router import RouterSettings

from .common import INST, LONG_TTL, NAMESPACE, REPO_ROOT, Ctx, child_env, redis_cmd_usec
from .harness import Op, Phase, Row

__all__ = ["run_batches", "run_locks", "run_lookups"]

SVC = "svc"
TTL_MS = int(LONG_TTL * 1000)
BATCH = 1000
#: Steps of the chunked registration rows: small enough that one script holds Redis well under 1 ms.
CHUNK = 100


async def run_lookups(ctx: Ctx) -> list[Row]:
    """raw_get (floor), lookup (get_resource_owner: one MGET), lookup_owner_id (get_owner_id: one GET),
    measured side by side (alternating blocks)."""
    conc_ids = [f"look-{k}" for k in range(64)]
    ops: dict[str, Op] = {}
    labels = {
        "raw_get": "redis-py asyncio GET (floor)",
        "lookup": "ResourceRegistry.get_resource_owner (one EVALSHA: owner + grant record)",
        "lookup_owner_id": "ResourceRegistry.get_owner_id (GET)",
    }
    if ctx.want("raw_get"):
        r = ctx.raw_client()
        for k in range(64):
            await r.set(f"raw:owner:{k}", INST)
        raw_keys = itertools.cycle([f"raw:owner:{k}" for k in range(64)])

        async def get() -> None:
            assert await r.get("raw:owner:0") is not None

        async def get_c() -> None:
            await r.get(next(raw_keys))

        ops["raw_get"] = Op(get, get_c)
    if ctx.want("lookup", "lookup_owner_id"):
        reg = ctx.registry()
        await reg.register_instance(SVC, INST, ttl=LONG_TTL)
        await reg.register_resource(SVC, INST, ["look-0", *conc_ids])
        cyc = itertools.cycle(conc_ids)

        async def lookup() -> None:
            await reg.get_resource_owner(SVC, "look-0")

        async def lookup_c() -> None:
            await reg.get_resource_owner(SVC, next(cyc))

        async def owner_id() -> None:
            assert await reg.get_owner_id(SVC, "look-0") == INST

        async def owner_id_c() -> None:
            await reg.get_owner_id(SVC, next(cyc))

        if ctx.want("lookup"):
            ops["lookup"] = Op(lookup, lookup_c)
        if ctx.want("lookup_owner_id"):
            ops["lookup_owner_id"] = Op(owner_id, owner_id_c)
    if not ops:
        return []
    got = await ctx.compare(ops)
    await ctx.flush()
    return [Row(k, labels[k], "lookup", *got[k]) for k in ops]


async def run_locks(ctx: Ctx) -> list[Row]:
    """register_release and the lock libraries it replaces, side by side."""
    ops: dict[str, Op] = {}
    rows: list[Row] = []
    cleanup: list[Callable[[], Awaitable[Any]]] = []
    labels = {
        "register_release": "register_resource + release_resource (1 id)",
        "redispy_lock": "redis-py asyncio Lock acquire+release",
        "aioredlock": "aioredlock lock+unlock (fixed TTL)",
        "python_redis_lock": "python-redis-lock acquire+release [sync]",
    }
    notes = {"python_redis_lock": "sync; concurrent = 64 threads"}
    if ctx.want("register_release"):
        reg = ctx.registry()
        await reg.register_instance(SVC, INST, ttl=LONG_TTL)
        ctr = itertools.count()

        async def reg_rel() -> None:
            rid = f"rr-{next(ctr)}"
            await reg.register_resource(SVC, INST, [rid])
            await reg.release_resource(SVC, INST, [rid])

        ops["register_release"] = Op(reg_rel)
    if ctx.want("redispy_lock"):
        r = ctx.raw_client()
        lctr = itertools.count()

        async def lock() -> None:
            lk = r.lock(f"rpl:{next(lctr)}", timeout=LONG_TTL)
            assert await lk.acquire()
            await lk.release()

        ops["redispy_lock"] = Op(lock)
    host, port = ctx.host_port
    if ctx.want("aioredlock"):
        try:
            from aioredlock import Aioredlock
        except ImportError as exc:
            rows.append(Row("aioredlock", labels["aioredlock"], "ownership", skipped=f"not installed ({exc})"))
        else:
            mgr = Aioredlock([{"host": host, "port": port}])
            cleanup.append(mgr.destroy)
            actr = itertools.count()

            async def arl() -> None:
                lk = await mgr.lock(f"arl:{next(actr)}", lock_timeout=LONG_TTL)
                await mgr.unlock(lk)

            ops["aioredlock"] = Op(arl)
    if ctx.want("python_redis_lock"):
        try:
            import redis_lock
        except ImportError as exc:
            rows.append(
                Row("python_redis_lock", labels["python_redis_lock"], "ownership", skipped=f"not installed ({exc})")
            )
        else:
            rs = redis.Redis(host=host, port=port)
            pctr = itertools.count()

            def prl() -> None:
                lk = redis_lock.Lock(rs, f"prl:{next(pctr)}", expire=int(LONG_TTL))
                assert lk.acquire(blocking=True)
                lk.release()

            async def close_rs() -> None:
                rs.close()

            cleanup.append(close_rs)
            ops["python_redis_lock"] = Op(prl, sync=True)
    try:
        got = await ctx.compare(ops) if ops else {}
    finally:
        for fn in cleanup:
            await fn()
    await ctx.flush()
    rows += [Row(k, labels[k], "ownership", *got[k], note=notes.get(k, "")) for k in ops]
    order = list(labels)
    return sorted(rows, key=lambda row: order.index(row.id))


# -- 1000-id batches --------------------------------------------------------------------------------
async def run_batches(ctx: Ctx) -> list[Row]:
    rows: list[Row] = []
    m = ctx.mode
    ops: dict[str, Op] = {}
    await ctx.flush()
    if ctx.want("register_1000"):
        reg = ctx.registry(max_resources_per_instance=1_000_000)
        await reg.register_instance(SVC, "inst-b", ttl=LONG_TTL)
        ctr = itertools.count()

        async def register_1000() -> None:
            i = next(ctr)
            resp = await reg.register_resource(SVC, "inst-b", [f"b{i}-{j}" for j in range(BATCH)])
            assert resp.success

        ops["register_1000"] = Op(register_1000)
    if ctx.want("register_1000_chunked"):
        creg = ctx.registry(max_resources_per_instance=1_000_000, settings=RouterSettings(register_chunk_size=CHUNK))
        await creg.register_instance(SVC, "inst-c", ttl=LONG_TTL)
        cctr = itertools.count()

        async def register_1000_chunked() -> None:
            i = next(cctr)
            resp = await creg.register_resource(SVC, "inst-c", [f"c{i}-{j}" for j in range(BATCH)])
            assert resp.success

        ops["register_1000_chunked"] = Op(register_1000_chunked)
    if ctx.want("pipeline_setnx_1000"):
        r = ctx.raw_client()
        prefix = f"{NAMESPACE}:{{{SVC}}}:owner:"
        pctr = itertools.count()

        async def pipeline_1000() -> None:
            i = next(pctr)
            async with r.pipeline(transaction=False) as p:
                for j in range(BATCH):
                    p.set(f"{prefix}p{i}-{j}", INST, nx=True, px=TTL_MS)
                res = await p.execute()
            assert res[0] and res[-1]

        ops["pipeline_setnx_1000"] = Op(pipeline_1000)
    if ops:
        got = await ctx.compare(ops, n=m.batch_n, warm=m.batch_warm, per_task=m.batch_per_task, conc_warm=1)
        labels = {
            "register_1000": "register_resource of 1000 fresh ids (one Lua call)",
            "register_1000_chunked": f"the same with register_chunk_size={CHUNK} (atomic steps of {CHUNK} ids)",
            "pipeline_setnx_1000": "redis-py pipeline of 1000 SET NX PX",
        }
        rows += [Row(k, labels[k], "batch", *got[k], note="ops = batches of 1000") for k in ops]
        await ctx.flush()
    if ctx.want("lookup_during_register_1000"):
        rows.append(await _lookup_during_register(ctx))
        await ctx.flush()
    if ctx.want("lookup_during_register_1000_chunked"):
        rows.append(await _lookup_during_register(ctx, chunk=CHUNK))
        await ctx.flush()
    if ctx.want("lookup_during_register_1000_p16"):
        rows.append(await _lookup_during_register(ctx, partitions=16))
        await ctx.flush()
    if ctx.want("heartbeat_owned_10", "heartbeat_owned_100000"):
        rows += await _heartbeats(ctx)
        await ctx.flush()
    return rows


async def _lookup_during_register(ctx: Ctx, chunk: int | None = None, partitions: int = 1) -> Row:
    """A lookup probe in another process while this one runs register_1000 back to back."""
    m = ctx.mode
    row_id = (
        "lookup_during_register_1000" + ("_chunked" if chunk else "") + (f"_p{partitions}" if partitions > 1 else "")
    )
    reg = ctx.registry(
        max_resources_per_instance=1_000_000,
        partitions=partitions,
        settings=RouterSettings(register_chunk_size=chunk),
    )
    await reg.register_instance(SVC, "inst-b", ttl=LONG_TTL)
    await reg.register_instance(SVC, "probe-owner", ttl=LONG_TTL)
    await reg.register_resource(SVC, "probe-owner", ["probe-res"])
    with tempfile.TemporaryDirectory(prefix="rr-bench-probe-") as tmp:
        out = Path(tmp) / "samples.json"
        cmd = [sys.executable, "-m", "benchmarks.probe", "--url", ctx.url, "--namespace", NAMESPACE]
        cmd += ["--service", SVC, "--resource", "probe-res", "--out", str(out), "--partitions", str(partitions)]
        proc = await asyncio.create_subprocess_exec(
            *cmd, cwd=REPO_ROOT, stdin=asyncio.subprocess.PIPE, stdout=asyncio.subprocess.PIPE, env=child_env()
        )
        assert proc.stdin is not None and proc.stdout is not None
        try:
            line = await asyncio.wait_for(proc.stdout.readline(), 30)
            if line.strip() != b"ready":
                return Row(row_id, "lookup p99 during register_1000", "batch", skipped="probe failed")
            b0 = time.monotonic_ns()
            await asyncio.sleep(m.baseline_s)
            b1 = time.monotonic_ns()
            ctr = itertools.count()

            async def register_1000() -> None:
                i = next(ctr)
                await reg.register_resource(SVC, "inst-b", [f"q{i}-{j}" for j in range(BATCH)])

            c0, u0 = await redis_cmd_usec(ctx.admin)
            l0 = time.monotonic_ns()
            for _ in range(m.batch_n):
                await register_1000()
            l1 = time.monotonic_ns()
            c1, u1 = await redis_cmd_usec(ctx.admin)
            proc.stdin.write(b"stop\n")
            await proc.stdin.drain()
            proc.stdin.close()
            await asyncio.wait_for(proc.wait(), 30)
            samples = json.loads(out.read_text())
        finally:
            if proc.returncode is None:
                proc.kill()
                await proc.wait()
    loaded = [lat for start, lat in samples if l0 <= start <= l1]
    baseline = [lat for start, lat in samples if b0 <= start <= b1]
    phase = Phase(loaded, (l1 - l0) / 1e9, len(loaded))
    base = Phase(baseline, (b1 - b0) / 1e9, len(baseline))
    row = Row(
        row_id,
        "lookup (other process) while register_1000 runs back to back"
        + (f", register_chunk_size={chunk}" if chunk else "")
        + (f", partitions={partitions}" if partitions > 1 else ""),
        "batch",
        phase,
        note=f"ops/s = probe lookups/s under load; {m.batch_n} batches",
    )
    row.extras.update(
        probe_samples=len(loaded),
        probe_max_us=round(phase.p(100), 1),
        baseline_p50_us=round(base.p(50), 1) if baseline else None,
        baseline_p99_us=round(base.p(99), 1) if baseline else None,
        register_1000_redis_cmd_us=round((u1 - u0) / max(m.batch_n, 1), 1),
        register_1000_redis_cmds=round((c1 - c0) / max(m.batch_n, 1), 2),
    )
    row.plot_series["baseline (no load)"] = base.lat_ns
    return row


async def _heartbeats(ctx: Ctx) -> list[Row]:
    """Heartbeat of an instance owning 10 ids and of one owning 100,000, side by side: with leases by
    reference the cost depends on the partitions, not on what the instance owns."""
    reg = ctx.registry(max_resources_per_instance=1_000_000)
    owned = {"heartbeat_owned_10": 10, "heartbeat_owned_100000": 100_000 if ctx.mode.name != "smoke" else 10_000}
    for row_id, count in owned.items():
        await reg.register_instance(SVC, row_id, ttl=LONG_TTL)
        for start in range(0, count, BATCH):
            await reg.register_resource(SVC, row_id, [f"{row_id}-{j}" for j in range(start, min(count, start + BATCH))])

    def op(row_id: str, count: int) -> Op:
        async def heartbeat() -> None:
            res = await reg.heartbeat(SVC, row_id, ttl=LONG_TTL)
            assert res.owned_count == count

        return Op(heartbeat)

    m = ctx.mode
    got = await ctx.compare({k: op(k, c) for k, c in owned.items()}, n=max(m.batch_n, 200), warm=m.batch_warm)
    return [
        Row(k, f"heartbeat of an instance owning {c:,} ids", "batch", *got[k], note="one lease key per partition")
        for k, c in owned.items()
    ]
