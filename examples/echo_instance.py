"""An example service instance: owns some resources and serves a few methods over resource-router.

    python examples/echo_instance.py --service echo --instance-id echo-1 --resources user-1,user-2

It registers itself (a lease renewed by heartbeats), claims the resources it is given, and serves:

* ``echo``  returns the params with who answered (instance id, resource id, fencing token);
* ``sleep`` sleeps ``params["seconds"]`` (default 1) then answers: handy to watch timeouts and drains;
* ``fail``  raises, to show how a handler error reaches the caller (HTTP 500 through a replica).

With ``--placement hash`` (or ``least_loaded``, ``random``) it is a placement volunteer: a call for
a resource nobody owns may be activated here, and resources of a crashed instance come back here by
themselves. On SIGTERM or Ctrl-C a volunteer first drains (hands every resource to the other
volunteers; calls in flight are redirected, none fails), then releases what is left and exits 0.

It prints one JSON line ``{"event": "ready", ...}`` on stdout once it serves, and one
``{"event": "stopped", ...}`` at the end. Redis comes from ``--redis`` or
``RESOURCE_ROUTER_REDIS_URL`` (``redis://localhost:6379/0`` when neither is set).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import logging
import os
import signal
import socket
import sys
from typing import Any

from resource_router import RouteRequest, RouterSettings
from resource_router.routing.instance import ServiceInstance


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    settings = RouterSettings()  # RESOURCE_ROUTER_* variables and .env
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument(
        "--redis",
        default=settings.redis_url.get_secret_value() if settings.redis_url_given else "redis://localhost:6379/0",
        help="Redis URL (default: $RESOURCE_ROUTER_REDIS_URL or redis://localhost:6379/0)",
    )
    parser.add_argument("--namespace", default=settings.namespace)
    parser.add_argument("--service", default=os.environ.get("ECHO_SERVICE", "echo"), help="service name")
    parser.add_argument(
        "--instance-id",
        default=os.environ.get("ECHO_INSTANCE_ID") or f"{socket.gethostname()}-{os.getpid()}",
        help="unique within the service (default: host-pid)",
    )
    parser.add_argument(
        "--resources",
        default=os.environ.get("ECHO_RESOURCES", ""),
        help="comma-separated resource ids to claim at start",
    )
    parser.add_argument("--ttl", type=float, default=float(os.environ.get("ECHO_TTL", "10")), help="lease seconds")
    parser.add_argument("--force", action="store_true", help="take the resources over from their owners")
    parser.add_argument(
        "--placement",
        choices=("hash", "least_loaded", "random"),
        default=os.environ.get("ECHO_PLACEMENT") or None,
        help="be a placement volunteer with this strategy (resources are activated here on demand)",
    )
    parser.add_argument(
        "--drain-timeout", type=float, default=float(os.environ.get("ECHO_DRAIN_TIMEOUT", "30")), help="seconds"
    )
    return parser.parse_args(argv)


async def serve(args: argparse.Namespace) -> None:
    instance = ServiceInstance(
        args.redis,
        args.service,
        args.instance_id,
        ttl=args.ttl,
        namespace=args.namespace,
        accept_placement=args.placement is not None,
        placement=args.placement or "hash",
        drain_timeout=args.drain_timeout,
    )

    @instance.handler("echo")
    async def echo(request: RouteRequest) -> dict[str, Any]:
        return {
            "echo": request.params,
            "instance_id": instance.instance_id,
            "resource_id": request.resource_id,
            "fencing_token": request.fencing_token,
        }

    @instance.handler("sleep")
    async def sleep(request: RouteRequest) -> dict[str, Any]:
        params = request.params if isinstance(request.params, dict) else {}
        seconds = float(params.get("seconds", 1.0))
        await asyncio.sleep(seconds)
        return {"slept": seconds, "instance_id": instance.instance_id}

    @instance.handler("fail")
    async def fail(request: RouteRequest) -> None:
        raise RuntimeError(f"asked to fail with {request.params!r}")

    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)

    async with instance:
        conflicts: dict[str, str] = {}
        wanted = [r for r in args.resources.split(",") if r]
        if wanted:
            response = await instance.register_resource(wanted, force=args.force)
            conflicts = dict(response.conflicts)
        ready = {
            "event": "ready",
            "service": args.service,
            "instance_id": instance.instance_id,
            "owned": sorted(instance.owned_resources),
            "conflicts": conflicts,
        }
        if args.placement is not None:
            ready["placement"] = args.placement
        print(json.dumps(ready), flush=True)
        await stop.wait()
        stopped: dict[str, Any] = {"event": "stopped", "instance_id": instance.instance_id}
        if args.placement is not None:  # hand everything to the other volunteers before leaving
            stopped["moved"] = (await instance.drain()).moved_count
    print(json.dumps(stopped), flush=True)


def main(argv: list[str] | None = None) -> None:
    # An application configures logging (the library never does): the library's events go to
    # stderr, so stdout carries only this program's own JSON lines.
    logging.basicConfig(level=logging.INFO, stream=sys.stderr, format="%(asctime)s %(levelname)s %(name)s %(message)s")
    asyncio.run(serve(parse_args(argv)))


if __name__ == "__main__":
    main()
