"""Stateless replicas as real processes: two ``resource-router serve`` against one Redis, and example
instance processes (``examples/echo_instance.py``). Register through one replica, route through the
other, SIGKILL a replica, SIGTERM one during a slow call (it drains), kill an instance (swept)."""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import signal
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import msgpack
import pytest

from resource_router import ResourceRegistry
from tests.support.nats_server import NatsServer, nats_server_binary
from tests.support.processes import SVC, Proc, start_instance, start_replica, wait_instance, wait_replica

pytestmark = pytest.mark.real_redis


@dataclass
class Cluster:
    redis_url: str
    namespace: str
    logdir: Path
    a: Proc
    b: Proc
    instances: dict[str, Proc]


@pytest.fixture(scope="module")
def cluster(redis_url: str, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Cluster]:
    namespace = "t" + uuid.uuid4().hex[:12]
    logdir = tmp_path_factory.mktemp("replicas")
    procs: list[Proc] = []
    try:
        a = start_replica(redis_url, namespace, logdir, "replica-a")
        b = start_replica(redis_url, namespace, logdir, "replica-b")
        procs += [a, b]
        instances = {
            "echo-1": start_instance(redis_url, namespace, logdir, "echo-1", "user-1,user-2"),
            "echo-2": start_instance(redis_url, namespace, logdir, "echo-2", "user-3"),
        }
        procs += instances.values()
        wait_replica(a)
        wait_replica(b)
        for inst in instances.values():
            inst.extra["ready"] = wait_instance(inst)
        yield Cluster(redis_url, namespace, logdir, a, b, instances)
    finally:
        for proc in procs:
            proc.stop()


def route(base: str, **body: Any) -> httpx.Response:
    return httpx.post(f"{base}/v1/route", json=body, timeout=10.0)


def test_instances_started_with_their_resources(cluster: Cluster) -> None:
    assert cluster.instances["echo-1"].extra["ready"] == {
        "event": "ready",
        "service": SVC,
        "instance_id": "echo-1",
        "owned": ["user-1", "user-2"],
        "conflicts": {},
    }
    seen_a = httpx.get(f"{cluster.a.url}/v1/instances/{SVC}").json()
    seen_b = httpx.get(f"{cluster.b.url}/v1/instances/{SVC}").json()
    assert [i["instance_id"] for i in seen_a] == ["echo-1", "echo-2"]
    assert [(i["instance_id"], i["resource_count"]) for i in seen_b] == [("echo-1", 2), ("echo-2", 1)]


def test_register_through_one_replica_route_through_the_other(cluster: Cluster) -> None:
    reg = httpx.post(
        f"{cluster.a.url}/v1/resources/register",
        json={"service_name": SVC, "instance_id": "echo-2", "resource_ids": ["adopted-1"]},
        headers={"X-Trace-Id": "reg-a"},
    )
    assert reg.status_code == 200, reg.text
    assert reg.json()["registered"] == ["adopted-1"]
    token = reg.json()["fencing_tokens"]["adopted-1"]

    owner = httpx.get(f"{cluster.b.url}/v1/resources/{SVC}/adopted-1").json()
    assert (owner["owner_instance_id"], owner["fencing_token"]) == ("echo-2", token)

    # The instance adopts ids registered for it elsewhere as soon as it sees the ownership event
    # (at the latest at its next heartbeat); until then it refuses them ("not owner": a 503).
    deadline = time.monotonic() + 5.0
    while True:
        r = httpx.post(
            f"{cluster.b.url}/v1/route",
            json={"service_name": SVC, "resource_id": "adopted-1", "method": "echo", "params": {"n": 1}},
            headers={"X-Trace-Id": "route-b"},
            timeout=10.0,
        )
        if r.status_code == 200 or time.monotonic() > deadline:
            break
        assert r.json()["error"]["type"] == "OwnerUnavailableError"
        time.sleep(0.1)
    assert r.status_code == 200, r.text
    assert r.json() == {
        "result": {"echo": {"n": 1}, "instance_id": "echo-2", "resource_id": "adopted-1", "fencing_token": token},
        "trace_id": "route-b",
        "instance_id": "echo-2",
    }

    # and the instances' own resources, through either replica
    for base in (cluster.a.url, cluster.b.url):
        for rid, owner_id in (("user-1", "echo-1"), ("user-3", "echo-2")):
            got = route(base, service_name=SVC, resource_id=rid, method="echo", params=rid)
            assert got.status_code == 200
            assert (got.json()["instance_id"], got.json()["result"]["echo"]) == (owner_id, rid)


def test_service_calls_spread_over_instances(cluster: Cluster) -> None:
    seen = {route(cluster.a.url, service_name=SVC, method="echo").json()["instance_id"] for _ in range(6)}
    assert seen == {"echo-1", "echo-2"}


