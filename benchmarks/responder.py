"""The serving side of the request-reply benchmarks, run in its own process so that every variant
(the library, naive redis-py pub/sub, NATS) has its responder on the other side of a process boundary.

``python -m benchmarks.responder MODE --redis-url URL --nats-url URL`` prints ``ready`` once it
serves and stops when stdin closes. MODE: ``instance`` (a ``ServiceInstance`` owning ``res-1`` with
an ``echo`` handler), ``instance-signed`` (the same with signed envelopes), ``pubsub`` (one
``listen()`` loop replying on the request's reply channel),
``nats`` (a nats-py subscription replying with ``msg.respond``).
"""

from __future__ import annotations

import argparse
import asyncio
import sys
from typing import Any

import msgpack

from .common import configure_logging

SERVICE = "bench-rpc"
INSTANCE = "inst-rpc"
RESOURCE = "res-1"
#: ``instance-signed``: the same instance, under another name, with signed envelopes (this key).
SIGNED_SERVICE = "bench-rpc-signed"
SIGNING_KEY = "bench-signing-key-0123456789abcdef"
PUBSUB_CHANNEL = "bench:rpc:inst-rpc"
NATS_SUBJECT = "bench.rpc.inst-rpc"


def _pad(base: dict[str, Any], size: int) -> bytes:
    """Padding that brings ``base`` to about ``size`` bytes of msgpack (the anchors' ~100-byte bodies)."""
    return b"x" * max(0, size - len(msgpack.packb({**base, "b": b""})) - 1)


PAD_PUBSUB = _pad({"id": 123456, "r": "bench:reply:caller-7f3a9c21", "m": "route", "res": "res:0000123456"}, 100)
PAD_NATS = _pad({"id": 123456, "m": "route", "res": "res:0000123456"}, 100)
PAD_PARAMS = PAD_NATS  # routed_call: the same user payload; the library adds its own envelope


def reply_body(request_id: Any, pad: bytes) -> bytes:
    return msgpack.packb({"id": request_id, "ok": True, "owner": INSTANCE, "b": pad})


async def _wait_stdin_closed() -> None:
    await asyncio.to_thread(sys.stdin.read)


async def serve_instance(args: argparse.Namespace) -> None:
    from prometheus_client import CollectorRegistry
    from pydantic import SecretStr

    from resource_router import RouteRequest, RouterSettings, ServiceInstance

    signed = args.mode == "instance-signed"
    inst = ServiceInstance(
        args.redis_url,
        SIGNED_SERVICE if signed else SERVICE,
        INSTANCE,
        ttl=30.0,
        namespace=args.namespace,
        partitions=args.partitions,
        metrics_registry=CollectorRegistry(),
        settings=RouterSettings(signing_keys=[SecretStr(SIGNING_KEY)]) if signed else None,
    )

    async def echo(request: RouteRequest) -> Any:
        return request.params

    inst.handler("echo")(echo)
    async with inst:
        await inst.register_resource([RESOURCE])
        print("ready", flush=True)
        await _wait_stdin_closed()


async def serve_pubsub(args: argparse.Namespace) -> None:
    import redis.asyncio as aredis

    r = aredis.Redis.from_url(args.redis_url)
    ps = r.pubsub(ignore_subscribe_messages=True)
    await ps.subscribe(PUBSUB_CHANNEL)
    background: set[asyncio.Task[Any]] = set()

    async def handle(req: dict[str, Any]) -> None:
        await r.publish(req["r"], reply_body(req["id"], req["b"]))

    async def loop() -> None:
        async for m in ps.listen():
            if m["type"] != "message":
                continue
            t = asyncio.ensure_future(handle(msgpack.unpackb(m["data"])))
            background.add(t)
            t.add_done_callback(background.discard)

    task = asyncio.ensure_future(loop())
    print("ready", flush=True)
    await _wait_stdin_closed()
    task.cancel()
    await asyncio.gather(task, return_exceptions=True)
    await ps.aclose()
    await r.aclose()


async def serve_nats(args: argparse.Namespace) -> None:
    import nats

    nc = await nats.connect(args.nats_url, allow_reconnect=False, connect_timeout=2)

    async def handler(msg: Any) -> None:
        req = msgpack.unpackb(msg.data)
        await msg.respond(reply_body(req["id"], req["b"]))

    await nc.subscribe(NATS_SUBJECT, cb=handler)
    await nc.flush()
    print("ready", flush=True)
    await _wait_stdin_closed()
    await nc.drain()


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("mode", choices=["instance", "instance-signed", "pubsub", "nats"])
    ap.add_argument("--redis-url", default="redis://127.0.0.1:6379/0")
    ap.add_argument("--nats-url", default="nats://127.0.0.1:4222")
    ap.add_argument("--namespace", default="bench")
    ap.add_argument("--partitions", type=int, default=1)
    args = ap.parse_args()
    configure_logging()
    serve = {
        "instance": serve_instance,
        "instance-signed": serve_instance,
        "pubsub": serve_pubsub,
        "nats": serve_nats,
    }[args.mode]
    try:
        asyncio.run(serve(args))
    except Exception as exc:
        print(f"error {type(exc).__name__}: {exc}", flush=True)
        raise


if __name__ == "__main__":
    main()
