"""ServiceClient: errors, retries on stale owners, service routing, fan-out, traces, Redis failures."""

from __future__ import annotations

import asyncio
import time
from collections import Counter
from typing import Any

import pytest
from prometheus_client import CollectorRegistry

from resource_router import (
    InvalidRequestError,
    MethodNotFoundError,
    RedisUnavailableError,
    RemoteHandlerError,
    ResourceNotFoundError,
    ResourceRouterError,
    RouteRequest,
    RouteTimeoutError,
    ServiceClient,
    ServiceInstance,
    ServiceUnavailableError,
)
from resource_router.models import RouteResponse
from resource_router.transport.connection import connect
from tests.support.logs import capture_logs
from tests.support.metrics import sample
from tests.support.redis_server import RedisServer

SVC = "svc"


@pytest.fixture
def make(backend_url: str, namespace: str, metrics_registry: CollectorRegistry) -> Any:
    def factory(instance_id: str, **kw: Any) -> ServiceInstance:
        kw.setdefault("ttl", 5.0)
        inst = ServiceInstance(
            backend_url, SVC, instance_id, namespace=namespace, metrics_registry=metrics_registry, **kw
        )

        @inst.handler("whoami")
        async def whoami(request: RouteRequest) -> dict[str, Any]:
            return {"iid": inst.instance_id, "token": request.fencing_token, "p": request.params}

        @inst.handler("fail")
        async def fail(request: RouteRequest) -> None:
            raise ValueError(f"bad value {request.params}")

        @inst.handler("reject")
        async def reject(request: RouteRequest) -> None:
            raise InvalidRequestError("user_id must be positive", field="user_id")

        @inst.handler("sleep")
        async def sleep(request: RouteRequest) -> str:
            await asyncio.sleep(float(request.params))
            return "slept"

        return inst

    return factory


# -- errors from the remote side -------------------------------------------------------------------
async def test_unknown_method_is_404(make: Any, client: ServiceClient) -> None:
    async with make("a") as a:
        await a.register_resource(["x"])
        with pytest.raises(MethodNotFoundError) as info:
            await client.call(SVC, "nope", resource_id="x")
    assert info.value.code == 404
    assert info.value.method == "nope"


async def test_handler_exception_is_a_500_with_its_type_and_message(make: Any, client: ServiceClient) -> None:
    async with make("a") as a:
        await a.register_resource(["x"])
        with pytest.raises(RemoteHandlerError) as info:
            await client.call(SVC, "fail", 7, resource_id="x")
    assert info.value.code == 500
    assert info.value.remote_type == "ValueError"
    assert info.value.remote_message == "bad value 7"
    assert info.value.to_dict()["remote_type"] == "ValueError"


async def test_library_errors_raised_by_handlers_pass_through(make: Any, client: ServiceClient) -> None:
    async with make("a"):
        with pytest.raises(InvalidRequestError) as info:
            await client.call(SVC, "reject")
    assert info.value.code == 400
    assert info.value.field == "user_id"


async def test_unowned_resource_is_404(make: Any, client: ServiceClient) -> None:
    async with make("a"):
        with pytest.raises(ResourceNotFoundError) as info:
            await client.call(SVC, "whoami", resource_id="ghost")
    assert info.value.code == 404
    assert info.value.resource_id == "ghost"


async def test_no_reply_before_the_timeout_is_504(
    make: Any, client: ServiceClient, metrics_registry: CollectorRegistry
) -> None:
    async with make("a") as a:
        await a.register_resource(["x"])
        started = time.perf_counter()
        with pytest.raises(RouteTimeoutError) as info:
            await client.call(SVC, "sleep", 0.6, resource_id="x", timeout=0.2)
        elapsed = time.perf_counter() - started
        assert 0.19 <= elapsed < 0.6
        assert info.value.code == 504
        assert info.value.timeout == 0.2
        await asyncio.sleep(0.5)  # the late reply arrives and is dropped quietly
    assert sample(metrics_registry, "ipc_dropped_messages_total", reason="late") == 1
    assert sample(metrics_registry, "ipc_route_calls_total", service_name=SVC, outcome="RouteTimeoutError") == 1


