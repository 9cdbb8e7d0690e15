"""Goal ratios, the Markdown table, the JSON file and the README of the latest full run."""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from .harness import Row

__all__ = ["Goal", "evaluate_goals", "markdown_goals", "markdown_table", "write_json", "write_readme"]


@dataclass
class Goal:
    text: str
    value: float | None  # the measured ratio or figure
    limit: float
    kind: str  # "max" (value <= limit) or "min" (value >= limit)
    unit: str = "x"
    detail: str = ""
    missing: str | None = None

    @property
    def met(self) -> bool | None:
        if self.value is None:
            return None
        return self.value <= self.limit if self.kind == "max" else self.value >= self.limit

    def status(self) -> str:
        if self.missing:
            return f"not measured ({self.missing})"
        return "met" if self.met else "NOT met"

    def shown(self) -> str:
        if self.value is None:
            return "-"
        if self.unit == "x":
            return f"{self.value:.2f}x"
        if self.unit == "s":
            return f"{self.value:+.2f} s"
        return f"{self.value:,.0f} {self.unit}"

    def target(self) -> str:
        if self.limit in (float("inf"), float("-inf")):
            return "(no target)"
        op = "<=" if self.kind == "max" else ">="
        if self.unit == "x":
            return f"{op} {self.limit:g}x"
        if self.unit == "s":
            return f"{op} {self.limit:g} s over the failover time"
        return f"{op} {self.limit:,.0f} {self.unit}"

    def to_json(self) -> dict[str, Any]:
        return {
            "goal": self.text,
            "value": None if self.value is None else round(self.value, 3),
            "target": self.target(),
            "met": self.met,
            "detail": self.detail,
            **({"missing": self.missing} if self.missing else {}),
        }


def _get(rows: dict[str, Row], rid: str) -> Row | None:
    row = rows.get(rid)
    return row if row is not None and row.skipped is None else None


def _why(rows: dict[str, Row], *ids: str) -> str:
    for rid in ids:
        row = rows.get(rid)
        if row is None:
            return f"{rid} not run"
        if row.skipped:
            return f"{rid} skipped: {row.skipped}"
    return "missing"


def _ratio(rows: dict[str, Row], text: str, num: str, den: str, limit: float, attr: str = "p50_us") -> Goal:
    a, b = _get(rows, num), _get(rows, den)
    va = getattr(a, attr) if a else None
    vb = getattr(b, attr) if b else None
    if va is None or vb is None or not vb:
        return Goal(text, None, limit, "min" if attr == "conc64_ops_per_s" else "max", missing=_why(rows, num, den))
    unit = "ops/s" if attr == "conc64_ops_per_s" else "us"
    return Goal(
        text,
        va / vb,
        limit,
        "min" if attr == "conc64_ops_per_s" else "max",
        detail=f"{num} {va:,.1f} {unit} / {den} {vb:,.1f} {unit}",
    )


def _absolute(rows: dict[str, Row], text: str, rid: str, attr: str, limit: float) -> Goal:
    row = _get(rows, rid)
    value = getattr(row, attr) if row else None
    if value is None:
        return Goal(text, None, limit, "max", unit="us", missing=_why(rows, rid))
    return Goal(text, value, limit, "max", unit="us", detail=f"{rid} {attr}")


#: The first wave's routed call on redis-py 5.2.1, as a ratio to NATS measured in the same run
#: (routed_call 189.8 us p50 / 28,431 ops/s at 64 concurrent; NATS 251.1 us / 33,242 ops/s; the
#: full run of 2026-11-27). A ratio to NATS measured alongside cancels most of the machine's noise.
FIRST_WAVE_P50_VS_NATS = 189.8 / 251.1
FIRST_WAVE_CONC_VS_NATS = 28_431.0 / 33_242.1
OLDEST = "@redis-py-5.2.1"


def _failover(rows: dict[str, Row]) -> Goal:
    """The first successful call after the master's SIGKILL within the failover time + 1 s."""
    row = _get(rows, "failover_first_call")
    text = "first successful call after a master SIGKILL (Sentinel) <= failover time + 1 s"
    if row is None or row.extras.get("recovery_s") is None:
        return Goal(text, None, 1.0, "max", unit="s", missing=_why(rows, "failover_first_call"))
    spare = row.extras["recovery_s"] - row.extras["failover_s"]
    return Goal(
        text,
        round(spare, 3),
        1.0,
        "max",
        unit="s",
        detail=f"recovery {row.extras['recovery_s']} s, failover {row.extras['failover_s']} s",
    )


