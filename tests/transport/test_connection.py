"""Connections, settings, events and the sweeper's edges."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator

import pytest
import redis.asyncio as aredis
from prometheus_client import CollectorRegistry

from resource_router import (
    InvalidRequestError,
    RedisUnavailableError,
    ResourceRegistry,
    ResourceRouterError,
    RouterSettings,
    Sweeper,
    connect,
)
from resource_router.ownership.events import parse_event
from resource_router.transport.connection import CLIENT_OPTIONS, describe, server_identity
from resource_router.transport.memory import memory_server

SVC = "conn"


async def test_memory_urls_share_one_server_per_name() -> None:
    a, b, other = connect("memory://shared-x"), connect("memory://shared-x"), connect("memory://other-x")
    await a.set("k", "v")
    assert await b.get("k") == b"v"
    assert await other.get("k") is None
    assert memory_server("shared-x") is memory_server("shared-x")
    assert describe(a) == "memory://"
    for client in (a, b, other):
        await client.aclose()


async def test_a_client_passed_in_gets_a_twin_with_the_librarys_settings(redis_url: str, namespace: str) -> None:
    client = aredis.Redis.from_url(redis_url, decode_responses=True, protocol=3, socket_timeout=5)
    async with ResourceRegistry(client, namespace=namespace, metrics_registry=CollectorRegistry()) as reg:
        assert reg.redis is not client  # a twin: same server and credentials, the library's settings
        kwargs = reg.redis.connection_pool.connection_kwargs
        for name, value in CLIENT_OPTIONS.items():
            assert kwargs[name] == value, name
        assert server_identity(reg.redis) == server_identity(client)
        await reg.register_instance(SVC, "i1", ttl=5)
        resp = await reg.register_resource(SVC, "i1", ["a"])
        assert isinstance(resp.fencing_tokens["a"], int)
        assert (await reg.get_resource_owner(SVC, "a")).owner_instance_id == "i1"
        assert [r.resource_id for r in await reg.list_resources(SVC)] == ["a"]
    assert await client.ping()  # still open: the caller owns it
    assert await client.get(reg.keys.service(SVC).owner("a")) == "i1"
    assert describe(client).startswith("redis://127.0.0.1:")
    await client.aclose()


async def test_clients_of_one_server_share_one_identity(redis_url: str) -> None:
    a, b = connect(redis_url), connect(aredis.Redis.from_url(redis_url, client_name="x"))
    c = connect(aredis.Redis.from_url(redis_url))
    assert server_identity(a) == server_identity(c)
    assert server_identity(a) != server_identity(b)  # another client name: another connection set
    for client in (a, b, c):
        await client.aclose()


def test_describe_unix_socket_and_bad_inputs() -> None:
    assert describe(aredis.Redis(unix_socket_path="/tmp/r.sock")) == "unix:///tmp/r.sock"
    with pytest.raises(InvalidRequestError):
        connect("")
    with pytest.raises(InvalidRequestError):
        connect(42)  # type: ignore[arg-type]


def test_settings_from_env(monkeypatch: pytest.MonkeyPatch) -> None:
    env = {
        "RESOURCE_ROUTER_REDIS_URL": "redis://example:6379/2",
        "RESOURCE_ROUTER_NAMESPACE": "prod",
        "RESOURCE_ROUTER_MAX_RESOURCES_PER_INSTANCE": "50",
        "RESOURCE_ROUTER_AUDIT_MAXLEN": "",
    }
    for name, value in env.items():
        monkeypatch.setenv(name, value)
    s = RouterSettings.from_env(namespace="override")
    assert (s.redis_url.get_secret_value(), s.namespace, s.max_resources_per_instance, s.audit_maxlen) == (
        "redis://example:6379/2",
        "override",
        50,
        10_000,
    )
    monkeypatch.delenv("RESOURCE_ROUTER_REDIS_URL")
    assert RouterSettings.from_env().redis_url.get_secret_value() == "memory://"


async def test_follow_streams_new_events(registry: ResourceRegistry) -> None:
    async def collect(n: int) -> list[str]:
        out = []
        stream: AsyncIterator = registry.events.follow(SVC, since="0", block_ms=100)
        async for event in stream:
            out.append(f"{event.type}:{event.reason}:{','.join(event.resource_ids)}")
            if len(out) == n:
                break
        return out

    follower = asyncio.create_task(collect(3))
    await registry.register_instance(SVC, "i1", ttl=5)
    await registry.register_resource(SVC, "i1", ["a", "b"])
    await registry.release_resource(SVC, "i1", ["a"])
    assert await asyncio.wait_for(follower, 10) == [
        "InstanceRegistered:registered:",
        "ResourceRegistered:registered:a,b",
        "ResourceReleased:released:a",
    ]


def test_parse_event_edge_cases() -> None:
    ev = parse_event(b'{"type":"ResourceReleased","service_name":"s","instance_id":"i","resource_ids":{}}', "1-0")
    assert ev.resource_ids == []
    assert ev.stream_id == "1-0"
    with pytest.raises(ValueError, match="JSON object"):
        parse_event(b"[1,2]")


async def test_sweeper_survives_redis_errors_and_rejects_bad_interval(private_redis: object) -> None:
    from tests.support.redis_server import RedisServer

    assert isinstance(private_redis, RedisServer)
    with pytest.raises(ValueError, match="interval"):
        Sweeper(ResourceRegistry("memory://"), interval=0)
    settings = RouterSettings(retry_attempts=1, operation_timeout=0.2)
    reg = ResourceRegistry(private_redis.url, namespace="sw", settings=settings, metrics_registry=CollectorRegistry())
    async with reg:
        await reg.register_instance(SVC, "dead", ttl=0.1)
        sweeper = Sweeper(reg, services=[SVC], interval=0.05)
        sweeper.start()
        private_redis.kill()
        await asyncio.sleep(0.3)  # failing sweeps are logged, the loop goes on
        assert sweeper._task is not None and not sweeper._task.done()
        private_redis.start()
        await reg.register_instance(SVC, "dead", ttl=0.1)  # the restarted Redis is empty
        for _ in range(100):
            if sweeper.swept_instances:
                break
            await asyncio.sleep(0.05)
        await sweeper.stop()
        assert sweeper.swept_instances == 1
        private_redis.kill()
        with pytest.raises(RedisUnavailableError):
            await reg.sweep_all()


async def test_non_transient_redis_errors_are_wrapped(real_registry: ResourceRegistry) -> None:
    sk = real_registry.keys.service(SVC)
    await real_registry.redis.set(sk.instances, "not a zset")
    with pytest.raises(ResourceRouterError) as err:
        await real_registry.list_instances(SVC)
    assert type(err.value) is ResourceRouterError
    assert "WRONGTYPE" in err.value.message
    assert isinstance(err.value.__cause__, Exception)


async def test_event_reads_wrap_redis_failures(private_redis: object) -> None:
    from tests.support.redis_server import RedisServer

    assert isinstance(private_redis, RedisServer)
    settings = RouterSettings(retry_attempts=2, retry_initial_backoff=0.01, operation_timeout=0.3)
    reg = ResourceRegistry(private_redis.url, namespace="ev", settings=settings, metrics_registry=CollectorRegistry())
    async with reg:
        await reg.register_instance(SVC, "i1", ttl=5)
        assert [e.type for e in await reg.events.recent(SVC)] == ["InstanceRegistered"]
        private_redis.kill()
        with pytest.raises(RedisUnavailableError) as err:
            await reg.events.recent(SVC)
        assert err.value.operation == "events"
        with pytest.raises(RedisUnavailableError):
            await reg.events.follow(SVC, block_ms=50).__anext__()
