"""High-availability rows: a master with one replica and three Sentinels (the test suite's helpers),
measured side by side in the same run.

* ``register_release_min_replicas1`` / ``register_release_replicated``: one register + release with
  ``min_replicas=1`` (each write followed by ``WAIT``) and with 0, on the same master;
* ``heartbeat_min_replicas1`` / ``heartbeat_replicated``: the same for a heartbeat;
* ``routed_call_sentinel`` / ``routed_call_direct``: a routed call through the Sentinel URL and through
  a direct URL to the same master (instance in another process);
* ``failover_first_call``: under ~1,000 calls/s through the Sentinel URL, the master is SIGKILLed;
  the time to the first successful call after the kill, next to the time the Sentinels took to
  promote the replica (the failover time; goal: failover time + 1 s).
"""

from __future__ import annotations

import asyncio
import itertools
import time
from contextlib import AsyncExitStack
from typing import Any

from prometheus_client import CollectorRegistry

from resource_router import ResourceRegistry, ResourceRouterError, RouterSettings, ServiceClient, ServiceInstance

from . import responder as rsp
from .cases_rpc import responder
from .common import LONG_TTL, NAMESPACE, Ctx
from .harness import Op, Row
from .responder import PAD_PARAMS

__all__ = ["LABELS", "run_failover"]

SVC = "ha-svc"
LABELS = {
    "register_release_replicated": "register + release (1 id), master with one replica, min_replicas=0",
    "register_release_min_replicas1": "register + release (1 id), master with one replica, min_replicas=1 (WAIT)",
    "heartbeat_replicated": "heartbeat, master with one replica, min_replicas=0",
    "heartbeat_min_replicas1": "heartbeat, master with one replica, min_replicas=1 (WAIT)",
    "routed_call_direct": "ServiceClient.call through redis:// to the master (the Sentinel row's reference)",
    "routed_call_sentinel": "ServiceClient.call through redis+sentinel:// (three Sentinels)",
    "failover_first_call": "SIGKILL of the master under ~1,000 calls/s via Sentinel: first successful call after",
}


async def run_failover(ctx: Ctx) -> list[Row]:
    if not ctx.want(*LABELS):
        return []
    try:
        from tests.support.replicas import ReplicaSet, Sentinels
    except ImportError:  # an installed package without the repository's tests
        return [Row(k, v, "ha", skipped="needs the repository's tests/support/replicas.py") for k, v in LABELS.items()]
    rows: list[Row] = []
    replicas = ReplicaSet(replicas=1).start()
    sentinels = Sentinels(replicas.master.port).start()
    try:
        replicas.wait()
        ctx.cpu.pids["redis-master"] = replicas.master.pid
        rows += await _writes(ctx, replicas.master.url)
        rows += await _calls(ctx, replicas.master.url, sentinels.url)
        if ctx.want("failover_first_call"):
            rows.append(await _failover(ctx, replicas, sentinels))
    finally:
        ctx.cpu.pids.pop("redis-master", None)
        sentinels.stop()
        replicas.stop()
    return rows


async def _writes(ctx: Ctx, url: str) -> list[Row]:
    want = [k for k in LABELS if k.startswith(("register_release_", "heartbeat_")) and ctx.want(k)]
    if not want:
        return []
    ops: dict[str, Op] = {}
    async with AsyncExitStack() as stack:
        for replicated in (0, 1):
            reg = ResourceRegistry(
                url,
                namespace=NAMESPACE,
                settings=RouterSettings(min_replicas=replicated),
                metrics_registry=CollectorRegistry(),
            )
            stack.push_async_callback(reg.aclose)
            suffix = "min_replicas1" if replicated else "replicated"
            inst = f"ha-{suffix}"
            await reg.register_instance(SVC, inst, ttl=LONG_TTL)
            await reg.register_resource(SVC, inst, [f"{inst}-{i}" for i in range(10)])
            ids = itertools.count()

            async def reg_rel(reg: ResourceRegistry = reg, inst: str = inst, ids: Any = ids) -> None:
                rid = f"{inst}-r{next(ids)}"
                await reg.register_resource(SVC, inst, [rid])
                await reg.release_resource(SVC, inst, [rid])

            async def heartbeat(reg: ResourceRegistry = reg, inst: str = inst) -> None:
                await reg.heartbeat(SVC, inst, ttl=LONG_TTL)

            ops[f"register_release_{suffix}"] = Op(reg_rel)
            ops[f"heartbeat_{suffix}"] = Op(heartbeat)
        got = await ctx.compare({k: ops[k] for k in want})
    return [Row(k, LABELS[k], "ha", *got[k]) for k in want]


async def _calls(ctx: Ctx, direct: str, sentinel: str) -> list[Row]:
    want = [k for k in ("routed_call_direct", "routed_call_sentinel") if ctx.want(k)]
    if not want:
        return []
    ops: dict[str, Op] = {}
    async with AsyncExitStack() as stack:
        await stack.enter_async_context(responder(ctx, "instance", "routed_call_direct", url=direct))
        for name, url in (("routed_call_direct", direct), ("routed_call_sentinel", sentinel)):
            client = ServiceClient(url, namespace=NAMESPACE, metrics_registry=CollectorRegistry())
            await stack.enter_async_context(client)

            async def call(client: ServiceClient = client) -> None:
                await client.call(rsp.SERVICE, "echo", {"b": PAD_PARAMS}, resource_id=rsp.RESOURCE, timeout=5.0)

            ops[name] = Op(call)
        got = await ctx.compare({k: ops[k] for k in want})
    return [Row(k, LABELS[k], "ha", *got[k], note="same master, same instance process") for k in want]


async def _failover(ctx: Ctx, replicas: Any, sentinels: Any) -> Row:
    """Calls at ~1,000/s through the Sentinel URL; SIGKILL the master; first success after it."""
    url = sentinels.url
    row = Row("failover_first_call", LABELS["failover_first_call"], "ha")
    inst = ServiceInstance(url, "ha-calls", "ha-1", namespace=NAMESPACE, ttl=10.0, metrics_registry=CollectorRegistry())
    inst.add_handler("echo", lambda request: request.params)
    async with inst, ServiceClient(url, namespace=NAMESPACE, metrics_registry=CollectorRegistry()) as client:
        await inst.register_resource(["room-1"])
        await client.call("ha-calls", "echo", 1, resource_id="room-1")
        killed_at: list[float] = []
        first_ok: list[float] = []
        failed = 0

        async def load() -> None:
            nonlocal failed
            while not first_ok:
                started = time.monotonic()
                try:
                    await client.call("ha-calls", "echo", 1, resource_id="room-1", timeout=0.5)
                    if killed_at and started >= killed_at[0]:
                        first_ok.append(time.monotonic())
                except ResourceRouterError:
                    failed += 1
                await asyncio.sleep(max(0.0, 0.001 - (time.monotonic() - started)))

        task = asyncio.get_running_loop().create_task(load())
        await asyncio.sleep(1.0)
        replica = replicas.replicas[0]
        killed_at.append(time.monotonic())
        replicas.master.kill()
        switched = await asyncio.to_thread(sentinels.wait_master, replica.port, 30.0)
        try:
            await asyncio.wait_for(task, 30.0)
        except TimeoutError:
            task.cancel()
            row.skipped = "no successful call within 30 s of the kill"
            return row
    recovery = first_ok[0] - killed_at[0]
    row.p50_override = round(recovery * 1e6, 1)
    row.extras.update(recovery_s=round(recovery, 3), failover_s=round(switched, 3), failed_calls=failed)
    row.note = f"the Sentinels promoted the replica {switched:.2f} s after the kill"
    return row