def test_errors_from_instance_processes(cluster: Cluster) -> None:
    failed = route(cluster.b.url, service_name=SVC, resource_id="user-1", method="fail", params=[1])
    assert failed.status_code == 500
    assert failed.json()["error"] == {
        "type": "RemoteHandlerError",
        "code": 500,
        "message": "handler 'fail' raised RuntimeError: asked to fail with [1]",
        "remote_type": "RuntimeError",
        "remote_message": "asked to fail with [1]",
    }
    slow = route(
        cluster.a.url, service_name=SVC, resource_id="user-1", method="sleep", params={"seconds": 2}, timeout=0.3
    )
    assert slow.status_code == 504
    assert slow.json()["error"] == {
        "type": "RouteTimeoutError",
        "code": 504,
        "message": "no reply within 0.3s",
        "timeout": 0.3,
    }


def test_json_logs_carry_trace_ids(cluster: Cluster) -> None:
    httpx.get(f"{cluster.a.url}/v1/resources/{SVC}/user-1", headers={"X-Trace-Id": "log-probe-1"})
    deadline = time.monotonic() + 5.0
    while time.monotonic() < deadline:
        lines = [json.loads(line) for line in cluster.a.text().splitlines() if line.startswith("{")]
        hits = [e for e in lines if e.get("trace_id") == "log-probe-1"]
        if hits:
            break
        time.sleep(0.05)
    assert [(e["event"], e["status"], e["path"]) for e in hits] == [
        ("http.request", 200, f"/v1/resources/{SVC}/user-1")
    ]
    assert {"timestamp", "level", "logger", "duration_ms", "method"} <= set(hits[0])
    assert any(e.get("event") == "gateway.start" and e.get("namespace") == cluster.namespace for e in lines)


def test_sigkill_one_replica_the_other_keeps_serving(cluster: Cluster) -> None:
    victim = start_replica(cluster.redis_url, cluster.namespace, cluster.logdir, "victim")
    try:
        wait_replica(victim)
        before = route(victim.url, service_name=SVC, resource_id="user-2", method="echo")
        assert before.status_code == 200
        victim.stop(signal.SIGKILL)
        assert victim.popen.returncode == -signal.SIGKILL
        with pytest.raises(httpx.ConnectError):
            httpx.get(f"{victim.url}/healthz", timeout=1.0)
        after = route(cluster.b.url, service_name=SVC, resource_id="user-2", method="echo", params="still here")
        assert after.status_code == 200
        assert after.json()["result"]["echo"] == "still here"
        assert after.json()["instance_id"] == "echo-1"
        listed = httpx.get(f"{cluster.b.url}/v1/resources/{SVC}", params={"instance_id": "echo-1"})
        assert [r["resource_id"] for r in listed.json()] == ["user-1", "user-2"]
    finally:
        victim.stop(signal.SIGKILL)


def test_sigterm_drains_an_in_flight_request(cluster: Cluster) -> None:
    draining = start_replica(
        cluster.redis_url, cluster.namespace, cluster.logdir, "draining", "--shutdown-timeout", "10"
    )
    try:
        wait_replica(draining)

        async def scenario() -> tuple[httpx.Response, float]:
            async with httpx.AsyncClient(timeout=10.0) as http:
                slow = asyncio.create_task(
                    http.post(
                        f"{draining.url}/v1/route",
                        json={
                            "service_name": SVC,
                            "resource_id": "user-1",
                            "method": "sleep",
                            "params": {"seconds": 1.5},
                        },
                        headers={"X-Trace-Id": "drain-1"},
                    )
                )
                await asyncio.sleep(0.5)  # the call is in flight at the instance
                sent = time.monotonic()
                draining.popen.send_signal(signal.SIGTERM)
                response = await slow
                return response, time.monotonic() - sent

        response, waited = asyncio.run(scenario())
        assert response.status_code == 200, response.text
        assert response.json() == {
            "result": {"slept": 1.5, "instance_id": "echo-1"},
            "trace_id": "drain-1",
            "instance_id": "echo-1",
        }
        assert waited > 0.5  # it really was in flight when the signal came
        # uvicorn re-raises the signal once the graceful shutdown is done, so the status says "SIGTERM"
        assert draining.popen.wait(10) == -signal.SIGTERM
        events = [json.loads(line)["event"] for line in draining.text().splitlines() if line.startswith("{")]
        assert "gateway.stop" in events
        assert events[-2:] == ["Application shutdown complete.", f"Finished server process [{draining.popen.pid}]"]
        assert events.index("gateway.stop") > events.index("gateway.start")
        with pytest.raises(httpx.ConnectError):
            httpx.get(f"{draining.url}/healthz", timeout=1.0)
    finally:
        draining.stop(signal.SIGKILL)


