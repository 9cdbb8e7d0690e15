"""The benchmark runner in its bounded smoke mode (seconds): it runs end to end against a private
redis-server and writes JSON rows with positive figures, the goal ratios and the plots."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]

pytestmark = [
    pytest.mark.real_redis,
    pytest.mark.skipif(shutil.which("redis-server") is None, reason="the benchmark runner needs redis-server"),
]

#: Rows every smoke run must measure (the rest may be skipped for a stated reason).
REQUIRED = {
    "raw_get",
    "lookup",
    "lookup_owner_id",
    "register_release",
    "redispy_lock",
    "register_1000",
    "pipeline_setnx_1000",
    "lookup_during_register_1000",
    "lookup_during_register_1000_p16",
    "heartbeat_owned_10",
    "heartbeat_owned_100000",
    "raw_pubsub_rpc",
    "routed_call",
    "routed_call_uncached",
    "routed_call_signed",
    "cached_lookup",
    "routed_call_single",
    "routed_call_cluster",
    "lookup_cluster",
    "cluster_spread",
    "gateway_route",
    "gateway_route_workers2",
    "lookup_at_1e3",
    "register_at_1e3",
    "memory_at_1e3",
    "state_save",
    "evalsha_set",
    "state_load",
    "evalsha_get",
}
#: Rows that may be skipped, and the reasons that are acceptable.
MAY_SKIP = {
    "nats_request_reply": ("NATS not reachable", "nats-py not installed"),
    "nats_bridge_route": ("NATS not reachable",),
    "aioredlock": ("not installed",),
    "python_redis_lock": ("not installed",),
    "pg_state_save": ("PostgreSQL not reachable", "asyncpg not installed"),
    "pg_upsert": ("PostgreSQL not reachable", "asyncpg not installed"),
    "routed_call@redis-py-5.2.1": ("no .venv-oldest",),
    "routed_call_uncached@redis-py-5.2.1": ("no .venv-oldest",),
    "nats_request_reply@redis-py-5.2.1": ("no .venv-oldest", "NATS not reachable", "nats-py not installed"),
}
FIELDS = ("id", "p50_us", "p99_us", "ops_per_s", "conc64_ops_per_s")


@pytest.fixture(scope="module")
def smoke_run(tmp_path_factory: pytest.TempPathFactory) -> tuple[dict, Path, str]:
    out = tmp_path_factory.mktemp("bench")
    json_path = out / "rows.json"
    env = dict(os.environ, BENCH_JSON=str(json_path))
    proc = subprocess.run(
        [sys.executable, "-m", "benchmarks.run", "--smoke", "--results-dir", str(out / "results")],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=240,
        check=False,
    )
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    return json.loads(json_path.read_text()), out / "results", proc.stdout


def test_rows_have_the_required_fields_and_positive_numbers(smoke_run: tuple[dict, Path, str]) -> None:
    doc, _, _ = smoke_run
    rows = {row["id"]: row for row in doc["rows"]}
    assert len(rows) == len(doc["rows"]), "one row per id"
    assert rows.keys() >= REQUIRED
    for rid, row in rows.items():
        assert all(f in row for f in FIELDS), row
        if "skipped" in row:
            assert rid in MAY_SKIP, f"{rid} skipped: {row['skipped']}"
            assert row["skipped"].startswith(MAY_SKIP[rid]), row["skipped"]
            continue
        if row["group"] == "memory":
            assert row["memory_usage_bytes_per_resource"] > 0
            assert row["used_memory_bytes_per_resource"] > 0
            continue
        if row["group"] == "spread":
            assert sum(row["per_master"].values()) == row["resources"] > 0
            assert len(row["per_master"]) == 3
            continue
        if row["group"] == "fanout":
            assert row["changes"] > 0 and row["changes_per_s"] > 0 and row["redis_cpu_ms_per_1000"] > 0, row
            assert row["listeners_cpu_ms_per_1000"] >= 0, row
            continue
        if "recovery_s" in row:  # one measured recovery, not a distribution
            assert row["recovery_s"] > 0 and row["failover_s"] > 0 and row["failed_calls"] >= 0, row
            assert row["p50_us"] == pytest.approx(row["recovery_s"] * 1e6, rel=1e-3), row
            continue
        assert row["p50_us"] > 0 and row["p99_us"] >= row["p50_us"], row
        assert row["ops_per_s"] > 0, row
        if row["group"] in ("lookup", "ownership", "rpc") or rid in ("register_1000", "heartbeat_owned_10"):
            assert row["conc64_ops_per_s"] > 0, row


def test_goals_and_metadata_are_reported(smoke_run: tuple[dict, Path, str]) -> None:
    doc, _, stdout = smoke_run
    texts = [g["goal"] for g in doc["goals"]]
    assert any(t.startswith("lookup p50") for t in texts)
    assert any(t.startswith("heartbeat p50, 100,000 owned") for t in texts)
    assert any(t.startswith("cluster routed call p50") for t in texts)
    assert any(t.startswith("replica CPU per routed call") for t in texts)
    assert any(t.startswith("POST /v1/route via a replica p50") for t in texts)
    for goal in doc["goals"]:
        assert goal["met"] in (True, False, None)
        assert goal["met"] is not None or goal.get("missing")
    meta = doc["meta"]
    assert meta["mode"] == "smoke"
    assert meta["cpu_count"] >= 1 and meta["redis_server"] and meta["packages"]["redis"]
    assert "| `lookup` |" in stdout and "lookup p50 <= 1.15x raw GET p50" in stdout


def test_plots_are_written(smoke_run: tuple[dict, Path, str]) -> None:
    _, results, _ = smoke_run
    for name in ("latency_cdf.png", "latency_box.png", "throughput.png", "scale.png"):
        path = results / name
        assert path.is_file() and path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n", name
