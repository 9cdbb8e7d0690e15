"""Per-resource state rows, each next to the plain operation it stands on, measured side by side.

* ``state_save`` / ``evalsha_set``: ``request.state.save(value)`` (msgpack encoding, then one EVALSHA
  that checks the grant record and writes the state hash) against a plain EVALSHA doing one ``SET``
  of the same encoded bytes;
* ``state_load`` / ``evalsha_get``: ``request.state.load()`` (one EVALSHA, then decoding) against a
  plain EVALSHA doing one ``GET`` of the same bytes;
* ``pg_state_save`` / ``pg_upsert``: ``PostgresStateStore`` save against a plain asyncpg upsert of the
  same row (the machine's PostgreSQL, ``RR_POSTGRES_DSN``; skipped when it cannot be reached).
"""

from __future__ import annotations

import os
import uuid
from typing import Any

import msgpack
from prometheus_client import CollectorRegistry

from resource_router import PostgresStateStore, ServiceInstance

from .common import LONG_TTL, NAMESPACE, Ctx
from .harness import Op, Row

__all__ = ["LABELS", "run_state"]

SVC = "state-svc"
RID = "room-1"
#: A value of about 1 KiB once encoded: a small document, a game room, a cart.
VALUE: dict[str, Any] = {"n": 1, "players": ["ann", "bob", "cy"], "board": "x" * 960}
POSTGRES_DSN = os.environ.get("RR_POSTGRES_DSN", "postgresql://postgres@127.0.0.1:5432/test")
LABELS = {
    "state_save": "request.state.save(value), ~1 KiB msgpack (grant checked in the same EVALSHA)",
    "evalsha_set": "plain EVALSHA: one SET of the same bytes (state_save's reference)",
    "state_load": "request.state.load(), ~1 KiB msgpack",
    "evalsha_get": "plain EVALSHA: one GET of the same bytes (state_load's reference)",
    "pg_state_save": "PostgresStateStore save, ~1 KiB (upsert fenced by the row's token)",
    "pg_upsert": "plain asyncpg upsert of the same row (pg_state_save's reference)",
}
_SET = "return redis.call('SET', KEYS[1], ARGV[1])"
_GET = "return redis.call('GET', KEYS[1])"


async def run_state(ctx: Ctx) -> list[Row]:
    rows: list[Row] = []
    if ctx.want("state_save", "evalsha_set", "state_load", "evalsha_get"):
        rows += await _redis_rows(ctx)
    if ctx.want("pg_state_save", "pg_upsert"):
        rows += await _postgres_rows(ctx)
    return rows


async def _redis_rows(ctx: Ctx) -> list[Row]:
    inst = ServiceInstance(
        ctx.url, SVC, "state-inst", ttl=LONG_TTL, namespace=NAMESPACE, metrics_registry=CollectorRegistry()
    )
    await inst.start()
    ctx._closers.append(inst.stop)
    await inst.register_resource(RID)
    state = inst.state(RID)
    await state.save(VALUE)
    data = msgpack.packb(VALUE, use_bin_type=True)
    raw = ctx.raw_client()
    set_script, get_script = raw.register_script(_SET), raw.register_script(_GET)
    key = f"{NAMESPACE}:{{{SVC}}}:plain:{RID}"
    await set_script(keys=[key], args=[data])

    async def save() -> None:
        await state.save(VALUE)

    async def plain_set() -> None:
        await set_script(keys=[key], args=[data])

    async def load() -> None:
        await state.load()

    async def plain_get() -> None:
        msgpack.unpackb(await get_script(keys=[key]))  # the same decoding the state load does

    ops = {"state_save": Op(save), "evalsha_set": Op(plain_set), "state_load": Op(load), "evalsha_get": Op(plain_get)}
    ops = {k: v for k, v in ops.items() if ctx.want(k)}
    got = await ctx.compare(ops)
    await raw.delete(key)
    return [Row(k, LABELS[k], "state", *got[k], note=f"{len(data)} B encoded") for k in ops]


async def _postgres_rows(ctx: Ctx) -> list[Row]:
    skipped = [Row(k, LABELS[k], "state") for k in ("pg_state_save", "pg_upsert") if ctx.want(k)]
    try:
        import asyncpg
    except ModuleNotFoundError:
        for row in skipped:
            row.skipped = "asyncpg not installed (the postgres extra)"
        return skipped
    try:
        conn = await asyncpg.connect(POSTGRES_DSN, timeout=3)
    except (OSError, asyncpg.PostgresError) as exc:
        for row in skipped:
            row.skipped = f"PostgreSQL not reachable ({type(exc).__name__})"
        return skipped
    table = "bench_state_" + uuid.uuid4().hex[:8]
    store = PostgresStateStore(POSTGRES_DSN, table=table)
    pool = await asyncpg.create_pool(POSTGRES_DSN, min_size=1, max_size=10)
    data = msgpack.packb(VALUE, use_bin_type=True)
    plain_sql = (
        f'INSERT INTO "{table}" AS s (namespace, service_name, resource_id, value, version, fencing_token) '
        "VALUES ($1, $2, $3, $4, 1, $5) ON CONFLICT (namespace, service_name, resource_id) DO UPDATE "
        "SET value = EXCLUDED.value, version = s.version + 1, fencing_token = EXCLUDED.fencing_token, "
        "updated_at = now()"
    )
    try:
        await store.save(SVC, RID, data, instance_id="bench", fencing_token=1)
        await store.save(SVC, "plain-1", data, instance_id="bench", fencing_token=1)

        async def save() -> None:
            await store.save(SVC, RID, data, instance_id="bench", fencing_token=1)

        async def upsert() -> None:
            async with pool.acquire() as c:
                await c.execute(plain_sql, NAMESPACE, SVC, "plain-1", data, 1)

        ops = {k: v for k, v in {"pg_state_save": Op(save), "pg_upsert": Op(upsert)}.items() if ctx.want(k)}
        got = await ctx.compare(ops)
    finally:
        await conn.execute(f'DROP TABLE IF EXISTS "{table}"')
        await conn.close()
        await pool.close()
        await store.aclose()
    return [Row(k, LABELS[k], "state", *got[k], note=f"{len(data)} B") for k in ops]
