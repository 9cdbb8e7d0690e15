"""An ownership change reaches the instances it concerns, and no others: the new owner (adoption) and
every previous owner (a takeover, seen at once) on their notice channels; callers that follow the
service drop the cached owner. Many idle instances of the same service listen meanwhile and hear
nothing. Runs on the real Redis, memory:// and a Redis Cluster, with 1 and 16 partitions."""

from __future__ import annotations

import asyncio
import time
from typing import Any

import pytest
from prometheus_client import CollectorRegistry

from resource_router import ResourceRegistry, RouteRequest, ServiceClient, ServiceInstance
from tests.support.waiting import wait_for

SVC = "notices"
IDLE = 20


def _instance(url: str, namespace: str, iid: str, partitions: int, **kw: Any) -> ServiceInstance:
    inst = ServiceInstance(
        url, SVC, iid, namespace=namespace, ttl=30.0, partitions=partitions, metrics_registry=CollectorRegistry(), **kw
    )

    @inst.handler("who")
    async def who(request: RouteRequest) -> str:
        return inst.instance_id

    return inst


def _counting(inst: ServiceInstance, heard: dict[str, int]) -> None:
    """Count what reaches the instance besides its requests (set before start: it subscribes this)."""
    original = inst._on_event

    def on_event(data: bytes) -> None:
        heard[inst.instance_id] = heard.get(inst.instance_id, 0) + 1
        original(data)

    inst._on_event = on_event  # type: ignore[method-assign]


@pytest.mark.parametrize("partitions", [1, 16])
async def test_a_takeover_reaches_the_two_owners_and_no_idle_instance(
    backend_url: str, namespace: str, partitions: int
) -> None:
    heard: dict[str, int] = {}
    lost: list[list[str]] = []
    a = _instance(backend_url, namespace, "a", partitions, on_resource_lost=lambda ids: lost.append(sorted(ids)))
    b = _instance(backend_url, namespace, "b", partitions)
    idle = [_instance(backend_url, namespace, f"idle-{i}", partitions) for i in range(IDLE)]
    ids = [f"room-{i}" for i in range(40)]
    for inst in (a, b, *idle):
        _counting(inst, heard)
        await inst.start()
    try:
        async with ServiceClient(
            backend_url, namespace=namespace, partitions=partitions, metrics_registry=CollectorRegistry()
        ) as client:
            await a.register_resource(ids)
            for rid in ids:  # the client caches a as every id's owner
                assert await client.call(SVC, "who", resource_id=rid) == "a"
            await asyncio.sleep(0.2)
            before = dict(heard)
            started = time.monotonic()
            taken = await b.register_resource(ids[:10], force=True)
            assert sorted(taken.taken_over) == sorted(ids[:10])
            # The heartbeat is 10 s away: a learns of the takeover from its notice channel.
            # (with partitions, one notice per partition: the losses come in several calls)
            await wait_for(lambda: sorted(rid for call in lost for rid in call) == sorted(ids[:10]), timeout=3.0)
            seen_after = time.monotonic() - started
            assert a.owned_resources == set(ids[10:])
            # The client, which follows the service, dropped a as their owner: no call goes to a.
            await wait_for(lambda: all(client.cached_owner(SVC, rid) is None for rid in ids[:10]), timeout=3.0)
            assert all(client.cached_owner(SVC, rid) == "a" for rid in ids[10:])
            for rid in ids[:10]:
                assert await client.call(SVC, "who", resource_id=rid) == "b"
            # A registration made for b by someone else (a router replica, say) is adopted at once.
            async with ResourceRegistry(backend_url, namespace=namespace, partitions=partitions) as replica:
                assert (await replica.register_resource(SVC, "b", ["placed-1", "placed-2"])).success
            await wait_for(lambda: {"placed-1", "placed-2"} <= b.owned_resources, timeout=3.0)
            await asyncio.sleep(0.2)
        assert seen_after < 3.0
        grew = {iid: heard.get(iid, 0) - before.get(iid, 0) for iid in heard}
        assert {iid: n for iid, n in grew.items() if iid.startswith("idle-")} == {}  # not one delivery
        assert grew.get("a", 0) >= 1 and grew.get("b", 0) >= 2  # a: the takeover; b: its grants
    finally:
        for inst in (a, b, *idle):
            await inst.stop()


async def test_idle_instances_do_not_subscribe_to_the_service_feed(backend_url: str, namespace: str) -> None:
    """The service-wide events channels carry only the subscribers that asked for the feed."""
    idle = [_instance(backend_url, namespace, f"idle-{i}", 1) for i in range(5)]
    volunteer = _instance(backend_url, namespace, "vol", 1, accept_placement=True)
    for inst in (*idle, volunteer):
        await inst.start()
    try:
        registry = idle[0].registry
        sk = registry.keys.service(SVC)
        redis = registry.redis
        part = sk.parts[0]
        if backend_url.startswith("redis+cluster"):
            node = redis.get_node_from_key(part.events_channel)  # type: ignore[union-attr]
            counts = await redis.execute_command(  # type: ignore[union-attr]
                "PUBSUB SHARDNUMSUB", part.events_channel, part.notice_channel("idle-0"), target_nodes=node
            )
        elif backend_url.startswith("memory"):
            pytest.skip("the embedded server has no PUBSUB NUMSUB of its subscribers")
        else:
            counts = await redis.execute_command(
                "PUBSUB NUMSUB", part.events_channel, part.notice_channel("idle-0"), sk.members_channel
            )
        if isinstance(counts, dict) and len(counts) == 1 and isinstance(next(iter(counts.values())), list):
            counts = next(iter(counts.values()))  # a cluster's answer, by node
        if isinstance(counts, dict):
            pairs = list(counts.items())
        elif counts and isinstance(counts[0], (list, tuple)):
            pairs = [tuple(pair) for pair in counts]  # redis-py pairs NUMSUB's answer
        else:
            pairs = list(zip(counts[::2], counts[1::2], strict=True))
        by_name = {(k.decode() if isinstance(k, bytes) else str(k)): int(v) for k, v in pairs}
        assert by_name[part.events_channel] == 0
        assert by_name[part.notice_channel("idle-0")] == 1
        if sk.members_channel in by_name:
            assert by_name[sk.members_channel] == 1  # the volunteer, which rebalances when one joins
    finally:
        for inst in (*idle, volunteer):
            await inst.stop()