# -- errors found before sending -------------------------------------------------------------------
async def test_oversized_or_unencodable_params_are_refused_before_sending(make: Any, client: ServiceClient) -> None:
    seen: list[Any] = []
    async with make("a") as a:
        a.add_handler("record", lambda request: seen.append(request.params))
        with pytest.raises(InvalidRequestError) as big:
            await client.call(SVC, "record", "x" * 1_100_000)
        with pytest.raises(InvalidRequestError) as odd:
            await client.call(SVC, "record", {1, 2})
        assert await client.call(SVC, "record", "small") is None
    assert big.value.code == 400
    assert big.value.field == "params"
    assert "limit" in big.value.message
    assert odd.value.field == "params"
    assert seen == ["small"]


@pytest.mark.parametrize(
    ("kwargs", "field"),
    [
        ({"service_name": "bad name"}, "service_name"),
        ({"method": ""}, "method"),
        ({"resource_id": "a b"}, "resource_id"),
        ({"timeout": 0}, "timeout"),
        ({"timeout": True}, "timeout"),
        ({"timeout": 10_000}, "timeout"),
    ],
)
async def test_bad_arguments_are_400(client: ServiceClient, kwargs: dict[str, Any], field: str) -> None:
    args = {"service_name": SVC, "method": "m", **kwargs}
    with pytest.raises(InvalidRequestError) as info:
        await client.call(args.pop("service_name"), args.pop("method"), **args)
    assert info.value.field == field


# -- stale owners ----------------------------------------------------------------------------------
async def test_a_not_owner_reply_makes_the_client_resolve_again(make: Any, client: ServiceClient) -> None:
    async with make("a") as a, make("b") as b:
        await a.register_resource(["x"])
        assert (await client.call(SVC, "whoami", resource_id="x"))["iid"] == "a"  # now cached
        await a.release_resource(["x"])
        taken = await b.register_resource(["x"])
        result = await client.call(SVC, "whoami", resource_id="x")
    assert result == {"iid": "b", "token": taken.fencing_tokens["x"], "p": None}


async def test_a_cached_owner_that_stopped_listening_is_resolved_again(make: Any, client: ServiceClient) -> None:
    async with make("a") as a, make("b") as b:
        await a.register_resource(["x"])
        assert (await client.call(SVC, "whoami", resource_id="x"))["iid"] == "a"
        await a.abort()
        await b.register_resource(["x"], force=True)
        assert (await client.call(SVC, "whoami", resource_id="x"))["iid"] == "b"


async def test_without_a_cache_every_call_looks_up(
    make: Any, backend_url: str, namespace: str, metrics_registry: CollectorRegistry
) -> None:
    async with (
        make("a") as a,
        ServiceClient(backend_url, namespace=namespace, owner_cache_ttl=0, metrics_registry=metrics_registry) as c,
    ):
        await a.register_resource(["x"])
        for _ in range(5):
            assert (await c.call(SVC, "whoami", resource_id="x"))["iid"] == "a"
    assert sample(metrics_registry, "ipc_resource_lookups_total", service_name=SVC, found="true") == 5


async def test_cached_owner_saves_the_lookup(
    make: Any, client: ServiceClient, metrics_registry: CollectorRegistry
) -> None:
    async with make("a") as a:
        await a.register_resource(["x"])
        for _ in range(5):
            assert (await client.call(SVC, "whoami", resource_id="x"))["iid"] == "a"
        client.forget_owner(SVC, "x")
        await client.call(SVC, "whoami", resource_id="x")
    assert sample(metrics_registry, "ipc_resource_lookups_total", service_name=SVC, found="true") == 2


async def _until(predicate: Any, timeout: float = 3.0) -> None:
    end = time.monotonic() + timeout
    while not predicate():
        assert time.monotonic() < end, "condition not reached in time"
        await asyncio.sleep(0.005)


