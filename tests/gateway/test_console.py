"""The operator console's page and JSON endpoints (``/console``, ``/v1/console/...``) on a real Redis:
instances with their lease left, volunteer flag and owned count, the spread over partitions, one
resource's owner, the live feed of ownership events (server-sent events) and the calls per instance."""

from __future__ import annotations

import asyncio
import json
import re
import shlex
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import pytest
import redis.asyncio as aredis
from prometheus_client import CollectorRegistry

from resource_router import ResourceRegistry, RouteRequest
from resource_router.ownership.keys import partition_of
from resource_router.routing.instance import ServiceInstance
from tests.support.gateway import SVC, Gateway, open_gateway
from tests.support.redis_server import RedisServer, redis_server_binary

pytestmark = pytest.mark.real_redis

STATIC = Path(__file__).resolve().parents[2] / "src" / "resource_router" / "gateway" / "console" / "static"
SECURITY = Path(__file__).resolve().parents[2] / "docs" / "security.md"


@pytest.fixture
async def gw(redis_url: str, namespace: str, metrics_registry: CollectorRegistry) -> AsyncIterator[Gateway]:
    """A replica whose event streams end after 1.5 s (the ASGI test transport reads a whole body)."""
    async for g in open_gateway(
        redis_url, namespace, metrics_registry, console_stream_seconds=1.5, console_keepalive_seconds=0.5
    ):
        yield g


def sse_messages(body: str) -> list[dict[str, str]]:
    """The messages of a ``text/event-stream`` body (comments and the retry line left out)."""
    out = []
    for block in body.split("\n\n"):
        fields = dict(line.split(": ", 1) for line in block.splitlines() if line and not line.startswith(":"))
        if "data" in fields:
            out.append(fields)
    return out


async def test_the_page_and_its_assets_come_from_the_package(gw: Gateway) -> None:
    page = await gw.http.get("/console")
    assert page.status_code == 200
    assert page.headers["content-type"].startswith("text/html")
    links = re.findall(r'(?:src|href)="([^"]+)"', page.text)
    assert sorted(links) == ["console/assets/console.css", "console/assets/console.js"]
    for link, kind in (("console.js", "javascript"), ("console.css", "text/css")):
        asset = await gw.http.get(f"/console/assets/{link}")
        assert asset.status_code == 200
        assert kind in asset.headers["content-type"]
        assert asset.text == (STATIC / link).read_text()
    # nothing is fetched from elsewhere: the only absolute URL is the SVG namespace
    for path in STATIC.iterdir():
        urls = set(re.findall(r"[a-z]+://[^\s\"'`)]+", path.read_text()))
        assert urls <= {"http://www.w3.org/2000/svg"}, (path.name, urls)
    assert (await gw.http.get("/console/assets/nothing.js")).status_code == 404


async def test_services_instances_volunteers_and_owned_counts(
    gw: Gateway, redis_url: str, namespace: str, metrics_registry: CollectorRegistry
) -> None:
    opts: dict[str, Any] = {"namespace": namespace, "metrics_registry": metrics_registry, "sweep_interval": 0}
    async with (
        ServiceInstance(redis_url, SVC, "a-1", ttl=4, **opts) as a,
        ServiceInstance(redis_url, SVC, "b-1", ttl=6, accept_placement=True, placement="least_loaded", **opts),
    ):
        await a.register_resource(["r1", "r2", "r3"])
        services = (await gw.http.get("/v1/console/services")).json()
        assert services["namespace"] == namespace
        assert services["services"] == [SVC]
        body = (await gw.http.get(f"/v1/console/services/{SVC}")).json()
        rows = {row["instance_id"]: row for row in body["instances"]}
        assert sorted(rows) == ["a-1", "b-1"]
        assert (rows["a-1"]["owned"], rows["b-1"]["owned"]) == (3, 0)
        assert rows["a-1"]["volunteer"] is None
        assert rows["b-1"]["volunteer"]["placement"] == "least_loaded"
        assert 0 < rows["a-1"]["lease_left"] <= 4 and rows["a-1"]["ttl"] == 4
        assert 0 < rows["b-1"]["lease_left"] <= 6 and rows["b-1"]["ttl"] == 6
        assert body["partitions"] == 1 and body["cluster"] is False
        assert [p["resources"] for p in body["spread"]] == [3]
        assert [(m["partitions"], m["resources"]) for m in body["masters"]] == [(1, 3)]
        assert body["masters"][0]["master"].startswith("redis://")
    # gone once they left: nothing live, nothing owned
    body = (await gw.http.get(f"/v1/console/services/{SVC}")).json()
    assert body["instances"] == [] and [p["resources"] for p in body["spread"]] == [0]


