"""Lookup and registration p50 with 10^3 .. 10^6 resources stored, and Redis memory per resource.

Each size lives in its own Redis database (db 1, 2, ...) of the same server, filled with owner keys
and owned-hash grant records in the library's key format (built from ``keys.py`` prefixes; 1000
resources per filler instance). Measurements then interleave the sizes round by round, so every size
sees the same machine conditions (noise here is +-20-30% between minutes).
"""

from __future__ import annotations

import itertools
import random
import time

import redis.asyncio as aredis

from resource_router.ownership.keys import KeySpace

from .common import LONG_TTL, NAMESPACE, Ctx, url_with_db
from .harness import Phase, Row, a_seq

__all__ = ["run_scale", "scale_label"]

SVC = "scale-svc"
PER_INSTANCE = 1000
FILL_CHUNK = 20_000

# Bench-only filler (not a library script): writes what register_resources.lua writes per granted id
# (an owner key without TTL, a grant record), and the filler instance's lease key in the partition.
# ARGV: owner prefix, owned-hash prefix, lease prefix, first index, count, ids per instance, ttl ms, now ms
FILL_LUA = """
local op, hp, lp = ARGV[1], ARGV[2], ARGV[3]
local first, count, per = tonumber(ARGV[4]), tonumber(ARGV[5]), tonumber(ARGV[6])
local ttl, now = ARGV[7], ARGV[8]
for i = first, first + count - 1 do
  local rid = string.format('res-%07d', i)
  local iid = 'fill-' .. math.floor(i / per)
  if i % per == 0 or i == first then redis.call('SET', lp .. iid, now, 'PX', ttl) end
  redis.call('SET', op .. rid, iid)
  redis.call('HSET', hp .. iid, rid, string.format('%d', 1700000000000000 + i) .. '|' .. now .. '|')
end
return count
"""


def scale_label(n: int) -> str:
    exp = len(str(n)) - 1
    return f"1e{exp}" if n == 10**exp else str(n)


def rid(i: int) -> str:
    return f"res-{i:07d}"


async def _fill(client: aredis.Redis, n: int) -> float:
    part = KeySpace(NAMESPACE).service(SVC).parts[0]
    fill = client.register_script(FILL_LUA)
    now_ms = int(time.time() * 1000)
    t0 = time.perf_counter()
    for first in range(0, n, FILL_CHUNK):
        count = min(FILL_CHUNK, n - first)
        args = [
            part.owner_prefix,
            part.owned_prefix,
            part.lease_prefix,
            first,
            count,
            PER_INSTANCE,
            int(LONG_TTL * 1000),
        ]
        await fill(keys=[], args=[*args, now_ms])
    return time.perf_counter() - t0


async def _memory(client: aredis.Redis, n: int, used_delta: int) -> dict[str, float]:
    part = KeySpace(NAMESPACE).service(SVC).parts[0]
    rng = random.Random(7)
    picks = [rng.randrange(n) for _ in range(min(100, n))]
    owner = record = 0.0
    for i in picks:
        owner += await client.memory_usage(part.owner(rid(i)), samples=0) or 0
        owned = part.owned(f"fill-{i // PER_INSTANCE}")
        record += (await client.memory_usage(owned, samples=0) or 0) / max(1, await client.hlen(owned))
    k = len(picks)
    return {
        "owner_key_bytes": round(owner / k, 1),
        "grant_record_bytes": round(record / k, 1),
        "memory_usage_bytes_per_resource": round((owner + record) / k, 1),
        "used_memory_bytes_per_resource": round(used_delta / n, 1),
    }


async def run_scale(ctx: Ctx) -> list[Row]:
    if not ctx.want("scale"):
        return []
    m = ctx.mode
    rows: list[Row] = []
    sizes = list(m.scales)
    clients: dict[int, aredis.Redis] = {}
    regs = {}
    memory: dict[int, dict[str, float]] = {}
    fill_s: dict[int, float] = {}
    for db, n in enumerate(sizes, start=1):
        client = ctx.raw_client(url_with_db(ctx.url, db))
        await client.flushdb()
        before = int((await client.info("memory"))["used_memory"])
        fill_s[n] = await _fill(client, n)
        after = int((await client.info("memory"))["used_memory"])
        memory[n] = await _memory(client, n, after - before)
        clients[n] = client
        reg = ctx.registry(url_with_db(ctx.url, db), max_resources_per_instance=1_000_000)
        await reg.register_instance(SVC, "scale-inst", ttl=LONG_TTL)
        regs[n] = reg
    rng = random.Random(11)
    lookups: dict[int, list[int]] = {n: [] for n in sizes}
    registers: dict[int, list[int]] = {n: [] for n in sizes}
    elapsed = {n: [0.0, 0.0] for n in sizes}
    ctr = itertools.count()
    for rnd in range(m.scale_rounds):
        order = sizes if rnd % 2 == 0 else sizes[::-1]
        for n in order:
            reg = regs[n]
            ids = iter([rid(rng.randrange(n)) for _ in range(m.scale_n + 50)])

            async def lookup(reg=reg, ids=ids) -> None:  # type: ignore[no-untyped-def]
                await reg.get_resource_owner(SVC, next(ids))

            async def register(reg=reg) -> None:  # type: ignore[no-untyped-def]
                await reg.register_resource(SVC, "scale-inst", [f"new-{next(ctr)}"])

            ph = await a_seq(lookup, m.scale_n, 50, ctx.cpu)
            lookups[n].extend(ph.lat_ns)
            elapsed[n][0] += ph.elapsed_s
            ph = await a_seq(register, m.scale_n, 20, ctx.cpu)
            registers[n].extend(ph.lat_ns)
            elapsed[n][1] += ph.elapsed_s
    for n in sizes:
        label = scale_label(n)
        look = Phase(lookups[n], elapsed[n][0], len(lookups[n]))
        reg_phase = Phase(registers[n], elapsed[n][1], len(registers[n]))
        rows.append(Row(f"lookup_at_{label}", f"get_resource_owner with {n:,} resources stored", "scale", look))
        rows.append(
            Row(f"register_at_{label}", f"register_resource (1 id) with {n:,} resources stored", "scale", reg_phase)
        )
        mem = Row(
            f"memory_at_{label}",
            f"Redis memory per owned resource with {n:,} stored",
            "memory",
            note="owner key MEMORY USAGE + owned-hash share; used_memory delta / count",
        )
        mem.extras.update(memory[n], resources=n, fill_s=round(fill_s[n], 2))
        mem.extras["scale"] = n
        rows.append(mem)
        rows[-2].extras["scale"] = n
        rows[-3].extras["scale"] = n
    for client in clients.values():
        await client.flushdb(asynchronous=True)  # 10^7 keys: freed in the background
    return rows
