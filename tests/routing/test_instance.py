"""ServiceInstance in-process: dispatch, ownership view, leases, deadlines, bad input, shutdown."""

from __future__ import annotations

import asyncio
import random
import re
import time
from typing import Any

import msgpack
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from prometheus_client import CollectorRegistry

from resource_router import (
    InvalidRequestError,
    OwnerUnavailableError,
    RedisUnavailableError,
    ResourceLimitExceededError,
    ResourceNotFoundError,
    ResourceRegistry,
    ResourceReleaseError,
    RouteRequest,
    RouteTimeoutError,
    ServiceClient,
    ServiceInstance,
)
from resource_router.ids import default_instance_id
from resource_router.transport.connection import connect
from tests.procs.peer import RawPeer
from tests.support.logs import capture_logs
from tests.support.metrics import sample
from tests.support.waiting import wait_for

SVC = "svc"


@pytest.fixture
def make(backend_url: str, namespace: str, metrics_registry: CollectorRegistry) -> Any:
    def factory(instance_id: str, **kw: Any) -> ServiceInstance:
        kw.setdefault("ttl", 5.0)
        return ServiceInstance(
            backend_url, SVC, instance_id, namespace=namespace, metrics_registry=metrics_registry, **kw
        )

    return factory


def echo(inst: ServiceInstance, seen: list[RouteRequest] | None = None) -> None:
    @inst.handler("echo")
    async def handler(request: RouteRequest) -> dict[str, Any]:
        if seen is not None:
            seen.append(request)
        return {"iid": inst.instance_id, "token": request.fencing_token, "p": request.params}


# -- basics ------------------------------------------------------------------------------------------
def test_default_instance_id_is_host_pid_random() -> None:
    first, second = default_instance_id(), default_instance_id()
    assert first != second
    assert re.fullmatch(r"[A-Za-z0-9][A-Za-z0-9._:@-]*-\d+-[0-9a-f]{6}", first)


async def test_handler_gets_the_route_request(make: Any, client: ServiceClient) -> None:
    seen: list[RouteRequest] = []
    async with make("a") as inst:
        echo(inst, seen)
        response = await inst.register_resource(["r1"])
        result = await client.call(SVC, "echo", {"x": [1, 2]}, resource_id="r1", timeout=2.0, trace_id="t-1")
    assert result == {"iid": "a", "token": response.fencing_tokens["r1"], "p": {"x": [1, 2]}}
    (request,) = seen
    assert request.service_name == SVC
    assert request.method == "echo"
    assert request.resource_id == "r1"
    assert request.trace_id == "t-1"
    assert request.fencing_token == response.fencing_tokens["r1"]
    assert request.request_id is not None
    assert request.request_id.startswith(client.client_id + ":")
    assert request.deadline is not None
    assert 0 < request.deadline - time.time() <= 2.0
    assert request.timeout is not None
    assert 0 < request.timeout <= 2.0


async def test_sync_handlers_are_accepted(make: Any, client: ServiceClient) -> None:
    async with make("a") as inst:
        inst.add_handler("plain", lambda request: request.params * 2)
        assert await client.call(SVC, "plain", 21) == 42


async def test_instance_must_be_running(make: Any) -> None:
    inst = make("a")
    with pytest.raises(RuntimeError):
        await inst.register_resource(["r"])
    async with inst:
        pass
    with pytest.raises(RuntimeError):
        await inst.start()
    with pytest.raises(InvalidRequestError):
        make("b", ttl=0)
    with pytest.raises(InvalidRequestError):
        inst.add_handler("", lambda r: None)


async def test_registration_conflicts_and_limit_keep_the_local_view_exact(make: Any) -> None:
    async with make("a", max_resources_per_instance=3) as a, make("b") as b:
        first = await a.register_resource(["r1", "r2"])
        assert a.owned_resources == {"r1", "r2"}
        assert a.fencing_tokens == first.fencing_tokens
        conflict = await b.register_resource(["r1", "r9"])
        assert conflict.conflicts == {"r1": "a"}
        assert b.owned_resources == {"r9"}
        with pytest.raises(ResourceLimitExceededError) as info:
            await a.register_resource(["r3", "r4"])
        assert info.value.code == 429
        assert a.owned_resources == {"r1", "r2"}


