"""The replica's fast path (``POST /v1/route`` and the owner lookup served without FastAPI's request
machinery) answers exactly what the FastAPI route answers: same statuses, same bodies, same headers,
for successes and for every error, against the real Redis and a live instance."""

from __future__ import annotations

import json
from collections.abc import AsyncIterator
from typing import Any

import httpx
import pytest
from prometheus_client import CollectorRegistry
from starlette.types import ASGIApp, Receive, Scope, Send

from resource_router.gateway.fastpath import FastPathMiddleware
from resource_router.routing.instance import ServiceInstance
from tests.support.gateway import SVC, Gateway, open_gateway


class Counting:
    """Wraps the app behind the fast path: counts what the fast path handed over to FastAPI."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app
        self.paths: list[str] = []

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        self.paths.append(f"{scope['method']} {scope['path']}")
        await self.app(scope, receive, send)


def fast_path_of(gw: Gateway) -> FastPathMiddleware:
    layer: Any = gw.app.front  # type: ignore[attr-defined]
    while not isinstance(layer, FastPathMiddleware):
        layer = layer.app
    return layer


@pytest.fixture
async def gw(redis_url: str, namespace: str, metrics_registry: CollectorRegistry) -> AsyncIterator[Gateway]:
    async for g in open_gateway(redis_url, namespace, metrics_registry, max_body_bytes=2048):
        yield g


@pytest.fixture
async def handed_over(gw: Gateway) -> Counting:
    fast = fast_path_of(gw)
    counting = Counting(fast.app)
    fast.app = counting
    return counting


# (body, served by the fast path): bodies that do not validate as a RouteCall go to FastAPI, which
# words the 400; every other answer (200 and library errors) comes from the fast path.
ROUTE_BODIES: list[tuple[dict[str, Any], bool]] = [
    ({"service_name": SVC, "resource_id": "user-1", "method": "echo", "params": {"x": [1, 2.5, None, "é"]}}, True),
    ({"service_name": SVC, "method": "echo", "params": "anyone", "trace_id": "from-body"}, True),
    ({"service_name": SVC, "resource_id": "dir/x", "method": "echo"}, True),
    ({"service_name": SVC, "resource_id": "nobody", "method": "echo"}, True),
    ({"service_name": SVC, "resource_id": "user-1", "method": "nope"}, True),
    ({"service_name": SVC, "resource_id": "user-1", "method": "fail"}, True),
    ({"service_name": SVC, "resource_id": "user-1", "method": "sleep", "params": {"seconds": 1}, "timeout": 0.2}, True),
    ({"service_name": "empty-svc", "method": "echo"}, True),
    ({"service_name": SVC, "resource_id": "a b", "method": "echo"}, True),
    ({"service_name": "-bad", "method": "echo"}, True),
    ({"service_name": SVC, "method": ""}, True),
    ({"service_name": SVC, "resource_id": "user-1", "method": "echo", "fencing_token": 3}, True),
    ({"service_name": SVC, "method": "echo", "deadline": 1e12}, True),
    ({"service_name": SVC, "method": "echo", "timeout": 0}, False),
    ({"service_name": SVC, "method": "echo", "extra": 1}, False),
    ({"method": "echo"}, False),
]


def _comparable(r: httpx.Response) -> tuple[int, Any, dict[str, str]]:
    headers = {k: v for k, v in r.headers.items() if k in ("content-type", "x-trace-id", "retry-after", "allow")}
    return r.status_code, r.json(), headers


@pytest.mark.parametrize(("body", "fast"), ROUTE_BODIES, ids=lambda b: json.dumps(b)[:60])
async def test_route_answers_like_the_fastapi_route(
    gw: Gateway, instance: ServiceInstance, handed_over: Counting, body: dict[str, Any], fast: bool
) -> None:
    await instance.register_resource(["dir/x"])
    content = json.dumps(body).encode()
    first = await gw.http.post(
        "/v1/route", content=content, headers={"content-type": "application/json", "X-Trace-Id": "t-1"}
    )
    assert handed_over.paths == ([] if fast else ["POST /v1/route"])
    # FastAPI reads any +json type as JSON; the fast path takes only application/json
    handed_over.paths.clear()
    second = await gw.http.post(
        "/v1/route", content=content, headers={"content-type": "application/x-test+json", "X-Trace-Id": "t-1"}
    )
    assert handed_over.paths == ["POST /v1/route"]
    assert _comparable(first) == _comparable(second)
    assert first.headers["content-length"] == str(len(first.content))


async def test_owner_lookup_answers_like_the_fastapi_route(gw: Gateway, handed_over: Counting) -> None:
    await gw.registry.register_instance(SVC, "i1", ttl=30)
    await gw.registry.register_resource(SVC, "i1", ["a", "dir/x"], metadata={"k": [1, "ü"]})
    for path in ("a", "dir/x", "ghost", "bad*id", ""):
        r = await gw.http.get(f"/v1/resources/{SVC}/{path}", headers={"X-Trace-Id": "t-look"})
        assert r.headers["x-trace-id"] == "t-look"
        if r.status_code == 200:
            assert r.json() == (await gw.registry.get_resource_owner(SVC, path)).model_dump(mode="json")
        else:
            assert r.json()["trace_id"] == "t-look"
            assert r.json()["error"]["code"] == r.status_code
    statuses = [
        (await gw.http.get(f"/v1/resources/{SVC}/{p}")).status_code for p in ("a", "dir/x", "ghost", "bad*id", "")
    ]
    assert statuses == [200, 200, 404, 400, 400]
    assert handed_over.paths == []  # all served by the fast path
    # other endpoints go to FastAPI
    assert (await gw.http.get(f"/v1/resources/{SVC}")).status_code == 200
    assert handed_over.paths == [f"GET /v1/resources/{SVC}"]


async def test_fast_path_keeps_metrics_labels_and_body_limit(
    gw: Gateway, instance: ServiceInstance, handed_over: Counting
) -> None:
    ok = await gw.http.post("/v1/route", json={"service_name": SVC, "resource_id": "user-1", "method": "echo"})
    assert ok.status_code == 200
    await gw.http.get(f"/v1/resources/{SVC}/user-1")
    big = json.dumps({"service_name": SVC, "method": "echo", "params": "x" * 3000}).encode()
    too_large = await gw.http.post(
        "/v1/route", content=big, headers={"X-Trace-Id": "t413", "content-type": "application/json"}
    )
    assert too_large.status_code == 413
    assert too_large.json()["error"] == {
        "type": "PayloadTooLargeError",
        "code": 413,
        "message": f"request body is {len(big)} bytes; this replica accepts at most 2048 bytes "
        "(resource-router serve --max-body-bytes)",
        "field": "body",
        "limit": 2048,
    }
    assert too_large.headers["x-trace-id"] == "t413"
    assert handed_over.paths == []
    lines = set((await gw.http.get("/metrics")).text.splitlines())
    assert 'ipc_gateway_requests_total{method="POST",route="/v1/route",status="200"} 1.0' in lines
    assert (
        'ipc_gateway_requests_total{method="GET",route="/v1/resources/{service_name}/{resource_id:path}",'
        'status="200"} 1.0' in lines
    )
    assert 'ipc_gateway_requests_total{method="POST",route="unmatched",status="413"} 1.0' in lines


async def test_route_result_values_survive_the_json_answer(gw: Gateway, instance: ServiceInstance) -> None:
    params = {"int": 2**62, "neg": -1, "float": 0.1, "text": "日本 😀", "nested": [{"a": None}, True], "empty": {}}
    r = await gw.http.post(
        "/v1/route", json={"service_name": SVC, "resource_id": "user-1", "method": "echo", "params": params}
    )
    assert r.status_code == 200
    assert r.headers["content-type"] == "application/json"
    assert r.json()["result"]["params"] == params
