"""A paused owner's writes are refused once another instance took its resource over.

Process A counts in a resource's state (load, save value + 1, as fast as it can, through one handle
taken at its grant). A is SIGSTOPped; its lease runs out; process B, waiting to register the
resource, gets it (a larger token) and keeps counting; A is SIGCONTed and, with its old handle, tries
to write again. Every write A started after B's grant is refused (``StaleOwnerError``), and the final
counter equals the number of acknowledged increments: none lost, none applied twice (the
acknowledged values are exactly 1..N). On a single Redis, on Redis Cluster and on PostgreSQL.
"""

from __future__ import annotations

import asyncio
import json
import os
import signal
import sys
from pathlib import Path
from typing import Any

import pytest

from resource_router import PostgresStateStore, ResourceRegistry
from resource_router.state import RedisStateStore, StateCodec, StateStore

pytestmark = pytest.mark.chaos

ROOT = Path(__file__).resolve().parents[2]
SERVICE = "counters"
RID = "counter-1"
TTL = 1.0


class Writer:
    """One ``tests/procs/state_writer.py`` process."""

    def __init__(self, proc: asyncio.subprocess.Process, journal: Path) -> None:
        self.proc = proc
        self.journal = journal
        self.granted: dict[str, Any] = {}

    @classmethod
    async def start(cls, url: str, namespace: str, iid: str, extra: list[str], tmp: Path) -> Writer:
        journal = tmp / f"{iid}.json"
        args = [
            "--journal",
            str(journal),
            "--url",
            url,
            "--namespace",
            namespace,
            "--service",
            SERVICE,
            "--instance-id",
            iid,
        ]
        proc = await asyncio.create_subprocess_exec(
            sys.executable,
            "-m",
            "tests.procs.state_writer",
            *args,
            "--resource",
            RID,
            "--ttl",
            str(TTL),
            *extra,
            cwd=str(ROOT),
            stdin=asyncio.subprocess.PIPE,
            stdout=asyncio.subprocess.PIPE,
            env={**os.environ, "PYTHONPATH": str(ROOT)},
        )
        return cls(proc, journal)

    async def line(self, prefix: str, timeout: float) -> dict[str, Any]:
        assert self.proc.stdout is not None
        async with asyncio.timeout(timeout):
            while True:
                raw = await self.proc.stdout.readline()
                if not raw:
                    raise RuntimeError(f"state writer exited before {prefix}")
                text = raw.decode().strip()
                if text.startswith(prefix + " "):
                    return dict(json.loads(text[len(prefix) + 1 :]))

    async def granted_now(self, timeout: float = 30.0) -> dict[str, Any]:
        self.granted = await self.line("GRANTED", timeout)
        return self.granted

    async def finish(self) -> list[list[Any]]:
        assert self.proc.stdin is not None
        self.proc.stdin.close()
        await self.line("DONE", 30.0)
        await self.proc.wait()
        return list(json.loads(self.journal.read_text()))

    async def kill(self) -> None:
        if self.proc.returncode is None:
            self.proc.send_signal(signal.SIGCONT)
            self.proc.kill()
        await self.proc.wait()


def _oks(journal: list[list[Any]]) -> list[int]:
    return [int(entry[1]) for entry in journal if entry[0] == "ok"]


async def _run(url: str, namespace: str, store: StateStore, extra: list[str], tmp: Path) -> dict[str, Any]:
    a = await Writer.start(url, namespace, "writer-a", extra, tmp)
    b: Writer | None = None
    try:
        await a.granted_now()
        await asyncio.sleep(0.5)  # A counts
        b = await Writer.start(url, namespace, "writer-b", extra, tmp)
        await asyncio.sleep(0.3)  # B is up, waiting for the resource
        a.proc.send_signal(signal.SIGSTOP)
        granted = await b.granted_now(timeout=TTL * 10)  # A's lease runs out in Redis, B gets the grant
        await asyncio.sleep(0.5)  # B counts
        a.proc.send_signal(signal.SIGCONT)
        await asyncio.sleep(0.7)  # A tries to write with its old token
        journal_a = await a.finish()
        journal_b = await b.finish()
    finally:
        await a.kill()
        if b is not None:
            await b.kill()
    registry = ResourceRegistry(url, namespace=namespace)
    try:
        bound = store.bind(registry)
        record = await bound.load(SERVICE, RID)
    finally:
        await registry.aclose()
        await store.aclose()
    assert record is not None
    final = StateCodec().decode(record.data)
    return {"a": journal_a, "b": journal_b, "grant_b": granted["t"], "token_b": granted["token"], "final": final}


def _check(outcome: dict[str, Any]) -> dict[str, int]:
    journal_a, journal_b, grant_b = outcome["a"], outcome["b"], outcome["grant_b"]
    after = [entry for entry in journal_a if entry[2] > grant_b]  # A's writes started after B's grant
    assert after, "A never tried to write after it was resumed"
    assert {entry[0] for entry in after} == {"stale"}, [e for e in after if e[0] != "stale"][:5]
    assert not [entry for entry in journal_a + journal_b if entry[0] == "error"]
    acknowledged = _oks(journal_a) + _oks(journal_b)
    assert _oks(journal_b), "B never counted"
    assert len(_oks(journal_a)) >= 10
    assert outcome["final"] == len(acknowledged)
    assert sorted(acknowledged) == list(range(1, len(acknowledged) + 1))  # none lost, none twice
    return {
        "acknowledged": len(acknowledged),
        "by_a": len(_oks(journal_a)),
        "by_b": len(_oks(journal_b)),
        "refused_a_after_grant": len(after),
        "final": outcome["final"],
    }


def _report(name: str, counts: dict[str, int]) -> None:
    print(f"\n[{name}] " + " ".join(f"{k}={v}" for k, v in counts.items()))


async def test_paused_owner_is_refused_on_redis(redis_url: str, namespace: str, tmp_path: Path) -> None:
    outcome = await _run(redis_url, namespace, RedisStateStore(), [], tmp_path)
    _report("redis", _check(outcome))


async def test_paused_owner_is_refused_on_redis_cluster(cluster_url: str, namespace: str, tmp_path: Path) -> None:
    outcome = await _run(cluster_url, namespace, RedisStateStore(), [], tmp_path)
    _report("cluster", _check(outcome))


async def test_paused_owner_is_refused_on_postgres(
    redis_url: str, namespace: str, postgres_dsn: str, pg_table: str, tmp_path: Path
) -> None:
    store = PostgresStateStore(postgres_dsn, table=pg_table)
    outcome = await _run(redis_url, namespace, store, ["--dsn", postgres_dsn, "--table", pg_table], tmp_path)
    _report("postgres", _check(outcome))
