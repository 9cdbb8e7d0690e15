"""The seed's NATS subjects on replicas, against a real nats-server (started here on a free port) and
the real Redis: every subject, its reply and error bodies, the queue group shared by replicas, the
subject prefix, load shedding, and a NATS server that comes up after the replica."""

from __future__ import annotations

import asyncio
import re
import sys
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import msgpack
import pytest
from prometheus_client import CollectorRegistry

from resource_router import RouteRequest
from resource_router.routing.instance import ServiceInstance
from tests.support.gateway import SVC, Gateway, open_gateway
from tests.support.metrics import sample
from tests.support.nats_server import NatsServer, nats_server_binary

nats = pytest.importorskip("nats", reason="nats-py is not installed (pip install 'resource-router[nats]')")


DOC = Path(__file__).resolve().parents[2] / "docs" / "gateway.md"

pytestmark = pytest.mark.skipif(nats_server_binary() is None, reason="nats-server is not on PATH")


@pytest.fixture(scope="module")
def nats_url() -> Iterator[str]:
    with NatsServer() as server:
        yield server.url


@pytest.fixture
def prefix(namespace: str) -> str:
    return f"ipc-{namespace}"  # tests share one nats-server: a prefix of their own


@pytest.fixture
async def gw(
    redis_url: str, namespace: str, metrics_registry: CollectorRegistry, nats_url: str, prefix: str
) -> AsyncIterator[Gateway]:
    async for g in open_gateway(redis_url, namespace, metrics_registry, nats_url=nats_url, nats_subject_prefix=prefix):
        yield g


@pytest.fixture
async def nc(nats_url: str) -> AsyncIterator[Any]:
    client = await nats.connect(nats_url)
    try:
        yield client
    finally:
        await client.close()


async def ask(nc: Any, subject: str, body: Any, timeout: float = 5, **kwargs: Any) -> Any:
    data = body if isinstance(body, bytes) else msgpack.packb(body)
    reply = await nc.request(subject, data, timeout=timeout, **kwargs)
    return msgpack.unpackb(reply.data)


async def test_route_through_the_replica(gw: Gateway, nc: Any, prefix: str, instance: ServiceInstance) -> None:
    token = instance.fencing_token("user-1")
    body = {"service_name": SVC, "resource_id": "user-1", "method": "echo", "params": {"x": [1, b"\x00\xff"]}}
    answer = await ask(nc, f"{prefix}.route", body, headers={"X-Trace-Id": "nats-route-1"})
    # msgpack both ways: binary params and results stay binary
    assert answer == {
        "result": {"params": {"x": [1, b"\x00\xff"]}, "resource_id": "user-1", "token": token},
        "trace_id": "nats-route-1",
        "instance_id": "echo-1",
    }
    anyone = await ask(nc, f"{prefix}.route", {"service_name": SVC, "method": "echo", "trace_id": "from-body"})
    assert (anyone["instance_id"], anyone["trace_id"], anyone["result"]["resource_id"]) == ("echo-1", "from-body", None)


async def test_register_query_release(gw: Gateway, nc: Any, prefix: str) -> None:
    await gw.registry.register_instance(SVC, "i1", ttl=30)
    reg = await ask(
        nc,
        f"{prefix}.resource.register",
        {"service_name": SVC, "instance_id": "i1", "resource_ids": ["a", "b"], "metadata": {"k": 1}, "trace_id": "t-r"},
    )
    tokens = reg["fencing_tokens"]
    assert reg == {
        "success": True,
        "registered": ["a", "b"],
        "conflicts": {},
        "fencing_tokens": tokens,
        "taken_over": {},
        "trace_id": "t-r",
    }
    owner = await ask(nc, f"{prefix}.resource.query", {"service_name": SVC, "resource_id": "a"})
    assert owner == (await gw.registry.get_resource_owner(SVC, "a")).model_dump(mode="json")
    assert (owner["owner_instance_id"], owner["fencing_token"], owner["metadata"]) == ("i1", tokens["a"], {"k": 1})
    rel = await ask(
        nc, f"{prefix}.resource.release", {"service_name": SVC, "instance_id": "i1", "resource_ids": ["a", "zz"]}
    )
    assert rel["success"] is True
    assert (rel["released"], rel["not_found"]) == (["a"], ["zz"])
    assert len(rel["trace_id"]) == 32  # generated
    assert [r.resource_id for r in await gw.registry.list_resources(SVC)] == ["b"]


