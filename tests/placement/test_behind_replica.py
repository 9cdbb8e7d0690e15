"""Placement behind a router replica, all real processes: ``resource-router serve`` and two example
instances started with ``--placement hash``. Calls through the replica activate resources; SIGTERM on
an instance drains it (its resources go to the other one) and no call through the replica fails."""

from __future__ import annotations

import asyncio
import json
import signal
import subprocess
import sys
import uuid
from pathlib import Path

import httpx
import pytest

from tests.support.processes import ECHO, ROOT, SVC, Proc, clean_env, start_replica, wait_instance, wait_replica

pytestmark = [pytest.mark.real_redis, pytest.mark.chaos]


def start_volunteer(redis_url: str, namespace: str, logdir: Path, instance_id: str) -> Proc:
    log = logdir / f"{instance_id}.log"
    cmd = [
        sys.executable,
        str(ECHO),
        *("--redis", redis_url, "--namespace", namespace, "--service", SVC),
        *("--instance-id", instance_id, "--ttl", "2", "--placement", "hash"),
    ]
    with log.open("wb") as out:
        popen = subprocess.Popen(cmd, stdout=out, stderr=subprocess.STDOUT, env=clean_env(), cwd=ROOT)
    return Proc(instance_id, popen, log)


async def test_sigterm_on_a_volunteer_behind_a_replica_fails_no_call(redis_url: str, tmp_path: Path) -> None:
    namespace = "t" + uuid.uuid4().hex[:12]
    replica = start_replica(redis_url, namespace, tmp_path, "replica")
    first, second = (start_volunteer(redis_url, namespace, tmp_path, iid) for iid in ("echo-1", "echo-2"))
    try:
        await asyncio.to_thread(wait_replica, replica)
        for proc in (first, second):
            assert (await asyncio.to_thread(wait_instance, proc))["placement"] == "hash"
        rooms = [f"room-{i}" for i in range(40)]
        async with httpx.AsyncClient(base_url=replica.url, timeout=10.0) as http:

            async def call(rid: str) -> httpx.Response:
                body = {"service_name": SVC, "resource_id": rid, "method": "echo", "params": rid}
                return await http.post("/v1/route", json=body)

            owners = {rid: (await call(rid)).json()["result"]["instance_id"] for rid in rooms}
            assert set(owners.values()) == {"echo-1", "echo-2"}
            statuses: list[int] = []
            stop = asyncio.Event()

            async def load() -> None:
                # until told to stop, and at least 4 rounds in all (a loaded machine runs fewer per second)
                while not stop.is_set() or len(statuses) < 4 * len(rooms):
                    responses = await asyncio.gather(*(call(rid) for rid in rooms))
                    statuses.extend(r.status_code for r in responses)

            loader = asyncio.create_task(load())
            await asyncio.sleep(0.5)
            first.popen.send_signal(signal.SIGTERM)
            assert await asyncio.to_thread(first.popen.wait, 20) == 0
            await asyncio.sleep(0.5)
            stop.set()
            await loader
            after = {rid: (await call(rid)).json()["result"]["instance_id"] for rid in rooms}
        stopped = next(json.loads(line) for line in first.text().splitlines() if '"stopped"' in line)
    finally:
        for proc in (first, second, replica):
            proc.stop()
    assert set(statuses) == {200}, f"{len(statuses)} calls: {sorted(set(statuses))}"
    assert stopped["moved"] == sum(1 for owner in owners.values() if owner == "echo-1")
    assert set(after.values()) == {"echo-2"}