async def test_a_service_with_partitions_is_read_with_its_own_count(
    gw: Gateway, redis_url: str, namespace: str, metrics_registry: CollectorRegistry
) -> None:
    """The replica runs with one partition; the service was set up with 8: the console reads it with 8."""
    ids = [f"u{i}" for i in range(40)]
    async with ResourceRegistry(redis_url, namespace=namespace, partitions=8, metrics_registry=metrics_registry) as reg:
        await reg.register_instance("parted", "p-1", ttl=10)
        await reg.register_instance("parted", "p-2", ttl=10)
        await reg.register_resource("parted", "p-1", ids[:25])
        await reg.register_resource("parted", "p-2", ids[25:], metadata={"zone": "b"})
        body = (await gw.http.get("/v1/console/services/parted")).json()
        assert body["partitions"] == 8
        expected = [sum(1 for r in ids if partition_of(r, 8) == p) for p in range(8)]
        assert [p["resources"] for p in body["spread"]] == expected
        assert sum(m["resources"] for m in body["masters"]) == 40
        assert {row["instance_id"]: row["owned"] for row in body["instances"]} == {"p-1": 25, "p-2": 15}
        found = (await gw.http.get("/v1/console/services/parted/resources/u30")).json()
        owner = await reg.get_resource_owner("parted", "u30")
        assert found["owner_instance_id"] == "p-2"
        assert found["fencing_token"] == owner.fencing_token
        assert found["metadata"] == {"zone": "b"}
        assert found["partition"] == partition_of("u30", 8)


async def test_a_resource_is_found_by_id_or_answered_404_or_400(gw: Gateway, instance: ServiceInstance) -> None:
    found = await gw.http.get(f"/v1/console/services/{SVC}/resources/user-1")
    assert found.status_code == 200
    body = found.json()
    owner = await gw.registry.get_resource_owner(SVC, "user-1")
    assert body["owner_instance_id"] == "echo-1"
    assert body["fencing_token"] == owner.fencing_token
    assert body["partition"] == 0
    missing = await gw.http.get(f"/v1/console/services/{SVC}/resources/user-404")
    assert missing.status_code == 404
    assert missing.json()["error"]["type"] == "ResourceNotFoundError"
    bad = await gw.http.get(f"/v1/console/services/{SVC}/resources/" + "x" * 5000)
    assert bad.status_code == 400
    assert bad.json()["error"]["type"] == "InvalidRequestError"
    assert (await gw.http.get("/v1/console/services/bad%20name")).status_code == 400