async def test_errors_are_the_http_error_bodies(gw: Gateway, nc: Any, prefix: str) -> None:
    await gw.registry.register_instance(SVC, "i1", ttl=30)
    await gw.registry.register_instance(SVC, "i2", ttl=30)
    await gw.registry.register_resource(SVC, "i1", ["a"])
    trace = {"headers": {"X-Trace-Id": "t-err"}}

    missing = await ask(nc, f"{prefix}.resource.query", {"service_name": SVC, "resource_id": "ghost"}, **trace)
    assert missing == {
        "error": {
            "type": "ResourceNotFoundError",
            "code": 404,
            "message": f"resource 'ghost' of service '{SVC}' has no owner",
            "resource_id": "ghost",
            "service_name": SVC,
        },
        "trace_id": "t-err",
    }
    conflict = await ask(
        nc, f"{prefix}.resource.register", {"service_name": SVC, "instance_id": "i2", "resource_ids": ["a", "c"]}
    )
    c_token = (await gw.registry.get_resource_owner(SVC, "c")).fencing_token
    assert conflict["error"] == {
        "type": "ResourceConflictError",
        "code": 409,
        "message": "1 resource(s) already owned: a (owned by i1); the other 1 id(s) were registered "
        "(listed in 'registered'); release them if the call must be all-or-nothing",
        "conflicts": {"a": "i1"},
        "registered": ["c"],
        "fencing_tokens": {"c": c_token},
    }
    forbidden = await ask(
        nc, f"{prefix}.resource.release", {"service_name": SVC, "instance_id": "i2", "resource_ids": ["a"]}
    )
    assert (forbidden["error"]["code"], forbidden["error"]["owners"]) == (403, {"a": "i1"})
    gone = await ask(
        nc, f"{prefix}.resource.register", {"service_name": SVC, "instance_id": "ghost", "resource_ids": ["x"]}
    )
    assert (gone["error"]["type"], gone["error"]["code"]) == ("InstanceNotAliveError", 410)
    nobody = await ask(nc, f"{prefix}.route", {"service_name": "empty-svc", "method": "echo"})
    assert (nobody["error"]["type"], nobody["error"]["code"]) == ("ServiceUnavailableError", 503)

    def invalid(answer: Any) -> tuple[str, int, str]:
        return answer["error"]["type"], answer["error"]["code"], answer["error"]["field"]

    not_msgpack = await ask(nc, f"{prefix}.route", b"\xc1", **trace)
    assert invalid(not_msgpack) == ("InvalidRequestError", 400, "body")
    assert not_msgpack["trace_id"] == "t-err"
    not_a_map = await ask(nc, f"{prefix}.resource.query", ["svc", "a"])
    assert invalid(not_a_map) == ("InvalidRequestError", 400, "body")
    assert not_a_map["error"]["message"] == "the body must be a msgpack map of ResourceQuery fields, got list"
    fields = await ask(nc, f"{prefix}.resource.register", {"service_name": SVC, "resource_ids": ["a"], "zap": 1})
    assert fields["error"] == {
        "type": "InvalidRequestError",
        "code": 400,
        "message": "invalid request: instance_id: Field required; zap: Extra inputs are not permitted",
        "field": "instance_id",
        "errors": [
            {"field": "instance_id", "message": "Field required", "type": "missing"},
            {"field": "zap", "message": "Extra inputs are not permitted", "type": "extra_forbidden"},
        ],
    }
    fenced = await ask(nc, f"{prefix}.route", {"service_name": SVC, "method": "echo", "fencing_token": 1})
    assert invalid(fenced) == ("InvalidRequestError", 400, "fencing_token")
    bad_id = await ask(nc, f"{prefix}.resource.query", {"service_name": SVC, "resource_id": "a b"})
    assert invalid(bad_id) == ("InvalidRequestError", 400, "resource_id")
    too_large = await ask(nc, f"{prefix}.route", {"service_name": SVC, "method": "echo", "params": "x" * 5000})
    assert (too_large["error"]["type"], too_large["error"]["code"], too_large["error"]["limit"]) == (
        "PayloadTooLargeError",
        413,
        4096,
    )


async def test_replicas_share_a_queue_group_each_request_answered_once(
    redis_url: str, namespace: str, nats_url: str, prefix: str, nc: Any, instance: ServiceInstance
) -> None:
    registries = [CollectorRegistry(), CollectorRegistry()]
    async with contextlib_both(redis_url, namespace, nats_url, prefix, registries):
        body = {"service_name": SVC, "resource_id": "user-1", "method": "echo"}
        answers = await asyncio.gather(*(ask(nc, f"{prefix}.route", body) for _ in range(40)))
        assert all(a["instance_id"] == "echo-1" for a in answers)
        served = [sample(r, "ipc_gateway_nats_requests_total", subject="route", status="200") for r in registries]
        assert sum(served) == 40
        assert all(n > 0 for n in served), served  # both replicas took a share


class contextlib_both:
    """Two replicas (apps with their lifespans) on one Redis and one NATS, same prefix and queue."""

    def __init__(
        self, redis_url: str, namespace: str, nats_url: str, prefix: str, registries: list[CollectorRegistry]
    ) -> None:
        self.gens = [
            open_gateway(redis_url, namespace, reg, nats_url=nats_url, nats_subject_prefix=prefix) for reg in registries
        ]

    async def __aenter__(self) -> list[Gateway]:
        return [await anext(g) for g in self.gens]

    async def __aexit__(self, *exc_info: object) -> None:
        for g in self.gens:
            await g.aclose()


