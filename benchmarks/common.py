"""What every benchmark case shares: the run's mode (sizes), the context (Redis, CPU meter) and helpers."""

from __future__ import annotations

import logging
import os
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit, urlunsplit

import redis.asyncio as aredis
from prometheus_client import CollectorRegistry

from resource_router import ResourceRegistry

from .harness import CpuMeter, Op, Phase, a_conc, a_seq, s_conc, s_seq

__all__ = ["MODES", "REPO_ROOT", "Ctx", "Mode", "child_env", "configure_logging", "redis_cmd_usec", "url_with_db"]

REPO_ROOT = Path(__file__).resolve().parent.parent
NAMESPACE = "bench"
INST = "inst-A"
LONG_TTL = 3600.0  # seconds: nothing expires while a benchmark runs


@dataclass(frozen=True)
class Mode:
    name: str
    n: int  # sequential ops per per-op benchmark
    warm: int
    per_task: int  # ops per task in the 64-concurrent phase
    batch_n: int  # sequential 1000-id batches
    batch_warm: int
    batch_per_task: int
    scales: tuple[int, ...]
    scale_n: int  # lookups (and registrations) per scale per round
    scale_rounds: int
    baseline_s: float  # probe baseline window before the register_1000 load
    rounds: int  # compared ops alternate in this many blocks (same machine conditions for each)


MODES: dict[str, Mode] = {
    "smoke": Mode("smoke", 200, 20, 4, 4, 1, 2, (1_000,), 100, 2, 0.2, 2),
    "quick": Mode("quick", 2000, 200, 32, 40, 4, 2, (1_000, 10_000, 100_000), 200, 10, 0.5, 8),
    "full": Mode("full", 6000, 500, 96, 240, 20, 4, (1_000, 100_000, 10_000_000), 250, 24, 2.0, 16),
}


def configure_logging() -> None:
    """The runner is an application: drop the library's info events (state changes) and keep warnings."""
    logging.basicConfig(level=logging.WARNING)


def child_env() -> dict[str, str]:
    """Environment for helper processes (``python -m benchmarks.X`` from the repository root)."""
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(REPO_ROOT), env.get("PYTHONPATH", "")]))
    return env


def url_with_db(url: str, db: int) -> str:
    parts = urlsplit(url)
    return urlunsplit((parts.scheme, parts.netloc, f"/{db}", parts.query, parts.fragment))


async def redis_cmd_usec(admin: aredis.Redis) -> tuple[int, int]:
    """Total (calls, usec) of every command redis-server executed so far (INFO commandstats)."""
    stats = await admin.info("commandstats")
    calls = usec = 0
    for name, value in stats.items():
        if name.startswith("cmdstat_") and name not in ("cmdstat_info",) and isinstance(value, dict):
            calls += int(value.get("calls", 0))
            usec += int(value.get("usec", 0))
    return calls, usec


async def _call(fn: Callable[[], Any], sync: bool) -> None:
    if sync:
        fn()
    else:
        await fn()


