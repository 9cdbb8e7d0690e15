"""One ServiceInstance of the soak test (``tests/system/test_soak.py``) in its own process.

    python -m tests.procs.soak_instance --url URL --namespace NS --service S --instance-id I [--ttl T]

Reads the resource ids to register from stdin's first line (comma-separated), prints ``READY
{"tokens": {...}}`` and serves until stdin closes; then it stops gracefully (drains, releases
everything) and prints ``STOPPED {...}``. Signing keys come from the environment
(``RESOURCE_ROUTER_SIGNING_KEYS``).

Handlers:
  exec     -> a fenced write in Redis: the resource's highest fencing token so far is kept in
              ``{ns}:soak:fence:{rid}``; a write with a lower token (an execution by an instance
              that is no longer the owner) is refused and counted in ``{ns}:soak:stale``; every
              execution is counted in ``{ns}:soak:execs``. Returns {"iid", "rid", "token", "fenced"}.
  claim    -> params {"ids", "force"}: registers the ids here; returns {"tokens": {rid: token}}
  release  -> params {"ids"}: releases them; returns {"released": [...]}
"""

from __future__ import annotations

import argparse
import asyncio
import json
import logging
import sys
from typing import Any

import redis.asyncio as aredis

from resource_router import RouteRequest, ServiceInstance

FENCE = """
local top = tonumber(redis.call('GET', KEYS[1]) or '0')
redis.call('INCR', KEYS[3])
if tonumber(ARGV[1]) < top then
  redis.call('INCR', KEYS[2])
  return 0
end
redis.call('SET', KEYS[1], ARGV[1])
return 1
"""


async def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--url", required=True)
    parser.add_argument("--namespace", required=True)
    parser.add_argument("--service", required=True)
    parser.add_argument("--instance-id", required=True)
    parser.add_argument("--ttl", type=float, default=5.0)
    args = parser.parse_args()
    loop = asyncio.get_running_loop()
    first = await loop.run_in_executor(None, sys.stdin.readline)
    resources = [r for r in first.strip().split(",") if r]

    store = aredis.Redis.from_pool(aredis.BlockingConnectionPool.from_url(args.url, max_connections=64))
    fence = store.register_script(FENCE)
    ns = args.namespace
    inst = ServiceInstance(
        args.url,
        args.service,
        args.instance_id,
        ttl=args.ttl,
        namespace=ns,
        max_resources_per_instance=100_000,
        max_concurrency=512,
    )

    @inst.handler("exec")
    async def execute(request: RouteRequest) -> dict[str, Any]:
        rid, token = request.resource_id, request.fencing_token
        keys = [f"{ns}:soak:fence:{rid}", f"{ns}:soak:stale", f"{ns}:soak:execs"]
        fenced = await fence(keys=keys, args=[token])
        return {"iid": inst.instance_id, "rid": rid, "token": token, "fenced": int(fenced)}

    @inst.handler("claim")
    async def claim(request: RouteRequest) -> dict[str, Any]:
        params = request.params or {}
        response = await inst.register_resource(params["ids"], force=bool(params.get("force")))
        return {"tokens": response.fencing_tokens}

    @inst.handler("release")
    async def release(request: RouteRequest) -> dict[str, Any]:
        response = await inst.release_resource(request.params["ids"])
        return {"released": response.released}

    async with inst:
        response = await inst.register_resource([f"ctl-{inst.instance_id}", *resources])
        print("READY " + json.dumps({"tokens": response.fencing_tokens}), flush=True)
        await loop.run_in_executor(None, sys.stdin.read)
    await store.aclose()
    print("STOPPED " + json.dumps({"instance_id": args.instance_id}), flush=True)


if __name__ == "__main__":
    logging.basicConfig(level=logging.WARNING)
    asyncio.run(main())
