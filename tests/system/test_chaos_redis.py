"""Redis killed, restarted and paused under the registry: a clear error while down, working after."""

from __future__ import annotations

import asyncio
import time

import pytest
from prometheus_client import CollectorRegistry

from resource_router import (
    InstanceNotAliveError,
    RedisUnavailableError,
    ResourceNotFoundError,
    ResourceRegistry,
    RouterSettings,
)
from tests.support.redis_server import RedisServer

pytestmark = pytest.mark.chaos

SVC = "chaos"
FAST_RETRY = RouterSettings(retry_attempts=3, retry_initial_backoff=0.01, retry_max_backoff=0.05, operation_timeout=0.5)


def make_registry(server: RedisServer) -> ResourceRegistry:
    return ResourceRegistry(server.url, namespace="chaos", settings=FAST_RETRY, metrics_registry=CollectorRegistry())


async def test_killed_redis_gives_a_clear_error_and_recovers_after_restart(private_redis: RedisServer) -> None:
    async with make_registry(private_redis) as reg:
        await reg.register_instance(SVC, "i1", ttl=30)
        first = await reg.register_resource(SVC, "i1", ["a"])
        private_redis.kill()

        for call in (
            reg.get_resource_owner(SVC, "a"),
            reg.register_resource(SVC, "i1", ["b"]),
            reg.release_resource(SVC, "i1", ["a"]),
            reg.heartbeat(SVC, "i1", ttl=30),
            reg.list_instances(SVC),
        ):
            start = time.monotonic()
            with pytest.raises(RedisUnavailableError) as err:
                await call
            assert err.value.code == 503
            assert "Redis is unreachable" in err.value.message
            assert time.monotonic() - start < 2.0
            assert isinstance(err.value.__cause__, Exception)

        private_redis.start()  # same port; no persistence: everything is gone
        with pytest.raises(ResourceNotFoundError):
            await reg.get_resource_owner(SVC, "a")
        with pytest.raises(InstanceNotAliveError):
            await reg.register_resource(SVC, "i1", ["a"])
        await reg.register_instance(SVC, "i1", ttl=30)
        again = await reg.register_resource(SVC, "i1", ["a"])
        # Tokens are seeded from Redis time, so they keep increasing across a data-losing restart.
        assert again.fencing_tokens["a"] > first.fencing_tokens["a"]
        assert (await reg.get_resource_owner(SVC, "a")).owner_instance_id == "i1"


async def test_idempotent_operations_ride_out_a_short_outage(private_redis: RedisServer) -> None:
    settings = RouterSettings(retry_attempts=8, retry_initial_backoff=0.05, retry_max_backoff=0.3)
    reg = ResourceRegistry(
        private_redis.url, namespace="chaos", settings=settings, metrics_registry=CollectorRegistry()
    )
    async with reg:
        await reg.register_instance(SVC, "i1", ttl=30)
        await reg.register_resource(SVC, "i1", ["a"])
        private_redis.kill()

        async def restart_soon() -> None:
            await asyncio.sleep(0.3)
            await asyncio.to_thread(private_redis.start)

        restarter = asyncio.create_task(restart_soon())
        # A lookup retries through the outage and answers from the new (empty) server.
        with pytest.raises(ResourceNotFoundError):
            await reg.get_resource_owner(SVC, "a")
        await restarter


async def test_paused_redis_times_out_instead_of_hanging(private_redis: RedisServer) -> None:
    async with make_registry(private_redis) as reg:
        await reg.register_instance(SVC, "i1", ttl=30)
        private_redis.pause()
        try:
            start = time.monotonic()
            with pytest.raises(RedisUnavailableError):
                await reg.get_owner_id(SVC, "a")
            # 3 attempts x 0.5 s operation timeout + backoff
            assert time.monotonic() - start < 2.5
            with pytest.raises(RedisUnavailableError) as err:
                await reg.register_resource(SVC, "i1", ["a"])
            assert "operation_timeout" in str(err.value.__cause__)
        finally:
            private_redis.resume()
        # The registry works again once Redis answers; state survived the pause.
        resp = await reg.register_resource(SVC, "i1", ["a"])
        assert resp.success
        assert await reg.get_owner_id(SVC, "a") == "i1"


async def test_flood_of_concurrent_operations_keeps_counts_exact(private_redis: RedisServer) -> None:
    """Thousands of concurrent registrations on one client: no lost or doubled grant."""
    settings = RouterSettings(operation_timeout=30)
    reg = ResourceRegistry(
        private_redis.url, namespace="chaos", settings=settings, metrics_registry=CollectorRegistry()
    )
    async with reg:
        instances = [f"i{i}" for i in range(8)]
        for iid in instances:
            await reg.register_instance(SVC, iid, ttl=30)
        ids = [f"r{i}" for i in range(400)]

        async def claim(iid: str, rid: str) -> str | None:
            resp = await reg.register_resource(SVC, iid, [rid])
            return rid if resp.success else None

        tasks = [claim(iid, rid) for rid in ids for iid in instances]
        won = [r for r in await asyncio.gather(*tasks) if r is not None]
        assert sorted(won) == sorted(ids)
        stored = await reg.list_resources(SVC)
        assert len(stored) == 400
        counts = {i.instance_id: i.resource_count for i in await reg.list_instances(SVC)}
        assert sum(counts.values()) == 400


async def test_routed_calls_on_a_paused_redis_end_at_the_callers_timeout(private_redis: RedisServer) -> None:
    from resource_router import RouteRequest, RouteTimeoutError, ServiceClient, ServiceInstance

    inst = ServiceInstance(
        private_redis.url, SVC, "i1", ttl=30, namespace="chaos-route", metrics_registry=CollectorRegistry()
    )

    @inst.handler("echo")
    async def echo(request: RouteRequest) -> object:
        return request.params

    async with (
        inst,
        ServiceClient(private_redis.url, namespace="chaos-route", metrics_registry=CollectorRegistry()) as client,
    ):
        await inst.register_resource(["a"])
        assert await client.call(SVC, "echo", 1, resource_id="a") == 1
        private_redis.pause()
        try:
            for kwargs in ({"resource_id": "a"}, {"resource_id": "uncached"}, {}):
                start = time.monotonic()
                with pytest.raises(RouteTimeoutError) as err:
                    await client.call(SVC, "echo", 2, timeout=0.3, **kwargs)
                assert err.value.code == 504
                assert time.monotonic() - start < 1.0
        finally:
            private_redis.resume()
        assert await client.call(SVC, "echo", 3, resource_id="a") == 3
