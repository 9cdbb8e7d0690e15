"""p50 of one registration, one lookup and one 1000-id registration.

    python benchmarks/registry_p50.py [--redis-url URL] [-n 2000]

Standalone: starts a private ``redis-server --save "" --appendonly no`` on a free port unless
``--redis-url`` is given (that server's namespace ``p50`` is used and cleaned up afterwards).
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import shutil
import socket
import subprocess
import tempfile
import time
from collections.abc import Awaitable, Callable
from typing import Any

from prometheus_client import CollectorRegistry

from resource_router import ResourceRegistry


def _start_redis() -> tuple[subprocess.Popen[bytes], str, str]:
    binary = shutil.which("redis-server")
    if binary is None:
        raise SystemExit("redis-server is not on PATH; pass --redis-url")
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    tmp = tempfile.mkdtemp(prefix="rr-p50-")
    args = [binary, "--port", str(port), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no", "--dir", tmp]
    proc = subprocess.Popen(args, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    for _ in range(500):
        try:
            with socket.create_connection(("127.0.0.1", port), 0.2):
                return proc, f"redis://127.0.0.1:{port}/0", tmp
        except OSError:
            time.sleep(0.02)
    proc.kill()
    raise SystemExit("redis-server did not start")


async def _p50(op: Callable[[], Awaitable[Any]], n: int, warm: int) -> float:
    for _ in range(warm):
        await op()
    lat = []
    for _ in range(n):
        t0 = time.perf_counter_ns()
        await op()
        lat.append(time.perf_counter_ns() - t0)
    lat.sort()
    return lat[max(0, round(0.5 * n) - 1)] / 1000.0


async def measure(url: str, n: int) -> dict[str, float]:
    reg = ResourceRegistry(
        url, namespace="p50", max_resources_per_instance=1_000_000, metrics_registry=CollectorRegistry()
    )
    try:
        await reg.register_instance("svc", "inst-1", ttl=600)
        await reg.register_resource("svc", "inst-1", ["looked-up"])
        counter = iter(range(10**9))

        async def register_one() -> None:
            await reg.register_resource("svc", "inst-1", [f"one-{next(counter)}"])

        async def lookup() -> None:
            await reg.get_resource_owner("svc", "looked-up")

        async def register_1000() -> None:
            i = next(counter)
            await reg.register_resource("svc", "inst-1", [f"b{i}-{j}" for j in range(1000)])

        out = {
            "register_resource (1 id)": await _p50(register_one, n, n // 10),
            "get_resource_owner": await _p50(lookup, n, n // 10),
            "register_resource (1000 ids)": await _p50(register_1000, max(20, n // 20), 5),
        }
        await reg.deregister_instance("svc", "inst-1")
        return out
    finally:
        await reg.aclose()


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--redis-url", help="use this Redis instead of a private redis-server")
    ap.add_argument("-n", type=int, default=2000, help="timed operations per figure (1000-id: n/20)")
    args = ap.parse_args()
    logging.basicConfig(level=logging.WARNING)
    proc = tmp = None
    url = args.redis_url
    if url is None:
        proc, url, tmp = _start_redis()
    try:
        results = asyncio.run(measure(url, args.n))
    finally:
        if proc is not None:
            proc.terminate()
            proc.wait(10)
            shutil.rmtree(tmp or "", ignore_errors=True)
    for name, p50 in results.items():
        print(f"{name:<30} p50 {p50:>9,.1f} us")


if __name__ == "__main__":
    main()
