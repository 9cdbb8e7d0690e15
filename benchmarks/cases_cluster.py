"""Redis Cluster rows: a three-master cluster started from the redis-server binary (the test suite's
helper), a service with 16 partitions on it, next to the same rows on the single Redis.

* ``routed_call_cluster``: ``ServiceClient.call`` to an instance in another process, over sharded
  pub/sub; compared side by side with ``routed_call_single`` (the same on the single Redis);
* ``lookup_cluster``: ``get_resource_owner`` on the cluster (16 partitions);
* ``cluster_spread``: how the owner keys of one service spread over the masters (resources stored:
  the mode's largest scale, at most 10^5).
"""

from __future__ import annotations

import itertools
from contextlib import AsyncExitStack
from typing import Any

import redis.asyncio as aredis
from prometheus_client import CollectorRegistry

from resource_router import ResourceRegistry, ServiceClient

from . import responder as rsp
from .cases_rpc import responder
from .common import NAMESPACE, Ctx
from .harness import Op, Row
from .responder import PAD_PARAMS

__all__ = ["run_cluster"]

PARTITIONS = 16
SVC = "cluster-svc"
SPREAD_SVC = "spread-svc"  # a service of its own: its owner keys are all that is counted
LABELS = {
    "routed_call_single": "ServiceClient.call on the single Redis (the cluster rows' reference, same run)",
    "routed_call_cluster": (
        f"ServiceClient.call over a 3-master Redis Cluster, sharded pub/sub, partitions={PARTITIONS}"
    ),
    "lookup_cluster": f"get_resource_owner on a 3-master Redis Cluster, partitions={PARTITIONS}",
    "cluster_spread": "owner keys of one service (partitions=16) per master of a 3-master cluster",
}


async def run_cluster(ctx: Ctx) -> list[Row]:
    if not ctx.want(*LABELS):
        return []
    try:
        from tests.support.redis_cluster import RedisCluster3
    except ImportError:  # an installed package without the repository's tests
        return [
            Row(k, v, "cluster", skipped="needs the repository's tests/support/redis_cluster.py")
            for k, v in LABELS.items()
        ]
    cluster = RedisCluster3().start()
    try:
        for i, server in enumerate(cluster.servers):
            ctx.cpu.pids[f"redis-c{i + 1}"] = server.pid
        return await _rows(ctx, cluster.url)
    finally:
        for i in range(len(cluster.servers)):
            ctx.cpu.pids.pop(f"redis-c{i + 1}", None)
        cluster.stop()


async def _rows(ctx: Ctx, url: str) -> list[Row]:
    rows: list[Row] = []
    ops: dict[str, Op] = {}
    async with AsyncExitStack() as stack:
        if ctx.want("routed_call_cluster", "routed_call_single"):
            for name, where, partitions in (
                ("routed_call_single", ctx.url, 1),
                ("routed_call_cluster", url, PARTITIONS),
            ):
                await stack.enter_async_context(responder(ctx, "instance", name, url=where, partitions=partitions))
                client = ServiceClient(
                    where, namespace=NAMESPACE, partitions=partitions, metrics_registry=CollectorRegistry()
                )
                await stack.enter_async_context(client)

                async def call(client: Any = client) -> None:
                    await client.call(rsp.SERVICE, "echo", {"b": PAD_PARAMS}, resource_id=rsp.RESOURCE, timeout=5.0)

                ops[name] = Op(call)
        if ctx.want("lookup_cluster"):
            reg = ResourceRegistry(
                url, namespace=NAMESPACE, partitions=PARTITIONS, metrics_registry=CollectorRegistry()
            )
            stack.push_async_callback(reg.aclose)
            await reg.register_instance(SVC, "owner", ttl=3600)
            ids = [f"l{i}" for i in range(64)]
            await reg.register_resource(SVC, "owner", ids)
            cycle = itertools.cycle(ids)

            async def lookup() -> None:
                await reg.get_resource_owner(SVC, next(cycle))

            ops["lookup_cluster"] = Op(lookup)
        if ops:
            got = await ctx.compare(ops)
            for k in ops:
                note = "cpu: every redis-server of the run" if "cluster" in k else ""
                rows.append(Row(k, LABELS[k], "cluster", *got[k], note=note))
        if ctx.want("cluster_spread"):
            rows.append(await _spread(ctx, url))
    return rows


async def _spread(ctx: Ctx, url: str) -> Row:
    count = min(max(ctx.mode.scales), 100_000)
    reg = ResourceRegistry(
        url,
        namespace=NAMESPACE,
        partitions=PARTITIONS,
        max_resources_per_instance=1_000_000,
        metrics_registry=CollectorRegistry(),
    )
    try:
        await reg.register_instance(SPREAD_SVC, "spread", ttl=3600)
        for start in range(0, count, 1000):
            await reg.register_resource(
                SPREAD_SVC, "spread", [f"s-{i:07d}" for i in range(start, min(count, start + 1000))]
            )
        client = reg.redis
        assert isinstance(client, aredis.RedisCluster)
        per_master: dict[str, int] = {}
        for node in client.get_primaries():
            direct = aredis.Redis(host=node.host, port=node.port)
            try:
                n = 0
                async for _key in direct.scan_iter(match=f"{NAMESPACE}:{{{SPREAD_SVC}:*}}:owner:*", count=5000):
                    n += 1
                per_master[node.name] = n
            finally:
                await direct.aclose()
    finally:
        await reg.aclose()
    row = Row("cluster_spread", LABELS["cluster_spread"], "spread", note=f"{count:,} resources stored")
    shares = {name: round(n / count, 3) for name, n in per_master.items()}
    row.extras.update(resources=count, per_master=per_master, share=shares)
    row.extras["min_share"] = min(shares.values()) if shares else None
    row.extras["max_share"] = max(shares.values()) if shares else None
    return row
