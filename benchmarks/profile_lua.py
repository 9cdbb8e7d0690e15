"""Where the Redis-side time of the library's scripts goes: server time per call (``INFO
commandstats``) of the library's own operations on 1 and 1000 ids, next to bench-only Lua scripts that
do one kind of work on 1000 keys (the parts a 1000-id registration is made of).

    python -m benchmarks.profile_lua [--n 50] [--redis-url URL]

The figures are server CPU-side wall time inside redis-server: the time every other client waits
behind one call. Run on a quiet machine; on a loaded one a descheduled redis-server inflates them.
"""

from __future__ import annotations

import argparse
import asyncio
import dataclasses
import itertools
from collections.abc import Awaitable, Callable
from typing import Any

import redis.asyncio as aredis
from prometheus_client import CollectorRegistry

from resource_router import ResourceRegistry
from resource_router.ownership.keys import KeySpace
from resource_router.ownership.scripts import script_source

from .common import REPO_ROOT, configure_logging
from .servers import RedisProcess

N_IDS = 1000
TTL_MS = 3_600_000

# Bench-only scripts: KEYS = 1000 keys of one kind; ARGV[1] owner, ARGV[2] ttl ms.
PARTS: dict[str, str] = {
    "1000 x GET": "for i = 1, #KEYS do redis.call('GET', KEYS[i]) end",
    "MGET of 1000": "redis.call('MGET', unpack(KEYS))",
    "1000 x SET PX": "for i = 1, #KEYS do redis.call('SET', KEYS[i], ARGV[1], 'PX', ARGV[2]) end",
    "1000 x SET NX PX": "for i = 1, #KEYS do redis.call('SET', KEYS[i], ARGV[1], 'NX', 'PX', ARGV[2]) end",
    "1000 x SET NX PX GET (7.0+: claim + read owner in one call)": (
        "for i = 1, #KEYS do redis.call('SET', KEYS[i], ARGV[1], 'NX', 'GET', 'PX', ARGV[2]) end"
    ),
    "1000 x SET (grant value, no TTL)": (
        "for i = 1, #KEYS do redis.call('SET', KEYS[i], ARGV[1] .. '|1700000000000001|1700000000000|') end"
    ),
    "MSET of 1000 (grant values)": """
local kv = {}
for i = 1, #KEYS do kv[#kv + 1] = KEYS[i]; kv[#kv + 1] = ARGV[1] .. '|1700000000000001|1700000000000|' end
redis.call('MSET', unpack(kv))""",
    "1000 x PEXPIRE": "for i = 1, #KEYS do redis.call('PEXPIRE', KEYS[i], ARGV[2]) end",
    "SADD of 1000 members (one call)": "redis.call('SADD', 'bench:set:' .. ARGV[3], unpack(KEYS))",
    "1000 x HSET owner hash (3 fields) + PEXPIRE": """
for i = 1, #KEYS do
  redis.call('HSET', KEYS[i], 'o', ARGV[1], 't', '1700000000000001', 'r', '1700000000000')
  redis.call('PEXPIRE', KEYS[i], ARGV[2])
end""",
    "cjson.encode 1000 ids + XADD + PUBLISH (the event)": """
local ids = {}
for i = 1, #KEYS do ids[i] = KEYS[i] end
local payload = cjson.encode({type = 'ResourceRegistered', resource_ids = ids})
redis.call('XADD', 'bench:audit', 'MAXLEN', '~', 10000, '*', 'event', payload)
redis.call('PUBLISH', 'bench:events', payload)""",
    "empty script with 1000 KEYS (argument passing only)": "return 1",
    "1000 x string concat (prefix .. id), no Redis call": """
local t = {}
for i = 1, #KEYS do t[i] = 'rr:{svc}:grant:' .. KEYS[i] end
return #t""",
}


def _without_event(name: str) -> str:
    """The library's script with ``rr_emit`` shadowed by a no-op (bench-only what-if)."""
    source = script_source(name)
    prelude = (REPO_ROOT / "lua" / "_prelude.lua").read_text(encoding="utf-8")
    assert source.startswith(prelude), "script layout changed"
    return prelude + "\nlocal function rr_emit() end\n" + source[len(prelude) :]


async def server_usec(admin: aredis.Redis, fn: Callable[[], Awaitable[Any]], n: int) -> tuple[float, float]:
    """(server usec per call, commands counted per call) for n calls of fn."""

    async def totals() -> tuple[int, int]:
        stats = await admin.info("commandstats")
        calls = usec = 0
        for name, v in stats.items():
            if name.startswith("cmdstat_") and name != "cmdstat_info" and isinstance(v, dict):
                calls += int(v["calls"])
                usec += int(v["usec"])
        return calls, usec

    await fn()
    c0, u0 = await totals()
    for _ in range(n):
        await fn()
    c1, u1 = await totals()
    return (u1 - u0) / n, (c1 - c0) / n


