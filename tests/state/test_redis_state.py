"""``RedisStateStore`` on every Redis backend (a real Redis, memory://, a Redis Cluster): round trips,
compare-and-set, handlers, bad input, refused former owners, state across moves, and the key."""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

import pytest
import redis.asyncio as aredis
from prometheus_client import CollectorRegistry

from resource_router import (
    RedisStateStore,
    ResourceRegistry,
    RouterSettings,
    ServiceClient,
    ServiceInstance,
    StaleOwnerError,
    StateTooLargeError,
    StateVersionConflictError,
)
from resource_router.errors import error_from_dict
from resource_router.ownership.keys import KeySpace
from tests.support import state_scenarios as scenarios
from tests.support.redis_server import redis_server_binary
from tests.support.replicas import ReplicaSet
from tests.support.state_scenarios import SERVICE, Make


@pytest.fixture
def make(backend_url: str, namespace: str) -> Make:
    @asynccontextmanager
    async def factory(instance_id: str, **options: Any) -> AsyncIterator[ServiceInstance]:
        inst = ServiceInstance(
            backend_url,
            SERVICE,
            instance_id,
            ttl=2.0,
            namespace=namespace,
            metrics_registry=CollectorRegistry(),
            **options,
        )
        async with inst:
            yield inst

    return factory


async def test_round_trip(make: Make) -> None:
    await scenarios.round_trip(make)


async def test_compare_and_set(make: Make) -> None:
    await scenarios.compare_and_set(make)


async def test_handlers_count_through_request_state(make: Make, client: ServiceClient) -> None:
    await scenarios.handlers_count(make, client)


async def test_bad_input_stores_nothing(make: Make) -> None:
    await scenarios.bad_input_stores_nothing(make)


async def test_a_former_owner_is_refused(make: Make) -> None:
    await scenarios.not_owner_refused(make)


async def test_state_survives_a_move(make: Make) -> None:
    await scenarios.survives_a_move(make)


async def test_a_lapsed_lease_writes_nothing(make: Make) -> None:
    """An instance whose lease ran out in Redis (nobody took the resource) cannot write either."""
    async with make("i-1") as inst:
        await inst.register_resource("cart-1")
        state = inst.state("cart-1")
        await inst.registry.deregister_instance(SERVICE, "i-1")
        with pytest.raises(StaleOwnerError) as caught:
            await state.save({"late": True})
        assert caught.value.current_token is None
        assert await state.load() is None


async def test_the_state_key_lives_in_the_partition_slot(backend_url: str, namespace: str) -> None:
    sk = KeySpace(namespace).service(SERVICE, 16)
    for rid in ("cart-1", "cart-2", "user-9"):
        assert sk.state(rid) == sk.part_of(rid).prefix + "state:" + rid
        assert sk.state(rid).split("}", 1)[0] == sk.owner(rid).split("}", 1)[0]  # one hash tag
    async with ServiceInstance(
        backend_url, SERVICE, "i-1", namespace=namespace, partitions=16, metrics_registry=CollectorRegistry()
    ) as inst:
        await inst.register_resource(["cart-1", "user-9"])
        for rid in ("cart-1", "user-9"):
            assert await inst.state(rid).save({"rid": rid}) == 1
            assert await inst.state(rid).load() == {"rid": rid}


async def test_max_state_bytes_is_a_setting(backend_url: str, namespace: str) -> None:
    assert RouterSettings().max_state_bytes == 1_048_576
    settings = RouterSettings(max_state_bytes=100)
    async with ServiceInstance(
        backend_url, SERVICE, "i-1", namespace=namespace, settings=settings, metrics_registry=CollectorRegistry()
    ) as inst:
        await inst.register_resource("cart-1")
        with pytest.raises(StateTooLargeError) as caught:
            await inst.state("cart-1").save("y" * 100)
        assert caught.value.limit == 100
        assert await inst.state("cart-1").load() is None


