"""Peel the library's per-call overhead layer by layer, measured side by side (interleaved blocks).

    python -m benchmarks.profile_layers [--n 20000] [--rounds 20] [--redis-url URL]

Lookup ladder: raw GET -> + asyncio.timeout (the library's per-attempt operation_timeout) -> + the
metrics a lookup records -> get_owner_id; raw MGET -> get_resource_owner. Registration ladder:
2 x GET (two round trips) -> redis-py Lock -> the library's two scripts sent raw (same KEYS/ARGV,
no library Python) -> register_resource + release_resource. Each rung: p50 latency and client CPU/op.
"""

from __future__ import annotations

import argparse
import asyncio
import itertools
import time
from collections.abc import Awaitable, Callable
from typing import Any

import redis.asyncio as aredis
from prometheus_client import CollectorRegistry, Counter, Histogram

from resource_router import ResourceRegistry
from resource_router.ownership.scripts import script_source

from .common import configure_logging
from .harness import percentile
from .servers import RedisProcess

Op = Callable[[], Awaitable[Any]]


async def ladder(title: str, ops: dict[str, Op], n: int, rounds: int) -> None:
    lat: dict[str, list[int]] = {k: [] for k in ops}
    cpu: dict[str, float] = dict.fromkeys(ops, 0.0)
    for fn in ops.values():
        for _ in range(300):
            await fn()
    names = list(ops)
    for rnd in range(rounds):
        for name in names if rnd % 2 == 0 else names[::-1]:
            fn = ops[name]
            out = lat[name]
            c0 = time.process_time()
            for _ in range(n // rounds):
                t = time.perf_counter_ns()
                await fn()
                out.append(time.perf_counter_ns() - t)
            cpu[name] += time.process_time() - c0
    print(f"\n{title}\n| rung | p50 us | p99 us | client CPU us/op |\n|---|---:|---:|---:|")
    for name in names:
        values = sorted(lat[name])
        print(
            f"| {name} | {percentile(values, 50) / 1000:.1f} | {percentile(values, 99) / 1000:.1f} "
            f"| {cpu[name] / len(values) * 1e6:.1f} |"
        )


async def run(url: str, n: int, rounds: int) -> None:
    r = aredis.Redis.from_url(url)
    await r.flushdb()
    reg = ResourceRegistry(url, namespace="pl", metrics_registry=CollectorRegistry())
    await reg.register_instance("svc", "inst-A", ttl=3600)
    await reg.register_resource("svc", "inst-A", ["res-1"])
    okey, gkey = "pl:{svc}:owner:res-1", "pl:{svc}:owned:inst-A"
    mreg = CollectorRegistry()
    found = Counter("x_lookups", "x", ["service_name", "found"], registry=mreg).labels("svc", "true")
    hist = Histogram("x_seconds", "x", ["operation"], registry=mreg, buckets=(0.0001, 0.00025, 0.0005, 0.001, 0.0025))
    dur = hist.labels("lookup")

    async def get() -> None:
        await r.get(okey)

    async def get_timeout() -> None:
        async with asyncio.timeout(5.0):
            await r.get(okey)

    async def get_timeout_metrics() -> None:
        t0 = time.perf_counter()
        async with asyncio.timeout(5.0):
            await r.get(okey)
        dur.observe(time.perf_counter() - t0)
        found.inc()

    async def owner_id() -> None:
        await reg.get_owner_id("svc", "res-1")

    async def mget() -> None:
        await r.mget(okey, gkey + ":x")  # two keys, as a lower bound for reading owner + record

    async def lookup() -> None:
        await reg.get_resource_owner("svc", "res-1")

    await ladder(
        "Lookup ladder",
        {
            "raw GET": get,
            "GET in asyncio.timeout": get_timeout,
            "GET in asyncio.timeout + counter + histogram": get_timeout_metrics,
            "registry.get_owner_id (GET)": owner_id,
            "raw MGET of two keys": mget,
            "registry.get_resource_owner (EVALSHA + Resource)": lookup,
        },
        n,
        rounds,
    )

    ctr = itertools.count()
    reg_script = r.register_script(script_source("register_resources"))
    rel_script = r.register_script(script_source("release_resources"))
    captured: dict[str, tuple[list[Any], list[Any]]] = {}
    real = reg.store.scripts

    class Capture:
        def __init__(self, script: Any, name: str) -> None:
            self.script, self.name = script, name

        async def __call__(self, keys: list[Any], args: list[Any]) -> Any:
            captured[self.name] = (list(keys), list(args))
            return await self.script(keys=keys, args=args)

    reg.store.scripts = type(real)(  # capture the KEYS/ARGV the library sends for one id
        **{**real.__dict__, "register_resources": Capture(real.register_resources, "reg")}
        | {"release_resources": Capture(real.release_resources, "rel")}
    )
    await reg.register_resource("svc", "inst-A", ["probe"])
    await reg.release_resource("svc", "inst-A", ["probe"])
    reg.store.scripts = real
    (kreg, areg), (krel, arel) = captured["reg"], captured["rel"]

    async def two_gets() -> None:
        await r.get(okey)
        await r.get(gkey)

    async def lock() -> None:
        lk = r.lock(f"lk:{next(ctr)}", timeout=30)
        await lk.acquire()
        await lk.release()

    async def raw_scripts() -> None:
        await reg_script(keys=kreg, args=areg)
        await rel_script(keys=krel, args=arel)

    async def library() -> None:
        rid = f"r{next(ctr)}"
        await reg.register_resource("svc", "inst-A", [rid])
        await reg.release_resource("svc", "inst-A", [rid])

    await ladder(
        "Registration ladder (1 id; two round trips each)",
        {
            "2 x GET": two_gets,
            "redis-py Lock acquire+release": lock,
            "library's two scripts via EVALSHA, same KEYS/ARGV (no library Python)": raw_scripts,
            "register_resource + release_resource": library,
        },
        n // 2,
        rounds,
    )
    await reg.aclose()
    await r.flushdb()
    await r.aclose()


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--n", type=int, default=20000)
    ap.add_argument("--rounds", type=int, default=20)
    ap.add_argument("--redis-url", help="a scratch Redis (its db is flushed)")
    args = ap.parse_args()
    configure_logging()
    if args.redis_url:
        asyncio.run(run(args.redis_url, args.n, args.rounds))
        return
    with RedisProcess() as server:
        asyncio.run(run(server.url, args.n, args.rounds))


if __name__ == "__main__":
    main()