async def test_the_feed_sends_recent_events_then_live_ones_and_resumes_after_the_last_id(
    gw: Gateway, instance: ServiceInstance
) -> None:
    first = await gw.http.get(f"/v1/console/services/{SVC}/events")
    assert first.status_code == 200
    assert first.headers["content-type"].startswith("text/event-stream")
    assert first.text.startswith("retry: 1000\n\n")
    assert ": keepalive\n\n" in first.text  # nothing happened for longer than the keep-alive interval
    messages = sse_messages(first.text)
    events = [json.loads(m["data"]) for m in messages]
    assert [(e["type"], e["resource_ids"]) for e in events] == [
        ("InstanceRegistered", []),
        ("ResourceRegistered", ["user-1"]),
    ]
    assert all(m["event"] == "ownership" and m["id"] == e["stream_id"] for m, e in zip(messages, events, strict=True))

    await instance.register_resource(["user-2"])
    await instance.release_resource(["user-1"])
    resumed = await gw.http.get(f"/v1/console/services/{SVC}/events", headers={"Last-Event-ID": messages[-1]["id"]})
    later = [json.loads(m["data"]) for m in sse_messages(resumed.text)]
    assert [(e["type"], e["resource_ids"], e["reason"]) for e in later] == [
        ("ResourceRegistered", ["user-2"], "registered"),
        ("ResourceReleased", ["user-1"], "released"),
    ]
    bad = await gw.http.get(f"/v1/console/services/{SVC}/events", headers={"Last-Event-ID": "yesterday"})
    assert bad.status_code == 400
    assert bad.json()["error"]["field"] == "Last-Event-ID"


async def test_calls_are_counted_per_answering_instance(gw: Gateway, instance: ServiceInstance) -> None:
    before = (await gw.http.get("/v1/console/calls")).json()
    assert before["calls"] == []
    for i in range(3):
        routed = await gw.http.post(
            "/v1/route", json={"service_name": SVC, "resource_id": "user-1", "method": "echo", "params": i}
        )
        assert routed.status_code == 200, routed.text
    failed = await gw.http.post("/v1/route", json={"service_name": SVC, "resource_id": "nobody", "method": "echo"})
    assert failed.status_code == 404  # no answer from an instance: not counted
    after = (await gw.http.get("/v1/console/calls")).json()
    assert after["calls"] == [{"service_name": SVC, "instance_id": "echo-1", "total": 3.0}]
    assert after["time"] >= before["time"]
    metrics = (await gw.http.get("/metrics")).text
    assert f'ipc_gateway_routed_calls_total{{instance_id="echo-1",service_name="{SVC}"}} 3.0' in metrics


# -- the replica's ACL user (docs/security.md) ------------------------------------------------------


@pytest.fixture
def replica_acl_url() -> Iterator[tuple[str, str]]:
    """A private redis-server with the users of docs/security.md; the replica's URL and the instance's."""
    if not redis_server_binary():
        pytest.skip("needs redis-server")
    server = RedisServer().start()
    try:
        lines = [line.strip() for line in SECURITY.read_text().splitlines() if line.startswith("ACL SETUSER ")]
        urls = {}
        for line in lines:
            words = shlex.split(line)
            password = next(w[1:] for w in words if w.startswith(">"))
            urls[words[2]] = f"redis://{words[2]}:{password}@127.0.0.1:{server.port}/0"

        async def create() -> None:
            admin = aredis.Redis(port=server.port)
            for line in lines:
                await admin.execute_command(*shlex.split(line))
            await admin.acl_setuser("default", enabled=False)
            await admin.aclose()

        asyncio.run(create())
        yield urls["rr-replica"], urls["rr-instance"]
    finally:
        server.stop()


def test_the_console_works_with_the_replica_acl_user(replica_acl_url: tuple[str, str]) -> None:
    replica_url, instance_url = replica_acl_url

    async def run() -> None:
        registry = CollectorRegistry()
        inst = ServiceInstance(instance_url, SVC, "i1", ttl=5, namespace="rr", metrics_registry=registry)

        @inst.handler("echo")
        async def echo(request: RouteRequest) -> Any:
            return request.params

        async with inst:
            await inst.register_resource(["a"])
            async for g in open_gateway(
                replica_url, "rr", registry, console_stream_seconds=0.5, console_keepalive_seconds=0.2
            ):
                assert (await g.http.get("/v1/console/services")).json()["services"] == [SVC]
                body = (await g.http.get(f"/v1/console/services/{SVC}")).json()
                assert [(r["instance_id"], r["owned"]) for r in body["instances"]] == [("i1", 1)]
                found = await g.http.get(f"/v1/console/services/{SVC}/resources/a")
                assert found.json()["owner_instance_id"] == "i1"
                feed = await g.http.get(f"/v1/console/services/{SVC}/events")
                assert [json.loads(m["data"])["type"] for m in sse_messages(feed.text)] == [
                    "InstanceRegistered",
                    "ResourceRegistered",
                ]
                assert "feed-error" not in feed.text
                assert (await g.http.get("/v1/console/calls")).status_code == 200

    asyncio.run(run())


