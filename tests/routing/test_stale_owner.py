"""A paused owner whose ids were taken meanwhile never runs the requests queued for them.

An instance process is stopped (SIGSTOP: its socket keeps receiving) for less than its ttl; requests
for its ids are queued in its socket, then the ids are taken by force; on SIGCONT the requests come
out of the socket *before* the takeover event. The instance must not execute them with its old
fencing token: it confirms ownership in Redis for requests read after a stall of its event loop or
that waited too long, and answers "not owner".
"""

from __future__ import annotations

import asyncio
import json
from collections import Counter
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest
from prometheus_client import CollectorRegistry

from resource_router import RouteRequest, ServiceClient, ServiceInstance
from tests.procs.control import InstanceProcess
from tests.procs.peer import RawPeer

pytestmark = pytest.mark.chaos

SERVICE = "ledger"
#: Padding that makes the queued requests outgrow one read of the socket: the takeover event, queued
#: behind them, is then read only after the first requests were dispatched (as under real load).
PAD = "x" * 16_000


@pytest.fixture
async def peer(redis_url: str, namespace: str) -> AsyncIterator[RawPeer]:
    async with RawPeer(redis_url, namespace) as p:
        yield p


def journal(path: Path) -> list[list[Any]]:
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


async def replies(peer: RawPeer, count: int) -> list[dict[str, Any]]:
    out = []
    for _ in range(count):
        reply = await peer.next_reply(timeout=5.0)
        assert reply is not None, f"only {len(out)} of {count} replies came"
        out.append(reply)
    return out


async def test_a_paused_owner_runs_nothing_for_ids_taken_while_it_was_stopped(
    redis_url: str, namespace: str, peer: RawPeer, tmp_path: Path, metrics_registry: CollectorRegistry
) -> None:
    taken = [f"acct-{i}" for i in range(10)]
    kept = [f"keep-{i}" for i in range(5)]
    log = tmp_path / "stale.jsonl"
    stale = await InstanceProcess.start(
        redis_url, namespace, SERVICE, "stale", ttl=5.0, resources=[*taken, *kept], log_path=log
    )
    fresh = ServiceInstance(
        redis_url, SERVICE, "fresh", ttl=5.0, namespace=namespace, metrics_registry=metrics_registry
    )
    ran_fresh: list[tuple[str, int | None]] = []

    @fresh.handler("exec")
    async def execute(request: RouteRequest) -> dict[str, Any]:
        assert request.resource_id is not None
        ran_fresh.append((request.resource_id, request.fencing_token))
        return {"iid": fresh.instance_id, "token": request.fencing_token, "op": request.params}

    channel = f"{namespace}:rpc:{SERVICE}:stale"
    try:
        async with fresh, ServiceClient(redis_url, namespace=namespace, metrics_registry=metrics_registry) as client:
            warm = await client.call(SERVICE, "exec", "warm-up", resource_id="ctl-stale")
            assert warm["iid"] == "stale"

            stale.pause()
            await asyncio.sleep(0.1)
            # Queued in the paused owner's socket: raw requests (no send time, as from an older caller)...
            for rid in [*taken, *kept]:
                assert await peer.publish(channel, peer.envelope(SERVICE, "exec", rid=rid, p=[f"raw-{rid}", PAD])) == 1
            # ...and calls of the library's client, which wait for their replies.
            calls = [
                asyncio.create_task(client.call(SERVICE, "exec", [f"client-{rid}", PAD], resource_id=rid, timeout=8.0))
                for rid in taken
            ]
            await asyncio.sleep(0.3)  # every call has looked up the owner and published to it
            took = await fresh.register_resource(taken, force=True)
            assert took.taken_over == dict.fromkeys(taken, "stale")
            await asyncio.sleep(0.2)
            stale.resume()

            answers = await replies(peer, len(taken) + len(kept))
            results = await asyncio.gather(*calls)

        by_status = Counter((a["s"], a["id"]) for a in answers)
        assert sum(1 for a in answers if a["s"] == "not_owner") == len(taken)
        assert sum(1 for a in answers if a["s"] == "ok") == len(kept)
        assert len(by_status) == len(answers)
        # The library's calls were refused by the stale owner and served by the new one.
        assert [r["iid"] for r in results] == ["fresh"] * len(taken)
        assert [r["token"] for r in results] == [took.fencing_tokens[rid] for rid in taken]
        assert sorted(rid for rid, _ in ran_fresh) == sorted(taken)
    finally:
        if stale.proc.returncode is None:
            stale.resume()
        await stale.stop()

    executed = Counter(entry[2] for entry in journal(log) if entry[0] == "exec")
    # Exact counts: nothing for the ids taken while paused; each kept id once; the warm-up once.
    assert executed == Counter({"ctl-stale": 1, **dict.fromkeys(kept, 1)})
