"""Metric labels come from bounded sets.

Every distinct ``service_name`` a caller sent used to create series that were never dropped (20k
names: 80,000 samples and 33 MB in a client; any HTTP caller of a replica can send them), and
``ipc_resources_per_instance{instance_id}`` grew with every restart. Now: names of services this
process has not seen proof of are labelled ``_other``; known names are capped; the gauges of
instances that stop or are swept are removed.
"""

from __future__ import annotations

import asyncio
import uuid
from typing import Any

import httpx
import pytest
from prometheus_client import CollectorRegistry

from resource_router import (
    InstanceNotAliveError,
    ResourceNotFoundError,
    ResourceRegistry,
    RouteRequest,
    RouterSettings,
    ServiceClient,
    ServiceInstance,
    ServiceUnavailableError,
)
from resource_router.observability.metrics import OTHER, LabelSets, get_metrics
from resource_router.ownership.sweeper import Sweeper
from tests.support.metrics import sample
from tests.support.scale import SLOW_SCALE


def series(reg: CollectorRegistry) -> int:
    """Samples that carry a service name or an instance id (the labels callers could grow)."""
    return sum(
        1 for metric in reg.collect() for s in metric.samples if "service_name" in s.labels or "instance_id" in s.labels
    )


def label_values(reg: CollectorRegistry, name: str, label: str) -> set[str]:
    return {s.labels[label] for metric in reg.collect() for s in metric.samples if s.name == name}


async def test_unknown_service_names_from_callers_add_no_series(redis_url: str, namespace: str) -> None:
    metrics = CollectorRegistry()
    inst = ServiceInstance(redis_url, "real", "i1", namespace=namespace, metrics_registry=metrics)

    @inst.handler("echo")
    async def echo(request: RouteRequest) -> Any:
        return request.params

    async with inst, ServiceClient(redis_url, namespace=namespace, metrics_registry=metrics) as client:
        await inst.register_resource(["a"])
        assert await client.call("real", "echo", 1, resource_id="a") == 1

        async def junk(name: str) -> None:
            with pytest.raises(ServiceUnavailableError):
                await client.call(name, "m")
            with pytest.raises(ResourceNotFoundError):
                await client.call(name, "m", resource_id="x")
            with pytest.raises(ResourceNotFoundError):
                await client.get_resource_owner(name, "x")
            with pytest.raises(InstanceNotAliveError):
                await client.registry.register_resource(name, "nobody", ["x"])

        await junk("warm-up")  # the first of each kind of error makes its series (as _other)
        before = series(metrics)
        names = [f"junk-{i}-{uuid.uuid4().hex[:6]}" for i in range(5000 * SLOW_SCALE)]
        for start in range(0, len(names), 500):
            await asyncio.gather(*(junk(n) for n in names[start : start + 500]))
        assert series(metrics) == before
        assert label_values(metrics, "ipc_route_calls_total", "service_name") == {"real", OTHER}
        assert label_values(metrics, "ipc_resource_lookups_total", "service_name") <= {"real", OTHER}
        assert label_values(metrics, "ipc_resource_registrations_total", "service_name") <= {"real", OTHER}
        assert sample(metrics, "ipc_route_calls_total", service_name="real", outcome="ok") == 1
        assert sample(
            metrics, "ipc_route_calls_total", service_name=OTHER, outcome="ServiceUnavailableError"
        ) == 1 + len(names)
        assert len(client._outcomes) <= 4096


async def test_route_calls_of_random_services_over_http_add_no_series(redis_url: str, namespace: str) -> None:
    from resource_router.gateway import GatewaySettings, create_app

    metrics = CollectorRegistry()
    settings = GatewaySettings(router=RouterSettings(redis_url=redis_url, namespace=namespace), sweep_interval=0)
    app = create_app(settings, metrics_registry=metrics)
    async with app.router.lifespan_context(app):
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(transport=transport, base_url="http://gateway") as http:

            async def junk(i: int) -> None:
                r = await http.post("/v1/route", json={"service_name": f"svc-{i}", "method": "m"})
                assert r.status_code == 503
                r = await http.get(f"/v1/resources/svc-{i}/x")
                assert r.status_code == 404

            await junk(-1)
            before = series(metrics)
            for start in range(0, 1000, 100):
                await asyncio.gather(*(junk(i) for i in range(start, start + 100)))
            assert series(metrics) == before
            text = (await http.get("/metrics")).text
            assert "svc-1" not in text


