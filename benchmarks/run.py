"""Run the benchmark suite: ``python -m benchmarks.run [--smoke | --quick | --full]``.

Starts a private redis-server (unless ``--redis-url``), measures every row side by side, prints the
table and the goal ratios, writes ``$BENCH_JSON`` when set, and in full mode ``benchmarks/README.md``
and ``benchmarks/results/latest.json``; plots go to ``benchmarks/results/`` (``--results-dir``).
"""

from __future__ import annotations

import argparse
import asyncio
import importlib.metadata as md
import os
import platform
import subprocess
import sys
import time
import traceback
from collections.abc import Awaitable, Callable
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import redis.asyncio as aredis
import redis.utils

from .cases_cluster import run_cluster
from .cases_failover import LABELS as FAILOVER_ROWS
from .cases_failover import run_failover
from .cases_fanout import FANOUT_ROWS, run_fanout
from .cases_ownership import run_batches, run_locks, run_lookups
from .cases_rpc import run_rpc
from .cases_scale import run_scale, scale_label
from .cases_state import LABELS as STATE_ROWS
from .cases_state import run_state
from .cases_versions import SUFFIX, run_versions
from .common import MODES, REPO_ROOT, Ctx, Mode, configure_logging
from .harness import CpuMeter, Row
from .report import evaluate_goals, markdown_goals, markdown_table, write_json, write_readme
from .servers import RedisProcess, redis_server_version

HERE = Path(__file__).resolve().parent
PACKAGES = (
    "resource-router",
    "redis",
    "hiredis",
    "msgpack",
    "structlog",
    "prometheus-client",
    "nats-py",
    "aioredlock",
    "python-redis-lock",
    "matplotlib",
)
ROW_IDS = (
    "raw_get",
    "lookup",
    "lookup_owner_id",
    "register_release",
    "redispy_lock",
    "aioredlock",
    "python_redis_lock",
    "register_1000",
    "register_1000_chunked",
    "pipeline_setnx_1000",
    "lookup_during_register_1000",
    "lookup_during_register_1000_chunked",
    "lookup_during_register_1000_p16",
    "heartbeat_owned_10",
    "heartbeat_owned_100000",
    "routed_call",
    "routed_call_uncached",
    "routed_call_signed",
    "cached_lookup",
    "raw_pubsub_rpc",
    "nats_request_reply",
    "gateway_route",
    "routed_call" + SUFFIX,
    "routed_call_uncached" + SUFFIX,
    "nats_request_reply" + SUFFIX,
    "routed_call_single",
    "routed_call_cluster",
    "lookup_cluster",
    "cluster_spread",
    "gateway_route_workers2",
    "nats_bridge_route",
    *FAILOVER_ROWS,
    *FANOUT_ROWS,
    *STATE_ROWS,
    "scale",
)


def _versions() -> dict[str, str | None]:
    out: dict[str, str | None] = {}
    for name in PACKAGES:
        try:
            out[name] = md.version(name)
        except md.PackageNotFoundError:
            out[name] = None
    return out


def _cpu_model() -> str | None:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or None


def _git_commit() -> str | None:
    try:
        out = subprocess.run(
            ["git", "rev-parse", "--short", "HEAD"], cwd=REPO_ROOT, capture_output=True, text=True, check=False
        )
    except OSError:
        return None
    return out.stdout.strip() or None


async def _run_all(
    url: str, mode: Mode, args: argparse.Namespace, meta: dict[str, Any], redis_pid: int | None
) -> list[Row]:
    admin = aredis.Redis.from_url(url)
    info = await admin.info("server")
    meta["redis_server"] = info.get("redis_version")
    if redis_pid is None:
        redis_pid = _local_pid(info.get("process_id"))
    only = frozenset(filter(None, args.only.split(","))) if args.only else frozenset()
    ctx = Ctx(url, mode, CpuMeter({"redis": redis_pid}), admin, args.nats_url, only, meta)
    await admin.flushdb()
    groups: list[tuple[str, Callable[[Ctx], Awaitable[list[Row]]]]] = [
        ("lookups", run_lookups),
        ("ownership and locks", run_locks),
        ("request-reply", run_rpc),
        ("redis-py 5.2.1", run_versions),
        ("redis cluster", run_cluster),
        ("high availability", run_failover),
        ("fan-out", run_fanout),
        ("state", run_state),
        ("1000-id batches", run_batches),
        ("scale", run_scale),
    ]
    rows: list[Row] = []
    try:
        for name, fn in groups:
            t0 = time.perf_counter()
            try:
                got = await fn(ctx)
            except Exception as exc:
                traceback.print_exc()
                got = [Row(f"error_{name.split()[0]}", f"{name} failed", "error", skipped=f"error: {exc!r}")]
            finally:
                await ctx.close_all()
            rows.extend(got)
            for r in got:
                _print_row(r)
            meta.setdefault("wall_by_group_s", {})[name] = round(time.perf_counter() - t0, 1)
    finally:
        await admin.flushdb(asynchronous=True)
        await admin.aclose()
    return rows


def _local_pid(pid: object) -> int | None:
    """The redis-server pid from INFO when that process is visible here (for its CPU figures)."""
    return int(pid) if isinstance(pid, int) and Path(f"/proc/{pid}/stat").exists() else None