async def test_release_stops_serving_and_foreign_release_changes_nothing(make: Any, client: ServiceClient) -> None:
    async with make("a") as a, make("b") as b:
        echo(a)
        await a.register_resource(["r1", "r2"])
        await b.register_resource(["r3"])
        assert (await client.call(SVC, "echo", resource_id="r1"))["iid"] == "a"
        released = await a.release_resource(["r1"])
        assert released.released == ["r1"]
        assert a.owned_resources == {"r2"}
        with pytest.raises(ResourceNotFoundError):
            await client.call(SVC, "echo", resource_id="r1")
        with pytest.raises(ResourceReleaseError) as info:
            await a.release_resource(["r2", "r3"])
        assert info.value.code == 403
        assert info.value.owners == {"r3": "b"}
        assert a.owned_resources == {"r2"}
        assert b.owned_resources == {"r3"}


# -- refusing and dropping -------------------------------------------------------------------------
async def test_request_for_a_resource_it_does_not_own_is_refused(
    make: Any, peer: RawPeer, metrics_registry: CollectorRegistry
) -> None:
    calls: list[RouteRequest] = []
    async with make("a") as a:
        echo(a, calls)
        assert await peer.publish(a.channel, peer.envelope(SVC, "echo", rid="not-mine")) == 1
        reply = await peer.next_reply()
    assert reply is not None
    assert reply["s"] == "not_owner"
    assert reply["iid"] == "a"
    assert calls == []
    assert sample(metrics_registry, "ipc_route_requests_total", service_name=SVC, outcome="not_owner") == 1


async def test_expired_request_is_dropped_without_running(
    make: Any, peer: RawPeer, metrics_registry: CollectorRegistry
) -> None:
    calls: list[RouteRequest] = []
    async with make("a") as a:
        echo(a, calls)
        await a.register_resource(["r1"])
        await peer.publish(a.channel, peer.envelope(SVC, "echo", rid="r1", dl=time.time() - 1.0))
        assert await peer.next_reply(timeout=0.3) is None
        assert calls == []
        assert sample(metrics_registry, "ipc_dropped_messages_total", reason="expired") == 1
        # A live deadline on the same channel is served.
        await peer.publish(a.channel, peer.envelope(SVC, "echo", rid="r1"))
        reply = await peer.next_reply()
    assert reply is not None
    assert reply["s"] == "ok"
    assert len(calls) == 1


async def test_deadline_is_checked_again_after_waiting_for_a_slot(make: Any, client: ServiceClient) -> None:
    ran: list[str] = []
    async with make("a", max_concurrency=1) as a:

        @a.handler("work")
        async def work(request: RouteRequest) -> str:
            ran.append(request.params)
            await asyncio.sleep(0.4)
            return str(request.params)

        slow = asyncio.create_task(client.call(SVC, "work", "first", timeout=5.0))
        await wait_for(lambda: ran == ["first"])
        with pytest.raises(RouteTimeoutError):
            await client.call(SVC, "work", "second", timeout=0.15)
        assert await slow == "first"
        await asyncio.sleep(0.05)
    assert ran == ["first"]


async def test_handlers_run_concurrently_within_the_bound(make: Any, client: ServiceClient) -> None:
    active = peak = 0
    async with make("a", max_concurrency=3) as a:

        @a.handler("work")
        async def work(request: RouteRequest) -> int:
            nonlocal active, peak
            active += 1
            peak = max(peak, active)
            await asyncio.sleep(0.05)
            active -= 1
            return int(request.params)

        results = await asyncio.gather(*(client.call(SVC, "work", i) for i in range(12)))
    assert results == list(range(12))
    assert peak == 3


async def test_slow_handler_never_blocks_the_heartbeat(make: Any, client: ServiceClient) -> None:
    async with make("a", ttl=0.6) as a:

        @a.handler("slow")
        async def slow(request: RouteRequest) -> str:
            await asyncio.sleep(1.5)
            return "done"

        await a.register_resource(["r1"])
        before = a.heartbeats
        assert await client.call(SVC, "slow", resource_id="r1", timeout=5.0) == "done"
        assert a.heartbeats - before >= 4  # every ttl/3 = 0.2 s during the 1.5 s call
        owner = await client.get_resource_owner(SVC, "r1")
        assert owner.owner_instance_id == "a"


