"""Redis Sentinel: the URL form, an unknown master, routing through Sentinel, and a failover that
commands, subscriptions and routed calls follow (a master, a replica and three real Sentinels)."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Iterator

import pytest

from resource_router import (
    InvalidRequestError,
    ResourceRegistry,
    ResourceRouterError,
    RouteRequest,
    ServiceClient,
    ServiceInstance,
)
from resource_router.transport.connection import connect, describe
from resource_router.transport.sentinel import parse_sentinel_url
from tests.support.replicas import ReplicaSet, Sentinels

pytestmark = pytest.mark.real_redis


def test_the_url_names_sentinels_master_database_and_credentials() -> None:
    target = parse_sentinel_url(
        "redis+sentinel://app:s3cret@127.0.0.1:26379,[::1]:26380/orders/2?sentinel_password=sp&socket_timeout=1"
    )
    assert target.sentinels == [("127.0.0.1", 26379), ("::1", 26380)]
    assert (target.master, target.db, target.tls) == ("orders", 2, False)
    assert target.master_kwargs == {"db": 2, "username": "app", "password": "s3cret", "socket_timeout": "1"}
    assert target.sentinel_kwargs == {"password": "sp"}  # the Sentinels' own password is a query parameter
    assert target.describe() == "redis+sentinel://127.0.0.1:26379,::1:26380/orders/2"
    tls = parse_sentinel_url("rediss+sentinel://h:1/m?ssl_ca_certs=/ca.pem")
    assert tls.tls and tls.sentinel_kwargs == {"ssl": True, "ssl_ca_certs": "/ca.pem"}
    assert tls.master_kwargs["ssl"] is True


@pytest.mark.parametrize(
    "url",
    [
        "redis+sentinel://127.0.0.1:26379",  # no master name
        "redis+sentinel://127.0.0.1:26379/",
        "redis+sentinel://127.0.0.1:26379/m/db0",
        "redis+sentinel://127.0.0.1:26379/m/0/extra",
        "redis+sentinel://127.0.0.1:port/m",
        "redis+sentinel://127.0.0.1:26379/m?db=3",
    ],
)
def test_a_malformed_sentinel_url_is_a_400_naming_redis(url: str) -> None:
    with pytest.raises(InvalidRequestError) as caught:
        connect(url)
    assert caught.value.field == "redis"


@pytest.fixture(scope="module")
def watched() -> Iterator[tuple[ReplicaSet, Sentinels]]:
    """A master with one replica under three Sentinels, shared by the tests that do not break it."""
    replicas = ReplicaSet(replicas=1).start()
    sentinels = Sentinels(replicas.master.port).start()
    try:
        replicas.wait()
        yield replicas, sentinels
    finally:
        sentinels.stop()
        replicas.stop()


async def test_an_unknown_master_fails_at_once_naming_it(watched: tuple[ReplicaSet, Sentinels]) -> None:
    _replicas, sentinels = watched
    url = sentinels.url.rsplit("/", 1)[0] + "/no-such-master"
    started = time.monotonic()
    async with ResourceRegistry(url) as registry:
        with pytest.raises(InvalidRequestError) as caught:
            await registry.list_services()
    assert time.monotonic() - started < 1.0
    assert "no-such-master" in caught.value.message and caught.value.field == "redis"
    with pytest.raises(InvalidRequestError):
        async with ServiceClient(url):
            pass


async def test_instances_and_clients_route_through_sentinel(
    watched: tuple[ReplicaSet, Sentinels], namespace: str
) -> None:
    replicas, sentinels = watched
    inst = ServiceInstance(sentinels.url, "svc", "i-1", namespace=namespace, ttl=5)

    @inst.handler("where")
    async def where(request: RouteRequest) -> str:
        return inst.instance_id

    async with inst, ServiceClient(sentinels.url, namespace=namespace) as client:
        await inst.register_resource(["r-1"])
        assert await client.call("svc", "where", resource_id="r-1") == "i-1"
        assert describe(client.registry.redis).startswith("redis+sentinel://")
    async with ResourceRegistry(replicas.master.url, namespace=namespace) as direct:  # the same data
        assert await direct.get_owner_id("svc", "r-1") is None  # released on stop, on the master itself


@pytest.mark.chaos
async def test_a_failover_is_followed_by_commands_subscriptions_and_calls(namespace: str) -> None:
    """SIGKILL of the master: calls in flight fail with a 503, the Sentinels promote the replica,
    and calls succeed again within the failover time plus 1 s, on the instance that still owns the
    resource (its grant was replicated before the kill)."""
    replicas = ReplicaSet(replicas=1).start()
    sentinels = Sentinels(replicas.master.port).start()
    try:
        replicas.wait()
        inst = ServiceInstance(sentinels.url, "svc", "i-1", namespace=namespace, ttl=10)
        inst.add_handler("where", lambda request: "i-1")
        async with inst, ServiceClient(sentinels.url, namespace=namespace) as client:
            await inst.register_resource(["r-1"])
            token = inst.fencing_token("r-1")
            assert await client.call("svc", "where", resource_id="r-1") == "i-1"
            await asyncio.to_thread(replicas.wait)
            errors: list[int] = []
            killed = time.monotonic()
            replicas.master.kill()
            switch = asyncio.ensure_future(asyncio.to_thread(sentinels.wait_master, replicas.replicas[0].port))
            while True:
                try:
                    assert await client.call("svc", "where", resource_id="r-1", timeout=0.5) == "i-1"
                    break
                except ResourceRouterError as exc:
                    errors.append(exc.code)
                    assert time.monotonic() - killed < 30
                    await asyncio.sleep(0.02)
            recovered = time.monotonic() - killed
            failover = await switch
            assert errors and set(errors) <= {503, 504}  # clear failures while no master answers
            assert recovered <= failover + 1.0, (recovered, failover)
            assert inst.fencing_token("r-1") == token  # confirmed on the new master, same grant
            assert inst.listening
    finally:
        sentinels.stop()
        replicas.stop()


async def test_the_command_line_and_a_replica_take_a_sentinel_url(
    watched: tuple[ReplicaSet, Sentinels], namespace: str
) -> None:
    from prometheus_client import CollectorRegistry
    from typer.testing import CliRunner

    from resource_router.cli import build_app
    from tests.support.gateway import open_gateway

    _replicas, sentinels = watched
    async with ResourceRegistry(sentinels.url, namespace=namespace) as registry:
        await registry.register_instance("svc", "i-9", ttl=30)
        await registry.register_resource("svc", "i-9", ["r-9"])
        cli = await asyncio.to_thread(
            CliRunner().invoke,
            build_app(),
            ["owner", "svc", "r-9", "--json", "--namespace", namespace],
            env={"RESOURCE_ROUTER_REDIS_URL": sentinels.url},
        )
        assert cli.exit_code == 0, cli.output
        assert '"owner_instance_id": "i-9"' in cli.stdout
        async for gw in open_gateway(sentinels.url, namespace, CollectorRegistry()):
            assert (await gw.http.get("/readyz")).status_code == 200
            found = await gw.http.get("/v1/resources/svc/r-9")
            assert found.json()["owner_instance_id"] == "i-9"
        await registry.deregister_instance("svc", "i-9")
