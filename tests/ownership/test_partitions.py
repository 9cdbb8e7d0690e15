"""Partitions: one service's ownership spread over slots (and the shards of a cluster), and
heartbeats whose cost does not grow with ownership. The registry suites also run with 16 partitions
(``PARTITION_SUITES`` in conftest.py); the OS-process races with exact counts are in
``test_registry_races.py``."""

from __future__ import annotations

import asyncio
import binascii
import itertools
from collections import Counter
from collections.abc import AsyncIterator
from typing import Any

import pytest
import redis.asyncio as aredis
from prometheus_client import CollectorRegistry

from resource_router import (
    InvalidRequestError,
    ResourceLimitExceededError,
    ResourceRegistry,
    ResourceReleaseError,
    RouteRequest,
    ServiceClient,
    ServiceInstance,
)
from resource_router.ownership.keys import ServiceKeys, partition_of, partition_tag
from resource_router.transport.connection import connect
from tests.support.redis_server import RedisServer

SVC = "parts"


def reg(url: str, namespace: str, partitions: int, **kw: Any) -> ResourceRegistry:
    return ResourceRegistry(url, namespace=namespace, partitions=partitions, metrics_registry=CollectorRegistry(), **kw)


# -- the partition function ----------------------------------------------------------------------------
def test_the_partition_is_crc16_xmodem_of_the_id_modulo_the_count() -> None:
    assert binascii.crc_hqx(b"123456789", 0) == 0x31C3  # the check value of CRC-16/XMODEM
    assert partition_of("123456789", 16) == 0x31C3 % 16
    assert partition_of("user-42", 1) == 0
    assert partition_of("é-ünïcode", 7) == binascii.crc_hqx("é-ünïcode".encode(), 0) % 7


async def test_for_a_power_of_two_it_is_the_cluster_keyslot_modulo_the_count(cluster_url: str) -> None:
    client = connect(cluster_url)
    assert isinstance(client, aredis.RedisCluster)
    try:
        for rid in ("user-1", "room:42", "doc/7", "é", "x" * 200):
            slot = await client.cluster_keyslot(rid)
            assert partition_of(rid, 16) == int(slot) % 16, rid
        for p in range(16):  # and the partitions' tags land on the slots computed for them
            tag = partition_tag("user-service", p, 16)
            assert int(await client.cluster_keyslot(f"rr:{{{tag}}}:owner:x")) == _slot(tag)
    finally:
        await client.aclose()


# -- the partitions' hash tags ------------------------------------------------------------------------
def _slot(tag: str) -> int:
    return binascii.crc_hqx(tag.encode(), 0) % 16384


def test_partition_tags_are_the_documented_ones() -> None:
    # docs/protocol.md §10 quotes these: other languages check their implementation against them
    assert partition_tag("user-service", 0, 1) == "user-service"
    assert [partition_tag("user-service", p, 16) for p in range(3)] == [
        "user-service:0.30",
        "user-service:1.28",
        "user-service:2.152",
    ]
    assert partition_tag("a", 1, 2) == "a:1.38"
    tag = partition_tag("user-service", partition_of("user-1", 16), 16)
    assert ServiceKeys("rr", "user-service", 16).owner("user-1") == f"rr:{{{tag}}}:owner:user-1"