async def run(url: str, n: int) -> None:
    admin = aredis.Redis.from_url(url)
    await admin.flushall()
    await admin.config_set("slowlog-log-slower-than", 1_000_000)
    reg = ResourceRegistry(
        url, namespace="lp", max_resources_per_instance=1_000_000, metrics_registry=CollectorRegistry()
    )
    await reg.register_instance("svc", "inst-A", ttl=3600)
    sk = KeySpace("lp").service("svc")
    ctr = itertools.count()
    rows: list[tuple[str, float, float]] = []

    async def reg1() -> None:
        await reg.register_resource("svc", "inst-A", [f"one-{next(ctr)}"])

    async def reg1000() -> None:
        i = next(ctr)
        await reg.register_resource("svc", "inst-A", [f"b{i}-{j}" for j in range(N_IDS)])

    refresh_ids = [f"mine-{j}" for j in range(N_IDS)]
    await reg.register_resource("svc", "inst-A", refresh_ids)

    async def refresh1000() -> None:
        await reg.register_resource("svc", "inst-A", refresh_ids)

    rel_batches = iter(range(10**9))

    async def reg_rel1000() -> None:
        i = next(rel_batches)
        ids = [f"r{i}-{j}" for j in range(N_IDS)]
        await reg.register_resource("svc", "inst-A", ids)
        await reg.release_resource("svc", "inst-A", ids)

    await reg.register_instance("svc", "hb", ttl=3600)
    await reg.register_resource("svc", "hb", [f"h{j}" for j in range(N_IDS)])

    async def heartbeat() -> None:
        await reg.heartbeat("svc", "hb", ttl=3600)

    async def rel1() -> None:
        rid = f"one-{next(ctr)}"
        await reg.register_resource("svc", "inst-A", [rid])
        await reg.release_resource("svc", "inst-A", [rid])

    for name, fn in (
        ("library: register_resource, 1 fresh id", reg1),
        ("library: register + release of 1 id (two calls)", rel1),
        ("library: register_resource, 1000 fresh ids", reg1000),
        ("library: register_resource, 1000 ids already owned (refresh)", refresh1000),
        ("library: register + release of 1000 ids (two calls)", reg_rel1000),
        ("library: heartbeat of an instance owning 1000 ids", heartbeat),
    ):
        usec, cmds = await server_usec(admin, fn, n)
        rows.append((name, usec, cmds))
    part_ctr = itertools.count()  # fresh keys for every call of every part
    # What-if: the same scripts with the ownership event (cjson + XADD + PUBLISH) switched off.
    real = reg.store.scripts
    try:
        reg.store.scripts = dataclasses.replace(
            real,
            **{
                name: admin.register_script(_without_event(name))
                for name in ("register_resources", "release_resources")
            },
        )
        for name, fn in (
            ("what-if, no event: register_resource, 1 fresh id", reg1),
            ("what-if, no event: register + release of 1 id", rel1),
            ("what-if, no event: register_resource, 1000 fresh ids", reg1000),
        ):
            usec, cmds = await server_usec(admin, fn, n if "1000" in name else n * 40)
            rows.append((name, usec, cmds))
    except (OSError, AssertionError, TypeError) as exc:
        print(f"(what-if rows skipped: {exc!r})")
    finally:
        reg.store.scripts = real
    for name, body in PARTS.items():
        script = admin.register_script(body)

        async def part(script: Any = script) -> None:
            i = next(part_ctr)
            keys = [f"{sk.parts[0].owner_prefix}p{i}-{j}" for j in range(N_IDS)]
            await script(keys=keys, args=["inst-A", TTL_MS, i])

        usec, cmds = await server_usec(admin, part, n)
        rows.append(("part: " + name, usec, cmds))
    info = await admin.info("server")
    print(
        f"redis-server {info['redis_version']}; server time per call (INFO commandstats); "
        f"{n} calls per 1000-id row, {n * 40} per 1-id row\n"
    )
    print(f"| {'operation':<72} | server us/call | us/id (1000) |")
    print(f"|{'-' * 74}|---------------:|-------------:|")
    for name, usec, _cmds in rows:
        per_id = f"{usec / N_IDS:.2f}" if "1000" in name else "-"
        name = name if len(name) <= 72 else name[:71] + "~"
        print(f"| {name:<72} | {usec:14,.0f} | {per_id:>12} |")
    await reg.aclose()
    await admin.flushall()
    await admin.aclose()


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--n", type=int, default=50, help="calls per 1000-id row (40x as many for 1-id rows)")
    ap.add_argument("--redis-url", help="a scratch Redis (it is FLUSHALLed)")
    args = ap.parse_args()
    configure_logging()
    if args.redis_url:
        asyncio.run(run(args.redis_url, args.n))
        return
    with RedisProcess() as server:
        asyncio.run(run(server.url, args.n))


if __name__ == "__main__":
    main()