# -- losing resources ------------------------------------------------------------------------------
async def test_forced_takeover_is_seen_at_once_on_the_notice_channel(make: Any, peer: RawPeer) -> None:
    lost_calls: list[list[str]] = []

    async def on_lost(ids: list[str]) -> None:
        lost_calls.append(sorted(ids))

    async with make("a", ttl=30.0, on_resource_lost=on_lost) as a, make("b", ttl=30.0) as b:
        echo(a)
        await a.register_resource(["x", "y"])
        taken = await b.register_resource(["x"], force=True)
        assert taken.taken_over == {"x": "a"}
        # The heartbeat is 10 s away: the loss is learned from the instance's notice channel.
        await wait_for(lambda: lost_calls == [["x"]], timeout=2.0)
        assert a.owned_resources == {"y"}
        await peer.publish(a.channel, peer.envelope(SVC, "echo", rid="x"))
        reply = await peer.next_reply()
        assert reply is not None
        assert reply["s"] == "not_owner"
        await a.heartbeat()  # the heartbeat reports x too; it is not reported twice
        await asyncio.sleep(0.05)
    assert lost_calls == [["x"]]


async def test_an_owner_key_deleted_by_hand_is_dropped_at_the_next_reconciliation(
    make: Any, backend_url: str, namespace: str
) -> None:
    """An operator's DEL of an owner key is no operation of the product: the grant that follows names
    no previous owner, so no notice reaches ``a`` (instances hear only the grants that concern them).
    Callers, who follow the service's events, route to the new owner at once; ``a`` drops the id when
    its view is next reconciled with Redis."""
    lost_calls: list[list[str]] = []
    redis = connect(backend_url)
    registry = ResourceRegistry(backend_url, namespace=namespace)
    try:
        async with make("a", ttl=30.0, on_resource_lost=lost_calls.append) as a:
            await a.register_resource(["x", "y"])
            await redis.delete(a.registry.keys.service(SVC).owner("x"))  # an operator's DEL
            await registry.register_instance(SVC, "other", ttl=30)
            assert (await registry.register_resource(SVC, "other", ["x"])).success
            assert (await registry.get_resource_owner(SVC, "x")).owner_instance_id == "other"
            await asyncio.sleep(0.2)
            assert lost_calls == []  # not told: nothing it did or lost by an operation of the product
            a._keeper.view.needs_reconcile = True  # what a master change or a changed count sets
            await a.heartbeat()
            await wait_for(lambda: lost_calls == [["x"]])
            assert a.owned_resources == {"y"}
    finally:
        await registry.aclose()
        await redis.aclose()


