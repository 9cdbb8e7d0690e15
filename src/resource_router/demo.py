"""The demo: three instances, a few thousand routed calls, conflicts, limits, a crash and a takeover;
then placement: rooms activated on their first call, a crash healed with no user code, a drain.

Runs on the embedded ``memory://demo`` server unless a Redis URL is given (argument, or the
``RESOURCE_ROUTER_REDIS_URL`` environment variable). Everything happens in this process, in a fresh
namespace, and ends in a few seconds. ``python -m resource_router.demo [--redis URL]`` runs it; the
CLI's ``resource-router demo`` calls ``run_demo``.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import math
import random
import secrets
import time
from collections import Counter
from collections.abc import Callable, Sequence
from typing import Any

from resource_router.errors import (
    OwnerUnavailableError,
    ResourceLimitExceededError,
    ResourceNotFoundError,
    ResourceReleaseError,
    ResourceRouterError,
)
from resource_router.models import RouteRequest
from resource_router.ownership.keys import KeySpace
from resource_router.ownership.registry import ResourceRegistry
from resource_router.routing.client import ServiceClient
from resource_router.routing.instance import ServiceInstance
from resource_router.settings import ENV_REDIS_URL, RouterSettings
from resource_router.transport.connection import connect, describe

__all__ = ["DEMO_URL", "format_table", "main", "percentile", "run_demo"]

DEMO_URL = "memory://demo"
SERVICE = "user-service"
ROOMS = "room-service"


def percentile(sorted_values: Sequence[float], q: float) -> float:
    """Nearest-rank percentile of an ascending sequence (0 when empty)."""
    if not sorted_values:
        return 0.0
    rank = max(1, min(len(sorted_values), math.ceil(q / 100.0 * len(sorted_values))))
    return float(sorted_values[rank - 1])


def format_table(headers: Sequence[str], rows: Sequence[Sequence[object]]) -> str:
    """A plain-text table: numeric columns right-aligned (header included), text left-aligned."""
    cells = [[str(h) for h in headers]] + [[str(c) for c in row] for row in rows]
    widths = [max(len(row[i]) for row in cells) for i in range(len(headers))]
    numeric = [
        bool(rows) and all(isinstance(row[i], int | float) and not isinstance(row[i], bool) for row in rows)
        for i in range(len(headers))
    ]

    def line(row: Sequence[str]) -> str:
        parts = [cell.rjust(widths[i]) if numeric[i] else cell.ljust(widths[i]) for i, cell in enumerate(row)]
        return "  ".join(parts).rstrip()

    rule = "  ".join("-" * w for w in widths)
    return "\n".join([line(cells[0]), rule, *(line(row) for row in cells[1:])])


def _make_handlers(inst: ServiceInstance, served: Counter[str]) -> None:
    @inst.handler("get_profile")
    async def get_profile(request: RouteRequest) -> dict[str, Any]:
        served[inst.instance_id] += 1
        return {
            "user": request.resource_id,
            "served_by": inst.instance_id,
            "fencing_token": request.fencing_token,
        }


async def _delete_namespace(redis: Any, namespace: str) -> int:
    """Delete every key of the demo's own namespace (its audit stream, fence, indexes): a demo run
    against a real Redis leaves nothing behind."""
    deleted = 0
    batch: list[Any] = []
    async for key in redis.scan_iter(match=KeySpace(namespace).match_all, count=1000):
        batch.append(key)
        if len(batch) >= 500:
            deleted += await redis.unlink(*batch)
            batch.clear()
    if batch:
        deleted += await redis.unlink(*batch)
    return deleted


def _room_handlers(inst: ServiceInstance, activated: Counter[str]) -> None:
    @inst.on_activate
    async def load(resource_id: str) -> None:  # where a real service would load the room's state
        activated[inst.instance_id] += 1

    @inst.handler("enter")
    async def enter(request: RouteRequest) -> dict[str, Any]:
        return {"served_by": inst.instance_id, "token": request.fencing_token}


async def _placement_act(
    redis: Any, namespace: str, ttl: float, out: Callable[[str], None], rooms: int = 30
) -> dict[str, Any]:
    """Volunteers: rooms activated on their first call, a crash healed with no user code, a drain."""
    activated: Counter[str] = Counter()
    volunteers = [
        ServiceInstance(redis, ROOMS, f"volunteer-{x}", ttl=ttl, namespace=namespace, accept_placement=True)
        for x in ("x", "y", "z")
    ]
    for inst in volunteers:
        _room_handlers(inst, activated)
        await inst.start()
    x, y, _z = volunteers
    names = [f"room-{i}" for i in range(rooms)]
    result: dict[str, Any] = {}
    try:
        async with ServiceClient(redis, namespace=namespace) as client:
            first = {room: await client.call(ROOMS, "enter", resource_id=room) for room in names}
            placed = Counter(r["served_by"] for r in first.values())
            result["placed"] = dict(sorted(placed.items()))
            out(f"\n6. Placement: {len(volunteers)} volunteers (accept_placement=True), nobody registers anything.")
            out(f"   {rooms} rooms activated on their first call (rendezvous hash): {result['placed']}")
            orphans = [room for room in names if first[room]["served_by"] == x.instance_id]
            await x.abort()
            crashed = time.perf_counter()
            # wait_for_owner: each call is served as soon as a volunteer may take its room.
            answers = await asyncio.gather(
                *(client.call(ROOMS, "enter", resource_id=r, timeout=ttl + 5.0, wait_for_owner=True) for r in orphans)
            )
            healed = Counter(a["served_by"] for a in answers)
            result["larger_tokens"] = sum(a["token"] > first[r]["token"] for a, r in zip(answers, orphans, strict=True))
            result["crash_healed_s"] = round(time.perf_counter() - crashed, 2)
            result["healed_by"] = dict(sorted(healed.items()))
            out(
                f"   volunteer-x crashed with {len(orphans)} rooms; after {result['crash_healed_s']:.2f}s "
                f"(its lease, ttl {ttl:g}s) they were served again by {result['healed_by']}, with larger "
                "fencing tokens and no code of ours"
            )
            report = await y.drain(timeout=5.0)
            after = Counter([(await client.call(ROOMS, "enter", resource_id=room))["served_by"] for room in names])
            result["drained_moved"] = report.moved_count
            result["after_drain"] = dict(after)
            out(f"   volunteer-y drained: {report.moved_count} rooms handed to volunteer-z; now {dict(after)}")
            result["activations"] = sum(activated.values())
    finally:
        for inst in volunteers:
            with contextlib.suppress(ResourceRouterError):
                await inst.stop()
    return result


async def run_demo(
    redis_url: str | None = None,
    *,
    out: Callable[[str], None] = print,
    requests: int = 3000,
    concurrency: int = 32,
    ttl: float = 1.5,
    users_per_instance: int = 30,
) -> dict[str, Any]:
    """Run the demo and return its figures (also printed through ``out``)."""
    if not redis_url:
        configured = RouterSettings()  # RESOURCE_ROUTER_REDIS_URL, or .env
        redis_url = configured.redis_url.get_secret_value() if configured.redis_url_given else DEMO_URL
    url = redis_url
    namespace = f"demo-{secrets.token_hex(4)}"
    limit = 2 * users_per_instance + 10  # room for one takeover, and a request that breaks it
    redis = connect(url)
    summary: dict[str, Any] = {"redis": describe(redis), "namespace": namespace, "service": SERVICE}
    served: Counter[str] = Counter()
    t_start = time.perf_counter()
    out(f"resource-router demo on {summary['redis']} (namespace {namespace!r}, service {SERVICE!r}, ttl {ttl:g}s)")

    names = ["instance-a", "instance-b", "instance-c"]
    instances = [
        ServiceInstance(redis, SERVICE, name, ttl=ttl, namespace=namespace, max_resources_per_instance=limit)
        for name in names
    ]
    try:
        for inst in instances:
            _make_handlers(inst, served)
            await inst.start()
        a, b, c = instances
        out(f"\n1. Started {len(instances)} instances: {', '.join(names)} (limit {limit} resources each)")

        # -- ownership --------------------------------------------------------------------------
        users = {
            inst.instance_id: [f"user-{i * users_per_instance + j}" for j in range(users_per_instance)]
            for i, inst in enumerate(instances)
        }
        for inst in instances:
            response = await inst.register_resource(users[inst.instance_id])
            first, last = users[inst.instance_id][0], users[inst.instance_id][-1]
            out(f"   {inst.instance_id} registered {len(response.registered)} users ({first} .. {last})")
        conflict = await b.register_resource(["user-0", "user-new"])
        summary["conflict"] = {"registered": conflict.registered, "conflicts": conflict.conflicts}
        out(
            f"\n2. Conflict: instance-b asks for user-0 and user-new -> registered {conflict.registered}, "
            f"conflicts {conflict.conflicts} (success={conflict.success})"
        )
        try:
            await c.register_resource([f"extra-{i}" for i in range(limit)])
        except ResourceLimitExceededError as exc:
            summary["limit_error"] = {"code": exc.code, "limit": exc.limit, "current": exc.current}
            out(
                f"   Limit: instance-c asks for {limit} more -> {exc.code} {exc.type}: owns {exc.current}, "
                f"limit {exc.limit}; nothing registered"
            )

        # -- routing ----------------------------------------------------------------------------
        async with ServiceClient(redis, namespace=namespace) as client:
            all_users = [u for ids in users.values() for u in ids]
            latencies: list[float] = []
            routed: Counter[str] = Counter()
            misrouted = 0
            rng = random.Random(7)
            plan = [rng.choice(all_users) for _ in range(requests)]
            owner_of = {u: iid for iid, ids in users.items() for u in ids}

            async def worker(chunk: list[str]) -> None:
                nonlocal misrouted
                for user in chunk:
                    t0 = time.perf_counter()
                    result = await client.call(SERVICE, "get_profile", resource_id=user)
                    latencies.append(time.perf_counter() - t0)
                    routed[result["served_by"]] += 1
                    misrouted += result["served_by"] != owner_of[user]

            t0 = time.perf_counter()
            await asyncio.gather(*(worker(plan[i::concurrency]) for i in range(concurrency)))
            elapsed = time.perf_counter() - t0
            latencies.sort()
            lat_ms = {f"p{q}": round(percentile(latencies, q) * 1000.0, 3) for q in (50, 90, 99)}
            summary.update(
                requests=requests,
                per_instance=dict(sorted(routed.items())),
                misrouted=misrouted,
                latency_ms=lat_ms,
                throughput=round(requests / elapsed, 1),
            )
            out(f"\n3. Routed {requests} calls to random users, {concurrency} at a time, in {elapsed:.2f}s:")
            rows: list[list[object]] = [
                [iid, len(users[iid]), routed[iid], round(100.0 * routed[iid] / requests, 1)] for iid in names
            ]
            out(format_table(["instance", "owned users", "calls served", "% of calls"], rows))
            out(
                f"   latency p50 {lat_ms['p50']} ms, p90 {lat_ms['p90']} ms, p99 {lat_ms['p99']} ms; "
                f"{summary['throughput']:.0f} calls/s; misrouted: {misrouted}"
            )

            # -- errors ---------------------------------------------------------------------------
            try:
                await client.call(SERVICE, "get_profile", resource_id="user-unknown")
            except ResourceNotFoundError as exc:
                summary["not_found_code"] = exc.code
                out(f"\n4. Unowned resource: {exc.code} {exc.type}: {exc.message}")
            try:
                await a.release_resource(["user-31"])
            except ResourceReleaseError as exc:
                summary["forbidden_code"] = exc.code
                out(f"   Foreign release: {exc.code} {exc.type}: owners {exc.owners}")

            # -- crash, fail fast, expiry, takeover -----------------------------------------------
            victim = users["instance-c"][0]
            before = await client.get_resource_owner(SERVICE, victim)
            await c.abort()
            out(f"\n5. instance-c crashed (no heartbeats, no longer listening); its {len(users['instance-c'])} users")
            out("   stay registered until its lease runs out.")
            t0 = time.perf_counter()
            try:
                await client.call(SERVICE, "get_profile", resource_id=victim, timeout=5.0)
            except OwnerUnavailableError as exc:
                fail_ms = (time.perf_counter() - t0) * 1000.0
                summary["fail_fast"] = {"code": exc.code, "ms": round(fail_ms, 3)}
                out(f"   call for {victim}: {exc.code} {exc.type} after {fail_ms:.1f} ms (timeout was 5 s)")
            registry = client.registry
            t0 = time.perf_counter()
            while True:
                try:
                    await registry.get_resource_owner(SERVICE, victim)
                except ResourceNotFoundError:
                    break
                await asyncio.sleep(0.05)
            freed_s = time.perf_counter() - t0
            summary["freed_after_s"] = round(freed_s, 2)
            out(f"   after {freed_s:.2f}s its lease expired: {victim} has no owner (404)")
            taken = await b.register_resource(users["instance-c"])
            new_token = taken.fencing_tokens[victim]
            summary["takeover"] = {
                "new_owner": b.instance_id,
                "registered": len(taken.registered),
                "old_token": before.fencing_token,
                "new_token": new_token,
            }
            out(
                f"   instance-b took over {len(taken.registered)} users; fencing token of {victim}: "
                f"{before.fencing_token} -> {new_token}"
            )
            recovered: Counter[str] = Counter()
            for user in users["instance-c"]:
                result = await client.call(SERVICE, "get_profile", resource_id=user)
                recovered[result["served_by"]] += 1
            summary["recovered"] = dict(recovered)
            out(f"   calls for instance-c's users succeed again: {dict(recovered)}")
            swept = await ResourceRegistry(redis, namespace=namespace).sweep(SERVICE)
            live = sorted(await registry.live_instance_ids(SERVICE))
            summary["live_instances"] = live
            out(f"   live instances now: {live}{' (swept ' + ', '.join(swept) + ')' if swept else ''}")
        summary["placement"] = await _placement_act(redis, namespace, ttl, out)
    finally:
        for inst in instances:
            with contextlib.suppress(ResourceRouterError):
                await inst.stop()
        remaining = await ResourceRegistry(redis, namespace=namespace).list_resources(SERVICE)
        summary["left_after_exit"] = len(remaining)
        summary["keys_deleted"] = await _delete_namespace(redis, namespace)
        await redis.aclose()
    summary["seconds"] = round(time.perf_counter() - t_start, 2)
    out(
        f"\n7. Instances stopped gracefully: {summary['left_after_exit']} resources left registered; "
        f"the demo's {summary['keys_deleted']} keys deleted."
    )
    out(f"Done in {summary['seconds']:.1f}s.")
    return summary


def main(argv: Sequence[str] | None = None) -> None:
    """``python -m resource_router.demo``: render only errors of the library's logs, run the demo."""
    from resource_router.observability.rendering import configure_logging

    parser = argparse.ArgumentParser(prog="python -m resource_router.demo", description=__doc__)
    parser.add_argument("--redis", default=None, help=f"Redis URL (default: ${ENV_REDIS_URL} or {DEMO_URL})")
    parser.add_argument("--requests", type=int, default=3000)
    args = parser.parse_args(argv)
    # An application entry point: the library itself never configures logging. The demo provokes
    # failures on purpose; its story is its output.
    configure_logging("console", "error")
    asyncio.run(run_demo(args.redis, requests=args.requests))


if __name__ == "__main__":
    main()
