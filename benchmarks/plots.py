"""PNG plots: latency CDFs and box plots per operation, 64-concurrent throughput, scale curves."""

from __future__ import annotations

from pathlib import Path

from .harness import Row

__all__ = ["make_plots"]


def _us(values: list[int]) -> list[float]:
    return [v / 1000.0 for v in values]


def make_plots(rows: list[Row], out_dir: Path) -> list[Path]:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    out_dir.mkdir(parents=True, exist_ok=True)
    done: list[Path] = []
    measured = [r for r in rows if r.seq is not None and r.skipped is None and r.seq.lat_ns]
    groups = {
        "per-operation (lookup, ownership, request-reply)": [
            r for r in measured if r.group in ("lookup", "ownership", "rpc")
        ],
        "batches of 1000 ids": [r for r in measured if r.group == "batch"],
    }

    # 1. CDF of sequential latencies
    fig, axes = plt.subplots(1, 2, figsize=(15, 5.5))
    for ax, (title, group) in zip(axes, groups.items(), strict=True):
        for r in group:
            series = {r.id: r.seq.lat_ns} | {f"{r.id}: {k}": v for k, v in r.plot_series.items()}  # type: ignore[union-attr]
            for name, lat in series.items():
                if not lat:
                    continue
                xs = _us(sorted(lat))
                ys = [(i + 1) / len(xs) for i in range(len(xs))]
                ax.plot(xs, ys, label=name, linewidth=1.3)
        ax.set_xscale("log")
        ax.set_xlabel("latency (us, log scale), one sequential caller")
        ax.set_ylabel("fraction of ops")
        ax.set_title(f"Latency CDF: {title}")
        ax.grid(True, which="both", alpha=0.3)
        ax.axhline(0.99, color="grey", linestyle=":", linewidth=0.8)
        if group:
            ax.legend(fontsize=7, loc="lower right")
    fig.tight_layout()
    done.append(_save(fig, out_dir / "latency_cdf.png", plt))

    # 2. box plots (whiskers p1-p99, no outliers drawn)
    box_rows = [r for r in measured if r.group in ("lookup", "ownership", "rpc", "batch")]
    if box_rows:
        fig, ax = plt.subplots(figsize=(10, 0.45 * len(box_rows) + 1.5))
        data = [_us(r.seq.lat_ns) for r in box_rows]  # type: ignore[union-attr]
        ax.boxplot(data, vert=False, whis=(1, 99), showfliers=False, tick_labels=[r.id for r in box_rows])
        ax.set_xscale("log")
        ax.set_xlabel("latency (us, log scale); box p25-p75, line p50, whiskers p1-p99")
        ax.set_title("Sequential latency per operation")
        ax.grid(True, axis="x", which="both", alpha=0.3)
        ax.invert_yaxis()
        fig.tight_layout()
        done.append(_save(fig, out_dir / "latency_box.png", plt))

    # 3. throughput: sequential vs 64 concurrent
    tp_rows = [r for r in measured if r.conc is not None and r.group in ("lookup", "ownership", "rpc")]
    if tp_rows:
        fig, ax = plt.subplots(figsize=(10, 0.5 * len(tp_rows) + 1.5))
        ys = range(len(tp_rows))
        ax.barh([y - 0.2 for y in ys], [r.ops_per_s or 0 for r in tp_rows], height=0.4, label="1 sequential caller")
        ax.barh([y + 0.2 for y in ys], [r.conc64_ops_per_s or 0 for r in tp_rows], height=0.4, label="64 concurrent")
        ax.set_yticks(list(ys), [r.id for r in tp_rows])
        ax.invert_yaxis()
        ax.set_xlabel("ops/s")
        ax.set_title("Throughput")
        ax.legend()
        ax.grid(True, axis="x", alpha=0.3)
        fig.tight_layout()
        done.append(_save(fig, out_dir / "throughput.png", plt))

    # 4. scale curves
    scale_rows = [r for r in rows if r.group in ("scale", "memory") and r.skipped is None]
    if scale_rows:
        fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(13, 4.8))
        for prefix, name in (("lookup_at_", "lookup"), ("register_at_", "register 1 id")):
            sel = sorted((r for r in scale_rows if r.id.startswith(prefix)), key=lambda r: r.extras["scale"])
            if not sel:
                continue
            xs = [r.extras["scale"] for r in sel]
            ax1.plot(xs, [r.p50_us for r in sel], marker="o", label=f"{name} p50")
            ax1.plot(xs, [r.p99_us for r in sel], marker="x", linestyle="--", label=f"{name} p99")
        ax1.set_xscale("log")
        ax1.set_xlabel("resources stored")
        ax1.set_ylabel("latency (us)")
        ax1.set_ylim(bottom=0)
        ax1.set_title("Latency vs resources stored")
        ax1.grid(True, which="both", alpha=0.3)
        ax1.legend(fontsize=8)
        mem = sorted((r for r in scale_rows if r.group == "memory"), key=lambda r: r.extras["scale"])
        if mem:
            xs = [r.extras["scale"] for r in mem]
            ax2.plot(
                xs, [r.extras["memory_usage_bytes_per_resource"] for r in mem], marker="o", label="MEMORY USAGE sum"
            )
            ax2.plot(
                xs, [r.extras["used_memory_bytes_per_resource"] for r in mem], marker="s", label="used_memory delta"
            )
            ax2.set_xscale("log")
            ax2.set_ylim(bottom=0)
            ax2.set_xlabel("resources stored")
            ax2.set_ylabel("bytes per owned resource")
            ax2.set_title("Redis memory per owned resource")
            ax2.grid(True, which="both", alpha=0.3)
            ax2.legend(fontsize=8)
        fig.tight_layout()
        done.append(_save(fig, out_dir / "scale.png", plt))
    return done


def _save(fig, path: Path, plt) -> Path:  # type: ignore[no-untyped-def]
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path