async def test_a_feed_whose_redis_goes_away_ends_with_an_error_message(
    namespace: str, metrics_registry: CollectorRegistry
) -> None:
    """The feed is open when its Redis dies: a ``feed-error`` message ends it (the browser reconnects)."""
    if not redis_server_binary():
        pytest.skip("needs redis-server")
    server = RedisServer().start()
    url = f"redis://127.0.0.1:{server.port}/0"
    try:
        async for g in open_gateway(
            url,
            namespace,
            metrics_registry,
            console_stream_seconds=30,
            console_keepalive_seconds=0.2,
            operation_timeout=0.5,
            retry_attempts=1,
        ):
            async with ResourceRegistry(url, namespace=namespace, metrics_registry=metrics_registry) as reg:
                await reg.register_instance(SVC, "x", ttl=5)
            reading = asyncio.create_task(g.http.get(f"/v1/console/services/{SVC}/events", timeout=20))
            await asyncio.sleep(0.5)
            server.kill()
            feed = await asyncio.wait_for(reading, 20)
            assert feed.status_code == 200
            messages = feed.text.split("\n\n")
            assert [json.loads(m["data"])["type"] for m in sse_messages(feed.text) if "id" in m] == [
                "InstanceRegistered"
            ]
            error = next(m for m in messages if m.startswith("event: feed-error"))
            assert json.loads(error.split("data: ", 1)[1])["type"] == "RedisUnavailableError"
    finally:
        server.stop()


async def test_on_a_redis_cluster_the_spread_names_each_master(
    cluster_url: str, namespace: str, metrics_registry: CollectorRegistry
) -> None:
    """16 partitions on 3 masters: the console names the master of each partition, and what it counts
    per master is what a SCAN of that master finds; the feed follows every partition's stream."""
    ids = [f"c{i:03d}" for i in range(300)]
    async with ResourceRegistry(
        cluster_url, namespace=namespace, partitions=16, metrics_registry=metrics_registry
    ) as reg:
        await reg.register_instance("spread", "c-1", ttl=30)
        await reg.register_resource("spread", "c-1", ids)
        async for g in open_gateway(
            cluster_url, namespace, metrics_registry, console_stream_seconds=1.0, console_keepalive_seconds=0.5
        ):
            body = (await g.http.get("/v1/console/services/spread")).json()
            assert body["cluster"] is True and body["partitions"] == 16
            assert sum(p["resources"] for p in body["spread"]) == 300
            masters = {m["master"]: m for m in body["masters"]}
            assert len(masters) == 3
            assert sorted(m["partitions"] for m in masters.values()) == [5, 5, 6]
            client = reg.redis
            assert isinstance(client, aredis.RedisCluster)
            for node in client.get_primaries():
                direct = aredis.Redis(host=node.host, port=node.port)
                try:
                    found = [k async for k in direct.scan_iter(match=f"{namespace}:*:owner:*", count=1000)]
                finally:
                    await direct.aclose()
                assert masters[f"{node.host}:{node.port}"]["resources"] == len(found)
            one = (await g.http.get("/v1/console/services/spread/resources/c042")).json()
            assert one["owner_instance_id"] == "c-1"
            assert one["master"] == body["spread"][partition_of("c042", 16)]["master"]
            (row,) = body["instances"]
            assert row["owned"] == 300 and 0 < row["lease_left"] <= 30

            feed = await g.http.get("/v1/console/services/spread/events")
            events = [json.loads(m["data"]) for m in sse_messages(feed.text)]
            assert {r for e in events if e["type"] == "ResourceRegistered" for r in e["resource_ids"]} == set(ids)
            assert "feed-error" not in feed.text