async def test_a_lost_heartbeat_reply_is_reconciled(
    make: Any, backend_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    lost_calls: list[list[str]] = []
    redis = connect(backend_url)
    try:
        async with make("a", ttl=30.0, on_resource_lost=lost_calls.append) as a:
            await a.register_resource(["x", "y"])
            await redis.delete(a.registry.keys.service(SVC).owner("x"))
            real = a.registry.heartbeat

            async def heartbeat_then_lose_reply(*args: Any, **kwargs: Any) -> Any:
                await real(*args, **kwargs)  # Redis drops x from the owned set and reports it...
                raise RedisUnavailableError("reply lost", operation="heartbeat")  # ...but we never hear

            monkeypatch.setattr(a.registry, "heartbeat", heartbeat_then_lose_reply)
            with pytest.raises(RedisUnavailableError):
                await a.heartbeat()
            assert a.owned_resources == {"x", "y"}
            monkeypatch.setattr(a.registry, "heartbeat", real)
            await a.heartbeat()  # reports nothing lost; the instance re-reads its resources
            assert a.owned_resources == {"y"}
            assert lost_calls == [["x"]]
    finally:
        await redis.aclose()


async def test_taking_a_resource_back_is_not_reported_lost(make: Any, client: ServiceClient) -> None:
    lost_calls: list[list[str]] = []
    async with make("a", ttl=30.0, on_resource_lost=lost_calls.append) as a, make("b", ttl=30.0) as b:
        echo(a)
        await a.register_resource(["x"])
        await b.register_resource(["x"], force=True)
        await wait_for(lambda: lost_calls == [["x"]])
        back = await a.register_resource(["x"], force=True)
        assert back.taken_over == {"x": "b"}
        await a.heartbeat()  # the registry still lists x in a's lost set; a checks the owner key
        assert a.owned_resources == {"x"}
        assert lost_calls == [["x"]]
        assert (await client.call(SVC, "echo", resource_id="x"))["iid"] == "a"


async def test_expired_lease_in_redis_loses_everything_and_registers_again(
    make: Any, backend_url: str, client: ServiceClient
) -> None:
    lost_calls: list[list[str]] = []
    redis = connect(backend_url)
    try:
        async with make("a", ttl=30.0, on_resource_lost=lost_calls.append) as a:
            echo(a)
            await a.register_resource(["x", "y"])
            sk = a.registry.keys.service(SVC)
            await redis.delete(sk.instance("a"), sk.owner("x"), sk.owner("y"))  # the lease ran out
            await a.heartbeat()
            assert a.owned_resources == frozenset()
            assert lost_calls == [["x", "y"]] or lost_calls == [["y", "x"]]
            assert [i.instance_id for i in await a.registry.list_instances(SVC)] == ["a"]
            await a.register_resource(["x"])
            assert (await client.call(SVC, "echo", resource_id="x"))["iid"] == "a"
    finally:
        await redis.aclose()


async def test_requests_are_refused_once_the_local_lease_ran_out(
    make: Any, client: ServiceClient, metrics_registry: CollectorRegistry
) -> None:
    calls: list[RouteRequest] = []
    async with make("a", ttl=0.5) as a:
        echo(a, calls)
        await a.register_resource(["x"])
        assert a._heartbeat_task is not None
        a._heartbeat_task.cancel()  # the heartbeat stalls (e.g. a long pause)...
        # ...while Redis still says "a" owns x (renewed from elsewhere for 10 s).
        await a.registry.heartbeat(SVC, "a", ttl=10.0)
        await asyncio.sleep(0.55)
        assert not a.lease_valid
        with pytest.raises(OwnerUnavailableError) as info:
            await client.call(SVC, "echo", resource_id="x", timeout=2.0)
        assert info.value.code == 503
        assert calls == []
        assert sample(metrics_registry, "ipc_route_requests_total", service_name=SVC, outcome="not_owner") == 2
        await a.heartbeat()  # a successful heartbeat restores the lease
        assert a.lease_valid
        assert (await client.call(SVC, "echo", resource_id="x"))["iid"] == "a"


# -- shutdown --------------------------------------------------------------------------------------
async def test_graceful_exit_drains_in_flight_work_then_releases(
    make: Any, client: ServiceClient, backend_url: str, namespace: str
) -> None:
    started = asyncio.Event()
    a = make("a", ttl=30.0)

    @a.handler("slow")
    async def slow(request: RouteRequest) -> str:
        started.set()
        await asyncio.sleep(0.3)
        return "finished"

    async with a:
        await a.register_resource([f"r{i}" for i in range(20)])
        call = asyncio.create_task(client.call(SVC, "slow", resource_id="r1", timeout=5.0))
        await started.wait()
    assert await call == "finished"
    registry = ResourceRegistry(backend_url, namespace=namespace)
    try:
        assert await registry.list_resources(SVC) == []
        assert await registry.list_instances(SVC) == []
    finally:
        await registry.aclose()
    with pytest.raises(ResourceNotFoundError):
        await client.call(SVC, "slow", resource_id="r1")


async def test_abort_keeps_resources_until_the_lease_runs_out(make: Any, client: ServiceClient) -> None:
    a = make("a", ttl=0.5)
    async with a:
        echo(a)
        await a.register_resource(["x"])
        await a.abort()
        started = time.perf_counter()
        with pytest.raises(OwnerUnavailableError):
            await client.call(SVC, "echo", resource_id="x", timeout=5.0)
        assert time.perf_counter() - started < 0.5
        assert (await client.get_resource_owner(SVC, "x")).owner_instance_id == "a"
        await asyncio.sleep(0.6)
        with pytest.raises(ResourceNotFoundError):
            await client.get_resource_owner(SVC, "x")


# -- bad input on the channel ----------------------------------------------------------------------
async def test_garbage_on_the_channel_is_counted_and_dropped(
    make: Any, peer: RawPeer, client: ServiceClient, metrics_registry: CollectorRegistry
) -> None:
    rng = random.Random(42)
    garbage = [rng.randbytes(rng.randrange(0, 300)) for _ in range(150)]
    garbage += [b"", b"\xc1", msgpack.packb([1, 2, 3]), msgpack.packb({"k": "rep", "v": 1}), b"\x81\xa1v"]
    garbage += [msgpack.packb({"v": 1, "k": "req", "id": 5, "rc": None}), msgpack.packb("text")]
    async with make("a") as a:
        echo(a)
        await a.register_resource(["x"])
        for data in garbage:
            assert await peer.publish(a.channel, data) == 1
        assert (await client.call(SVC, "echo", "still here", resource_id="x"))["p"] == "still here"
    dropped = sum(
        sample(metrics_registry, "ipc_dropped_messages_total", reason=r) for r in ("malformed", "foreign", "version")
    )
    assert dropped == len(garbage)


async def test_requests_that_break_the_rules_are_answered_400(
    make: Any, peer: RawPeer, metrics_registry: CollectorRegistry
) -> None:
    async with make("a") as a:
        echo(a)
        await a.register_resource(["x"])
        cases = {
            "version": peer.envelope(SVC, "echo", rid="x", v=2),
            "oversized": peer.envelope(SVC, "echo", rid="x", p=b"z" * 1_100_000),
            "bad deadline": peer.envelope(SVC, "echo", rid="x", dl="soon"),
            "other service": peer.envelope("other", "echo", rid="x"),
        }
        replies = {}
        for name, message in cases.items():
            await peer.publish(a.channel, message)
            replies[name] = await peer.next_reply()
    for name, reply in replies.items():
        assert reply is not None, name
        assert reply["s"] == "error", name
        assert reply["e"]["code"] == 400, name
        assert reply["e"]["type"] == "InvalidRequestError", name
    assert replies["version"]["e"]["field"] == "v"
    assert replies["other service"]["e"]["field"] == "service_name"
    assert "limit" in replies["oversized"]["e"]["message"]
    assert sample(metrics_registry, "ipc_dropped_messages_total", reason="oversized") == 1


async def test_reply_channels_outside_the_namespace_get_no_answer(
    make: Any, peer: RawPeer, metrics_registry: CollectorRegistry
) -> None:
    assert peer.hub is not None
    elsewhere: list[bytes] = []
    await peer.hub.subscribe("elsewhere", elsewhere.append)
    try:
        async with make("a") as a:
            echo(a)
            await peer.publish(a.channel, peer.envelope(SVC, "echo", rc="elsewhere"))
            await peer.publish(a.channel, peer.envelope(SVC, "echo", rc="elsewhere", v=9))
            await asyncio.sleep(0.2)
        assert elsewhere == []
        assert sample(metrics_registry, "ipc_dropped_messages_total", reason="foreign") == 1
        assert sample(metrics_registry, "ipc_dropped_messages_total", reason="version") == 1
    finally:
        await peer.hub.unsubscribe("elsewhere", elsewhere.append)


async def test_oversized_result_becomes_a_400(make: Any, client: ServiceClient) -> None:
    async with make("a") as a:
        a.add_handler("big", lambda request: "x" * 1_100_000)
        with pytest.raises(InvalidRequestError) as info:
            await client.call(SVC, "big")
    assert info.value.field == "result"


# -- property: random bytes never crash an instance process ------------------------------------------
_FIELDS = st.sampled_from(["v", "k", "id", "rc", "svc", "m", "rid", "p", "dl", "tr", "ft"]) | st.text(max_size=4)
_VALUES = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(min_value=-(2**63), max_value=2**64 - 1),
    st.floats(),
    st.text(max_size=20),
    st.binary(max_size=20),
    st.lists(st.integers(min_value=0, max_value=9), max_size=3),
)


