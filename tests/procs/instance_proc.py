"""One ServiceInstance in its own process, driven by the routing tests (``tests/procs/control.py``).

    python -m tests.procs.instance_proc --url URL --namespace NS --service S --instance-id I \
        [--ttl T] [--resources a,b,c] [--log PATH] [--placement hash|least_loaded|random] [--serial]
        [--idle-timeout S] [--rebalance] [--max-resources N]

It registers the control resource ``ctl-<instance id>`` and the given resources, prints one line
``READY {json}`` on stdout and serves until stdin closes or SIGTERM arrives (then it drains first:
its resources go to other volunteers); then it exits gracefully (releasing everything), writes its
execution log to ``--log`` as JSON lines and prints ``STOPPED {json}``. ``--placement`` makes it a
placement volunteer; the journal records ``activate`` and ``deactivate`` hooks too.

Handlers:
  whoami   -> {"iid", "token", "rid", "p"}
  exec     -> records ("exec", op, rid, token) in order with ("lost", ids) and returns {"iid", "token", "op"}
  claim    -> params {"ids": [...], "force": bool}: registers the ids here; returns the response
  sleep    -> sleeps ``params`` seconds, returns {"iid"}
  stats    -> {"dropped": {reason: count}, "owned": n, "not_owner": count}
"""

from __future__ import annotations

import argparse
import asyncio
import json
import logging
import os
import signal
import sys
import time
from typing import Any

from prometheus_client import REGISTRY

from resource_router import RouteRequest, ServiceInstance


def _sample(name: str, labels: dict[str, str]) -> float:
    return REGISTRY.get_sample_value(name, labels) or 0.0


def placement_options(args: argparse.Namespace) -> dict[str, Any]:
    options: dict[str, Any] = {"serial_per_resource": args.serial, "idle_timeout": args.idle_timeout}
    if args.placement:
        options.update(accept_placement=True, placement=args.placement, rebalance=args.rebalance)
    return options


def write_journal(path: str, journal: list[list[Any]]) -> None:
    with open(path, "w", encoding="utf-8") as fh:
        for entry in journal:
            fh.write(json.dumps(entry) + "\n")


async def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--url", required=True)
    parser.add_argument("--namespace", required=True)
    parser.add_argument("--service", required=True)
    parser.add_argument("--instance-id", required=True)
    parser.add_argument("--ttl", type=float, default=2.0)
    parser.add_argument("--resources", default="")
    parser.add_argument("--log", default=None)
    parser.add_argument("--exec-delay", type=float, default=0.0)
    parser.add_argument("--placement", default=None)
    parser.add_argument("--serial", action="store_true")
    parser.add_argument("--idle-timeout", type=float, default=None)
    parser.add_argument("--rebalance", action="store_true")
    parser.add_argument("--max-resources", type=int, default=1000)
    args = parser.parse_args()

    journal: list[list[Any]] = []

    def on_lost(ids: list[str]) -> None:
        journal.append(["lost", sorted(ids), time.time()])

    inst = ServiceInstance(
        args.url,
        args.service,
        args.instance_id,
        ttl=args.ttl,
        namespace=args.namespace,
        on_resource_lost=on_lost,
        sweep_interval=args.ttl,
        max_resources_per_instance=args.max_resources,
        **placement_options(args),
    )

    @inst.on_activate
    async def activate(resource_id: str) -> None:
        journal.append(["activate", resource_id, time.time()])

    @inst.on_deactivate
    async def deactivate(resource_id: str, reason: str) -> None:
        journal.append(["deactivate", resource_id, reason, time.time()])

    @inst.handler("whoami")
    async def whoami(request: RouteRequest) -> dict[str, Any]:
        return {
            "iid": inst.instance_id,
            "token": request.fencing_token,
            "rid": request.resource_id,
            "p": request.params,
        }

    @inst.handler("exec")
    async def execute(request: RouteRequest) -> dict[str, Any]:
        # Recorded synchronously at the start: the journal order is the order of events here.
        journal.append(["exec", request.params, request.resource_id, request.fencing_token, time.time()])
        if args.exec_delay:
            await asyncio.sleep(args.exec_delay)
        return {"iid": inst.instance_id, "token": request.fencing_token, "op": request.params}

    @inst.handler("claim")
    async def claim(request: RouteRequest) -> dict[str, Any]:
        params = request.params or {}
        response = await inst.register_resource(params["ids"], force=bool(params.get("force")))
        journal.append(["claim", sorted(response.registered), time.time()])
        return response.model_dump()

    @inst.handler("sleep")
    async def sleep(request: RouteRequest) -> dict[str, Any]:
        await asyncio.sleep(float(request.params))
        return {"iid": inst.instance_id}

    @inst.handler("stats")
    async def stats(request: RouteRequest) -> dict[str, Any]:
        reasons = ("malformed", "foreign", "version", "oversized", "expired")
        return {
            "dropped": {r: _sample("ipc_dropped_messages_total", {"reason": r}) for r in reasons},
            "invalid": _sample("ipc_route_requests_total", {"service_name": args.service, "outcome": "invalid"}),
            "owned": len(inst.owned_resources),
        }

    loop = asyncio.get_running_loop()
    stop = asyncio.Event()
    loop.add_signal_handler(signal.SIGTERM, stop.set)
    async with inst:
        ids = [f"ctl-{inst.instance_id}"] + [r for r in args.resources.split(",") if r]
        response = await inst.register_resource(ids)
        print("READY " + json.dumps({"instance_id": inst.instance_id, "tokens": response.fencing_tokens}), flush=True)
        # Serve until the test closes our stdin or sends SIGTERM.
        stdin_closed = loop.run_in_executor(None, sys.stdin.read)
        await asyncio.wait([stdin_closed, asyncio.ensure_future(stop.wait())], return_when=asyncio.FIRST_COMPLETED)
        if stop.is_set():
            report = await inst.drain(timeout=10.0)
            journal.append(["drained", report.moved_count, len(report.released), time.time()])
    if args.log:
        write_journal(args.log, journal)
    print("STOPPED " + json.dumps({"journal": len(journal)}), flush=True)
    if stop.is_set():
        os._exit(0)  # the thread reading stdin is still blocked: do not wait for it


if __name__ == "__main__":
    logging.basicConfig(level=logging.WARNING)
    asyncio.run(main())
