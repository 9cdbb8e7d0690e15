"""Timing drivers, percentiles, CPU accounting and the result row shared by every benchmark.

Method (the same for every row, ours and the compared libraries'): a sequential phase (one caller, ``n`` ops
after ``warm`` warm-up ops; p50/p99 latency and ops/s) and a concurrent phase (64 asyncio tasks, or
64 threads for sync libraries, ``per_task`` ops each after a short warm-up; ops/s). Latencies are
``perf_counter_ns`` around one awaited operation. CPU columns are CPU microseconds per op of this
process, of redis-server and of a helper process (instance, responder, NATS) in the sequential phase.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any

from .servers import proc_cpu_s

__all__ = ["CONC", "CpuMeter", "Op", "Phase", "Row", "a_conc", "a_seq", "percentile", "s_conc", "s_seq"]

CONC = 64

AsyncOp = Callable[[], Awaitable[Any]]
SyncOp = Callable[[], Any]


def percentile(sorted_values: list[float] | list[int], p: float) -> float:
    """Nearest-rank percentile of an ascending list (the anchors' definition)."""
    if not sorted_values:
        return float("nan")
    i = min(len(sorted_values) - 1, max(0, round(p / 100.0 * len(sorted_values)) - 1))
    return float(sorted_values[i])


class CpuMeter:
    """CPU time of this process (all threads) and of other local processes, by role."""

    def __init__(self, pids: dict[str, int | None] | None = None) -> None:
        self.pids: dict[str, int | None] = dict(pids or {})

    def snapshot(self) -> dict[str, float]:
        snap = {"client": time.process_time()}
        for role, pid in self.pids.items():
            snap[role] = proc_cpu_s(pid)
        return snap

    @staticmethod
    def per_op_us(before: dict[str, float], after: dict[str, float], n: int) -> dict[str, float]:
        return {role: round((after[role] - before[role]) / max(n, 1) * 1e6, 1) for role in before}


@dataclass
class Op:
    """An operation to measure: ``seq`` for the sequential phase, ``conc`` (default ``seq``) for the
    concurrent one; ``sync`` ops are plain functions (threads in the concurrent phase)."""

    seq: Callable[[], Any]
    conc: Callable[[], Any] | None = None
    sync: bool = False


@dataclass
class Phase:
    """One measured phase: every latency (ns), wall time and CPU per op."""

    lat_ns: list[int]
    elapsed_s: float
    n: int
    cpu_us: dict[str, float] = field(default_factory=dict)

    def __post_init__(self) -> None:
        self.lat_ns.sort()

    @property
    def ops_per_s(self) -> float:
        return self.n / self.elapsed_s if self.elapsed_s > 0 else float("nan")

    def p(self, q: float) -> float:
        return percentile(self.lat_ns, q) / 1000.0

    @staticmethod
    def merge(parts: list[Phase]) -> Phase:
        """One phase out of several blocks of the same op (CPU per op weighted by ops)."""
        n = sum(p.n for p in parts)
        cpu: dict[str, float] = {}
        for role in parts[0].cpu_us if parts else ():
            cpu[role] = round(sum(p.cpu_us.get(role, 0.0) * p.n for p in parts) / max(n, 1), 1)
        lat = [x for p in parts for x in p.lat_ns]
        return Phase(lat, sum(p.elapsed_s for p in parts), n, cpu)


@dataclass
class Row:
    """One benchmark id: what the table, the JSON file and the plots show."""

    id: str
    label: str
    group: str
    seq: Phase | None = None
    conc: Phase | None = None
    note: str = ""
    skipped: str | None = None
    extras: dict[str, Any] = field(default_factory=dict)
    # Overrides for rows whose figures are not a plain seq/conc pair (memory rows, probes).
    p50_override: float | None = None
    p99_override: float | None = None
    ops_override: float | None = None
    conc64_override: float | None = None
    # Extra latency series (ns) drawn next to ``seq`` in the plots; not written to JSON.
    plot_series: dict[str, list[int]] = field(default_factory=dict)

    @property
    def p50_us(self) -> float | None:
        if self.p50_override is not None:
            return self.p50_override
        return round(self.seq.p(50), 1) if self.seq else None

    @property
    def p99_us(self) -> float | None:
        if self.p99_override is not None:
            return self.p99_override
        return round(self.seq.p(99), 1) if self.seq else None

    @property
    def ops_per_s(self) -> float | None:
        if self.ops_override is not None:
            return self.ops_override
        return round(self.seq.ops_per_s, 1) if self.seq else None

    @property
    def conc64_ops_per_s(self) -> float | None:
        if self.conc64_override is not None:
            return self.conc64_override
        return round(self.conc.ops_per_s, 1) if self.conc else None

    @classmethod
    def from_json(cls, data: dict[str, Any], *, row_id: str, label: str) -> Row:
        """A row measured by another process (its JSON summary: figures, no raw samples)."""
        row = cls(row_id, label, data.get("group", ""), note=data.get("note", ""), skipped=data.get("skipped"))
        row.p50_override, row.p99_override = data.get("p50_us"), data.get("p99_us")
        row.ops_override, row.conc64_override = data.get("ops_per_s"), data.get("conc64_ops_per_s")
        row.extras.update({k: v for k, v in data.items() if k.startswith(("cpu_us", "conc64_p", "n"))})
        return row

    def to_json(self) -> dict[str, Any]:
        out: dict[str, Any] = {
            "id": self.id,
            "label": self.label,
            "group": self.group,
            "p50_us": self.p50_us,
            "p99_us": self.p99_us,
            "ops_per_s": self.ops_per_s,
            "conc64_ops_per_s": self.conc64_ops_per_s,
        }
        if self.skipped is not None:
            out["skipped"] = self.skipped
        if self.note:
            out["note"] = self.note
        if self.seq is not None:
            out["n"] = self.seq.n
            out["cpu_us_per_op"] = self.seq.cpu_us
        if self.conc is not None:
            out["conc64_n"] = self.conc.n
            out["conc64_p50_us"] = round(self.conc.p(50), 1)
            out["conc64_p99_us"] = round(self.conc.p(99), 1)
            out["conc64_cpu_us_per_op"] = self.conc.cpu_us
        out.update(self.extras)
        return out


# -- async drivers ------------------------------------------------------------------------------
async def a_seq(op: AsyncOp, n: int, warm: int, cpu: CpuMeter) -> Phase:
    for _ in range(warm):
        await op()
    lat: list[int] = []
    append = lat.append
    pc = time.perf_counter_ns
    c0 = cpu.snapshot()
    t0 = pc()
    for _ in range(n):
        s = pc()
        await op()
        append(pc() - s)
    elapsed = (pc() - t0) / 1e9
    return Phase(lat, elapsed, n, CpuMeter.per_op_us(c0, cpu.snapshot(), n))


async def a_conc(op: AsyncOp, per_task: int, cpu: CpuMeter, *, warm_per_task: int = 5, conc: int = CONC) -> Phase:
    async def worker(k: int, out: list[int]) -> None:
        pc = time.perf_counter_ns
        for _ in range(k):
            s = pc()
            await op()
            out.append(pc() - s)

    await asyncio.gather(*(worker(warm_per_task, []) for _ in range(conc)))
    lat: list[int] = []
    c0 = cpu.snapshot()
    t0 = time.perf_counter_ns()
    await asyncio.gather(*(worker(per_task, lat) for _ in range(conc)))
    elapsed = (time.perf_counter_ns() - t0) / 1e9
    n = per_task * conc
    return Phase(lat, elapsed, n, CpuMeter.per_op_us(c0, cpu.snapshot(), n))


# -- sync drivers (threads for the concurrent phase) ----------------------------------------------
def s_seq(op: SyncOp, n: int, warm: int, cpu: CpuMeter) -> Phase:
    for _ in range(warm):
        op()
    lat: list[int] = []
    pc = time.perf_counter_ns
    c0 = cpu.snapshot()
    t0 = pc()
    for _ in range(n):
        s = pc()
        op()
        lat.append(pc() - s)
    elapsed = (pc() - t0) / 1e9
    return Phase(lat, elapsed, n, CpuMeter.per_op_us(c0, cpu.snapshot(), n))


def s_conc(op: SyncOp, per_task: int, cpu: CpuMeter, *, warm_per_task: int = 5, conc: int = CONC) -> Phase:
    def worker(k: int) -> list[int]:
        pc = time.perf_counter_ns
        local: list[int] = []
        for _ in range(k):
            s = pc()
            op()
            local.append(pc() - s)
        return local

    with ThreadPoolExecutor(max_workers=conc) as ex:
        list(ex.map(worker, [warm_per_task] * conc))
        c0 = cpu.snapshot()
        t0 = time.perf_counter_ns()
        chunks = list(ex.map(worker, [per_task] * conc))
        elapsed = (time.perf_counter_ns() - t0) / 1e9
    n = per_task * conc
    lat = [x for chunk in chunks for x in chunk]
    return Phase(lat, elapsed, n, CpuMeter.per_op_us(c0, cpu.snapshot(), n))