@pytest.mark.chaos
async def test_random_bytes_never_crash_an_instance_process(redis_url: str, namespace: str) -> None:
    import redis as sync_redis

    from tests.procs.control import start_all

    (proc,) = await start_all(
        [{"url": redis_url, "namespace": namespace, "service": SVC, "instance_id": "target", "resources": ["x"]}]
    )
    channel = f"{namespace}:rpc:{SVC}:target"
    reply_channel = f"{namespace}:reply:hypothesis"
    structured = st.dictionaries(_FIELDS, _VALUES, max_size=12)
    shaped = st.fixed_dictionaries(
        {"v": st.just(1), "k": st.just("req"), "rc": st.sampled_from([reply_channel, "elsewhere"])}
    ).flatmap(lambda base: structured.map(lambda extra: {**extra, **base}))
    published = 0
    publisher = sync_redis.Redis.from_url(redis_url)
    try:

        @settings(max_examples=300, deadline=None, database=None, suppress_health_check=list(HealthCheck))
        @given(st.one_of(st.binary(max_size=2048), structured.map(msgpack.packb), shaped.map(msgpack.packb)))
        def publish_garbage(data: bytes) -> None:
            nonlocal published
            # 1 subscriber every time: the instance is still there, still subscribed.
            assert publisher.publish(channel, data) == 1
            published += 1

        publish_garbage()  # blocks this loop; the instance serves in its own process
        async with ServiceClient(redis_url, namespace=namespace) as client:
            assert (await client.call(SVC, "whoami", "after", resource_id="x"))["p"] == "after"
            stats = await client.call(SVC, "stats", resource_id="x")
        assert proc.proc.returncode is None
        # Garbage is counted as dropped (some shaped messages are valid requests, answered normally).
        assert 0 < sum(stats["dropped"].values()) <= published
    finally:
        publisher.close()
        await proc.stop()