@pytest.mark.parametrize("partitions", [2, 3, 7, 16, 64, 100, 1024])
def test_each_partition_tag_is_the_first_candidate_in_its_band(partitions: int) -> None:
    for p in range(partitions):
        tag = partition_tag("rooms", p, partitions)
        band = (2 * p + 1) * 64 // (2 * partitions)
        candidates = itertools.chain([f"rooms:{p}"], (f"rooms:{p}.{k}" for k in itertools.count(1)))
        first = next(c for c in candidates if _slot(c) // 256 == band)
        assert tag == first, (p, tag, first)


@pytest.mark.parametrize("masters", [2, 3, 4, 5])
def test_partitions_fall_evenly_on_masters_with_even_slot_ranges(masters: int) -> None:
    bounds = [i * 16384 // masters for i in range(masters + 1)]
    for partitions in range(masters, 65):
        for service in ("user-service", "a", "game-room"):
            slots = [_slot(partition_tag(service, p, partitions)) for p in range(partitions)]
            per_master = Counter(next(m for m in range(masters) if bounds[m] <= s < bounds[m + 1]) for s in slots)
            counts = [per_master[m] for m in range(masters)]
            # each master within one partition of its even share, per boundary of its slot range
            assert all(abs(n - partitions / masters) <= 2 for n in counts), (masters, partitions, service, counts)


# -- the recorded count --------------------------------------------------------------------------------
async def test_an_entry_object_with_another_count_fails_at_once(redis_url: str, namespace: str) -> None:
    async with reg(redis_url, namespace, 16) as first:
        await first.register_instance(SVC, "i1", ttl=30)
        await first.register_resource(SVC, "i1", ["a"])
        async with reg(redis_url, namespace, 4) as other:
            for attempt in (
                other.register_resource(SVC, "i1", ["b"]),
                other.get_resource_owner(SVC, "a"),
                other.release_resource(SVC, "i1", ["a"]),
            ):
                with pytest.raises(InvalidRequestError) as info:
                    await attempt
                assert info.value.field == "partitions"
                assert "partitions=16" in info.value.message
        with pytest.raises(InvalidRequestError):
            async with ServiceInstance(redis_url, SVC, "i2", namespace=namespace, partitions=4):
                pass
        async with ServiceClient(redis_url, namespace=namespace, partitions=4) as client:
            with pytest.raises(InvalidRequestError):
                await client.call(SVC, "anything", resource_id="a")
        assert (await first.get_resource_owner(SVC, "a")).owner_instance_id == "i1"  # nothing was touched


# -- guarantees across partitions -------------------------------------------------------------------------
@pytest.fixture(params=["redis", "cluster"])
async def p16(request: pytest.FixtureRequest, redis_url: str, namespace: str) -> AsyncIterator[ResourceRegistry]:
    url: str = request.getfixturevalue("cluster_url") if request.param == "cluster" else redis_url
    async with reg(url, namespace, 16, max_resources_per_instance=50) as r:
        yield r


async def test_release_across_partitions_is_all_or_nothing(p16: ResourceRegistry) -> None:
    ids = [f"r{i}" for i in range(40)]
    assert len({partition_of(rid, 16) for rid in ids}) > 8  # the batch spans many partitions
    await p16.register_instance(SVC, "i1", ttl=30)
    await p16.register_instance(SVC, "i2", ttl=30)
    await p16.register_resource(SVC, "i1", ids)
    await p16.register_resource(SVC, "i2", ["other"])
    with pytest.raises(ResourceReleaseError) as info:
        await p16.release_resource(SVC, "i1", [*ids, "other"])
    assert info.value.owners == {"other": "i2"}
    assert len(await p16.list_resources(SVC, "i1")) == 40  # nothing released
    done = await p16.release_resource(SVC, "i1", ids)
    assert sorted(done.released) == sorted(ids)


async def test_a_call_that_would_exceed_the_limit_registers_nothing(p16: ResourceRegistry) -> None:
    await p16.register_instance(SVC, "i1", ttl=30)
    first = await p16.register_resource(SVC, "i1", [f"a{i}" for i in range(45)])
    assert len(first.registered) == 45
    with pytest.raises(ResourceLimitExceededError) as info:
        await p16.register_resource(SVC, "i1", [f"b{i}" for i in range(6)])
    assert info.value.code == 429
    assert (info.value.current, info.value.requested, info.value.limit) == (45, 6, 50)
    owners = await p16.get_owner_ids(SVC, [f"b{i}" for i in range(6)])
    assert set(owners.values()) == {None}
    # Owned ids take no room: exactly the limit fits, across partitions.
    ok = await p16.register_resource(SVC, "i1", [f"a{i}" for i in range(45)] + [f"b{i}" for i in range(5)])
    assert len(ok.registered) == 50
    await p16.release_resource(SVC, "i1", [f"a{i}" for i in range(10)])
    again = await p16.register_resource(SVC, "i1", [f"c{i}" for i in range(10)])  # the room came back at once
    assert len(again.registered) == 10


async def test_fencing_tokens_strictly_increase_within_each_resource(p16: ResourceRegistry) -> None:
    await p16.register_instance(SVC, "i1", ttl=30)
    await p16.register_instance(SVC, "i2", ttl=30)
    ids = [f"t{i}" for i in range(20)]
    history: dict[str, list[int]] = {rid: [] for rid in ids}
    for owner, force in (("i1", False), ("i2", True), ("i1", True)):
        granted = await p16.register_resource(SVC, owner, ids, force=force)
        for rid in ids:
            history[rid].append(granted.fencing_tokens[rid])
    await p16.release_resource(SVC, "i1", ids)
    granted = await p16.register_resource(SVC, "i2", ids)
    for rid in ids:
        tokens = [*history[rid], granted.fencing_tokens[rid]]
        assert tokens == sorted(tokens) and len(set(tokens)) == len(tokens), rid


async def test_owner_keys_spread_over_the_masters_of_a_cluster(cluster_url: str, namespace: str) -> None:
    async with reg(cluster_url, namespace, 16, max_resources_per_instance=100_000) as r:
        await r.register_instance(SVC, "big", ttl=30)
        ids = [f"res-{i:05d}" for i in range(3000)]
        for start in range(0, len(ids), 1000):
            await r.register_resource(SVC, "big", ids[start : start + 1000])
        client = r.redis
        assert isinstance(client, aredis.RedisCluster)
        per_node: Counter[str] = Counter()
        for node in client.get_primaries():
            direct = aredis.Redis(host=node.host, port=node.port)
            try:
                async for _key in direct.scan_iter(match=f"{namespace}:*:owner:*", count=1000):
                    per_node[node.name] += 1
            finally:
                await direct.aclose()
        assert sum(per_node.values()) == 3000
        assert len(per_node) == 3
        # 16 partitions on 3 masters: 5, 5 and 6 of them, so each master holds about 1/3 of the ids
        parts_per_node = Counter(client.get_node_from_key(f"{{{partition_tag(SVC, p, 16)}}}").name for p in range(16))
        assert sorted(parts_per_node.values()) == [5, 5, 6], parts_per_node
        assert all(0.25 <= n / 3000 <= 0.42 for n in per_node.values()), per_node


# -- costs that do not grow --------------------------------------------------------------------------------
async def _calls(admin: aredis.Redis) -> int:
    stats = await admin.info("commandstats")
    return sum(int(v["calls"]) for v in stats.values())


@pytest.mark.parametrize("partitions", [1, 16])
async def test_a_heartbeat_costs_the_same_whatever_the_instance_owns(partitions: int, namespace: str) -> None:
    with RedisServer() as server:
        admin = aredis.Redis.from_url(server.url)
        try:
            async with reg(server.url, namespace, partitions, max_resources_per_instance=100_000) as r:
                costs = {}
                for owned in (10, 5000):
                    iid = f"owner-of-{owned}"
                    await r.register_instance(SVC, iid, ttl=30)
                    for start in range(0, owned, 1000):
                        await r.register_resource(
                            SVC, iid, [f"{iid}-{i}" for i in range(start, min(owned, start + 1000))]
                        )
                    await r.heartbeat(SVC, iid, ttl=30)  # warm: scripts loaded
                    before = await _calls(admin)
                    hb = await r.heartbeat(SVC, iid, ttl=30)
                    costs[owned] = await _calls(admin) - before - 1  # INFO itself is one call
                    assert hb.owned_count == owned
                assert costs[10] == costs[5000], costs  # Redis commands per heartbeat: independent of ownership
        finally:
            await admin.aclose()


async def test_a_lookup_is_one_round_trip_and_o1(namespace: str) -> None:
    with RedisServer() as server:
        admin = aredis.Redis.from_url(server.url)
        try:
            async with reg(server.url, namespace, 16) as r:
                await r.register_instance(SVC, "i1", ttl=30)
                await r.register_resource(SVC, "i1", ["x"])
                await r.get_resource_owner(SVC, "x")  # warm: partition count checked, script loaded
                before = await admin.info("commandstats")
                await r.get_resource_owner(SVC, "x")
                after = await admin.info("commandstats")
                delta = {k: int(after[k]["calls"]) - int(before.get(k, {"calls": 0})["calls"]) for k in after}
                assert delta["cmdstat_evalsha"] == 1  # one round trip
                assert delta["cmdstat_get"] == 1 and delta["cmdstat_exists"] == 1 and delta["cmdstat_hget"] == 1
        finally:
            await admin.aclose()


async def test_a_large_batch_lets_other_clients_through_between_its_windows(namespace: str) -> None:
    """On a single Redis, a 1000-id registration over 16 partitions runs in short pipelined windows:
    a lookup from another client is served between them instead of waiting behind the whole batch."""
    with RedisServer() as server:
        async with (
            reg(server.url, namespace, 16, max_resources_per_instance=2000) as registrar,
            reg(server.url, namespace, 16) as reader,
        ):
            await registrar.register_instance(SVC, "i1", ttl=30)
            await registrar.register_resource(SVC, "i1", ["warm"])  # scripts loaded, partition count checked
            assert await reader.get_owner_id(SVC, "warm") == "i1"
            register_sha = registrar.store.scripts.register_resources.sha.encode()
            lookup_sha = reader.store.scripts.read_owners.sha.encode()
            monitor_reader, monitor_writer = await asyncio.open_connection("127.0.0.1", server.port)
            monitor_writer.write(b"MONITOR\r\n")
            await monitor_writer.drain()
            assert await monitor_reader.readline() == b"+OK\r\n"
            done = asyncio.Event()

            async def look() -> None:
                while not done.is_set():
                    await reader.get_owner_id(SVC, "x")

            looking = asyncio.create_task(look())
            await asyncio.sleep(0.01)
            granted = await registrar.register_resource(SVC, "i1", [f"w{i}" for i in range(1000)])
            done.set()
            await looking
            await registrar.get_owner_id(SVC, "end-of-test")  # a last command: the log is complete up to it
            lines: list[bytes] = []
            while b"end-of-test" not in (lines[-1] if lines else b""):
                lines.append(await asyncio.wait_for(monitor_reader.readline(), 5.0))
            monitor_writer.close()
        assert len(granted.registered) == 1000
        log = [line for line in lines if b" lua]" not in line]  # the clients' commands, not the scripts' own
        steps = [i for i, line in enumerate(log) if register_sha in line]
        assert len(steps) == 16  # one step per partition
        served_between = sum(
            1 for a, b in itertools.pairwise(steps) if any(lookup_sha in line for line in log[a + 1 : b])
        )
        assert served_between >= 8, served_between  # windows of at most INTERLEAVE_KEYS keys, not one pipeline


# -- routing on partitions -------------------------------------------------------------------------------
@pytest.mark.parametrize("backend", ["redis", "cluster"])
async def test_routing_and_takeovers_with_16_partitions(
    backend: str, redis_url: str, namespace: str, request: pytest.FixtureRequest
) -> None:
    url: str = request.getfixturevalue("cluster_url") if backend == "cluster" else redis_url
    a = ServiceInstance(url, SVC, "a", namespace=namespace, partitions=16, ttl=5)
    b = ServiceInstance(url, SVC, "b", namespace=namespace, partitions=16, ttl=5)
    for inst in (a, b):

        def whoami(request: RouteRequest, inst: ServiceInstance = inst) -> dict[str, Any]:
            return {"iid": inst.instance_id, "token": request.fencing_token}

        inst.add_handler("whoami", whoami)
    ids = [f"u{i}" for i in range(64)]
    async with a, b, ServiceClient(url, namespace=namespace, partitions=16) as client:
        granted = await a.register_resource(ids)
        for rid in ids:
            reply = await client.call(SVC, "whoami", resource_id=rid)
            assert reply == {"iid": "a", "token": granted.fencing_tokens[rid]}
        taken = await b.register_resource(ids[:10], force=True)
        for rid in ids[:10]:
            reply = await client.call(SVC, "whoami", resource_id=rid)
            assert reply == {"iid": "b", "token": taken.fencing_tokens[rid]}
        await a.heartbeat()
        assert a.owned_resources == set(ids[10:])
        assert b.owned_resources == set(ids[:10])