@dataclass
class Ctx:
    """One run's shared state. ``url`` is db 0 of the benchmark's Redis; scale rows use other dbs."""

    url: str
    mode: Mode
    cpu: CpuMeter
    admin: aredis.Redis
    nats_url: str
    only: frozenset[str] = frozenset()
    meta: dict[str, Any] = field(default_factory=dict)
    _closers: list[Callable[[], Awaitable[Any]]] = field(default_factory=list)

    def want(self, *ids: str) -> bool:
        return not self.only or any(i in self.only for i in ids)

    @property
    def host_port(self) -> tuple[str, int]:
        parts = urlsplit(self.url)
        return parts.hostname or "127.0.0.1", parts.port or 6379

    def registry(self, url: str | None = None, **kwargs: Any) -> ResourceRegistry:
        """A ResourceRegistry made from a URL (as users do) with its own metrics registry."""
        reg = ResourceRegistry(url or self.url, namespace=NAMESPACE, metrics_registry=CollectorRegistry(), **kwargs)
        self._closers.append(reg.aclose)
        return reg

    def raw_client(self, url: str | None = None) -> aredis.Redis:
        client: aredis.Redis = aredis.Redis.from_url(url or self.url)
        self._closers.append(client.aclose)
        return client

    async def close_all(self) -> None:
        while self._closers:
            await self._closers.pop()()

    async def flush(self) -> None:
        await self.admin.flushdb()

    async def seq(self, op: Callable[[], Awaitable[Any]], *, n: int | None = None, warm: int | None = None) -> Phase:
        """Sequential phase, plus Redis command time per op (INFO commandstats, INFO itself excluded)."""
        n = self.mode.n if n is None else n
        warm = self.mode.warm if warm is None else warm
        for _ in range(warm):
            await op()
        c0, u0 = await redis_cmd_usec(self.admin)
        phase = await a_seq(op, n, 0, self.cpu)
        c1, u1 = await redis_cmd_usec(self.admin)
        phase.cpu_us["redis_cmd"] = round((u1 - u0) / n, 1)
        phase.cpu_us["redis_cmds"] = round((c1 - c0) / n, 2)
        return phase

    async def compare(
        self,
        ops: dict[str, Op],
        *,
        n: int | None = None,
        warm: int | None = None,
        per_task: int | None = None,
        conc_warm: int = 3,
    ) -> dict[str, tuple[Phase, Phase]]:
        """Measure ops side by side: each phase alternates the ops in ``mode.rounds`` blocks (the order
        reversed every other round), so a slow minute on this shared machine hits every op alike."""
        m = self.mode
        n = m.n if n is None else n
        warm = m.warm if warm is None else warm
        per_task = m.per_task if per_task is None else per_task
        seq_rounds = max(1, min(m.rounds, n))
        conc_rounds = max(1, min(m.rounds, per_task))
        seq_parts: dict[str, list[Phase]] = {k: [] for k in ops}
        conc_parts: dict[str, list[Phase]] = {k: [] for k in ops}
        for op in ops.values():  # warm-up, once per op
            for _ in range(warm):
                await _call(op.seq, op.sync)
        names = list(ops)
        for rnd in range(seq_rounds):
            order = names if rnd % 2 == 0 else names[::-1]
            k = n // seq_rounds + (1 if rnd < n % seq_rounds else 0)
            for name in order:
                seq_parts[name].append(await self._seq_block(ops[name], k))
        for rnd in range(conc_rounds):
            order = names if rnd % 2 == 0 else names[::-1]
            k = per_task // conc_rounds + (1 if rnd < per_task % conc_rounds else 0)
            for name in order:
                op = ops[name]
                fn = op.conc or op.seq
                w = conc_warm if rnd == 0 else 0
                if op.sync:
                    conc_parts[name].append(s_conc(fn, k, self.cpu, warm_per_task=w))
                else:
                    conc_parts[name].append(await a_conc(fn, k, self.cpu, warm_per_task=w))
        return {k: (Phase.merge(seq_parts[k]), Phase.merge(conc_parts[k])) for k in ops}

    async def _seq_block(self, op: Op, n: int) -> Phase:
        c0, u0 = await redis_cmd_usec(self.admin)
        phase = s_seq(op.seq, n, 0, self.cpu) if op.sync else await a_seq(op.seq, n, 0, self.cpu)
        c1, u1 = await redis_cmd_usec(self.admin)
        phase.cpu_us["redis_cmd"] = round((u1 - u0) / max(n, 1), 1)
        phase.cpu_us["redis_cmds"] = round((c1 - c0) / max(n, 1), 2)
        return phase

    async def conc(self, op: Callable[[], Awaitable[Any]], *, per_task: int | None = None, warm: int = 5) -> Phase:
        return await a_conc(op, self.mode.per_task if per_task is None else per_task, self.cpu, warm_per_task=warm)