# -- more failure paths ----------------------------------------------------------------------------
async def test_drain_timeout_cancels_handlers_that_overrun(make: Any, client: ServiceClient) -> None:
    started = asyncio.Event()
    cancelled: list[bool] = []
    a = make("a", drain_timeout=0.1)

    @a.handler("forever")
    async def forever(request: RouteRequest) -> None:
        started.set()
        try:
            await asyncio.sleep(30)
        except asyncio.CancelledError:
            cancelled.append(True)
            raise

    with capture_logs() as logs:
        async with a:
            call = asyncio.create_task(client.call(SVC, "forever", timeout=1.0))
            await started.wait()
            begun = time.perf_counter()
        assert time.perf_counter() - begun < 1.0
    assert cancelled == [True]
    assert any(e["event"] == "instance.drain_timeout" for e in logs)
    with pytest.raises(RouteTimeoutError):
        await call


async def test_start_fails_cleanly_when_redis_is_unreachable(namespace: str) -> None:
    from tests.support.redis_server import free_port

    inst = ServiceInstance(f"redis://127.0.0.1:{free_port()}/0", SVC, "a", namespace=namespace)
    with pytest.raises(RedisUnavailableError):
        await inst.start()
    assert not inst.serving
    with pytest.raises(RuntimeError):
        await inst.start()


async def test_a_failing_on_resource_lost_callback_is_logged(make: Any, backend_url: str, namespace: str) -> None:
    def broken(ids: list[str]) -> None:
        raise RuntimeError("callback bug")

    registry = ResourceRegistry(backend_url, namespace=namespace)
    try:
        async with make("a", ttl=30.0, on_resource_lost=broken) as a:
            await a.register_resource(["x", "y"])
            await registry.register_instance(SVC, "other", ttl=30)
            with capture_logs() as logs:
                await registry.register_resource(SVC, "other", ["x"], force=True)
                await wait_for(lambda: a.owned_resources == {"y"})
                await asyncio.sleep(0.05)
            assert any(e["event"] == "instance.on_resource_lost_failed" for e in logs)
    finally:
        await registry.aclose()


async def test_a_release_whose_reply_was_lost_is_reconciled(make: Any, monkeypatch: pytest.MonkeyPatch) -> None:
    async with make("a", ttl=30.0) as a:
        await a.register_resource(["x", "y"])
        real = a.registry.release_resource

        async def release_then_lose_reply(*args: Any, **kwargs: Any) -> Any:
            await real(*args, **kwargs)
            raise RedisUnavailableError("reply lost", operation="release_resource")

        monkeypatch.setattr(a.registry, "release_resource", release_then_lose_reply)
        with pytest.raises(RedisUnavailableError):
            await a.release_resource(["x"])
        assert a.owned_resources == {"y"}
        await a.heartbeat()  # re-reads ownership: x really is gone, y is still here
        assert a.owned_resources == {"y"}
        assert set(a.fencing_tokens) == {"y"}


