"""Request-reply: the library's routed call, naive redis-py pub/sub, NATS, and the router replicas'
rows (``cases_gateway``), measured side by side; every responder in another process."""

from __future__ import annotations

import asyncio
import itertools
import sys
from collections.abc import AsyncIterator
from contextlib import AsyncExitStack, asynccontextmanager, suppress
from typing import Any

import msgpack
from prometheus_client import CollectorRegistry

from . import responder as rsp
from .cases_gateway import LABELS as GATEWAY_LABELS
from .cases_gateway import NOTES as GATEWAY_NOTES
from .cases_gateway import gateway_cpu, gateway_ops
from .common import NAMESPACE, REPO_ROOT, Ctx, child_env
from .harness import Op, Row
from .responder import PAD_NATS, PAD_PARAMS, PAD_PUBSUB
from .servers import find_pid, nats_reachable

__all__ = ["run_rpc"]

HELPER_ROLE = {
    "routed_call_uncached": "routed_call",
    "cached_lookup": "routed_call",
}  # rows served by another row's process


@asynccontextmanager
async def responder(
    ctx: Ctx, mode: str, role: str, *, url: str | None = None, partitions: int = 1
) -> AsyncIterator[asyncio.subprocess.Process]:
    """A responder process; its CPU is accounted under ``helper:<role>``."""
    cmd = [sys.executable, "-m", "benchmarks.responder", mode, "--redis-url", url or ctx.url]
    cmd += ["--nats-url", ctx.nats_url, "--namespace", NAMESPACE, "--partitions", str(partitions)]
    proc = await asyncio.create_subprocess_exec(
        *cmd, cwd=REPO_ROOT, stdin=asyncio.subprocess.PIPE, stdout=asyncio.subprocess.PIPE, env=child_env()
    )
    assert proc.stdin is not None and proc.stdout is not None
    try:
        line = await asyncio.wait_for(proc.stdout.readline(), 30)
        if line.strip() != b"ready":
            raise RuntimeError(f"responder {mode} did not start: {line.decode(errors='replace').strip()!r}")
        ctx.cpu.pids[f"helper:{role}"] = proc.pid
        yield proc
    finally:
        ctx.cpu.pids.pop(f"helper:{role}", None)
        with suppress(OSError):
            proc.stdin.close()
        try:
            await asyncio.wait_for(proc.wait(), 15)
        except TimeoutError:
            proc.kill()
            await proc.wait()


LABELS = {
    "routed_call": "ServiceClient.call to a ServiceInstance in another process (default owner cache)",
    "cached_lookup": "the owner of a resource from the client's cache (kept fresh by ownership events)",
    "routed_call_uncached": "ServiceClient.call, owner_cache_ttl=0 (owner GET on every call)",
    "routed_call_signed": "ServiceClient.call as routed_call, with signed envelopes (signing_keys)",
    "raw_pubsub_rpc": "naive redis-py pub/sub request-reply (responder in another process)",
    "nats_request_reply": "nats-py request-reply (responder in another process)",
}


async def run_rpc(ctx: Ctx) -> list[Row]:
    """The three request-reply paths side by side (alternating blocks), all responders up at once."""
    rows: list[Row] = []
    ops: dict[str, Op] = {}
    async with AsyncExitStack() as stack:
        if ctx.want("routed_call", "routed_call_uncached", "cached_lookup"):
            got_ops = await _routed_call(ctx, stack)
            for k in ("routed_call", "routed_call_uncached", "cached_lookup"):
                if not ctx.want(k):
                    continue
                if isinstance(got_ops, str):
                    rows.append(Row(k, LABELS[k], "rpc", skipped=got_ops))
                else:
                    ops[k] = got_ops[k]
        if ctx.want("routed_call_signed"):
            signed = await _routed_call_signed(ctx, stack)
            if isinstance(signed, str):
                rows.append(Row("routed_call_signed", LABELS["routed_call_signed"], "rpc", skipped=signed))
            else:
                ops["routed_call_signed"] = signed
        if ctx.want(*GATEWAY_LABELS):
            if not ctx.want("routed_call", "routed_call_uncached"):  # the replicas route to that instance
                await stack.enter_async_context(responder(ctx, "instance", "routed_call"))
            gateway = await gateway_ops(ctx, stack)
            ops.update(gateway.ops)
            rows.extend(gateway.skipped)
        if ctx.want("raw_pubsub_rpc"):
            ops["raw_pubsub_rpc"] = await _raw_pubsub(ctx, stack)
        if ctx.want("nats_request_reply"):
            op = await _nats(ctx, stack)
            if isinstance(op, str):
                rows.append(Row("nats_request_reply", LABELS["nats_request_reply"], "rpc", skipped=op))
            else:
                ops["nats_request_reply"] = op
        got = await ctx.compare(ops) if ops else {}
    for k in ops:
        seq, conc = got[k]
        if k in GATEWAY_LABELS:
            for phase in (seq, conc):
                gateway_cpu(k, phase)
            rows.append(Row(k, GATEWAY_LABELS[k], "rpc", seq, conc, note=GATEWAY_NOTES[k]))
            continue
        for phase in (seq, conc):
            own = phase.cpu_us.pop(f"helper:{HELPER_ROLE.get(k, k)}", None)
            for role in [r for r in phase.cpu_us if r.startswith("helper:")]:
                del phase.cpu_us[role]
            if own is not None:
                phase.cpu_us["helper"] = own
            if k != "nats_request_reply":
                phase.cpu_us.pop("nats", None)
        note = "cpu 'helper' = the instance process" if k.startswith("routed") else "cpu 'helper' = responder"
        if k == "cached_lookup":
            note = "a dict read; the concurrent phase runs in threads"
        rows.append(Row(k, LABELS[k], "rpc", seq, conc, note=note))
    await ctx.flush()
    order = list(LABELS) + list(GATEWAY_LABELS)
    return sorted(rows, key=lambda row: order.index(row.id))


