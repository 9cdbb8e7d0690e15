"""``POST /v1/route`` in-process: a replica app (httpx over ASGI) routing to ``ServiceInstance`` objects
on the real Redis. Exact bodies for the answer and for every routing error (400/404/500/503/504)."""

from __future__ import annotations

import asyncio

from prometheus_client import CollectorRegistry

from resource_router import ResourceRegistry
from resource_router.routing.instance import ServiceInstance
from tests.support.gateway import SVC, Gateway, assert_error, open_gateway


async def test_route_to_owner_and_to_any_instance(gw: Gateway, instance: ServiceInstance) -> None:
    token = instance.fencing_token("user-1")
    r = await gw.http.post(
        "/v1/route",
        json={"service_name": SVC, "resource_id": "user-1", "method": "echo", "params": {"x": [1, 2]}},
        headers={"X-Trace-Id": "route-1"},
    )
    assert r.status_code == 200, r.text
    assert r.json() == {
        "result": {"params": {"x": [1, 2]}, "resource_id": "user-1", "token": token},
        "trace_id": "route-1",
        "instance_id": "echo-1",
    }
    assert r.headers["x-trace-id"] == "route-1"

    anyone = await gw.http.post(
        "/v1/route", json={"service_name": SVC, "method": "echo", "params": "hi", "trace_id": "route-2"}
    )
    assert anyone.status_code == 200
    assert anyone.json() == {
        "result": {"params": "hi", "resource_id": None, "token": None},
        "trace_id": "route-2",
        "instance_id": "echo-1",
    }


async def test_route_400_bad_requests(gw: Gateway, instance: ServiceInstance) -> None:
    bad_id = await gw.http.post(
        "/v1/route",
        json={"service_name": SVC, "resource_id": "a b", "method": "echo"},
        headers={"X-Trace-Id": "r400"},
    )
    assert_error(
        bad_id,
        400,
        {
            "type": "InvalidRequestError",
            "code": 400,
            "message": "resource_id 'a b' contains ' ' (U+0020); whitespace, control characters, braces, glob "
            "characters, quotes and backslashes are not allowed",
            "field": "resource_id",
        },
        "r400",
    )
    fenced = await gw.http.post(
        "/v1/route",
        json={"service_name": SVC, "resource_id": "user-1", "method": "echo", "fencing_token": 7},
        headers={"X-Trace-Id": "r400f"},
    )
    assert_error(
        fenced,
        400,
        {
            "type": "InvalidRequestError",
            "code": 400,
            "message": "fencing_token is set by the owning instance for its handler; callers must not send it",
            "field": "fencing_token",
        },
        "r400f",
    )
    bad_timeout = await gw.http.post(
        "/v1/route", json={"service_name": SVC, "method": "echo", "timeout": 0}, headers={"X-Trace-Id": "r400t"}
    )
    assert_error(
        bad_timeout,
        400,
        {
            "type": "InvalidRequestError",
            "code": 400,
            "message": "invalid request: timeout: Input should be greater than 0",
            "field": "timeout",
            "errors": [{"field": "timeout", "message": "Input should be greater than 0", "type": "greater_than"}],
        },
        "r400t",
    )


async def test_route_404_no_owner_and_no_method(gw: Gateway, instance: ServiceInstance) -> None:
    r = await gw.http.post(
        "/v1/route",
        json={"service_name": SVC, "resource_id": "user-404", "method": "echo"},
        headers={"X-Trace-Id": "r404"},
    )
    assert_error(
        r,
        404,
        {
            "type": "ResourceNotFoundError",
            "code": 404,
            "message": f"resource 'user-404' of service '{SVC}' has no owner",
            "resource_id": "user-404",
            "service_name": SVC,
        },
        "r404",
    )
    m = await gw.http.post(
        "/v1/route",
        json={"service_name": SVC, "resource_id": "user-1", "method": "nope"},
        headers={"X-Trace-Id": "r404m"},
    )
    assert_error(
        m,
        404,
        {
            "type": "MethodNotFoundError",
            "code": 404,
            "message": f"service '{SVC}' (instance 'echo-1') has no handler for 'nope'",
            "method": "nope",
        },
        "r404m",
    )


async def test_route_500_handler_raised(gw: Gateway, instance: ServiceInstance) -> None:
    r = await gw.http.post(
        "/v1/route",
        json={"service_name": SVC, "resource_id": "user-1", "method": "fail"},
        headers={"X-Trace-Id": "r500"},
    )
    assert_error(
        r,
        500,
        {
            "type": "RemoteHandlerError",
            "code": 500,
            "message": "handler 'fail' raised ValueError: no good",
            "remote_type": "ValueError",
            "remote_message": "no good",
        },
        "r500",
    )


