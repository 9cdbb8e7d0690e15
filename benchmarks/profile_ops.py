"""Profile the client side of one operation: where the Python time of a lookup or a registration goes.

    python -m benchmarks.profile_ops lookup_owner_id --n 20000            # cProfile, top functions
    python -m benchmarks.profile_ops register_1000 --profiler pyinstrument

Ops: raw_get, lookup, lookup_owner_id, register_release, register_1000, heartbeat_1000. Starts its own
redis-server (or ``--redis-url``). cProfile figures are per op (calls/op and tottime us/op), so
"per-call allocations" and extra round trips show up as call counts.
"""

from __future__ import annotations

import argparse
import asyncio
import cProfile
import io
import itertools
import pstats
import time
from collections.abc import Awaitable, Callable
from typing import Any

import redis.asyncio as aredis
from prometheus_client import CollectorRegistry

from resource_router import ResourceRegistry

from .common import configure_logging
from .servers import RedisProcess

OPS = ("raw_get", "lookup", "lookup_owner_id", "register_release", "register_1000", "heartbeat_1000")


async def build(op: str, url: str) -> tuple[Callable[[], Awaitable[Any]], Callable[[], Awaitable[None]]]:
    if op == "raw_get":
        r = aredis.Redis.from_url(url)
        await r.set("k", "inst-A")
        return (lambda: r.get("k")), r.aclose
    reg = ResourceRegistry(
        url, namespace="prof", max_resources_per_instance=1_000_000, metrics_registry=CollectorRegistry()
    )
    await reg.register_instance("svc", "inst-A", ttl=3600)
    await reg.register_resource("svc", "inst-A", ["res-1"])
    ctr = itertools.count()
    if op == "lookup":
        return (lambda: reg.get_resource_owner("svc", "res-1")), reg.aclose
    if op == "lookup_owner_id":
        return (lambda: reg.get_owner_id("svc", "res-1")), reg.aclose
    if op == "register_release":

        async def reg_rel() -> None:
            rid = f"r{next(ctr)}"
            await reg.register_resource("svc", "inst-A", [rid])
            await reg.release_resource("svc", "inst-A", [rid])

        return reg_rel, reg.aclose
    if op == "register_1000":

        async def reg_1000() -> None:
            i = next(ctr)
            await reg.register_resource("svc", "inst-A", [f"b{i}-{j}" for j in range(1000)])

        return reg_1000, reg.aclose
    if op == "heartbeat_1000":
        await reg.register_instance("svc", "hb", ttl=3600)
        await reg.register_resource("svc", "hb", [f"h{j}" for j in range(1000)])
        return (lambda: reg.heartbeat("svc", "hb", ttl=3600)), reg.aclose
    raise SystemExit(f"unknown op {op!r}; one of {', '.join(OPS)}")


def _group(where: str) -> str:
    """A component name for a cProfile entry: library module, dependency or syscall."""
    if "resource_router/" in where:
        return "resource_router." + where.split("resource_router/")[1].split(".py")[0]
    if "<method 'send'" in where or "<method 'recv'" in where or "epoll" in where:
        return "socket send/recv + epoll (syscalls)"
    for dep in ("redis", "prometheus_client", "pydantic", "structlog", "tenacity", "msgpack"):
        if where.startswith(dep + "/") or f"/{dep}/" in where:
            return dep
    for std in ("asyncio", "uuid", "json", "contextlib", "selectors", "typing", "enum", "functools"):
        if f"/{std}/" in where or f"/{std}.py" in where:
            return "stdlib " + (std if std != "selectors" else "asyncio")
    if "benchmarks/" in where:
        return "benchmark driver"
    return "builtins/other (isinstance, len, str.encode, ...)"


async def profile(args: argparse.Namespace, url: str) -> None:
    fn, close = await build(args.op, url)
    for _ in range(min(500, args.n // 10)):
        await fn()
    t0 = time.perf_counter()
    cpu0 = time.process_time()
    for _ in range(args.n):
        await fn()
    wall = (time.perf_counter() - t0) / args.n * 1e6
    cpu = (time.process_time() - cpu0) / args.n * 1e6
    print(f"{args.op}: {wall:.1f} us/op wall, {cpu:.1f} us/op client CPU (unprofiled, n={args.n})")
    if args.profiler == "pyinstrument":
        from pyinstrument import Profiler

        prof = Profiler(interval=0.0001, async_mode="disabled")
        prof.start()
        for _ in range(args.n):
            await fn()
        prof.stop()
        print(prof.output_text(unicode=False, color=False, show_all=False))
    else:
        cp = cProfile.Profile()
        cp.enable()
        for _ in range(args.n):
            await fn()
        cp.disable()
        stats = pstats.Stats(cp)
        rows = []
        for (filename, line, name), (_cc, ncalls, tottime, cumtime, _callers) in stats.stats.items():  # type: ignore[attr-defined]
            rows.append((tottime, ncalls, cumtime, f"{filename.split('site-packages/')[-1]}:{line}({name})"))
        rows.sort(reverse=True)
        total = sum(r[0] for r in rows)
        groups: dict[str, float] = {}
        for tottime, _n, _cum, where in rows:
            groups[_group(where)] = groups.get(_group(where), 0.0) + tottime
        print("own time by component (us/op, profiled; cProfile inflates Python time ~2x):")
        for name, t in sorted(groups.items(), key=lambda kv: -kv[1]):
            print(f"  {t / args.n * 1e6:8.2f}  {name}")
        print(f"cProfile: {total / args.n * 1e6:.1f} us/op profiled, {sum(r[1] for r in rows) / args.n:.0f} calls/op")
        print(f"{'tottime us/op':>13} {'calls/op':>9} {'cum us/op':>10}  function")
        for tottime, ncalls, cumtime, where in rows[: args.top]:
            print(f"{tottime / args.n * 1e6:13.2f} {ncalls / args.n:9.2f} {cumtime / args.n * 1e6:10.2f}  {where}")
        if args.callers:
            out = io.StringIO()
            pstats.Stats(cp, stream=out).sort_stats("cumulative").print_stats(40)
            print(out.getvalue())
    await close()


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("op", choices=OPS)
    ap.add_argument("--n", type=int, default=10000)
    ap.add_argument("--profiler", choices=["cprofile", "pyinstrument"], default="cprofile")
    ap.add_argument("--top", type=int, default=35)
    ap.add_argument("--callers", action="store_true", help="also print the cumulative view")
    ap.add_argument("--redis-url")
    args = ap.parse_args()
    configure_logging()
    if args.redis_url:
        asyncio.run(profile(args, args.redis_url))
        return
    with RedisProcess() as server:
        asyncio.run(profile(args, server.url))


if __name__ == "__main__":
    main()