async def test_ids_registered_for_it_elsewhere_are_adopted_at_the_next_heartbeat(
    make: Any, backend_url: str, namespace: str, client: ServiceClient
) -> None:
    async with make("a", ttl=30.0) as a:
        echo(a)
        registry = ResourceRegistry(backend_url, namespace=namespace)
        try:
            granted = await registry.register_resource(SVC, "a", ["z"])  # e.g. through the HTTP gateway
        finally:
            await registry.aclose()
        await a.heartbeat()  # adopted from the ownership event already, or by this heartbeat at the latest
        assert a.fencing_token("z") == granted.fencing_tokens["z"]
        assert (await client.call(SVC, "echo", resource_id="z"))["token"] == granted.fencing_tokens["z"]


async def test_an_id_released_while_it_is_being_adopted_is_never_served_without_its_token(
    make: Any, backend_url: str, namespace: str
) -> None:
    """Ids registered for the instance elsewhere and released at once, over and over, while the
    instance adopts them from the ownership events: the adoption reads owner and grant in one step,
    so each id is served with the token of its grant or not at all (never with 0 or None)."""
    async with make("a", ttl=30.0) as a:
        registry = ResourceRegistry(backend_url, namespace=namespace, metrics_registry=CollectorRegistry())
        granted: dict[str, int] = {}
        seen: dict[str, set[int | None]] = {}
        done = asyncio.Event()

        async def watch() -> None:
            while not done.is_set():
                for rid, token in a.fencing_tokens.items():
                    seen.setdefault(rid, set()).add(token)
                await asyncio.sleep(0)

        watcher = asyncio.create_task(watch())
        try:
            for k in range(300):
                rid = f"flip-{k}"
                reply = await registry.register_resource(SVC, "a", [rid])
                granted[rid] = reply.fencing_tokens[rid]
                # released 0 to 3 ms later: before, during or after the adoption's read
                await asyncio.sleep((k % 16) * 0.0002)
                await registry.release_resource(SVC, "a", [rid])
            await asyncio.sleep(0.3)
        finally:
            done.set()
            await watcher
            await registry.aclose()
        wrong = {rid: tokens for rid, tokens in seen.items() if tokens != {granted[rid]}}
        assert wrong == {}
        assert seen, "no adoption happened: the race was not exercised"


def test_constructor_checks_its_arguments(backend_url: str) -> None:
    with pytest.raises(InvalidRequestError):
        ServiceInstance(backend_url, SVC, "a", max_concurrency=0)
    with pytest.raises(InvalidRequestError):
        ServiceInstance(backend_url, SVC, "bad id!")
    with pytest.raises(InvalidRequestError):
        ServiceInstance(backend_url, "bad service!", "a")
    inst = ServiceInstance(backend_url, SVC, "a", namespace="ns1")
    assert (inst.namespace, inst.service_name, inst.instance_id) == ("ns1", SVC, "a")
    assert inst.channel == "ns1:rpc:svc:a"
    with pytest.raises(TypeError):
        inst.add_handler("m", "not callable")  # type: ignore[arg-type]


# -- stale requests: confirmed in Redis before they run ---------------------------------------
async def _steal_silently(backend_url: str, inst: ServiceInstance, rid: str, thief: str) -> None:
    """Make Redis say ``thief`` owns ``rid`` without any event: only a confirmation can notice."""
    redis = connect(backend_url)
    try:
        await redis.set(inst.registry.keys.service(SVC).owner(rid), thief, keepttl=True)
    finally:
        await redis.aclose()


async def test_a_request_that_waited_too_long_is_confirmed_in_redis(make: Any, peer: RawPeer, backend_url: str) -> None:
    calls: list[RouteRequest] = []
    async with make("a", ttl=30.0) as a:
        echo(a, calls)
        await a.register_resource(["x", "y"])
        await _steal_silently(backend_url, a, "x", "b")
        now = time.time()
        # y is still a's: an old request for it runs after the confirmation.
        await peer.publish(a.channel, peer.envelope(SVC, "echo", rid="y", ts=int((now - 1.0) * 1000)))
        assert (await peer.next_reply() or {}).get("s") == "ok"
        # x is b's now: an old request is refused, and a leaves x at once.
        await peer.publish(a.channel, peer.envelope(SVC, "echo", rid="x", ts=int((now - 1.0) * 1000)))
        reply = await peer.next_reply()
        assert reply is not None
        assert reply["s"] == "not_owner"
        await wait_for(lambda: "x" not in a.owned_resources)
        assert a.owned_resources == {"y"}
    assert [r.resource_id for r in calls] == ["y"]


