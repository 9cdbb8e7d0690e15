"""A caller in its own process: fires ``--calls`` concurrent calls for one resource on a signal.

    python -m tests.procs.caller_proc --url URL --namespace NS --service S --resource R --calls N

It connects (and warms its connections), prints ``ARMED``, waits for a line on stdin (so that every
caller process fires at the same moment), then prints one line ``RESULTS {json}``: a list of
``{"ok": true, "iid", "token"}`` or ``{"ok": false, "error": type}`` per call.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import sys
from typing import Any

from resource_router import ResourceRouterError, ServiceClient


async def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--url", required=True)
    parser.add_argument("--namespace", required=True)
    parser.add_argument("--service", required=True)
    parser.add_argument("--resource", required=True)
    parser.add_argument("--calls", type=int, default=10)
    parser.add_argument("--method", default="whoami")
    args = parser.parse_args()

    async with ServiceClient(args.url, namespace=args.namespace) as client:
        await client.registry.ping()

        async def one() -> dict[str, Any]:
            try:
                result = await client.call(args.service, args.method, resource_id=args.resource, timeout=10.0)
            except ResourceRouterError as exc:
                return {"ok": False, "error": exc.type}
            return {"ok": True, "iid": result["iid"], "token": result["token"]}

        print("ARMED", flush=True)
        await asyncio.get_running_loop().run_in_executor(None, sys.stdin.readline)
        results = await asyncio.gather(*(one() for _ in range(args.calls)))
    print("RESULTS " + json.dumps(results), flush=True)


if __name__ == "__main__":
    asyncio.run(main())