def _fanout(rows: dict[str, Row], listeners: int, field: str, limit: float, kind: str) -> Goal:
    """An ownership change with ``listeners`` idle instances against none, in the same run."""
    what = "Redis CPU per change" if field == "redis_cpu_ms_per_1000" else "the driver's changes/s"
    sign = "<=" if kind == "max" else ">="
    text = f"{what} with {listeners} idle instances {sign} {limit}x with 0"
    num, den = f"ownership_changes@{listeners}", "ownership_changes@0"
    a, b = _get(rows, num), _get(rows, den)
    if a is None or b is None or not b.extras.get(field):
        return Goal(text, None, limit, kind, missing=_why(rows, num, den))
    va, vb = a.extras[field], b.extras[field]
    return Goal(text, va / vb, limit, kind, detail=f"{num} {va:,.1f} / {den} {vb:,.1f}")


def _spread(rows: dict[str, Row]) -> Goal:
    row = _get(rows, "cluster_spread")
    text = "cluster, partitions=16: every master holds 20%-47% of the owner keys"
    if row is None or row.extras.get("min_share") is None:
        return Goal(text, None, 0.20, "min", missing=_why(rows, "cluster_spread"))
    lo, hi = row.extras["min_share"], row.extras["max_share"]
    value = lo if hi <= 0.47 else 0.0  # the goal holds when the smallest share >= 20% and the largest <= 47%
    return Goal(text, value, 0.20, "min", detail=f"shares {row.extras['share']} of {row.extras['resources']:,}")


def _memory(rows: dict[str, Row], scales: tuple[int, ...], scale_label: Any) -> Goal | None:
    if not scales:
        return None
    rid = f"memory_at_{scale_label(scales[-1])}"
    row = _get(rows, rid)
    text = "memory per resource (MEMORY USAGE) <= 200 B"
    if row is None:
        return Goal(text, None, 200, "max", unit="B", missing=_why(rows, rid))
    value = row.extras.get("memory_usage_bytes_per_resource")
    return Goal(text, value, 200, "max", unit="B", detail=f"{rid}")


def _normalized(rows: dict[str, Row], text: str, attr: str, reference: float) -> Goal:
    """The routed call on redis-py 5.2.1 as a ratio to NATS measured in the same process, against the
    first wave's same ratio: 1.0 = as good as then, >= 0.95 = the goal (p50: lower is better)."""
    a, b = _get(rows, "routed_call" + OLDEST), _get(rows, "nats_request_reply" + OLDEST)
    va = getattr(a, attr) if a else None
    vb = getattr(b, attr) if b else None
    if not va or not vb:
        return Goal(text, None, 0.95, "min", missing=_why(rows, "routed_call" + OLDEST, "nats_request_reply" + OLDEST))
    ratio = va / vb
    value = reference / ratio if attr == "p50_us" else ratio / reference
    return Goal(text, value, 0.95, "min", detail=f"today {ratio:.2f}x NATS; the first wave {reference:.2f}x")


def _replica_cpu(rows: dict[str, Row], text: str, rid: str, limit: float, phase: str = "seq") -> Goal:
    """CPU microseconds per op of the helper process (the replica) in one phase of a row."""
    row = _get(rows, rid)
    measured = getattr(row, phase) if row else None
    value = measured.cpu_us.get("helper") if measured is not None else None
    if value is None:
        return Goal(text, None, limit, "max", unit="us", missing=_why(rows, rid))
    return Goal(text, value, limit, "max", unit="us", detail=f"{rid} cpu 'helper' in the {phase} phase")


