"""Router replicas: a routed call through ``resource-router serve`` over HTTP (one process and two
workers) and over the NATS subjects, to the same instance process as the direct ``routed_call``.

The rows are measured in the request-reply comparison (``cases_rpc.run_rpc``), alternating blocks with
the direct call, so their ratios to it come from the same minutes of this shared machine.
"""

from __future__ import annotations

import asyncio
import json
import os
import sys
from contextlib import AsyncExitStack, suppress
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import msgpack

from . import responder as rsp
from .common import NAMESPACE, REPO_ROOT, Ctx, child_env
from .harness import Op, Phase, Row
from .servers import find_pid, free_port, nats_reachable

__all__ = ["LABELS", "NOTES", "GatewayOps", "gateway_cpu", "gateway_ops"]

LABELS = {
    "gateway_route": "POST /v1/route through a router replica (resource-router serve) to the same instance",
    "gateway_route_workers2": "the same through a replica run with --workers 2 (two processes on one port)",
    "nats_bridge_route": "nats-py request on ipc.route through a replica (serve --nats) to the same instance",
}
NOTES = {
    "gateway_route": "keep-alive HTTP/1.1, one connection per caller; cpu 'helper' = the replica",
    "gateway_route_workers2": "cpu 'helper' = both workers and their supervisor",
    "nats_bridge_route": "msgpack RouteRequest -> RouteResponse; cpu 'helper' = the replica",
}
#: The replica process whose CPU each row shows (``helper:<role>``; workers add ``:w<pid>`` roles).
ROLES = {"gateway_route": "gateway", "nats_bridge_route": "gateway", "gateway_route_workers2": "gateway_workers2"}


@dataclass
class GatewayOps:
    ops: dict[str, Op] = field(default_factory=dict)
    skipped: list[Row] = field(default_factory=list)


def gateway_cpu(row_id: str, phase: Phase) -> None:
    """Fold the replica's CPU roles of a measured phase into ``helper`` (all processes of a replica)."""
    role = f"helper:{ROLES[row_id]}"
    own = [v for k, v in phase.cpu_us.items() if k == role or k.startswith(role + ":")]
    for k in [k for k in phase.cpu_us if k.startswith("helper:")]:
        del phase.cpu_us[k]
    if own:
        phase.cpu_us["helper"] = round(sum(own), 1)
    if row_id != "nats_bridge_route":
        phase.cpu_us.pop("nats", None)


async def gateway_ops(ctx: Ctx, stack: AsyncExitStack) -> GatewayOps:
    """Start the replicas the wanted rows need (the instance process is already serving) and return
    one op per row, or the reason it is skipped."""
    out = GatewayOps()
    wanted = [k for k in LABELS if ctx.want(k)]
    if not wanted:
        return out
    exe = Path(sys.executable).with_name("resource-router")
    if not exe.exists():
        out.skipped = [Row(k, LABELS[k], "rpc", skipped="resource-router console script not installed") for k in wanted]
        return out
    prefix = f"bench{os.getpid()}.ipc"  # the NATS server may be shared: subjects of this run only
    nats_reason = nats_reachable(ctx.nats_url) if ctx.want("nats_bridge_route") else "not wanted"
    if ctx.want("gateway_route", "nats_bridge_route"):
        args = ["--nats", ctx.nats_url, "--nats-prefix", prefix] if nats_reason is None else []
        port = await _replica(ctx, stack, exe, "gateway", *args)
        if port is None:
            out.skipped.append(
                Row("gateway_route", LABELS["gateway_route"], "rpc", skipped="the replica did not start")
            )
        elif ctx.want("gateway_route"):
            out.ops["gateway_route"] = await _http_op(stack, port)
        if ctx.want("nats_bridge_route"):
            if nats_reason is not None or port is None:
                reason = nats_reason or "the replica did not start"
                out.skipped.append(Row("nats_bridge_route", LABELS["nats_bridge_route"], "rpc", skipped=reason))
            else:
                out.ops["nats_bridge_route"] = await _nats_op(ctx, stack, f"{prefix}.route")
    if ctx.want("gateway_route_workers2"):
        port = await _replica(ctx, stack, exe, "gateway_workers2", "--workers", "2")
        if port is None:
            reason = "the replica did not start"
            out.skipped.append(Row("gateway_route_workers2", LABELS["gateway_route_workers2"], "rpc", skipped=reason))
        else:
            out.ops["gateway_route_workers2"] = await _http_op(stack, port)
    return out


