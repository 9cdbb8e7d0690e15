"""The HTTP gateway in-process (httpx over ASGI, lifespan entered), against the real Redis.

Every endpoint of the contract's table and every error status with its exact body.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator, Iterator
from typing import Any

import pytest
from prometheus_client import CollectorRegistry

from resource_router import InvalidRequestError
from resource_router.ids import validate_resource_id
from tests.support.gateway import SVC, Gateway, assert_error, open_gateway
from tests.support.logs import capture_logs
from tests.support.redis_server import RedisServer


def _expected(exc_type: type[Exception], fn: Any, *args: Any) -> dict[str, Any]:
    """The ``to_dict()`` of the library error that ``fn(*args)`` raises (messages stay in one place)."""
    with pytest.raises(exc_type) as info:
        fn(*args)
    to_dict: dict[str, Any] = info.value.to_dict()  # type: ignore[attr-defined]
    return to_dict


# -- success paths ---------------------------------------------------------------------------------


async def test_register_lookup_list_release_round_trip(gw: Gateway) -> None:
    await gw.registry.register_instance(SVC, "i1", ttl=30, metadata={"zone": "a"})
    r = await gw.http.post(
        "/v1/resources/register",
        json={"service_name": SVC, "instance_id": "i1", "resource_ids": ["b", "a", "dir/x"], "metadata": {"k": 1}},
        headers={"X-Trace-Id": "trace-reg-1"},
    )
    assert r.status_code == 200, r.text
    body = r.json()
    tokens = body["fencing_tokens"]
    assert set(tokens) == {"a", "b", "dir/x"}
    assert body == {
        "success": True,
        "registered": ["b", "a", "dir/x"],
        "conflicts": {},
        "fencing_tokens": tokens,
        "taken_over": {},
        "trace_id": "trace-reg-1",
    }
    assert r.headers["x-trace-id"] == "trace-reg-1"

    owner = await gw.http.get(f"/v1/resources/{SVC}/a")
    assert owner.status_code == 200
    expected = (await gw.registry.get_resource_owner(SVC, "a")).model_dump(mode="json")
    assert owner.json() == expected
    assert expected["owner_instance_id"] == "i1"
    assert expected["fencing_token"] == tokens["a"]
    assert expected["metadata"] == {"k": 1}

    # an id with a slash is one resource id, not a deeper path
    slash = await gw.http.get(f"/v1/resources/{SVC}/dir/x")
    assert slash.status_code == 200
    assert slash.json()["resource_id"] == "dir/x"

    listed = await gw.http.get(f"/v1/resources/{SVC}")
    assert listed.status_code == 200
    assert [r["resource_id"] for r in listed.json()] == ["a", "b", "dir/x"]
    assert listed.json() == [r.model_dump(mode="json") for r in await gw.registry.list_resources(SVC)]

    await gw.registry.register_instance(SVC, "i2", ttl=30)
    await gw.registry.register_resource(SVC, "i2", ["c"])
    only_i2 = await gw.http.get(f"/v1/resources/{SVC}", params={"instance_id": "i2"})
    assert [r["resource_id"] for r in only_i2.json()] == ["c"]

    released = await gw.http.post(
        "/v1/resources/release",
        json={"service_name": SVC, "instance_id": "i1", "resource_ids": ["a", "never"], "trace_id": "trace-rel"},
    )
    assert released.status_code == 200
    assert released.json() == {"success": True, "released": ["a"], "not_found": ["never"], "trace_id": "trace-rel"}
    assert (await gw.http.get(f"/v1/resources/{SVC}/a")).status_code == 404


async def test_force_takeover_reports_previous_owner(gw: Gateway) -> None:
    await gw.registry.register_instance(SVC, "i1", ttl=30)
    await gw.registry.register_instance(SVC, "i2", ttl=30)
    first = await gw.registry.register_resource(SVC, "i1", ["a"])
    r = await gw.http.post(
        "/v1/resources/register",
        json={"service_name": SVC, "instance_id": "i2", "resource_ids": ["a"], "force": True, "trace_id": "t-force"},
    )
    assert r.status_code == 200
    body = r.json()
    assert body["taken_over"] == {"a": "i1"}
    assert body["registered"] == ["a"]
    assert body["fencing_tokens"]["a"] > first.fencing_tokens["a"]
    assert (await gw.registry.get_resource_owner(SVC, "a")).owner_instance_id == "i2"


async def test_instances_endpoint(gw: Gateway) -> None:
    await gw.registry.register_instance(SVC, "i2", ttl=30, metadata={"host": "h2"})
    await gw.registry.register_instance(SVC, "i1", ttl=30)
    await gw.registry.register_resource(SVC, "i1", ["a", "b"])
    r = await gw.http.get(f"/v1/instances/{SVC}")
    assert r.status_code == 200
    body = r.json()
    assert body == [i.model_dump(mode="json") for i in await gw.registry.list_instances(SVC)]
    assert [(i["instance_id"], i["resource_count"], i["metadata"]) for i in body] == [
        ("i1", 2, {}),
        ("i2", 0, {"host": "h2"}),
    ]
    empty = await gw.http.get("/v1/instances/nobody")
    assert empty.status_code == 200
    assert empty.json() == []


async def test_health_ready_metrics_openapi(gw: Gateway) -> None:
    health = await gw.http.get("/healthz")
    assert (health.status_code, health.json()) == (200, {"status": "ok"})
    ready = await gw.http.get("/readyz", headers={"X-Trace-Id": "probe-1"})
    assert (ready.status_code, ready.json()) == (200, {"status": "ready", "trace_id": "probe-1"})

    await gw.registry.register_instance(SVC, "i1", ttl=30)
    await gw.http.post("/v1/resources/register", json={"service_name": SVC, "instance_id": "i1", "resource_ids": ["x"]})
    await gw.http.get(f"/v1/resources/{SVC}/missing")
    metrics = await gw.http.get("/metrics")
    assert metrics.status_code == 200
    assert metrics.headers["content-type"].startswith("text/plain; version=0.0.4")
    lines = set(metrics.text.splitlines())
    assert f'ipc_resource_registrations_total{{service_name="{SVC}",status="granted"}} 1.0' in lines
    assert f'ipc_resource_lookups_total{{found="false",service_name="{SVC}"}} 1.0' in lines
    assert 'ipc_gateway_requests_total{method="POST",route="/v1/resources/register",status="200"} 1.0' in lines
    assert (
        'ipc_gateway_requests_total{method="GET",route="/v1/resources/{service_name}/{resource_id:path}",'
        'status="404"} 1.0' in lines
    )

    spec = (await gw.http.get("/openapi.json")).json()
    assert set(spec["paths"]) >= {
        "/v1/route",
        "/v1/resources/{service_name}/{resource_id}",
        "/v1/resources/{service_name}",
        "/v1/resources/register",
        "/v1/resources/release",
        "/v1/instances/{service_name}",
        "/healthz",
        "/readyz",
        "/metrics",
    }
    register = spec["paths"]["/v1/resources/register"]["post"]
    assert register["requestBody"]["content"]["application/json"]["schema"] == {
        "$ref": "#/components/schemas/ResourceRegistrationRequest"
    }
    assert set(register["responses"]) == {"200", "400", "409", "410", "413", "429", "503"}
    assert register["responses"]["409"]["content"]["application/json"]["schema"] == {
        "$ref": "#/components/schemas/ErrorResponse"
    }
    route = spec["paths"]["/v1/route"]["post"]
    assert set(route["responses"]) == {"200", "400", "404", "413", "500", "503", "504"}


# -- trace ids -------------------------------------------------------------------------------------


@pytest.fixture
def captured_logs() -> Iterator[list[dict[str, Any]]]:
    """The library's and the replica's log events, with the context variables (the request's trace_id)."""
    with capture_logs() as entries:
        yield entries


async def test_trace_id_from_header_body_or_generated(gw: Gateway, captured_logs: list[dict[str, Any]]) -> None:
    await gw.registry.register_instance(SVC, "i1", ttl=30)
    payload = {"service_name": SVC, "instance_id": "i1", "resource_ids": ["a"]}

    by_header = await gw.http.post("/v1/resources/register", json=payload, headers={"X-Trace-Id": "from-header"})
    assert by_header.json()["trace_id"] == "from-header"
    assert by_header.headers["x-trace-id"] == "from-header"

    both = await gw.http.post(
        "/v1/resources/register", json={**payload, "trace_id": "from-body"}, headers={"X-Trace-Id": "from-header"}
    )
    assert both.json()["trace_id"] == "from-body"
    assert both.headers["x-trace-id"] == "from-body"

    generated = await gw.http.post("/v1/resources/register", json=payload)
    tid = generated.json()["trace_id"]
    assert len(tid) == 32
    int(tid, 16)
    assert generated.headers["x-trace-id"] == tid

    unusable = await gw.http.get("/healthz", headers={"X-Trace-Id": "has spaces in it"})
    assert unusable.headers["x-trace-id"] != "has spaces in it"
    assert len(unusable.headers["x-trace-id"]) == 32

    # every log line of a request carries its trace id (the library's and the access log)
    reg_logs = [e for e in captured_logs if e["event"] == "resource.register"]
    assert [e["trace_id"] for e in reg_logs] == ["from-header", "from-body", tid]
    access = [e for e in captured_logs if e["event"] == "http.request"]
    assert [(e["trace_id"], e["status"], e["path"]) for e in access] == [
        ("from-header", 200, "/v1/resources/register"),
        ("from-body", 200, "/v1/resources/register"),
        (tid, 200, "/v1/resources/register"),
    ]
    assert all(isinstance(e["duration_ms"], float) for e in access)


# -- error statuses --------------------------------------------------------------------------------


async def test_400_invalid_resource_id(gw: Gateway) -> None:
    r = await gw.http.get(f"/v1/resources/{SVC}/bad*id", headers={"X-Trace-Id": "t400"})
    assert_error(r, 400, _expected(InvalidRequestError, validate_resource_id, "bad*id"), "t400")
    assert r.json()["error"]["field"] == "resource_id"


async def test_400_invalid_service_name_in_path(gw: Gateway) -> None:
    r = await gw.http.get("/v1/instances/-nope", headers={"X-Trace-Id": "t400s"})
    assert_error(
        r,
        400,
        {
            "type": "InvalidRequestError",
            "code": 400,
            "message": "service_name '-nope' may only use letters, digits, '.', '_' and '-' (first: letter or digit)",
            "field": "service_name",
        },
        "t400s",
    )


async def test_400_malformed_bodies(gw: Gateway) -> None:
    r = await gw.http.post("/v1/resources/register", json={"service_name": 1}, headers={"X-Trace-Id": "t-bad"})
    assert_error(
        r,
        400,
        {
            "type": "InvalidRequestError",
            "code": 400,
            "message": "invalid request: service_name: Input should be a valid string; "
            "instance_id: Field required; resource_ids: Field required",
            "field": "service_name",
            "errors": [
                {"field": "service_name", "message": "Input should be a valid string", "type": "string_type"},
                {"field": "instance_id", "message": "Field required", "type": "missing"},
                {"field": "resource_ids", "message": "Field required", "type": "missing"},
            ],
        },
        "t-bad",
    )

    broken = await gw.http.post(
        "/v1/resources/release",
        content=b'{"service_name": ',
        headers={"content-type": "application/json", "X-Trace-Id": "t-json"},
    )
    assert_error(
        broken,
        400,
        {
            "type": "InvalidRequestError",
            "code": 400,
            "message": "invalid request: body: JSON decode error",
            "field": "body",
            "errors": [{"field": "body", "message": "JSON decode error", "type": "json_invalid"}],
        },
        "t-json",
    )

    extra = await gw.http.post(
        "/v1/resources/release",
        json={"service_name": SVC, "instance_id": "i1", "resource_ids": ["a"], "sneaky": True},
        headers={"X-Trace-Id": "t-extra"},
    )
    assert_error(
        extra,
        400,
        {
            "type": "InvalidRequestError",
            "code": 400,
            "message": "invalid request: sneaky: Extra inputs are not permitted",
            "field": "sneaky",
            "errors": [{"field": "sneaky", "message": "Extra inputs are not permitted", "type": "extra_forbidden"}],
        },
        "t-extra",
    )

    # not JSON at all (no content type): the body is not an object
    text = await gw.http.post("/v1/resources/register", content=b"hello", headers={"X-Trace-Id": "t-text"})
    assert text.status_code == 400
    assert text.json()["error"]["type"] == "InvalidRequestError"
    assert text.json()["error"]["field"] == "body"

    empty_ids = await gw.http.post(
        "/v1/resources/register",
        json={"service_name": SVC, "instance_id": "i1", "resource_ids": []},
        headers={"X-Trace-Id": "t-empty"},
    )
    assert_error(
        empty_ids,
        400,
        {
            "type": "InvalidRequestError",
            "code": 400,
            "message": "resource_ids must not be empty",
            "field": "resource_ids",
        },
        "t-empty",
    )


async def test_403_release_of_someone_elses_resource(gw: Gateway) -> None:
    await gw.registry.register_instance(SVC, "i1", ttl=30)
    await gw.registry.register_instance(SVC, "i2", ttl=30)
    await gw.registry.register_resource(SVC, "i1", ["a"])
    await gw.registry.register_resource(SVC, "i2", ["b"])
    r = await gw.http.post(
        "/v1/resources/release",
        json={"service_name": SVC, "instance_id": "i2", "resource_ids": ["b", "a"]},
        headers={"X-Trace-Id": "t403"},
    )
    assert_error(
        r,
        403,
        {
            "type": "ResourceReleaseError",
            "code": 403,
            "message": "instance 'i2' cannot release resources owned by other instances: a (owned by i1); "
            "nothing was released",
            "owners": {"a": "i1"},
        },
        "t403",
    )
    assert (await gw.registry.get_resource_owner(SVC, "b")).owner_instance_id == "i2"


async def test_404_no_owner_and_unknown_path(gw: Gateway) -> None:
    r = await gw.http.get(f"/v1/resources/{SVC}/ghost", headers={"X-Trace-Id": "t404"})
    assert_error(
        r,
        404,
        {
            "type": "ResourceNotFoundError",
            "code": 404,
            "message": f"resource 'ghost' of service '{SVC}' has no owner",
            "resource_id": "ghost",
            "service_name": SVC,
        },
        "t404",
    )
    unknown = await gw.http.get("/v2/nothing", headers={"X-Trace-Id": "t404p"})
    assert_error(unknown, 404, {"type": "HTTPError", "code": 404, "message": "Not Found"}, "t404p")
    wrong_method = await gw.http.delete("/v1/route", headers={"X-Trace-Id": "t405"})
    assert_error(wrong_method, 405, {"type": "HTTPError", "code": 405, "message": "Method Not Allowed"}, "t405")
    assert wrong_method.headers["allow"] == "POST"


async def test_409_conflicts_listed_and_free_ids_registered(gw: Gateway) -> None:
    await gw.registry.register_instance(SVC, "i1", ttl=30)
    await gw.registry.register_instance(SVC, "i2", ttl=30)
    await gw.registry.register_resource(SVC, "i1", ["a", "c"])
    r = await gw.http.post(
        "/v1/resources/register",
        json={"service_name": SVC, "instance_id": "i2", "resource_ids": ["a", "b", "c"]},
        headers={"X-Trace-Id": "t409"},
    )
    b = await gw.registry.get_resource_owner(SVC, "b")
    assert b.owner_instance_id == "i2"  # the free id was registered in the same atomic step
    assert_error(
        r,
        409,
        {
            "type": "ResourceConflictError",
            "code": 409,
            "message": "2 resource(s) already owned: a (owned by i1), c (owned by i1); the other 1 id(s) were "
            "registered (listed in 'registered'); release them if the call must be all-or-nothing",
            "conflicts": {"a": "i1", "c": "i1"},
            "registered": ["b"],
            "fencing_tokens": {"b": b.fencing_token},
        },
        "t409",
    )
    only_conflicts = await gw.http.post(
        "/v1/resources/register",
        json={"service_name": SVC, "instance_id": "i2", "resource_ids": ["a"]},
        headers={"X-Trace-Id": "t409b"},
    )
    assert_error(
        only_conflicts,
        409,
        {
            "type": "ResourceConflictError",
            "code": 409,
            "message": "1 resource(s) already owned: a (owned by i1); nothing was registered",
            "conflicts": {"a": "i1"},
            "registered": [],
            "fencing_tokens": {},
        },
        "t409b",
    )


async def test_410_instance_not_alive(gw: Gateway) -> None:
    r = await gw.http.post(
        "/v1/resources/register",
        json={"service_name": SVC, "instance_id": "ghost-1", "resource_ids": ["a"]},
        headers={"X-Trace-Id": "t410"},
    )
    assert_error(
        r,
        410,
        {
            "type": "InstanceNotAliveError",
            "code": 410,
            "message": f"instance 'ghost-1' of service '{SVC}' is not registered or its lease expired; "
            "call register_instance first",
            "instance_id": "ghost-1",
            "service_name": SVC,
        },
        "t410",
    )


async def test_413_body_too_large(gw: Gateway) -> None:
    big = {"service_name": SVC, "instance_id": "i1", "resource_ids": [f"r{i:05d}" for i in range(600)]}
    content = json.dumps(big).encode()
    size = len(content)
    assert size > 4096
    r = await gw.http.post(
        "/v1/resources/register",
        content=content,
        headers={"X-Trace-Id": "t413", "content-type": "application/json"},
    )
    assert_error(
        r,
        413,
        {
            "type": "PayloadTooLargeError",
            "code": 413,
            "message": f"request body is {size} bytes; this replica accepts at most 4096 bytes "
            "(resource-router serve --max-body-bytes)",
            "field": "body",
            "limit": 4096,
        },
        "t413",
    )

    async def chunks() -> AsyncIterator[bytes]:  # chunked: no Content-Length to refuse up front
        for _ in range(10):
            yield b" " * 1000

    streamed = await gw.http.post(
        "/v1/route", content=chunks(), headers={"X-Trace-Id": "t413c", "content-type": "application/json"}
    )
    assert_error(
        streamed,
        413,
        {
            "type": "PayloadTooLargeError",
            "code": 413,
            "message": "request body is more than 4096 bytes; this replica accepts at most 4096 bytes "
            "(resource-router serve --max-body-bytes)",
            "field": "body",
            "limit": 4096,
        },
        "t413c",
    )

    async def small_chunks() -> AsyncIterator[bytes]:
        yield b'{"service_name": "svc", '
        yield b'"instance_id": "i1", "resource_ids": ["a"]}'

    await gw.registry.register_instance(SVC, "i1", ttl=30)
    fits = await gw.http.post(
        "/v1/resources/register", content=small_chunks(), headers={"content-type": "application/json"}
    )
    assert fits.status_code == 200
    assert fits.json()["registered"] == ["a"]


async def test_429_limit_exceeded(redis_url: str, namespace: str, metrics_registry: CollectorRegistry) -> None:
    async for gw in open_gateway(redis_url, namespace, metrics_registry, max_resources_per_instance=3):
        await gw.registry.register_instance(SVC, "i1", ttl=30)
        await gw.registry.register_resource(SVC, "i1", ["a"])
        r = await gw.http.post(
            "/v1/resources/register",
            json={"service_name": SVC, "instance_id": "i1", "resource_ids": ["b", "c", "d"]},
            headers={"X-Trace-Id": "t429"},
        )
        assert_error(
            r,
            429,
            {
                "type": "ResourceLimitExceededError",
                "code": 429,
                "message": "instance 'i1' owns 1 resource(s); taking 3 more would exceed the limit of 3; "
                "nothing was registered",
                "limit": 3,
                "current": 1,
                "requested": 3,
            },
            "t429",
        )
        assert [r.resource_id for r in await gw.registry.list_resources(SVC)] == ["a"]


async def test_500_unexpected_error_leaks_nothing(
    gw: Gateway, monkeypatch: pytest.MonkeyPatch, captured_logs: list[dict[str, Any]]
) -> None:
    async def broken(service_name: str) -> list[Any]:
        raise RuntimeError("secret internals")

    monkeypatch.setattr(gw.registry, "list_instances", broken)
    r = await gw.http.get(f"/v1/instances/{SVC}", headers={"X-Trace-Id": "t500"})
    assert_error(
        r,
        500,
        {
            "type": "ResourceRouterError",
            "code": 500,
            "message": "internal error (RuntimeError); the replica's log has the details under trace_id t500",
        },
        "t500",
    )
    assert "secret" not in r.text
    (logged,) = [e for e in captured_logs if e["event"] == "http.internal_error"]
    assert (logged["trace_id"], logged["error_type"], logged["exc_info"]) == ("t500", "RuntimeError", True)


async def test_503_when_redis_is_down(
    private_redis: RedisServer, namespace: str, metrics_registry: CollectorRegistry
) -> None:
    async for gw in open_gateway(private_redis.url, namespace, metrics_registry, retry_attempts=1):
        assert (await gw.http.get("/readyz")).status_code == 200
        private_redis.kill()
        ready = await gw.http.get("/readyz", headers={"X-Trace-Id": "t503"})
        assert ready.status_code == 503
        error = ready.json()["error"]
        assert ready.json()["trace_id"] == "t503"
        assert (error["type"], error["code"], error["operation"]) == ("RedisUnavailableError", 503, "ping")
        assert error["message"].startswith("Redis is unreachable during ping (ConnectionError")
        assert (await gw.http.get("/healthz")).status_code == 200  # alive, just not ready

        owner = await gw.http.get(f"/v1/resources/{SVC}/a", headers={"X-Trace-Id": "t503b"})
        assert owner.status_code == 503
        assert owner.json()["error"]["type"] == "RedisUnavailableError"
        assert owner.json()["error"]["operation"] == "lookup"

        private_redis.start()
        # Ready again once Redis answers and the routing client has re-subscribed its reply channel.
        for _ in range(100):
            if (await gw.http.get("/readyz")).status_code == 200:
                break
            await asyncio.sleep(0.05)
        assert (await gw.http.get("/readyz")).status_code == 200


async def test_503_readyz_when_redis_hangs(
    private_redis: RedisServer, namespace: str, metrics_registry: CollectorRegistry
) -> None:
    async for gw in open_gateway(private_redis.url, namespace, metrics_registry, ready_timeout=0.3):
        assert (await gw.http.get("/readyz")).status_code == 200
        private_redis.pause()
        try:
            r = await gw.http.get("/readyz", headers={"X-Trace-Id": "t503h"})
        finally:
            private_redis.resume()
        assert_error(
            r,
            503,
            {
                "type": "RedisUnavailableError",
                "code": 503,
                "message": "Redis did not answer PING within 0.3s",
                "operation": "ping",
            },
            "t503h",
        )