def evaluate_goals(row_list: list[Row], scales: tuple[int, ...], scale_label: Any) -> tuple[list[Goal], list[Goal]]:
    """(goals, informational ratios)."""
    rows = {r.id: r for r in row_list}
    goals = [
        # the transport, any redis-py, Redis Cluster
        _ratio(rows, "routed call p50 <= 0.9x NATS request-reply p50", "routed_call", "nats_request_reply", 0.9),
        _ratio(
            rows,
            "routed call 64-concurrent throughput >= 1.0x NATS",
            "routed_call",
            "nats_request_reply",
            1.0,
            attr="conc64_ops_per_s",
        ),
        _normalized(
            rows,
            "redis-py 5.2.1: routed call p50 vs the first wave's (NATS-normalized)",
            "p50_us",
            FIRST_WAVE_P50_VS_NATS,
        ),
        _normalized(
            rows,
            "redis-py 5.2.1: routed call 64-conc vs the first wave's (NATS-normalized)",
            "conc64_ops_per_s",
            FIRST_WAVE_CONC_VS_NATS,
        ),
        _ratio(rows, "cluster routed call p50 <= 1.2x single Redis", "routed_call_cluster", "routed_call_single", 1.2),
        _absolute(rows, "cached owner lookup p50 <= 10 us", "cached_lookup", "p50_us", 10),
        # partitions, leases by reference
        _ratio(
            rows, "heartbeat p50, 100,000 owned <= 1.5x 10 owned", "heartbeat_owned_100000", "heartbeat_owned_10", 1.5
        ),
        _absolute(
            rows,
            "lookup p99 during 1000-id registrations, partitions=16 <= 2 ms",
            "lookup_during_register_1000_p16",
            "p99_us",
            2000,
        ),
        _ratio(rows, "lookup p50 <= 1.15x raw GET p50", "lookup", "raw_get", 1.15),
        _ratio(rows, "register+release p50 <= 0.9x redis-py Lock p50", "register_release", "redispy_lock", 0.9),
        _spread(rows),
        _absolute(rows, "1000-id registration p50 <= 8 ms", "register_1000", "p50_us", 8000),
        _replica_cpu(rows, "replica CPU per routed call (POST /v1/route) <= 100 us", "gateway_route", 100),
        _ratio(rows, "POST /v1/route via a replica p50 <= 1.5x the direct call", "gateway_route", "routed_call", 1.5),
        _ratio(
            rows,
            "one replica's 64-concurrent throughput >= 0.4x the direct call's",
            "gateway_route",
            "routed_call",
            0.4,
            attr="conc64_ops_per_s",
        ),
        # high availability
        _ratio(
            rows,
            "register+release p50 with min_replicas=1 <= 1.3x min_replicas=0",
            "register_release_min_replicas1",
            "register_release_replicated",
            1.3,
        ),
        _ratio(
            rows,
            "heartbeat p50 with min_replicas=1 <= 1.3x min_replicas=0",
            "heartbeat_min_replicas1",
            "heartbeat_replicated",
            1.3,
        ),
        _ratio(
            rows, "routed call via Sentinel p50 <= 1.05x direct", "routed_call_sentinel", "routed_call_direct", 1.05
        ),
        _failover(rows),
        *(
            _fanout(rows, k, field, limit, kind)
            for k in (20, 40)
            for field, limit, kind in (("redis_cpu_ms_per_1000", 1.5, "max"), ("changes_per_s", 0.6, "min"))
        ),
        # per-resource state
        _ratio(rows, "state.save p50 <= 1.2x a plain EVALSHA SET of the same size", "state_save", "evalsha_set", 1.2),
        _ratio(rows, "state.load p50 <= 1.2x a plain EVALSHA GET of the same size", "state_load", "evalsha_get", 1.2),
        _ratio(rows, "PostgresStateStore save p50 <= 1.2x a plain asyncpg upsert", "pg_state_save", "pg_upsert", 1.2),
    ]
    memory = _memory(rows, scales, scale_label)
    if memory is not None:
        goals.append(memory)
    if len(scales) > 1:
        lo, hi = scale_label(scales[0]), scale_label(scales[-1])
        goals.append(
            _ratio(rows, f"O(1): lookup p50 at {hi} <= 1.1x at {lo}", f"lookup_at_{hi}", f"lookup_at_{lo}", 1.1)
        )
        goals.append(
            _ratio(rows, f"registration p50 at {hi} <= 1.1x at {lo}", f"register_at_{hi}", f"register_at_{lo}", 1.1)
        )
    info = [
        _absolute(
            rows,
            "lookup p99 during 1000-id registrations, one partition",
            "lookup_during_register_1000",
            "p99_us",
            2000,
        ),
        _absolute(
            rows,
            "register_chunk_size=100: lookup p99 during 1000-id registrations <= 2 ms",
            "lookup_during_register_1000_chunked",
            "p99_us",
            2000,
        ),
        _ratio(
            rows, "1000-id registration p50 / pipeline p50 (<= 0.35x)", "register_1000", "pipeline_setnx_1000", 0.35
        ),
        _ratio(rows, "lookup_owner_id p50 / raw GET p50 (<= 1.15x)", "lookup_owner_id", "raw_get", 1.15),
        _replica_cpu(
            rows, "replica CPU per routed call in the 64-concurrent phase", "gateway_route", float("inf"), "conc"
        ),
        _ratio(
            rows,
            "replica with 2 workers / 1 process: 64-concurrent throughput",
            "gateway_route_workers2",
            "gateway_route",
            float("-inf"),
            attr="conc64_ops_per_s",
        ),
        _ratio(
            rows,
            "ipc.route over NATS via a replica p50 / POST /v1/route p50",
            "nats_bridge_route",
            "gateway_route",
            float("inf"),
        ),
        _ratio(
            rows,
            "ipc.route over NATS via a replica p50 / the direct call p50",
            "nats_bridge_route",
            "routed_call",
            float("inf"),
        ),
        _ratio(
            rows,
            "ipc.route over NATS via a replica / the direct call: 64-concurrent throughput",
            "nats_bridge_route",
            "routed_call",
            float("-inf"),
            attr="conc64_ops_per_s",
        ),
        _ratio(rows, "lookup 64-conc throughput / raw GET (>= 1.0x)", "lookup", "raw_get", 1.0, "conc64_ops_per_s"),
        _ratio(rows, "register+release vs aioredlock p50 (<= 1.0x)", "register_release", "aioredlock", 1.0),
        _ratio(rows, "routed call p50 / naive pub/sub RPC p50 (<= 1.0x)", "routed_call", "raw_pubsub_rpc", 1.0),
        _ratio(
            rows,
            "routed call 64-conc throughput / naive pub/sub RPC (>= 1.0x)",
            "routed_call",
            "raw_pubsub_rpc",
            1.0,
            attr="conc64_ops_per_s",
        ),
        _ratio(rows, "cluster lookup p50 / single-Redis lookup p50", "lookup_cluster", "lookup", float("inf")),
        _ratio(
            rows,
            "signed envelopes: routed call p50 signed / unsigned (the cost of signing)",
            "routed_call_signed",
            "routed_call",
            float("inf"),
        ),
        _ratio(
            rows,
            "signed envelopes: routed call 64-conc throughput signed / unsigned",
            "routed_call_signed",
            "routed_call",
            0.0,
            attr="conc64_ops_per_s",
        ),
        _ratio(
            rows,
            "routed call p50, no owner cache / NATS p50 (<= 1.0x)",
            "routed_call_uncached",
            "nats_request_reply",
            1.0,
        ),
    ]
    return goals, info


