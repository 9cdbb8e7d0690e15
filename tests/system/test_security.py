"""docs/security.md, run: the ACL user of each role (read from the page) against a real redis-server,
and routing over TLS with a CA made here."""

from __future__ import annotations

import asyncio
import json
import re
import shlex
import subprocess
import sys
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import pytest
import redis.asyncio as aredis
from prometheus_client import CollectorRegistry

from resource_router import (
    RedisUnavailableError,
    ResourceRegistry,
    ResourceRouterError,
    RouteRequest,
    ServiceClient,
    ServiceInstance,
)
from resource_router.ownership.sweeper import Sweeper
from tests.support.redis_server import RedisServer, redis_server_binary
from tests.support.tls_certs import make_certs, openssl_binary

ROOT = Path(__file__).resolve().parents[2]
DOC = ROOT / "docs" / "security.md"
SVC = "secure"


def acl_lines() -> list[str]:
    return [line.strip() for line in DOC.read_text().splitlines() if line.startswith("ACL SETUSER ")]


def role_urls(port: int) -> dict[str, str]:
    urls = {}
    for line in acl_lines():
        words = shlex.split(line)
        user = words[2]
        password = next(w[1:] for w in words if w.startswith(">"))
        urls[user.removeprefix("rr-")] = f"redis://{user}:{password}@127.0.0.1:{port}/0"
    return urls


def test_the_page_has_a_user_per_role() -> None:
    assert sorted(role_urls(0)) == ["client", "instance", "operator", "replica"]


@pytest.fixture
def acl_redis() -> Iterator[dict[str, str]]:
    if not redis_server_binary():
        pytest.skip("needs redis-server")
    server = RedisServer().start()
    try:

        async def create() -> None:
            admin = aredis.Redis(port=server.port)
            for line in acl_lines():
                assert await admin.execute_command(*shlex.split(line)) in (b"OK", "OK", True)
            await admin.acl_setuser("default", enabled=False)  # nobody without a user of the page
            await admin.aclose()

        asyncio.run(create())
        yield role_urls(server.port)
    finally:
        server.stop()


def make_instance(url: str) -> ServiceInstance:
    inst = ServiceInstance(url, SVC, "i1", ttl=5, namespace="rr", metrics_registry=CollectorRegistry())

    @inst.handler("echo")
    async def echo(request: RouteRequest) -> Any:
        return request.params

    return inst


def cli(url: str, *args: str) -> Any:
    exe = Path(sys.executable).with_name("resource-router")
    out = subprocess.run(
        [str(exe), *args, "--redis", url, "--json"], capture_output=True, text=True, timeout=60, check=False
    )
    assert out.returncode == 0, out.stderr
    return json.loads(out.stdout)


async def test_every_role_does_its_job_with_its_acl_user_and_no_more(acl_redis: dict[str, str]) -> None:
    urls = acl_redis
    async with make_instance(urls["instance"]) as inst:
        # instance: its lease, its resources, heartbeats, its channel
        assert (await inst.register_resource(["a", "b"])).success
        await inst.heartbeat()

        # client: routed calls (by resource and by service), owner lookups; no writes
        async with ServiceClient(urls["client"], metrics_registry=CollectorRegistry()) as client:
            assert await client.call(SVC, "echo", 1, resource_id="a") == 1
            assert await client.call(SVC, "echo", 2) == 2
            assert (await client.get_resource_owner(SVC, "b")).owner_instance_id == "i1"
            with pytest.raises(ResourceRouterError, match="lacks a permission"):
                await client.registry.register_resource(SVC, "i1", ["c"], force=True)
            with pytest.raises(ResourceRouterError, match="lacks a permission"):
                await client.registry.release_resource(SVC, "i1", ["a"])

        # replica: registrations for instances (HTTP), releases, sweeping, routing
        async with ResourceRegistry(urls["replica"], metrics_registry=CollectorRegistry()) as replica:
            assert (await replica.register_resource(SVC, "i1", ["c"])).success
            assert (await replica.release_resource(SVC, "i1", ["c"])).released == ["c"]
            await replica.register_instance(SVC, "dead", ttl=0.1)
            await asyncio.sleep(0.2)
            assert "dead" in (await Sweeper(replica, services=[SVC]).run_once())[SVC]
        async with ServiceClient(urls["replica"], metrics_registry=CollectorRegistry()) as routing:
            assert await routing.call(SVC, "echo", 3, resource_id="b") == 3

        # operator: the inspection commands; no writes, no publishing
        owner = await asyncio.to_thread(cli, urls["operator"], "owner", SVC, "a")
        assert owner["owner_instance_id"] == "i1"
        resources = await asyncio.to_thread(cli, urls["operator"], "resources", SVC)
        assert sorted(r["resource_id"] for r in resources) == ["a", "b"]
        instances = await asyncio.to_thread(cli, urls["operator"], "instances", SVC)
        assert [i["instance_id"] for i in instances] == ["i1"]
        events = await asyncio.to_thread(cli, urls["operator"], "events", SVC)
        assert any(e["type"] == "ResourceRegistered" for e in events)
        async with ResourceRegistry(urls["operator"], metrics_registry=CollectorRegistry()) as operator:
            with pytest.raises(ResourceRouterError, match="lacks a permission"):
                await operator.register_instance(SVC, "intruder", ttl=5)
            with pytest.raises(ResourceRouterError, match="lacks a permission"):
                await operator.deregister_instance(SVC, "i1")
        raw = aredis.Redis.from_url(urls["operator"])
        try:
            with pytest.raises(Exception, match="no permissions"):
                await raw.publish(inst.channel, b"x")
            with pytest.raises(Exception, match="no permissions"):
                await raw.flushdb()
        finally:
            await raw.aclose()
        assert inst.owned_resources == {"a", "b"}


