"""An idle instance process for the fan-out rows: one ``ServiceInstance`` of the driver's service that
owns nothing and serves nothing, listening as every instance does.

``python -m benchmarks.listener --redis-url URL --service S --instance-id I`` prints ``ready`` once it
listens, and on a line ``cpu`` answers its own CPU seconds; it stops when stdin closes.
"""

from __future__ import annotations

import argparse
import asyncio
import sys
import time

from prometheus_client import CollectorRegistry

from resource_router import ServiceInstance

from .common import LONG_TTL, NAMESPACE, configure_logging


async def main(args: argparse.Namespace) -> None:
    inst = ServiceInstance(
        args.redis_url,
        args.service,
        args.instance_id,
        namespace=NAMESPACE,
        ttl=LONG_TTL,
        metrics_registry=CollectorRegistry(),
    )
    async with inst:
        print("ready", flush=True)
        await asyncio.to_thread(sys.stdin.read)
    print(f"cpu {time.process_time():.6f}", flush=True)


if __name__ == "__main__":
    configure_logging()
    ap = argparse.ArgumentParser()
    ap.add_argument("--redis-url", required=True)
    ap.add_argument("--service", required=True)
    ap.add_argument("--instance-id", required=True)
    asyncio.run(main(ap.parse_args()))