async def _replica(ctx: Ctx, stack: AsyncExitStack, exe: Path, role: str, *args: str) -> int | None:
    """Start ``resource-router serve``; its port once it answers (None if it does not). Its CPU (and
    that of its workers) is accounted under ``helper:<role>``."""
    port = free_port()
    cmd = [str(exe), "serve", "--redis", ctx.url, "--namespace", NAMESPACE, "--port", str(port)]
    cmd += ["--log-level", "warning", "--sweep-interval", "0", *args]
    proc = await asyncio.create_subprocess_exec(
        *cmd, cwd=REPO_ROOT, stdout=asyncio.subprocess.DEVNULL, stderr=asyncio.subprocess.DEVNULL, env=child_env()
    )
    roles: list[str] = []

    async def stop() -> None:
        for r in roles:
            ctx.cpu.pids.pop(r, None)
        if proc.returncode is None:
            proc.terminate()
            try:
                await asyncio.wait_for(proc.wait(), 15)
            except TimeoutError:
                proc.kill()
                await proc.wait()

    stack.push_async_callback(stop)
    workers = int(args[args.index("--workers") + 1]) if "--workers" in args else 1
    for _ in range(400):
        await asyncio.sleep(0.05)
        children = _workers(proc.pid) if workers > 1 else []
        if len(children) < (workers if workers > 1 else 0):
            continue
        try:
            _, writer = await asyncio.open_connection("127.0.0.1", port)
        except OSError:
            continue
        writer.close()
        break
    else:
        return None
    roles.append(f"helper:{role}")
    ctx.cpu.pids[roles[-1]] = proc.pid
    for pid in _workers(proc.pid):
        roles.append(f"helper:{role}:w{pid}")
        ctx.cpu.pids[roles[-1]] = pid
    return port


def _workers(pid: int) -> list[int]:
    """Worker processes (spawned children) of a replica run with --workers."""
    with suppress(OSError):
        children = Path(f"/proc/{pid}/task/{pid}/children").read_text().split()
        return [int(c) for c in children if b"spawn_main" in Path(f"/proc/{c}/cmdline").read_bytes()]
    return []


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
            writer.write(self.request)
            try:
                head = await reader.readuntil(b"\r\n\r\n")
            except (asyncio.IncompleteReadError, ConnectionResetError):
                # the server closed the connection while it was idle (uvicorn's keep-alive timeout,
                # 5 s, passes while other rows are measured): open another one, as HTTP clients do
                writer.close()
                reader, writer = await self._connect()
                writer.write(self.request)
                head = await reader.readuntil(b"\r\n\r\n")
        else:
            reader, writer = await self._connect()
            writer.write(self.request)
            head = await reader.readuntil(b"\r\n\r\n")
        if not head.startswith(b"HTTP/1.1 200"):
            status_line = head.split(b"\r\n", 1)[0]
            raise RuntimeError(f"replica answered {status_line!r}")
        length = int(head.lower().split(b"content-length:", 1)[1].split(b"\r\n", 1)[0])
        await reader.readexactly(length)
        self.idle.append((reader, writer))

    async def _connect(self) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
        reader, writer = await asyncio.open_connection("127.0.0.1", self.port)
        self.all.append(writer)
        return reader, writer

    async def close(self) -> None:
        for writer in self.all:
            writer.close()


def _route_body() -> dict[str, Any]:
    return {"service_name": rsp.SERVICE, "resource_id": rsp.RESOURCE, "method": "echo", "params": {"b": rsp.PAD_PARAMS}}


async def _http_op(stack: AsyncExitStack, port: int) -> Op:
    body = _route_body()
    body["params"] = {"b": body["params"]["b"].decode("latin-1")}  # the same bytes, as JSON text
    http = _Http(port, json.dumps(body).encode())
    stack.push_async_callback(http.close)
    await http.call()  # routes end to end once before measuring
    return Op(http.call)


async def _nats_op(ctx: Ctx, stack: AsyncExitStack, subject: str) -> Op:
    import nats

    nats_pid = find_pid("nats-server")
    if nats_pid:
        ctx.cpu.pids["nats"] = nats_pid
        stack.callback(ctx.cpu.pids.pop, "nats", None)
    nc = await nats.connect(ctx.nats_url, allow_reconnect=False, connect_timeout=2)
    stack.push_async_callback(nc.drain)
    data = msgpack.packb(_route_body())

    async def call() -> None:
        reply = msgpack.unpackb((await nc.request(subject, data, timeout=5)).data)
        if reply.get("instance_id") != rsp.INSTANCE:
            raise RuntimeError(f"the replica answered {reply!r}")

    for _ in range(50):  # the replica subscribed before it answered HTTP; one call end to end first
        try:
            await call()
            break
        except nats.errors.NoRespondersError:
            await asyncio.sleep(0.1)
    return Op(call)