async def test_a_fresh_request_runs_on_the_local_view(make: Any, peer: RawPeer, backend_url: str) -> None:
    """The bound of the check: a request younger than ``confirm_after`` is not confirmed (the lease
    covers it). A bound of 2 s: a loaded machine's loop stalls of 100 ms would rightly trigger the check."""
    calls: list[RouteRequest] = []
    async with make("a", ttl=30.0, confirm_after=2.0) as a:
        echo(a, calls)
        await a.register_resource(["x"])
        await _steal_silently(backend_url, a, "x", "b")
        await peer.publish(a.channel, peer.envelope(SVC, "echo", rid="x", ts=int(time.time() * 1000)))
        assert (await peer.next_reply() or {}).get("s") == "ok"
    assert len(calls) == 1


async def test_requests_that_ran_after_an_event_loop_stall_are_confirmed(
    make: Any, peer: RawPeer, backend_url: str
) -> None:
    calls: list[RouteRequest] = []
    async with make("a", ttl=30.0) as a:
        echo(a, calls)

        @a.handler("block")
        def block(request: RouteRequest) -> str:
            time.sleep(0.3)  # a blocking call: nothing else runs in this loop meanwhile
            return "blocked"

        await a.register_resource(["x", "y"])
        await _steal_silently(backend_url, a, "x", "b")
        # No send time (an older caller): only the stall tells that these may be stale.
        await peer.publish(a.channel, peer.envelope(SVC, "block"))
        await peer.publish(a.channel, peer.envelope(SVC, "echo", rid="x"))
        await peer.publish(a.channel, peer.envelope(SVC, "echo", rid="y"))
        answers = {}
        for _ in range(3):
            reply = await peer.next_reply()
            assert reply is not None
            answers[reply["id"]] = reply["s"]
    assert sorted(answers.values()) == ["not_owner", "ok", "ok"]
    assert [r.resource_id for r in calls] == ["y"]


async def test_a_request_for_an_id_being_adopted_waits_instead_of_being_refused(
    make: Any, backend_url: str, namespace: str, client: ServiceClient
) -> None:
    async with make("a", ttl=30.0) as a:
        echo(a)
        registry = ResourceRegistry(backend_url, namespace=namespace)
        try:
            async with a._keeper.lock:  # the adoption cannot finish yet (a heartbeat is in flight, say)
                granted = await registry.register_resource(SVC, "a", ["z"])  # a handoff, a replica
                call = asyncio.create_task(client.call(SVC, "echo", resource_id="z", timeout=3.0))
                await asyncio.sleep(0.3)
                assert not call.done()  # waiting, not refused
            result = await call
        finally:
            await registry.aclose()
    assert result["token"] == granted.fencing_tokens["z"]


async def test_with_signing_the_seal_time_is_the_send_time(make: Any, peer: RawPeer, backend_url: str) -> None:
    from resource_router import RouterSettings
    from resource_router.routing.signing import Signer

    key = "a-signing-key-of-32-bytes-length"
    signer = Signer([key])
    calls: list[RouteRequest] = []
    async with make("a", ttl=30.0, settings=RouterSettings(signing_keys=[key])) as a:
        echo(a, calls)
        await a.register_resource(["x", "y"])
        await _steal_silently(backend_url, a, "x", "b")
        now_ms = int(time.time() * 1000)

        def sealed(rid: str, sent_ms: int) -> bytes:
            return signer.seal(a.channel, msgpack.packb(peer.envelope(SVC, "echo", rid=rid)), now_ms=sent_ms)

        await peer.publish(a.channel, sealed("x", now_ms - 1000))  # sealed a second ago: confirmed first
        first = await peer.next_reply()
        await peer.publish(a.channel, sealed("y", now_ms))
        second = await peer.next_reply()
    assert first is not None and first["s"] == "not_owner"
    assert second is not None and second["s"] == "ok"
    assert [r.resource_id for r in calls] == ["y"]