async def test_ownership_events_drop_cached_owners_at_once(
    make: Any, client: ServiceClient, metrics_registry: CollectorRegistry
) -> None:
    async with make("a") as a, make("b") as b:
        await a.register_resource(["x", "y"])
        assert (await client.call(SVC, "whoami", resource_id="x"))["iid"] == "a"
        assert (await client.call(SVC, "whoami", resource_id="y"))["iid"] == "a"
        assert client.cached_owner(SVC, "x") == "a"
        await b.register_resource(["x"], force=True)  # a takeover: the event drops the entry
        await _until(lambda: client.cached_owner(SVC, "x") is None)
        assert client.cached_owner(SVC, "y") == "a"  # untouched
        assert (await client.call(SVC, "whoami", resource_id="x"))["iid"] == "b"
        await a.release_resource(["y"])  # a release too
        await _until(lambda: client.cached_owner(SVC, "y") is None)
    # No call was sent to a stale owner: nobody answered "not owner".
    assert sample(metrics_registry, "ipc_route_requests_total", service_name=SVC, outcome="not_owner") == 0


async def test_one_subscriber_connection_serves_every_instance_and_client_of_a_process(
    private_redis: RedisServer, namespace: str
) -> None:
    url = private_redis.url
    instances = [ServiceInstance(url, SVC, f"i{n}", namespace=namespace, ttl=5) for n in range(3)]
    clients = [ServiceClient(url, namespace=namespace) for _ in range(3)]
    for n, inst in enumerate(instances):
        inst.add_handler("n", lambda request, n=n: n)
        await inst.start()
        await inst.register_resource([f"r{n}"])
    try:
        for c in clients:
            assert [await c.call(SVC, "n", resource_id=f"r{n}") for n in range(3)] == [0, 1, 2]
        admin = connect(url)
        try:
            listing = await admin.client_list()  # type: ignore[union-attr]
        finally:
            await admin.aclose()
        subscribers = [c for c in listing if int(c["sub"]) + int(c.get("ssub", 0)) > 0]
        # 3 instance channels and their 3 notice channels, 3 reply channels, the feed and members channels
        assert len(subscribers) == 1, subscribers
        assert int(subscribers[0]["sub"]) == 11
    finally:
        for c in clients:
            await c.aclose()
        for inst in instances:
            await inst.stop()


# -- service-level routing -------------------------------------------------------------------------
async def test_service_calls_spread_over_live_instances(make: Any, client: ServiceClient) -> None:
    async with make("a"), make("b"), make("c"):
        seen = Counter([(await client.call(SVC, "whoami"))["iid"] for _ in range(30)])
    assert seen == {"a": 10, "b": 10, "c": 10}


async def test_service_calls_skip_instances_that_do_not_listen(make: Any, client: ServiceClient) -> None:
    async with make("a") as a, make("b"):
        await a.abort()  # still "live" by its lease, but silent
        seen = Counter([(await client.call(SVC, "whoami"))["iid"] for _ in range(6)])
    assert seen == {"b": 6}


async def test_service_call_without_instances_is_503(make: Any, client: ServiceClient) -> None:
    with pytest.raises(ServiceUnavailableError) as info:
        await client.call(SVC, "whoami")
    assert info.value.code == 503
    assert info.value.service_name == SVC
    async with make("a") as a:
        await a.abort()
        with pytest.raises(ServiceUnavailableError):
            await client.call(SVC, "whoami")


# -- API shape, fan-out, traces --------------------------------------------------------------------
async def test_route_takes_a_route_request(make: Any, client: ServiceClient) -> None:
    async with make("a") as a:
        await a.register_resource(["x"])
        response = await client.route(
            RouteRequest(service_name=SVC, method="whoami", params=[1], resource_id="x", trace_id="tr-1", timeout=2)
        )
        assert isinstance(response, RouteResponse)
        assert response.instance_id == "a"
        assert response.trace_id == "tr-1"
        assert response.result["p"] == [1]
        owner = await client.get_resource_owner(SVC, "x")
        assert owner.fencing_token == response.result["token"]
        with pytest.raises(RouteTimeoutError):
            await client.route(RouteRequest(service_name=SVC, method="whoami", deadline=time.time() - 1))


async def test_many_concurrent_calls_get_their_own_replies(make: Any, client: ServiceClient) -> None:
    async with make("a") as a, make("b") as b:
        await a.register_resource([f"a{i}" for i in range(20)])
        await b.register_resource([f"b{i}" for i in range(20)])
        rids = [f"{p}{i % 20}" for i in range(400) for p in ("a", "b")]
        results = await asyncio.gather(*(client.call(SVC, "whoami", n, resource_id=r) for n, r in enumerate(rids)))
    assert [r["p"] for r in results] == list(range(len(rids)))
    assert all(r["iid"] == rid[0] for r, rid in zip(results, rids, strict=True))