async def test_a_service_becomes_a_label_once_it_has_instances(redis_url: str, namespace: str) -> None:
    metrics = CollectorRegistry()
    async with ServiceClient(redis_url, namespace=namespace, metrics_registry=metrics) as client:
        with pytest.raises(ServiceUnavailableError):
            await client.call("later", "echo")  # no instance yet: _other
        inst = ServiceInstance(redis_url, "later", "i1", namespace=namespace, metrics_registry=CollectorRegistry())

        @inst.handler("echo")
        async def echo(request: RouteRequest) -> Any:
            return "hi"

        async with inst:
            assert await client.call("later", "echo") == "hi"
        assert sample(metrics, "ipc_route_calls_total", service_name=OTHER, outcome="ServiceUnavailableError") == 1
        assert sample(metrics, "ipc_route_calls_total", service_name="later", outcome="ok") == 1


def test_known_service_names_are_capped_and_own_services_always_fit() -> None:
    sets = LabelSets(max_services=3)
    for i in range(10):
        sets.learn_service(f"s{i}")
    assert sets.services == {"s0", "s1", "s2"}
    assert sets.service("s9") == OTHER and sets.service("s1") == "s1"
    sets.learn_service("mine", own=True)
    assert sets.service("mine") == "mine"


async def test_gauges_of_stopped_and_swept_instances_are_removed(redis_url: str, namespace: str) -> None:
    metrics = CollectorRegistry()
    svc = "restarts"
    for i in range(20):  # restarts: every incarnation has a new instance id
        inst = ServiceInstance(redis_url, svc, f"i{i}", namespace=namespace, metrics_registry=metrics)
        async with inst:
            await inst.register_resource([f"r{i}"])
            await inst.heartbeat()
            assert sample(metrics, "ipc_resources_per_instance", service_name=svc, instance_id=f"i{i}") == 1
            assert sample(metrics, "ipc_instance_listening", service_name=svc, instance_id=f"i{i}") == 1
    assert label_values(metrics, "ipc_resources_per_instance", "instance_id") == set()
    assert label_values(metrics, "ipc_instance_listening", "instance_id") == set()

    # Crashed instances (no deregistration) are swept by another process: its gauges go too.
    sweeper_metrics = CollectorRegistry()
    async with ResourceRegistry(redis_url, namespace=namespace, metrics_registry=sweeper_metrics) as reg:
        for i in range(5):
            await reg.register_instance(svc, f"dead-{i}", ttl=0.1)
            await reg.register_resource(svc, f"dead-{i}", [f"d{i}"])
        assert len(label_values(sweeper_metrics, "ipc_resources_per_instance", "instance_id")) == 5
        await asyncio.sleep(0.2)
        swept = await Sweeper(reg, services=[svc]).run_once()
        assert sorted(swept[svc]) == [f"dead-{i}" for i in range(5)]
        assert label_values(sweeper_metrics, "ipc_resources_per_instance", "instance_id") == set()


async def test_an_instance_forgotten_by_an_event_reappears_when_it_reports_again(
    redis_url: str, namespace: str
) -> None:
    metrics = CollectorRegistry()
    m = get_metrics(metrics)
    child = m.resources_per_instance.labels("svc", "i1")  # cached by the registry, as it does
    child.set(3)
    assert sample(metrics, "ipc_resources_per_instance", service_name="svc", instance_id="i1") == 3
    m.forget_instance("svc", "i1")
    assert label_values(metrics, "ipc_resources_per_instance", "instance_id") == set()
    child.set(4)
    assert sample(metrics, "ipc_resources_per_instance", service_name="svc", instance_id="i1") == 4


def test_instance_gauges_are_bounded() -> None:
    metrics = CollectorRegistry()
    m = get_metrics(metrics)
    m.labels.max_instances = 10
    for i in range(50):
        m.resources_per_instance.labels("svc", f"i{i}").set(1)
    assert len(label_values(metrics, "ipc_resources_per_instance", "instance_id")) == 10


def test_instance_gauges_go_up_and_down_within_the_bound() -> None:
    """With several partitions the registry moves the gauge by increments (inc/dec)."""
    metrics = CollectorRegistry()
    m = get_metrics(metrics)
    m.labels.max_instances = 1
    m.resources_per_instance.labels("svc", "i1").inc(5)
    m.resources_per_instance.labels("svc", "i1").dec(2)
    m.resources_per_instance.labels("svc", "i2").inc(7)  # beyond the bound: not recorded
    assert sample(metrics, "ipc_resources_per_instance", service_name="svc", instance_id="i1") == 3
    assert label_values(metrics, "ipc_resources_per_instance", "instance_id") == {"i1"}
