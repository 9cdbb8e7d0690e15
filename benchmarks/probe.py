"""Lookup probe run in its own process: ``get_resource_owner`` back to back, each sample stamped with
``time.monotonic_ns()`` (system-wide on Linux, so the runner can cut the load window out of it).

Prints ``ready`` after warming up; stops at the first line (or EOF) on stdin and writes
``[[start_ns, latency_ns], ...]`` as JSON to ``--out``.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import sys
import threading
import time

from prometheus_client import CollectorRegistry

from resource_router import ResourceRegistry

from .common import configure_logging


async def probe(args: argparse.Namespace) -> list[tuple[int, int]]:
    reg = ResourceRegistry(
        args.url, namespace=args.namespace, partitions=args.partitions, metrics_registry=CollectorRegistry()
    )
    stop = threading.Event()
    threading.Thread(target=lambda: (sys.stdin.readline(), stop.set()), daemon=True).start()
    samples: list[tuple[int, int]] = []
    try:
        for _ in range(200):
            await reg.get_resource_owner(args.service, args.resource)
        print("ready", flush=True)
        clock = time.monotonic_ns
        while not stop.is_set():
            t0 = clock()
            await reg.get_resource_owner(args.service, args.resource)
            samples.append((t0, clock() - t0))
    finally:
        await reg.aclose()
    return samples


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--url", required=True)
    ap.add_argument("--namespace", required=True)
    ap.add_argument("--service", required=True)
    ap.add_argument("--resource", required=True)
    ap.add_argument("--out", required=True)
    ap.add_argument("--partitions", type=int, default=1)
    args = ap.parse_args()
    configure_logging()
    samples = asyncio.run(probe(args))
    with open(args.out, "w") as f:
        json.dump(samples, f)


if __name__ == "__main__":
    main()