async def test_one_pubsub_hub_per_process(make: Any, client: ServiceClient, backend_url: str, namespace: str) -> None:
    async with make("a") as a, make("b") as b, ServiceClient(backend_url, namespace=namespace) as other:
        await other.start()
        hubs = {id(x._hub) for x in (a, b, client, other)}
        assert len(hubs) == 1
        assert other.reply_channel != client.reply_channel


async def test_logs_carry_trace_resource_and_instance_ids(make: Any, client: ServiceClient) -> None:
    async with make("a") as a:
        await a.register_resource(["x"])
        with capture_logs() as logs:
            await client.call(SVC, "whoami", resource_id="x", trace_id="trace-42")
            await asyncio.sleep(0.01)
            with pytest.raises(MethodNotFoundError):
                await client.call(SVC, "nope", resource_id="x", trace_id="trace-43")
    call = next(e for e in logs if e["event"] == "route.call" and e["trace_id"] == "trace-42")
    dispatch = next(e for e in logs if e["event"] == "route.dispatch")
    assert call["resource_id"] == dispatch["resource_id"] == "x"
    assert call["instance_id"] == dispatch["instance_id"] == "a"
    assert dispatch["trace_id"] == "trace-42"
    assert call["outcome"] == dispatch["outcome"] == "ok"
    assert "duration_ms" in call
    assert "duration_ms" in dispatch
    failed = next(e for e in logs if e["event"] == "route.call" and e["trace_id"] == "trace-43")
    assert failed["outcome"] == "MethodNotFoundError"
    assert failed["code"] == 404
    missing = next(e for e in logs if e["event"] == "route.method_not_found")
    assert missing["trace_id"] == "trace-43"
    assert missing["instance_id"] == "a"


async def test_a_closed_client_refuses_calls(backend_url: str, namespace: str) -> None:
    c = ServiceClient(backend_url, namespace=namespace)
    await c.aclose()
    with pytest.raises(RuntimeError):
        await c.call(SVC, "whoami")
    with pytest.raises(InvalidRequestError):
        ServiceClient(backend_url, owner_cache_ttl=-1)


# -- Redis failures --------------------------------------------------------------------------------
@pytest.mark.chaos
async def test_redis_restart_recovers_subscriptions_and_lease(private_redis: RedisServer, namespace: str) -> None:
    url = private_redis.url
    inst = ServiceInstance(url, SVC, "a", ttl=0.6, namespace=namespace)

    @inst.handler("whoami")
    async def whoami(request: RouteRequest) -> str:
        return inst.instance_id

    lost: list[list[str]] = []
    inst.on_resource_lost = lost.append
    async with inst, ServiceClient(url, namespace=namespace) as client:
        await inst.register_resource(["x"])
        assert await client.call(SVC, "whoami", resource_id="x") == "a"
        private_redis.restart()  # everything in Redis is gone
        with pytest.raises(ResourceRouterError) as info:
            await client.call(SVC, "whoami", resource_id="x", timeout=1.0)
        assert info.value.code in (404, 503)
        # The lease is renewed by re-registering; ownership has to be claimed again.
        end = time.monotonic() + 5
        while lost != [["x"]] or not inst.lease_valid:
            assert time.monotonic() < end, "the instance did not notice the lost lease"
            await asyncio.sleep(0.05)
        await inst.register_resource(["x"])
        end = time.monotonic() + 5
        while True:  # the pub/sub connections come back with their subscriptions
            try:
                assert await client.call(SVC, "whoami", resource_id="x", timeout=1.0) == "a"
                break
            except ResourceRouterError:
                assert time.monotonic() < end, "routing did not recover after the restart"
                await asyncio.sleep(0.1)


@pytest.mark.chaos
async def test_redis_down_is_a_503_not_a_hang(private_redis: RedisServer, namespace: str) -> None:
    async with ServiceClient(private_redis.url, namespace=namespace) as client:
        private_redis.kill()
        started = time.perf_counter()
        with pytest.raises(RedisUnavailableError) as info:
            await client.call(SVC, "whoami", resource_id="x", timeout=5.0)
        assert info.value.code == 503
        assert time.perf_counter() - started < 3.0