def _fmt(v: float | None, digits: int = 1) -> str:
    if v is None:
        return "-"
    return f"{v:,.{digits}f}" if v < 1000 else f"{v:,.0f}"


def _cpu(row: Row) -> str:
    if row.seq is None or not row.seq.cpu_us:
        return "-"
    c = row.seq.cpu_us
    parts = [f"{c.get('client', 0):.0f}", f"{c.get('redis', 0):.0f}", f"{c.get('redis_cmd', 0):.0f}"]
    extra = [f"{c[k]:.0f}" for k in ("helper", "nats") if k in c]
    return "/".join(parts + extra)


def markdown_table(rows: list[Row]) -> str:
    head = (
        "| id | what | p50 us | p99 us | seq ops/s | 64-conc ops/s | 64-conc p99 us "
        "| cpu us/op client/redis/cmd[/helper/nats] | note |\n"
        "|---|---|---:|---:|---:|---:|---:|---|---|\n"
    )
    lines = []
    for r in rows:
        if r.group == "memory":
            continue
        if r.skipped:
            lines.append(f"| `{r.id}` | {r.label} | - | - | - | - | - | - | skipped: {r.skipped} |")
            continue
        conc_p99 = _fmt(r.conc.p(99)) if r.conc else "-"
        lines.append(
            f"| `{r.id}` | {r.label} | {_fmt(r.p50_us)} | {_fmt(r.p99_us)} | {_fmt(r.ops_per_s, 0)} "
            f"| {_fmt(r.conc64_ops_per_s, 0)} | {conc_p99} | {_cpu(r)} | {r.note} |"
        )
    mem = [r for r in rows if r.group == "memory" and not r.skipped]
    out = head + "\n".join(lines) + "\n"
    if mem:
        out += (
            "\n| id | resources | MEMORY USAGE bytes/resource (owner key + owned-hash record) "
            "| used_memory delta bytes/resource | fill s |\n|---|---:|---:|---:|---:|\n"
        )
        for r in mem:
            e = r.extras
            out += (
                f"| `{r.id}` | {e['resources']:,} | {e['memory_usage_bytes_per_resource']:.0f} "
                f"({e['owner_key_bytes']:.0f} + {e['grant_record_bytes']:.0f}) "
                f"| {e['used_memory_bytes_per_resource']:.0f} | {e['fill_s']} |\n"
            )
    return out