async def test_replicas_and_tools_read_through_a_bound_store(make: Make, backend_url: str, namespace: str) -> None:
    async with make("i-1") as inst:
        await inst.register_resource("cart-1")
        await inst.state("cart-1").save({"n": 1})
        registry = ResourceRegistry(backend_url, namespace=namespace)
        try:
            store = RedisStateStore().bind(registry)
            record = await store.load(SERVICE, "cart-1")
            assert record is not None and record.version == 1
            assert record.fencing_token == inst.fencing_token("cart-1")
            assert await store.load(SERVICE, "cart-2") is None
        finally:
            await registry.aclose()
    with pytest.raises(RuntimeError):
        await RedisStateStore().load(SERVICE, "cart-1")  # not bound to any Redis


async def test_state_errors_travel_to_callers(make: Make, client: ServiceClient) -> None:
    async with make("i-1") as one, make("i-2") as two:
        await one.register_resource("cart-1")
        old = one.state("cart-1")

        @one.handler("late_write")
        async def late_write(request: Any) -> None:
            await old.save("late")

        await two.register_resource("cart-1", force=True)
        await one.register_resource("cart-2")
        body = StaleOwnerError("late", resource_id="cart-1", fencing_token=1, current_token=2).to_dict()
        assert body["error_code"] == "stale_owner" and body["code"] == 409
        again = error_from_dict(body)
        assert isinstance(again, StaleOwnerError) and again.current_token == 2
        with pytest.raises(StaleOwnerError):
            await client.call(SERVICE, "late_write", resource_id="cart-2")
    conflict = StateVersionConflictError("x", resource_id="r", expected=1, actual=2).to_dict()
    assert conflict["error_code"] == "version_conflict"


@pytest.mark.real_redis
async def test_the_state_is_readable_with_redis_cli_commands(redis_url: str, namespace: str) -> None:
    async with ServiceInstance(redis_url, SERVICE, "i-1", namespace=namespace) as inst:
        await inst.register_resource("cart-1")
        await inst.state("cart-1").save({"n": 3})
    raw = aredis.Redis.from_url(redis_url)
    try:
        fields = await raw.hgetall(f"{namespace}:{{{SERVICE}}}:state:cart-1")
    finally:
        await raw.aclose()
    assert fields[b"ver"] == b"1" and int(fields[b"tok"]) >= 1 and fields[b"v"] == b"\x81\xa1n\x03"


async def test_state_follows_a_drain_and_on_activate_loads_it(make: Make, client: ServiceClient) -> None:
    loaded: dict[str, Any] = {}

    def serve(inst: ServiceInstance) -> None:
        @inst.on_activate
        async def activate(resource_id: str) -> None:
            loaded[inst.instance_id] = await inst.state(resource_id).load()

        @inst.handler("bump")
        async def bump(request: Any) -> int:
            value = (await request.state.load() or {"n": 0})["n"] + 1
            await request.state.save({"n": value})
            return int(value)

    async with make("i-1", accept_placement=True) as one, make("i-2", accept_placement=True) as two:
        serve(one)
        serve(two)
        await one.register_resource("cart-1")
        assert await client.call(SERVICE, "bump", resource_id="cart-1") == 1
        assert loaded == {"i-1": None}
        report = await one.drain(timeout=5.0)
        assert report.moved_count == 1
        assert await client.call(SERVICE, "bump", resource_id="cart-1", wait_for_owner=True) == 2
        assert loaded["i-2"] == {"n": 1}  # the new owner's on_activate saw the state the old one wrote
        assert "cart-1" in two.owned_resources


@pytest.mark.real_redis
async def test_with_min_replicas_a_save_is_on_the_replica_when_it_returns(namespace: str) -> None:

    if not redis_server_binary():
        pytest.skip("a replicated Redis needs redis-server on PATH")
    replicas = ReplicaSet(replicas=1).start()
    try:
        replicas.wait()
        settings = RouterSettings(min_replicas=1, replica_timeout=2.0)
        async with ServiceInstance(replicas.master.url, SERVICE, "i-1", namespace=namespace, settings=settings) as inst:
            await inst.register_resource("cart-1")
            assert await inst.state("cart-1").save({"n": 1}) == 1
            raw = aredis.Redis.from_url(replicas.replicas[0].url)
            try:  # acknowledged means on the replica: read there at once
                assert await raw.hget(f"{namespace}:{{{SERVICE}}}:state:cart-1", "ver") == b"1"
            finally:
                await raw.aclose()
    finally:
        replicas.stop()
