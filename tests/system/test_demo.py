"""The demo: runs on the embedded server by default and on a real Redis when given one."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
import redis.asyncio as aredis

from resource_router.demo import format_table, percentile, run_demo

ROOT = Path(__file__).resolve().parents[2]


def check_summary(summary: dict[str, object], requests: int) -> None:
    per_instance = summary["per_instance"]
    assert isinstance(per_instance, dict)
    assert set(per_instance) == {"instance-a", "instance-b", "instance-c"}
    assert sum(per_instance.values()) == requests
    assert summary["misrouted"] == 0
    assert summary["conflict"] == {"registered": ["user-new"], "conflicts": {"user-0": "instance-a"}}
    assert summary["limit_error"] == {"code": 429, "limit": 70, "current": 30}
    assert summary["not_found_code"] == 404
    assert summary["forbidden_code"] == 403
    fail_fast = summary["fail_fast"]
    assert isinstance(fail_fast, dict)
    assert fail_fast["code"] == 503
    assert fail_fast["ms"] < 500
    takeover = summary["takeover"]
    assert isinstance(takeover, dict)
    assert takeover["new_owner"] == "instance-b"
    assert takeover["registered"] == 30
    assert takeover["new_token"] > takeover["old_token"]
    assert summary["recovered"] == {"instance-b": 30}
    assert summary["live_instances"] == ["instance-a", "instance-b"]
    assert summary["left_after_exit"] == 0
    latency = summary["latency_ms"]
    assert isinstance(latency, dict)
    assert 0 < latency["p50"] <= latency["p90"] <= latency["p99"]
    placement = summary["placement"]
    assert isinstance(placement, dict)
    placed = placement["placed"]
    assert set(placed) == {"volunteer-x", "volunteer-y", "volunteer-z"}
    assert sum(placed.values()) == 30
    assert placement["activations"] >= 30
    # The crashed volunteer's rooms came back on the others within ttl + 1 s, with larger tokens.
    assert sum(placement["healed_by"].values()) == placed["volunteer-x"] == placement["larger_tokens"]
    assert "volunteer-x" not in placement["healed_by"]
    assert placement["crash_healed_s"] <= 1.5 + 1.0
    assert placement["after_drain"] == {"volunteer-z": 30}


async def test_demo_on_the_embedded_server(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("RESOURCE_ROUTER_REDIS_URL", raising=False)
    lines: list[str] = []
    summary = await run_demo(out=lines.append, requests=900)
    assert summary["redis"] == "memory://"
    check_summary(summary, 900)
    text = "\n".join(lines)
    for needle in (
        "429",
        "404",
        "403",
        "503",
        "calls served",
        "instance-c crashed",
        "fencing token",
        "volunteer-x crashed",
    ):
        assert needle in text, needle
    assert "conflicts {'user-0': 'instance-a'}" in text
    assert summary["seconds"] < 30


async def test_demo_on_a_real_redis_from_the_environment(
    redis_url: str, monkeypatch: pytest.MonkeyPatch, raw_redis: aredis.Redis
) -> None:
    monkeypatch.setenv("RESOURCE_ROUTER_REDIS_URL", redis_url)
    summary = await run_demo(out=lambda line: None, requests=900)
    assert summary["redis"].startswith("redis://127.0.0.1:")  # type: ignore[union-attr]
    check_summary(summary, 900)
    # nothing left behind: no key of the demo's namespace (the audit stream, the fence, the indexes)
    assert summary["keys_deleted"] >= 3
    assert [key async for key in raw_redis.scan_iter(match=f"{summary['namespace']}:*")] == []


def test_python_dash_m_runs_the_demo() -> None:
    env = {k: v for k, v in os.environ.items() if k != "RESOURCE_ROUTER_REDIS_URL"}
    done = subprocess.run(
        [sys.executable, "-m", "resource_router.demo", "--requests", "300"],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert done.returncode == 0, done.stderr
    assert "misrouted: 0" in done.stdout
    assert "503 OwnerUnavailableError" in done.stdout
    assert "0 resources left registered" in done.stdout
    assert "[info" not in done.stdout  # the entry point keeps the library's logs quiet


def test_table_and_percentiles() -> None:
    table = format_table(["name", "n"], [["a", 1], ["bb", 22]])
    assert table.splitlines() == ["name   n", "----  --", "a      1", "bb    22"]
    assert percentile([], 50) == 0.0
    values = [float(i) for i in range(1, 101)]
    assert percentile(values, 50) == 50.0
    assert percentile(values, 99) == 99.0
    assert percentile(values, 100) == 100.0