async def test_overloaded_replica_sheds_nats_requests(
    redis_url: str, namespace: str, nats_url: str, prefix: str, nc: Any, instance: ServiceInstance
) -> None:
    registry = CollectorRegistry()
    async for gw in open_gateway(
        redis_url, namespace, registry, nats_url=nats_url, nats_subject_prefix=prefix, max_in_flight=1
    ):
        first = await ask(nc, f"{prefix}.resource.query", {"service_name": SVC, "resource_id": "user-1"})
        assert first["owner_instance_id"] == "echo-1"  # the bridge is subscribed and answers
        slow = asyncio.ensure_future(
            ask(
                nc,
                f"{prefix}.route",
                {"service_name": SVC, "resource_id": "user-1", "method": "sleep", "params": {"seconds": 3.0}},
                timeout=10,
            )
        )
        in_flight = gw.app.state.gateway.in_flight
        for _ in range(500):
            if in_flight.count:
                break
            await asyncio.sleep(0.01)
        assert in_flight.count == 1  # the slow request holds the replica's one place (3 s, room for a loaded machine)
        shed = await ask(nc, f"{prefix}.resource.query", {"service_name": SVC, "resource_id": "user-1"})
        assert shed["error"] == {
            "type": "ReplicaOverloadedError",
            "code": 503,
            "message": "this replica process is serving its limit of 1 requests at once; "
            "retry in 1s or use another replica",
            "limit": 1,
            "retry_after": 1,
        }
        assert (await slow)["result"] == "slept"
        assert sample(registry, "ipc_gateway_shed_total", transport="nats") == 1
        again = await ask(nc, f"{prefix}.resource.query", {"service_name": SVC, "resource_id": "user-1"})
        assert again["owner_instance_id"] == "echo-1"


async def test_replica_starts_without_nats_and_connects_when_it_comes_up(
    redis_url: str, namespace: str, metrics_registry: CollectorRegistry
) -> None:
    late = NatsServer()  # its port is free: nothing listens yet
    async for gw in open_gateway(redis_url, namespace, metrics_registry, nats_url=late.url):
        assert (await gw.http.get("/readyz")).status_code == 200  # HTTP serves meanwhile
        with late:
            client = await nats.connect(late.url)
            try:
                await gw.registry.register_instance(SVC, "i1", ttl=30)
                await gw.registry.register_resource(SVC, "i1", ["a"])
                for _ in range(100):  # the bridge retries every 2 s
                    try:
                        answer = await ask(client, "ipc.resource.query", {"service_name": SVC, "resource_id": "a"})
                        break
                    except nats.errors.NoRespondersError:
                        await asyncio.sleep(0.1)
                assert answer["owner_instance_id"] == "i1"
            finally:
                await client.close()


def test_nats_settings_from_the_environment_and_checked(monkeypatch: pytest.MonkeyPatch) -> None:
    from resource_router.gateway import GatewaySettings

    monkeypatch.setenv("RESOURCE_ROUTER_REDIS_URL", "redis://127.0.0.1:6379/0")
    monkeypatch.setenv("RESOURCE_ROUTER_NATS_URL", "nats://n:4222")
    monkeypatch.setenv("RESOURCE_ROUTER_NATS_SUBJECT_PREFIX", "seed.ipc")
    settings = GatewaySettings.from_env()
    assert (settings.nats_url, settings.nats_subject_prefix, settings.nats_queue) == (
        "nats://n:4222",
        "seed.ipc",
        "resource-router",
    )
    monkeypatch.delenv("RESOURCE_ROUTER_NATS_URL")
    assert GatewaySettings().nats_url is None  # HTTP only unless asked
    for bad in ("ipc.*", "ipc.>", "a..b", "has space", ""):
        with pytest.raises(ValueError, match="nats_subject_prefix"):
            GatewaySettings(nats_subject_prefix=bad, embedded=True)


async def test_the_documented_nats_example_runs(
    redis_url: str, namespace: str, metrics_registry: CollectorRegistry, nats_url: str
) -> None:
    """docs/gateway.md's nats-py example, as written, against a replica and an ``echo`` instance."""
    doc = DOC.read_text()
    (example,) = [b for b in re.findall(r"```python\n(.*?)```", doc, flags=re.S) if "ipc.route" in b]
    assert "nats://localhost:4222" in example
    example = example.replace("nats://localhost:4222", nats_url)
    inst = ServiceInstance(redis_url, "echo", "echo-1", ttl=5, namespace=namespace, metrics_registry=metrics_registry)

    @inst.handler("echo")
    async def echo(request: RouteRequest) -> Any:
        return {"echo": request.params}

    async for _ in open_gateway(redis_url, namespace, metrics_registry, nats_url=nats_url):
        async with inst:
            await inst.register_resource(["user-1"])
            proc = await asyncio.create_subprocess_exec(
                sys.executable, "-c", example, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE
            )
            out, err = await asyncio.wait_for(proc.communicate(), 60)
    assert proc.returncode == 0, err.decode()
    assert out.decode().splitlines() == ["echo-1 {'echo': {'hello': 'world'}}", "echo-1"]