async def _routed_call(ctx: Ctx, stack: AsyncExitStack) -> dict[str, Op] | str:
    try:
        from resource_router import ServiceClient
    except ImportError:
        return "not available (ServiceClient/ServiceInstance not built yet)"
    await stack.enter_async_context(responder(ctx, "instance", "routed_call"))
    cached = ServiceClient(ctx.url, namespace=NAMESPACE, metrics_registry=CollectorRegistry())
    uncached = ServiceClient(ctx.url, namespace=NAMESPACE, owner_cache_ttl=0, metrics_registry=CollectorRegistry())
    ops: dict[str, Op] = {}
    for name, client in (("routed_call", cached), ("routed_call_uncached", uncached)):
        await stack.enter_async_context(client)
        params = {"b": PAD_PARAMS}

        async def call(client: Any = client, params: Any = params) -> None:
            await client.call(rsp.SERVICE, "echo", params, resource_id=rsp.RESOURCE, timeout=5.0)

        ops[name] = Op(call)
    await cached.call(rsp.SERVICE, "echo", None, resource_id=rsp.RESOURCE)  # the owner is cached now
    assert cached.cached_owner(rsp.SERVICE, rsp.RESOURCE) == rsp.INSTANCE

    def cached_lookup() -> None:
        cached.cached_owner(rsp.SERVICE, rsp.RESOURCE)

    ops["cached_lookup"] = Op(cached_lookup, sync=True)
    return ops


async def _routed_call_signed(ctx: Ctx, stack: AsyncExitStack) -> Op | str:
    try:
        from pydantic import SecretStr

        from resource_router import RouterSettings, ServiceClient
    except ImportError:
        return "not available"
    await stack.enter_async_context(responder(ctx, "instance-signed", "routed_call_signed"))
    settings = RouterSettings(signing_keys=[SecretStr(rsp.SIGNING_KEY)])
    client = ServiceClient(ctx.url, namespace=NAMESPACE, settings=settings, metrics_registry=CollectorRegistry())
    await stack.enter_async_context(client)
    params = {"b": PAD_PARAMS}

    async def call() -> None:
        await client.call(rsp.SIGNED_SERVICE, "echo", params, resource_id=rsp.RESOURCE, timeout=5.0)

    return Op(call)


async def _raw_pubsub(ctx: Ctx, stack: AsyncExitStack) -> Op:
    """The anchors' naive request-reply: PUBLISH to the instance channel, reply on a caller channel
    read by one ``listen()`` loop that resolves per-request futures."""
    import redis.asyncio as aredis

    reply_channel = "bench:reply:caller-7f3a9c21"
    await stack.enter_async_context(responder(ctx, "pubsub", "raw_pubsub_rpc"))
    r = aredis.Redis.from_url(ctx.url)
    ps = r.pubsub(ignore_subscribe_messages=True)
    await ps.subscribe(reply_channel)
    pending: dict[int, asyncio.Future[Any]] = {}

    async def reader() -> None:
        async for m in ps.listen():
            if m["type"] != "message":
                continue
            d = msgpack.unpackb(m["data"])
            f = pending.pop(d["id"], None)
            if f is not None and not f.done():
                f.set_result(d)

    task = asyncio.ensure_future(reader())

    async def close() -> None:
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)
        await ps.aclose()
        await r.aclose()

    stack.push_async_callback(close)
    loop = asyncio.get_running_loop()
    ctr = itertools.count()

    async def call() -> None:
        i = next(ctr)
        f = loop.create_future()
        pending[i] = f
        body = msgpack.packb({"id": i, "r": reply_channel, "m": "route", "res": "res:0000123456", "b": PAD_PUBSUB})
        assert await r.publish(rsp.PUBSUB_CHANNEL, body) == 1
        d = await asyncio.wait_for(f, 5)
        assert d["id"] == i

    await asyncio.sleep(0.05)
    return Op(call)


async def _nats(ctx: Ctx, stack: AsyncExitStack) -> Op | str:
    reason = nats_reachable(ctx.nats_url)
    if reason is not None:
        return reason
    try:
        import nats
    except ImportError as exc:
        return f"nats-py not installed ({exc})"
    nats_pid = find_pid("nats-server")
    if nats_pid:
        ctx.cpu.pids["nats"] = nats_pid
        stack.callback(ctx.cpu.pids.pop, "nats", None)
    await stack.enter_async_context(responder(ctx, "nats", "nats_request_reply"))
    nc = await nats.connect(ctx.nats_url, allow_reconnect=False, connect_timeout=2)
    stack.push_async_callback(nc.drain)
    ctx.meta["nats_server"] = nc._server_info.get("version")
    ctr = itertools.count()

    async def call() -> None:
        i = next(ctr)
        body = msgpack.packb({"id": i, "m": "route", "res": "res:0000123456", "b": PAD_NATS})
        m = await nc.request(rsp.NATS_SUBJECT, body, timeout=5)
        assert msgpack.unpackb(m.data)["id"] == i

    return Op(call)