def markdown_goals(goals: list[Goal], info: list[Goal]) -> str:
    out = "| goal | measured | target | status | detail |\n|---|---:|---|---|---|\n"
    for g in goals:
        out += f"| {g.text} | {g.shown()} | {g.target()} | {g.status()} | {g.detail} |\n"
    if info:
        out += "\nInformational ratios (not goals):\n\n| ratio | measured | reference | detail |\n|---|---:|---|---|\n"
        for g in info:
            out += f"| {g.text} | {g.shown() if not g.missing else g.status()} | {g.target()} | {g.detail} |\n"
    return out


def write_json(path: Path, meta: dict[str, Any], rows: list[Row], goals: list[Goal], info: list[Goal]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    doc = {
        "meta": meta,
        "rows": [r.to_json() for r in rows],
        "goals": [g.to_json() for g in goals],
        "info": [g.to_json() for g in info],
    }
    path.write_text(json.dumps(doc, indent=1, default=str) + "\n")


def write_readme(path: Path, meta: dict[str, Any], table: str, goals_md: str, plots: list[str]) -> None:
    pk = meta.get("packages", {})
    packages = ", ".join(f"{k}=={v}" for k, v in pk.items() if v)
    plot_md = "\n".join(f"![{Path(p).stem}](results/{Path(p).name})" for p in plots)
    text = f"""# Benchmarks

resource-router measured side by side with the libraries it is compared against (redis-py GET,
redis-py Lock, aioredlock, python-redis-lock, a redis-py pipeline, naive redis-py pub/sub
request-reply, NATS request-reply), in one run against one Redis.

```
make bench-quick                     # python -m benchmarks.run --quick   (< 60 s, prints the table)
make bench                           # python -m benchmarks.run --full    (rewrites this file)
python -m benchmarks.run --smoke     # seconds; what tests/system/test_benchmarks.py runs
python -m benchmarks.run --quick --only lookup,raw_get   # a subset (ids below; 'scale' for the scale rows)
BENCH_JSON=out.json python -m benchmarks.run --quick     # also write the rows as JSON
python -m benchmarks.registry_p50    # p50 of one registration, one lookup and a 1000-id registration
```

Profiling tools (where the time of an operation goes):

```
python -m benchmarks.profile_layers           # per-call overhead, layer by layer (raw GET -> library), interleaved
python -m benchmarks.profile_ops lookup       # cProfile of the client side, by component; --profiler pyinstrument
python -m benchmarks.profile_lua              # redis-server time per script call, and per part of a 1000-id batch
```

The runner starts its own `redis-server --save "" --appendonly no` on a free port (or uses
`--redis-url`), and uses NATS at `nats://127.0.0.1:4222` (`--nats-url`; the NATS row is reported as
skipped when it is unreachable). Outputs: the table (stdout), `$BENCH_JSON` when set, and in full mode
`benchmarks/results/latest.json`, this README and the plots in `benchmarks/results/`.

## Latest {meta.get("mode")} run

* When: {meta.get("started_utc", "")}, wall {meta.get("wall_s")} s, commit `{meta.get("git_commit", "?")}`.
* Machine: {meta.get("cpu_count")} CPUs ({meta.get("cpu_model", "?")}); load average at start
  {meta.get("loadavg_start")}, at end {meta.get("loadavg_end")}.
* Python {meta.get("python")}, redis-server {meta.get("redis_server")}, nats-server {meta.get("nats_server") or "-"},
  hiredis parser: {meta.get("hiredis")}.
* Packages: {packages}.

{meta.get("load_warning", "")}

### Goals

{goals_md}
### Results

{table}
cpu column: CPU microseconds per op in the sequential phase of this process (client), of
redis-server (process CPU, including network I/O), the Redis command time reported by
`INFO commandstats` (cmd), and of the helper process (the responder or instance) and nats-server.

### Plots

{plot_md}

## Method

* Sequential phase: one caller, `n` ops after a warm-up; p50/p99 latency and ops/s. Concurrent phase:
  64 asyncio tasks (64 threads for the sync python-redis-lock) sharing one client; ops/s.
  Sizes per mode: {meta.get("mode_params")}.
* `raw_get`, `redispy_lock` and the pipeline use a plain `redis.asyncio.Redis.from_url(url)`;
  library rows use a `ResourceRegistry` made from the URL (as users do) with a fresh
  `CollectorRegistry`. Logging stays at WARNING, so the library's info events are dropped (an
  application would); Prometheus metrics stay on.
* `register_release` registers one fresh id and releases it (two Lua calls); `redispy_lock`,
  `aioredlock` (fixed TTL) and `python_redis_lock` acquire and release one fresh lock name.
* `register_1000` registers 1000 fresh ids in one call for an instance with a limit of 10^6;
  `pipeline_setnx_1000` sends 1000 `SET NX PX` in one pipeline. `lookup_during_register_1000` runs a
  lookup probe (`get_resource_owner`, back to back) in another process while this one runs
  `register_1000` back to back; its p50/p99 are those of the probe's lookups in that window
  (the baseline window before it is in the JSON as `baseline_p99_us`).
* `heartbeat_1000`: `heartbeat` of an instance owning 1000 ids (the concurrent phase spreads over 64
  such instances).
* Request-reply: every responder runs in its own process (`benchmarks/responder.py`): a
  `ServiceInstance` with an `echo` handler, a naive `listen()` loop, or a nats-py subscription;
  ~100-byte msgpack bodies as in the anchors.
* Router replicas (`benchmarks/cases_gateway.py`): `resource-router serve --log-level warning` in its
  own process routes to the same instance process as `routed_call`, in the same alternating blocks.
  `gateway_route`: `POST /v1/route` with a JSON body over keep-alive HTTP/1.1 (a lean client, one
  connection per caller); `gateway_route_workers2`: the same against `--workers 2` (its cpu 'helper'
  sums both workers and the supervisor); `nats_bridge_route`: a nats-py request on `<prefix>.route`
  (msgpack `RouteRequest` -> `RouteResponse`) through the replica started with `--nats`. The replica
  goals compare with `routed_call` measured in the same blocks; "replica CPU" is the cpu 'helper'
  column (the replica process) per call.
* Scale: each size has its own Redis database filled (bench-only Lua filler) with an owner key and
  an owned-hash grant record per resource in the library's key format, 1000 resources per instance;
  lookups of random stored ids and registrations of one fresh id are interleaved across sizes in
  rounds. Memory per resource: `MEMORY USAGE` of the owner key + the owned hash's size / its field
  count (resource ids `res-NNNNNNN`, instance ids `fill-N`), and `INFO memory` `used_memory`
  delta / count (this one includes the expires entry of the owner key and dict overhead).
* Noise: the machine has {meta.get("cpu_count")} cores shared by the client, redis-server, the helper processes and
  nats-server; expect +-25% between runs. Compare ratios measured in the same run, not figures across runs.
"""
    path.write_text(text)