async def test_outside_the_namespace_nothing_is_allowed(acl_redis: dict[str, str]) -> None:
    for url in acl_redis.values():
        raw = aredis.Redis.from_url(url)
        try:
            with pytest.raises(Exception, match="no permissions"):
                await raw.get("other:key")
            with pytest.raises(Exception, match="no permissions"):
                await raw.publish("other:channel", b"x")
        finally:
            await raw.aclose()


# -- TLS --------------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def certs(tmp_path_factory: pytest.TempPathFactory) -> dict[str, tuple[str, str, str]]:
    if not openssl_binary():
        pytest.skip("needs the openssl command to make a test CA")
    directory = tmp_path_factory.mktemp("tls")
    return {"good": make_certs(directory, "good"), "other": make_certs(directory, "other")}


@pytest.fixture
def tls_redis(certs: dict[str, tuple[str, str, str]]) -> Iterator[RedisServer]:
    if not redis_server_binary():
        pytest.skip("needs redis-server")
    server = RedisServer(tls=certs["good"])
    try:
        server.start()
    except RuntimeError as exc:
        pytest.skip(f"this redis-server was built without TLS ({exc})")
    try:
        yield server
    finally:
        server.stop()


@pytest.fixture
async def tls_client(tls_redis: RedisServer, certs: dict[str, tuple[str, str, str]]) -> AsyncIterator[aredis.Redis]:
    client = aredis.Redis(host="127.0.0.1", port=tls_redis.port, ssl=True, ssl_ca_certs=certs["good"][2])
    try:
        yield client
    finally:
        await client.aclose()


async def test_routing_over_tls_by_url_and_by_client(tls_redis: RedisServer, tls_client: aredis.Redis) -> None:
    assert tls_redis.url.startswith("rediss://")
    async with (
        make_instance(tls_redis.url) as inst,
        ServiceClient(tls_client, metrics_registry=CollectorRegistry()) as client,
    ):
        await inst.register_resource(["a"])
        assert await client.call(SVC, "echo", "over tls", resource_id="a") == "over tls"
        assert (await client.get_resource_owner(SVC, "a")).owner_instance_id == "i1"
        clients = await tls_client.client_list()
        assert len(clients) >= 4  # pools, subscribers and command connections: all on the TLS port


async def test_a_server_signed_by_another_ca_is_refused(
    tls_redis: RedisServer, certs: dict[str, tuple[str, str, str]]
) -> None:
    url = re.sub(r"ssl_ca_certs=.*$", f"ssl_ca_certs={certs['other'][2]}", tls_redis.url)
    with pytest.raises(RedisUnavailableError) as err:
        async with make_instance(url):
            pass
    assert "certificate verify failed" in str(err.value) + str(err.value.__cause__)


async def test_an_acl_user_over_tls(tls_redis: RedisServer, tls_client: aredis.Redis) -> None:
    (line,) = [line for line in acl_lines() if " rr-instance " in line]
    await tls_client.execute_command(*shlex.split(line))
    password = next(w[1:] for w in shlex.split(line) if w.startswith(">"))
    url = tls_redis.url.replace("rediss://", f"rediss://rr-instance:{password}@")
    async with make_instance(url) as inst, ServiceClient(url, metrics_registry=CollectorRegistry()) as client:
        await inst.register_resource(["a"])
        assert await client.call(SVC, "echo", 1, resource_id="a") == 1
