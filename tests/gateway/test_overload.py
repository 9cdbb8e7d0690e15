"""A replica process serves at most ``max_in_flight`` requests at once: above it, 503 with
``Retry-After`` at once, while probes and metrics keep answering (real Redis, a live instance)."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Callable

import pytest
from prometheus_client import CollectorRegistry

from resource_router import RouteRequest
from resource_router.gateway import GatewaySettings
from resource_router.routing.instance import ServiceInstance
from tests.support.gateway import SVC, Gateway, assert_error, open_gateway
from tests.support.metrics import sample

LIMIT = 2


@pytest.fixture
async def gw(redis_url: str, namespace: str, metrics_registry: CollectorRegistry) -> AsyncIterator[Gateway]:
    async for g in open_gateway(redis_url, namespace, metrics_registry, max_in_flight=LIMIT):
        yield g


@pytest.fixture
async def instance(
    redis_url: str, namespace: str, metrics_registry: CollectorRegistry
) -> AsyncIterator[tuple[ServiceInstance, asyncio.Event]]:
    inst = ServiceInstance(
        redis_url, SVC, "slow-1", ttl=5, namespace=namespace, metrics_registry=metrics_registry, sweep_interval=0
    )
    release = asyncio.Event()

    @inst.handler("wait")
    async def wait(request: RouteRequest) -> str:
        await release.wait()
        return "done"

    @inst.handler("echo")
    async def echo(request: RouteRequest) -> object:
        return request.params

    async with inst:
        await inst.register_resource(["r-1"])
        yield inst, release


async def _until(predicate: Callable[[], bool], timeout: float = 5.0) -> None:
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    while not predicate():
        assert loop.time() < deadline, "condition not reached"
        await asyncio.sleep(0.01)


async def test_above_the_limit_503_with_retry_after_and_probes_still_answer(
    gw: Gateway, instance: tuple[ServiceInstance, asyncio.Event], metrics_registry: CollectorRegistry
) -> None:
    _, release = instance
    in_flight = gw.app.state.gateway.in_flight
    body = {"service_name": SVC, "resource_id": "r-1", "method": "wait", "timeout": 10}
    held = [asyncio.ensure_future(gw.http.post("/v1/route", json=body)) for _ in range(LIMIT)]
    await _until(lambda: in_flight.count == LIMIT)

    shed = await gw.http.post(
        "/v1/route", json={"service_name": SVC, "resource_id": "r-1", "method": "echo"}, headers={"X-Trace-Id": "t-ov"}
    )
    assert_error(
        shed,
        503,
        {
            "type": "ReplicaOverloadedError",
            "code": 503,
            "message": "this replica process is serving its limit of 2 requests at once; "
            "retry in 1s or use another replica",
            "limit": LIMIT,
            "retry_after": 1,
        },
        "t-ov",
    )
    assert shed.headers["retry-after"] == "1"
    lookup = await gw.http.get(f"/v1/resources/{SVC}/r-1")  # every API request counts, lookups too
    assert lookup.status_code == 503
    assert (await gw.http.get("/healthz")).status_code == 200
    assert (await gw.http.get("/readyz")).status_code == 200
    assert (await gw.http.get("/metrics")).status_code == 200
    assert sample(metrics_registry, "ipc_gateway_shed_total", transport="http") == 2

    release.set()
    assert [r.status_code for r in await asyncio.gather(*held)] == [200] * LIMIT
    assert in_flight.count == 0
    again = await gw.http.post("/v1/route", json={"service_name": SVC, "resource_id": "r-1", "method": "echo"})
    assert again.status_code == 200


async def test_failed_requests_give_their_place_back(gw: Gateway) -> None:
    in_flight = gw.app.state.gateway.in_flight
    for _ in range(3 * LIMIT):
        r = await gw.http.post("/v1/route", json={"service_name": "nobody", "method": "m"})
        assert r.status_code == 503
        assert r.json()["error"]["type"] == "ServiceUnavailableError"
        bad = await gw.http.post("/v1/route", content=b"{", headers={"content-type": "application/json"})
        assert bad.status_code == 400
    assert in_flight.count == 0


def test_limit_is_a_setting_read_from_the_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("RESOURCE_ROUTER_REDIS_URL", "redis://127.0.0.1:6379/0")
    assert GatewaySettings().max_in_flight == 1024
    monkeypatch.setenv("RESOURCE_ROUTER_MAX_IN_FLIGHT", "7")
    assert GatewaySettings.from_env().max_in_flight == 7
    monkeypatch.setenv("RESOURCE_ROUTER_MAX_IN_FLIGHT", "0")
    with pytest.raises(ValueError, match="max_in_flight"):
        GatewaySettings.from_env()