async def test_route_503_no_instance_and_owner_not_listening(gw: Gateway, real_registry: ResourceRegistry) -> None:
    r = await gw.http.post(
        "/v1/route", json={"service_name": "empty-svc", "method": "echo"}, headers={"X-Trace-Id": "r503"}
    )
    assert_error(
        r,
        503,
        {
            "type": "ServiceUnavailableError",
            "code": 503,
            "message": "no live instance of service 'empty-svc' is listening (none registered)",
            "service_name": "empty-svc",
        },
        "r503",
    )
    # registered and owning, but no process listens on its channel: fail fast, not after the timeout
    reg = gw.registry
    await reg.register_instance(SVC, "zombie", ttl=30)
    await reg.register_resource(SVC, "zombie", ["z-1"])
    loop = asyncio.get_running_loop()
    start = loop.time()
    z = await gw.http.post(
        "/v1/route",
        json={"service_name": SVC, "resource_id": "z-1", "method": "echo", "timeout": 10},
        headers={"X-Trace-Id": "r503z"},
    )
    assert loop.time() - start < 2.0
    assert_error(
        z,
        503,
        {
            "type": "OwnerUnavailableError",
            "code": 503,
            "message": f"owner 'zombie' of resource 'z-1' (service '{SVC}') is unavailable: nobody is listening "
            "on its channel",
            "resource_id": "z-1",
            "instance_id": "zombie",
        },
        "r503z",
    )


async def test_route_504_timeout(gw: Gateway, instance: ServiceInstance) -> None:
    r = await gw.http.post(
        "/v1/route",
        json={
            "service_name": SVC,
            "resource_id": "user-1",
            "method": "sleep",
            "params": {"seconds": 1},
            "timeout": 0.2,
        },
        headers={"X-Trace-Id": "r504"},
    )
    assert_error(
        r, 504, {"type": "RouteTimeoutError", "code": 504, "message": "no reply within 0.2s", "timeout": 0.2}, "r504"
    )


async def test_route_metrics_counted(gw: Gateway, instance: ServiceInstance) -> None:
    for _ in range(3):
        ok = await gw.http.post("/v1/route", json={"service_name": SVC, "resource_id": "user-1", "method": "echo"})
        assert ok.status_code == 200
    await gw.http.post("/v1/route", json={"service_name": SVC, "resource_id": "nobody", "method": "echo"})
    text = (await gw.http.get("/metrics")).text
    lines = set(text.splitlines())
    assert f'ipc_route_calls_total{{outcome="ok",service_name="{SVC}"}} 3.0' in lines
    assert f'ipc_route_calls_total{{outcome="ResourceNotFoundError",service_name="{SVC}"}} 1.0' in lines
    assert 'ipc_gateway_requests_total{method="POST",route="/v1/route",status="200"} 3.0' in lines
    assert 'ipc_gateway_requests_total{method="POST",route="/v1/route",status="404"} 1.0' in lines


async def test_registered_through_gateway_is_served_after_adoption(gw: Gateway, instance: ServiceInstance) -> None:
    """Ids registered for a live instance through the HTTP API are adopted at once, from the
    ownership event the registration publishes (no heartbeat needed)."""
    heartbeats = instance.heartbeats
    r = await gw.http.post(
        "/v1/resources/register", json={"service_name": SVC, "instance_id": "echo-1", "resource_ids": ["user-2"]}
    )
    assert r.status_code == 200
    for _ in range(100):
        if "user-2" in instance.owned_resources:
            break
        await asyncio.sleep(0.01)
    assert "user-2" in instance.owned_resources
    assert instance.fencing_token("user-2") == r.json()["fencing_tokens"]["user-2"]
    assert instance.heartbeats == heartbeats
    routed = await gw.http.post("/v1/route", json={"service_name": SVC, "resource_id": "user-2", "method": "echo"})
    assert routed.status_code == 200
    assert routed.json()["result"]["token"] == r.json()["fencing_tokens"]["user-2"]


async def test_route_client_starts_lazily_when_redis_was_down_at_startup(
    namespace: str, metrics_registry: CollectorRegistry
) -> None:
    """A replica started while Redis is unreachable still starts (readyz 503) instead of crashing."""
    from tests.support.redis_server import free_port

    dead = f"redis://127.0.0.1:{free_port()}/0"
    async for gw in open_gateway(dead, namespace, metrics_registry, retry_attempts=1):
        assert (await gw.http.get("/healthz")).status_code == 200
        assert (await gw.http.get("/readyz")).status_code == 503
        r = await gw.http.post("/v1/route", json={"service_name": SVC, "method": "echo"}, headers={"X-Trace-Id": "d"})
        assert r.status_code == 503
        assert r.json()["error"]["type"] == "RedisUnavailableError"
