"""Request-reply: the library's routed call, naive redis-py pub/sub, NATS; every responder in another process."""

from __future__ import annotations

import asyncio
import itertools
import json
import sys
from collections.abc import AsyncIterator
from contextlib import AsyncExitStack, asynccontextmanager, suppress
from pathlib import Path
from typing import Any

import msgpack
from prometheus_client import CollectorRegistry

from . import responder as rsp
from .common import NAMESPACE, REPO_ROOT, Ctx, child_env
from .harness import Op, Row
from .servers import find_pid, free_port, nats_reachable

__all__ = ["run_rpc"]

HELPER_ROLE = {
    "routed_call_uncached": "routed_call",
    "cached_lookup": "routed_call",
}  # rows served by another row's process


def _pad(base: dict[str, Any], size: int) -> bytes:
    """Padding that brings ``base`` to about ``size`` bytes of msgpack (the anchors' ~100-byte bodies)."""
    return b"x" * max(0, size - len(msgpack.packb({**base, "b": b""})) - 1)


PAD_PUBSUB = _pad({"id": 123456, "r": "bench:reply:caller-7f3a9c21", "m": "route", "res": "res:0000123456"}, 100)
PAD_NATS = _pad({"id": 123456, "m": "route", "res": "res:0000123456"}, 100)
PAD_PARAMS = PAD_NATS  # routed_call: the same user payload; the library adds its own envelope


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
    "gateway_route": "POST /v1/route through a router replica (resource-router serve) to the same instance",
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
        if ctx.want("gateway_route"):
            gw = await _gateway(ctx, stack, need_instance=not ctx.want("routed_call", "routed_call_uncached"))
            if isinstance(gw, str):
                rows.append(Row("gateway_route", LABELS["gateway_route"], "rpc", skipped=gw))
            else:
                ops["gateway_route"] = gw
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
        for phase in (seq, conc):
            own = phase.cpu_us.pop(f"helper:{HELPER_ROLE.get(k, k)}", None)
            for role in [r for r in phase.cpu_us if r.startswith("helper:")]:
                del phase.cpu_us[role]
            if own is not None:
                phase.cpu_us["helper"] = own
            if k != "nats_request_reply":
                phase.cpu_us.pop("nats", None)
        note = "cpu 'helper' = the instance process" if k.startswith("routed") else "cpu 'helper' = responder"
        if k == "gateway_route":
            note = "keep-alive HTTP/1.1, one connection per caller; cpu 'helper' = the replica"
        if k == "cached_lookup":
            note = "a dict read; the concurrent phase runs in threads"
        rows.append(Row(k, LABELS[k], "rpc", seq, conc, note=note))
    await ctx.flush()
    order = list(LABELS)
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


class _Http:
    """A lean keep-alive HTTP/1.1 client (one connection per concurrent caller), so that the row
    measures the replica rather than an HTTP client library."""

    def __init__(self, port: int, body: bytes) -> None:
        self.port = port
        self.request = (
            b"POST /v1/route HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/json\r\n"
            + b"Content-Length: %d\r\n\r\n" % len(body)
            + body
        )
        self.idle: list[tuple[asyncio.StreamReader, asyncio.StreamWriter]] = []
        self.all: list[asyncio.StreamWriter] = []

    async def call(self) -> None:
        if self.idle:
            reader, writer = self.idle.pop()
        else:
            reader, writer = await asyncio.open_connection("127.0.0.1", self.port)
            self.all.append(writer)
        writer.write(self.request)
        head = await reader.readuntil(b"\r\n\r\n")
        if not head.startswith(b"HTTP/1.1 200"):
            status_line = head.split(b"\r\n", 1)[0]
            raise RuntimeError(f"replica answered {status_line!r}")
        length = int(head.lower().split(b"content-length:", 1)[1].split(b"\r\n", 1)[0])
        await reader.readexactly(length)
        self.idle.append((reader, writer))

    async def close(self) -> None:
        for writer in self.all:
            writer.close()


async def _gateway(ctx: Ctx, stack: AsyncExitStack, *, need_instance: bool) -> Op | str:
    exe = Path(sys.executable).with_name("resource-router")
    if not exe.exists():
        return "resource-router console script not installed"
    if need_instance:
        await stack.enter_async_context(responder(ctx, "instance", "routed_call"))
    port = free_port()
    cmd = [str(exe), "serve", "--redis", ctx.url, "--namespace", NAMESPACE, "--port", str(port)]
    cmd += ["--log-level", "warning", "--sweep-interval", "0"]
    proc = await asyncio.create_subprocess_exec(
        *cmd, cwd=REPO_ROOT, stdout=asyncio.subprocess.DEVNULL, stderr=asyncio.subprocess.DEVNULL, env=child_env()
    )

    async def stop() -> None:
        ctx.cpu.pids.pop("helper:gateway_route", None)
        if proc.returncode is None:
            proc.terminate()
            try:
                await asyncio.wait_for(proc.wait(), 15)
            except TimeoutError:
                proc.kill()
                await proc.wait()

    stack.push_async_callback(stop)
    for _ in range(300):
        try:
            _, writer = await asyncio.open_connection("127.0.0.1", port)
        except OSError:
            await asyncio.sleep(0.05)
            continue
        writer.close()
        break
    else:
        return "the replica did not start"
    ctx.cpu.pids["helper:gateway_route"] = proc.pid
    params = {"b": PAD_PARAMS.decode("latin-1") if isinstance(PAD_PARAMS, bytes) else PAD_PARAMS}
    body = json.dumps(
        {"service_name": rsp.SERVICE, "resource_id": rsp.RESOURCE, "method": "echo", "params": params}
    ).encode()
    http = _Http(port, body)
    stack.push_async_callback(http.close)
    await http.call()  # routes end to end once before measuring
    return Op(http.call)


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