def _print_row(r: Row) -> None:
    if r.skipped:
        print(f"  {r.id:<30} skipped: {r.skipped}", flush=True)
    elif r.group == "spread":
        print(f"  {r.id:<30} share per master {r.extras.get('share')} of {r.extras.get('resources'):,}", flush=True)
    elif "recovery_s" in r.extras:
        e = r.extras
        print(
            f"  {r.id:<30} first successful call {e['recovery_s']:.2f} s after the kill; "
            f"failover {e['failover_s']:.2f} s; {e['failed_calls']} calls failed meanwhile",
            flush=True,
        )
    elif r.group == "fanout":
        e = r.extras
        print(
            f"  {r.id:<30} {e['changes_per_s']:>9,.0f} changes/s; Redis CPU {e['redis_cpu_ms_per_1000']:.1f} ms, "
            f"listeners' CPU {e['listeners_cpu_ms_per_1000']:.1f} ms per 1,000 changes",
            flush=True,
        )
    elif r.group == "memory":
        e = r.extras
        print(
            f"  {r.id:<30} {e['memory_usage_bytes_per_resource']:.0f} B/resource (MEMORY USAGE), "
            f"{e['used_memory_bytes_per_resource']:.0f} B/resource (used_memory delta)",
            flush=True,
        )
    else:
        conc = f"{r.conc64_ops_per_s:>9,.0f}" if r.conc64_ops_per_s is not None else "        -"
        print(
            f"  {r.id:<30} p50={r.p50_us:>9,.1f} us  p99={r.p99_us:>9,.1f} us  seq={r.ops_per_s:>8,.0f}/s  "
            f"conc64={conc}/s",
            flush=True,
        )


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    ap = argparse.ArgumentParser(prog="python -m benchmarks.run", description=__doc__)
    size = ap.add_mutually_exclusive_group()
    size.add_argument("--smoke", dest="mode", action="store_const", const="smoke", help="seconds (CI)")
    size.add_argument("--quick", dest="mode", action="store_const", const="quick", help="under a minute (default)")
    size.add_argument("--full", dest="mode", action="store_const", const="full", help="the README figures")
    ap.add_argument("--only", default="", help=f"comma-separated ids: {', '.join(ROW_IDS)}")
    ap.add_argument("--redis-url", help="use this (scratch!) Redis instead of starting one; dbs 0-3 are flushed")
    ap.add_argument("--nats-url", default="nats://127.0.0.1:4222")
    ap.add_argument(
        "--results-dir",
        type=Path,
        default=None,
        help="where plots (and latest.json) go; default benchmarks/results/ for --full, "
        "benchmarks/results/<mode>/ (not tracked) otherwise",
    )
    ap.add_argument("--json", type=Path, default=None, help="write rows as JSON here (default: $BENCH_JSON)")
    ap.add_argument("--no-plots", action="store_true")
    ap.add_argument("--no-readme", action="store_true", help="full mode: do not rewrite benchmarks/README.md")
    ap.add_argument("--readme", type=Path, default=None, help="also write the README text here (any mode)")
    ns = ap.parse_args(argv)
    ns.mode = ns.mode or "quick"
    if ns.results_dir is None:
        ns.results_dir = HERE / "results" if ns.mode == "full" else HERE / "results" / ns.mode
    return ns


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    configure_logging()
    mode = MODES[args.mode]
    t_start = time.perf_counter()
    meta: dict[str, Any] = {
        "mode": mode.name,
        "mode_params": {k: v for k, v in mode.__dict__.items() if k != "name"},
        "started_utc": datetime.now(UTC).strftime("%Y-%m-%d %H:%M UTC"),
        "git_commit": _git_commit(),
        "cpu_count": os.cpu_count(),
        "cpu_model": _cpu_model(),
        "python": platform.python_version(),
        "redis_server_binary": redis_server_version(),
        "hiredis": redis.utils.HIREDIS_AVAILABLE,
        "packages": _versions(),
        "loadavg_start": [round(x, 2) for x in os.getloadavg()],
    }
    print(
        f"# resource-router benchmarks: mode={mode.name} cpus={meta['cpu_count']} python={meta['python']} "
        f"loadavg={meta['loadavg_start']}",
        flush=True,
    )
    server = None if args.redis_url else RedisProcess().start()
    url = args.redis_url or server.url  # type: ignore[union-attr]
    try:
        rows = asyncio.run(_run_all(url, mode, args, meta, server.pid if server else None))
    finally:
        if server is not None:
            server.stop()
    meta["loadavg_end"] = [round(x, 2) for x in os.getloadavg()]
    if max(meta["loadavg_start"][0], meta["loadavg_end"][0]) > 0.5 * (meta["cpu_count"] or 1):
        meta["load_warning"] = (
            f"**Measured under load** (1-minute load average {meta['loadavg_start'][0]} at start, "
            f"{meta['loadavg_end'][0]} at end, on {meta['cpu_count']} CPUs): rerun on a quiet machine."
        )
    goals, info = evaluate_goals(rows, mode.scales if (not args.only or "scale" in args.only) else (), scale_label)
    table = markdown_table(rows)
    goals_md = markdown_goals(goals, info)
    plots: list[Path] = []
    if not args.no_plots:
        from .plots import make_plots

        plots = make_plots(rows, args.results_dir)
    meta["wall_s"] = round(time.perf_counter() - t_start, 1)
    print("\n" + table)
    print(goals_md)
    if meta.get("load_warning"):
        print(meta["load_warning"])
    json_path = args.json or (Path(os.environ["BENCH_JSON"]) if os.environ.get("BENCH_JSON") else None)
    if json_path is not None:
        write_json(json_path, meta, rows, goals, info)
        print(f"JSON: {json_path}")
    if mode.name == "full" and not args.only:
        write_json(args.results_dir / "latest.json", meta, rows, goals, info)
        if not args.no_readme:
            write_readme(HERE / "README.md", meta, table, goals_md, [str(p) for p in plots])
            print(f"README: {HERE / 'README.md'}")
    if args.readme is not None:
        write_readme(args.readme, meta, table, goals_md, [str(p) for p in plots])
    if plots:
        print("plots: " + ", ".join(str(p) for p in plots))
    print(f"# wall {meta['wall_s']} s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