async def test_crashed_instance_is_swept_by_the_replicas(cluster: Cluster) -> None:
    doomed = start_instance(cluster.redis_url, cluster.namespace, cluster.logdir, "doomed", "d-1,d-2")
    try:
        assert wait_instance(doomed)["owned"] == ["d-1", "d-2"]
        doomed.stop(signal.SIGKILL)
        async with ResourceRegistry(cluster.redis_url, namespace=cluster.namespace) as registry:
            deadline = time.monotonic() + 10.0
            swept: list[Any] = []
            while time.monotonic() < deadline:
                events = await registry.events.recent(SVC, 200)
                swept = [e for e in events if e.instance_id == "doomed" and e.reason == "instance_offline"]
                if swept:
                    break
                await asyncio.sleep(0.1)
            assert len(swept) == 1, swept
            assert sorted(swept[0].resource_ids) == ["d-1", "d-2"]
        async with httpx.AsyncClient(base_url=cluster.a.url) as http:
            gone = await http.post("/v1/route", json={"service_name": SVC, "resource_id": "d-1", "method": "echo"})
            assert gone.status_code == 404
            instances = (await http.get(f"/v1/instances/{SVC}")).json()
            assert "doomed" not in [i["instance_id"] for i in instances]
    finally:
        doomed.stop(signal.SIGKILL)


def test_instance_stops_cleanly_and_releases(cluster: Cluster) -> None:
    leaving = start_instance(cluster.redis_url, cluster.namespace, cluster.logdir, "leaving", "l-1")
    wait_instance(leaving)
    assert httpx.get(f"{cluster.a.url}/v1/resources/{SVC}/l-1").status_code == 200
    assert leaving.stop(signal.SIGTERM) == 0
    assert '"stopped"' in leaving.text()
    gone = httpx.get(f"{cluster.b.url}/v1/resources/{SVC}/l-1")
    assert gone.status_code == 404
    assert gone.json()["error"]["type"] == "ResourceNotFoundError"


def _children(pid: int) -> list[int]:
    """Worker processes of a replica (spawned children running uvicorn), by pid."""
    found = []
    for child in Path(f"/proc/{pid}/task/{pid}/children").read_text().split():
        cmdline = Path(f"/proc/{child}/cmdline").read_bytes()
        if b"spawn_main" in cmdline:
            found.append(int(child))
    return sorted(found)


def test_two_workers_share_one_port_and_answer_nats(cluster: Cluster) -> None:
    """``serve --workers 2 --nats URL``: two whole replicas behind one port, each answering HTTP and
    the NATS subjects in the queue group; SIGTERM stops them all."""
    if nats_server_binary() is None:
        pytest.skip("nats-server is not on PATH")
    import nats

    with NatsServer() as nats_server:
        workers = start_replica(
            cluster.redis_url,
            cluster.namespace,
            cluster.logdir,
            "workers",
            "--workers",
            "2",
            "--nats",
            nats_server.url,
            "--nats-prefix",
            "w",
        )
        pids: list[int] = []
        try:
            wait_replica(workers)
            deadline = time.monotonic() + 20.0
            while time.monotonic() < deadline:
                events = [json.loads(line) for line in workers.text().splitlines() if line.startswith("{")]
                if sum(e["event"] == "gateway.nats_connected" for e in events) == 2:
                    break
                time.sleep(0.05)
            assert sum(e["event"] == "gateway.start" for e in events) == 2, workers.text()
            pids = _children(workers.popen.pid)
            assert len(pids) == 2

            async def calls() -> tuple[list[int], Any]:
                async with httpx.AsyncClient(base_url=workers.url, timeout=10.0) as http:
                    body = {"service_name": SVC, "resource_id": "user-1", "method": "echo"}
                    answers = await asyncio.gather(*(http.post("/v1/route", json=body) for _ in range(40)))
                nc = await nats.connect(nats_server.url)
                try:
                    reply = await nc.request("w.route", msgpack.packb({**body, "params": "over nats"}), timeout=5.0)
                finally:
                    await nc.close()
                return [a.status_code for a in answers], msgpack.unpackb(reply.data)

            statuses, over_nats = asyncio.run(calls())
            assert statuses == [200] * 40
            assert over_nats["instance_id"] == "echo-1"
            assert over_nats["result"]["echo"] == "over nats"

            assert workers.stop(signal.SIGTERM) == 0
            assert not any(Path(f"/proc/{pid}").exists() for pid in pids)
            stopped = [json.loads(line) for line in workers.text().splitlines() if line.startswith("{")]
            assert sum(e["event"] == "gateway.stop" for e in stopped) == 2
        finally:
            workers.stop(signal.SIGKILL)
            for pid in pids:
                with contextlib.suppress(ProcessLookupError):
                    os.kill(pid, signal.SIGKILL)
