"""Signed envelopes.

Without signing, anyone who may PUBLISH can make an instance run a method with arbitrary params,
and anyone who may subscribe can answer a call first with a forged reply. With
``RouterSettings.signing_keys`` every request and reply carries an HMAC over the whole envelope,
its channel and a timestamp: unsigned, forged, mis-addressed, stale and replayed envelopes are
dropped and counted, never executed or accepted.
"""

from __future__ import annotations

import asyncio
import struct
import time
from collections.abc import AsyncIterator
from typing import Any

import msgpack
import pytest
import redis.asyncio as aredis
from prometheus_client import CollectorRegistry
from pydantic import SecretStr, ValidationError

from resource_router import (
    InvalidRequestError,
    MethodNotFoundError,
    RouteRequest,
    RouterSettings,
    RouteTimeoutError,
    ServiceClient,
    ServiceInstance,
)
from resource_router.routing.protocol import decode_request, encode_request
from resource_router.routing.signing import SEAL_OVERHEAD, Signer
from tests.support.metrics import sample

SVC = "signed"
K1 = "k1-0123456789abcdef-old"
K2 = "k2-fedcba9876543210-new"
K3 = "k3-attacker-key-000000"
CHANNEL = "rr:rpc:signed:i1"


def request_bytes(**overrides: Any) -> bytes:
    fields: dict[str, Any] = {
        "request_id": "c:1",
        "reply_channel": "rr:reply:c",
        "service_name": SVC,
        "method": "m",
        "resource_id": "r",
        "params": {"x": 1},
        "deadline": None,
        "trace_id": None,
        "max_bytes": 1 << 20,
    }
    fields.update(overrides)
    return encode_request(**fields)


# -- the envelope ----------------------------------------------------------------------------------
def test_a_sealed_envelope_is_the_same_map_with_ts_and_sg_last() -> None:
    signer = Signer([K1])
    plain = request_bytes()
    sealed = signer.seal(CHANNEL, plain)
    message = msgpack.unpackb(sealed, raw=False)
    assert list(message)[-2:] == ["ts", "sg"]
    assert abs(message["ts"] - time.time() * 1000) < 1000
    assert isinstance(message["sg"], bytes) and len(message["sg"]) == 32
    assert {k: v for k, v in message.items() if k not in ("ts", "sg")} == msgpack.unpackb(plain, raw=False)
    assert len(sealed) - len(plain) <= SEAL_OVERHEAD
    # Receivers that do not sign read it as before (unknown keys are ignored).
    assert decode_request(sealed, max_bytes=1 << 20).params == {"x": 1}
    assert signer.verify(CHANNEL, sealed, replay=False) == 0


def test_the_mac_is_hmac_sha256_over_the_channel_and_every_byte_before_it() -> None:
    """The construction docs/protocol.md gives, recomputed here from scratch."""
    import hashlib
    import hmac

    sealed = Signer([K1]).seal(CHANNEL, request_bytes())
    expected = hmac.new(
        K1.encode(), struct.pack(">I", len(CHANNEL)) + CHANNEL.encode() + sealed[:-32], hashlib.sha256
    ).digest()
    assert sealed[-32:] == expected
    assert sealed[-49:-45] == b"\xa2ts\xcf"  # "ts", uint 64 (8 bytes)
    assert sealed[-37:-32] == b"\xa2sg\xc4\x20"


@pytest.mark.parametrize("entries", [1, 13, 14, 15, 16, 70_000])
def test_maps_of_any_size_seal_and_verify(entries: int) -> None:
    signer = Signer([K1])
    plain = msgpack.packb({f"f{i}": i for i in range(entries)})
    sealed = signer.seal(CHANNEL, plain)
    assert len(msgpack.unpackb(sealed, raw=False)) == entries + 2
    assert signer.verify(CHANNEL, sealed, replay=False) == 0


def test_no_changed_byte_is_accepted() -> None:
    signer = Signer([K1])
    sealed = signer.seal(CHANNEL, request_bytes())
    for i in range(len(sealed)):
        for flip in (0x01, 0x80):
            tampered = bytearray(sealed)
            tampered[i] ^= flip
            assert signer.verify(CHANNEL, bytes(tampered), replay=False) in ("forged", "unsigned"), i
    assert signer.verify(CHANNEL, sealed[:-1], replay=False) == "unsigned"
    assert signer.verify(CHANNEL, sealed + b"\x00", replay=False) == "unsigned"


def test_unsigned_mis_addressed_foreign_key_stale_and_replayed_envelopes_are_refused() -> None:
    signer = Signer([K1], window=5.0)
    now = int(time.time() * 1000)
    assert signer.verify(CHANNEL, request_bytes(), replay=False) == "unsigned"
    assert signer.verify(CHANNEL, b"", replay=False) == "unsigned"
    sealed = signer.seal(CHANNEL, request_bytes())
    assert signer.verify("rr:rpc:signed:i2", sealed, replay=False) == "forged"  # published elsewhere
    assert signer.verify(CHANNEL, Signer([K3]).seal(CHANNEL, request_bytes()), replay=False) == "forged"
    assert signer.verify(CHANNEL, signer.seal(CHANNEL, request_bytes(), now_ms=now - 5_100), replay=False) == "stale"
    assert signer.verify(CHANNEL, signer.seal(CHANNEL, request_bytes(), now_ms=now + 5_100), replay=False) == "stale"
    assert signer.verify(CHANNEL, signer.seal(CHANNEL, request_bytes(), now_ms=now - 4_000), replay=False) == 0
    assert signer.verify(CHANNEL, sealed, replay=True) == 0
    assert signer.verify(CHANNEL, sealed, replay=True) == "replayed"
    assert signer.verify(CHANNEL, sealed, replay=False) == 0  # replies are not remembered (futures are)


def test_keys_rotate_the_first_seals_all_verify() -> None:
    old, rotating, new = Signer([K1]), Signer([K2, K1]), Signer([K2])
    assert rotating.verify(CHANNEL, old.seal(CHANNEL, request_bytes()), replay=False) == 1
    assert rotating.verify(CHANNEL, new.seal(CHANNEL, request_bytes()), replay=False) == 0
    assert old.verify(CHANNEL, rotating.seal(CHANNEL, request_bytes(), key=1), replay=False) == 0
    assert old.verify(CHANNEL, rotating.seal(CHANNEL, request_bytes()), replay=False) == "forged"


def test_short_keys_are_refused() -> None:
    with pytest.raises(ValidationError, match="16 bytes"):
        RouterSettings(signing_keys=[SecretStr("short")])
    with pytest.raises(InvalidRequestError):
        Signer(["short"])
    with pytest.raises(InvalidRequestError):
        Signer([])


# -- end to end ------------------------------------------------------------------------------------
def signed(*keys: str, window: float = 10.0) -> RouterSettings:
    return RouterSettings(signing_keys=[SecretStr(k) for k in keys], signing_window=window)


class Wiretap:
    """A raw subscriber: what an attacker who may SUBSCRIBE sees."""

    def __init__(self, redis_url: str, channel: str) -> None:
        self.redis = aredis.Redis.from_url(redis_url)
        self.channel = channel
        self.got: list[bytes] = []
        self._task: asyncio.Task[None] | None = None

    async def __aenter__(self) -> Wiretap:
        self.pubsub = self.redis.pubsub()
        await self.pubsub.subscribe(self.channel)
        await self.pubsub.get_message(timeout=2)
        self._task = asyncio.create_task(self._read())
        return self

    async def _read(self) -> None:
        async for msg in self.pubsub.listen():
            if msg["type"] == "message":
                self.got.append(msg["data"])

    async def __aexit__(self, *exc: object) -> None:
        assert self._task is not None
        self._task.cancel()
        await asyncio.gather(self._task, return_exceptions=True)
        await self.pubsub.aclose()
        await self.redis.aclose()

    async def publish(self, channel: str, data: bytes) -> int:
        return int(await self.redis.publish(channel, data))


@pytest.fixture
def metrics() -> CollectorRegistry:
    return CollectorRegistry()


@pytest.fixture
async def instance(redis_url: str, namespace: str, metrics: CollectorRegistry) -> AsyncIterator[ServiceInstance]:
    inst = ServiceInstance(redis_url, SVC, "i1", namespace=namespace, settings=signed(K2, K1), metrics_registry=metrics)
    inst.executions = []  # type: ignore[attr-defined]

    @inst.handler("run")
    async def run(request: RouteRequest) -> Any:
        inst.executions.append(request.params)  # type: ignore[attr-defined]
        if request.params == "slow":
            await asyncio.sleep(0.3)
        return {"ran": request.params}

    async with inst:
        await inst.register_resource(["r"])
        yield inst


def dropped(metrics: CollectorRegistry, reason: str) -> float:
    return sample(metrics, "ipc_dropped_messages_total", reason=reason)


async def _until(check: Any, timeout: float = 5.0) -> None:
    end = time.monotonic() + timeout
    while not check():
        assert time.monotonic() < end, "condition not met in time"
        await asyncio.sleep(0.01)


async def test_instances_run_only_authenticated_requests(
    redis_url: str, namespace: str, instance: ServiceInstance, metrics: CollectorRegistry
) -> None:
    async with (
        ServiceClient(redis_url, namespace=namespace, settings=signed(K2)) as client,
        Wiretap(redis_url, instance.channel) as tap,
    ):
        assert await client.call(SVC, "run", "genuine", resource_id="r") == {"ran": "genuine"}
        await _until(lambda: len(tap.got) == 1)
        (genuine,) = tap.got
        body = msgpack.unpackb(genuine, raw=False)
        reply_channel = body["rc"]
        attack = {**{k: v for k, v in body.items() if k not in ("ts", "sg")}, "id": "x:1", "p": "attacker"}
        attack_plain = msgpack.packb(attack)
        now = int(time.time() * 1000)
        attempts = {
            "unsigned": attack_plain,
            "forged": Signer([K3]).seal(instance.channel, attack_plain),
            "stale": Signer([K2]).seal(instance.channel, attack_plain, now_ms=now - 11_000),
            "replayed": genuine,
        }
        for data in attempts.values():
            assert await tap.publish(instance.channel, data) == 2  # the instance and the tap itself
        # A genuine request for another instance, published on this one's channel.
        elsewhere = Signer([K2]).seal(f"{namespace}:rpc:{SVC}:i2", attack_plain)
        assert await tap.publish(instance.channel, elsewhere) == 2
        # An authenticated request still works after all that.
        assert await client.call(SVC, "run", "after", resource_id="r") == {"ran": "after"}
        await _until(lambda: dropped(metrics, "forged") == 2)
    assert instance.executions == ["genuine", "after"]  # type: ignore[attr-defined]
    for reason in ("unsigned", "stale", "replayed"):
        assert dropped(metrics, reason) == 1, reason
    assert dropped(metrics, "forged") == 2  # a foreign key, and the mis-addressed one
    assert sample(metrics, "ipc_route_requests_total", service_name=SVC, outcome="ok") == 2
    assert reply_channel.startswith(f"{namespace}:reply:")


async def test_a_forged_reply_that_arrives_first_is_not_accepted(
    redis_url: str, namespace: str, instance: ServiceInstance
) -> None:
    client_metrics = CollectorRegistry()
    async with (
        ServiceClient(redis_url, namespace=namespace, settings=signed(K2), metrics_registry=client_metrics) as client,
        Wiretap(redis_url, instance.channel) as tap,
    ):
        call = asyncio.create_task(client.call(SVC, "run", "slow", resource_id="r"))
        await _until(lambda: len(tap.got) == 1)
        request = msgpack.unpackb(tap.got[0], raw=False)
        forged = {"v": 1, "k": "rep", "id": request["id"], "s": "ok", "r": "forged", "iid": "i1", "ft": 1, "tr": None}
        plain = msgpack.packb(forged)
        assert await tap.publish(request["rc"], plain) == 1
        assert await tap.publish(request["rc"], Signer([K3]).seal(request["rc"], plain)) == 1
        assert await call == {"ran": "slow"}  # the genuine reply, after both forgeries
    assert sample(client_metrics, "ipc_dropped_messages_total", reason="unsigned") == 1
    assert sample(client_metrics, "ipc_dropped_messages_total", reason="forged") == 1


async def test_request_ids_are_unguessable(redis_url: str, namespace: str, instance: ServiceInstance) -> None:
    async with (
        ServiceClient(redis_url, namespace=namespace, settings=signed(K2)) as client,
        Wiretap(redis_url, instance.channel) as tap,
    ):
        for i in range(3):
            await client.call(SVC, "run", i, resource_id="r")
        await _until(lambda: len(tap.got) == 3)
    ids = [msgpack.unpackb(m, raw=False)["id"] for m in tap.got]
    suffixes = [i.removeprefix(f"{client.client_id}:") for i in ids]
    assert len(set(suffixes)) == 3 and all(len(s) == 24 and int(s, 16) >= 0 for s in suffixes)  # 96 random bits


async def test_keys_rotate_without_a_flag_day(
    redis_url: str, namespace: str, instance: ServiceInstance, metrics: CollectorRegistry
) -> None:
    """The instance has [k2, k1]: callers still on [k1], moved to [k2], or in between, all work."""
    for keys in ([K1], [K2], [K2, K1], [K1, K2]):
        async with ServiceClient(redis_url, namespace=namespace, settings=signed(*keys)) as client:
            assert await client.call(SVC, "run", keys, resource_id="r") == {"ran": keys}
    # A caller whose key the instance does not know is refused (and learns nothing: no reply).
    async with ServiceClient(redis_url, namespace=namespace, settings=signed(K3)) as client:
        with pytest.raises(RouteTimeoutError):
            await client.call(SVC, "run", "x", resource_id="r", timeout=0.3)
    assert dropped(metrics, "forged") == 1
    # A caller that does not sign at all is refused the same way.
    async with ServiceClient(redis_url, namespace=namespace) as client:
        with pytest.raises(RouteTimeoutError):
            await client.call(SVC, "run", "x", resource_id="r", timeout=0.3)
    assert dropped(metrics, "unsigned") == 1
    assert instance.executions == [[K1], [K2], [K2, K1], [K1, K2]]  # type: ignore[attr-defined]


async def test_refusals_are_answered_with_the_callers_key(
    redis_url: str, namespace: str, instance: ServiceInstance
) -> None:
    """An unknown method, answered 404 to a caller still on the old key (the instance's second)."""
    async with ServiceClient(redis_url, namespace=namespace, settings=signed(K1)) as client:
        with pytest.raises(MethodNotFoundError):
            await client.call(SVC, "nope", resource_id="r", timeout=2)
        assert await client.call(SVC, "run", "ok", resource_id="r") == {"ran": "ok"}


async def test_a_rolling_switch_to_signing_loses_no_call(redis_url: str, namespace: str) -> None:
    """With signing_accept_unsigned, processes with and without keys talk both ways."""
    rolling = RouterSettings(signing_keys=[SecretStr(K1)], signing_accept_unsigned=True)
    for instance_settings, client_settings in ((rolling, RouterSettings()), (RouterSettings(), rolling)):
        inst = ServiceInstance(redis_url, SVC, "i9", namespace=namespace, settings=instance_settings)
        inst.add_handler("run", lambda request: request.params)
        async with inst, ServiceClient(redis_url, namespace=namespace, settings=client_settings) as client:
            assert await client.call(SVC, "run", "x", timeout=2) == "x"
    # Still refused while rolling: envelopes with a seal that does not verify.
    signer = Signer([K1], accept_unsigned=True)
    assert signer.verify(CHANNEL, request_bytes(), replay=False) == 0
    assert signer.verify(CHANNEL, Signer([K3]).seal(CHANNEL, request_bytes()), replay=False) == "forged"


def test_replays_are_remembered_for_twice_the_window_and_then_forgotten() -> None:
    signer = Signer([K1], window=1.0)
    mac = b"m" * 32
    start = 1_000_000
    assert signer._first_sight(mac, start)
    for now in (start + 1, start + 999, start + 1000, start + 1500, start + 1999):
        assert not signer._first_sight(mac, now), now  # an envelope sealed at `start` is fresh until +1 s
    other = b"o" * 32
    assert signer._first_sight(other, start + 1999)
    assert not signer._first_sight(other, start + 3998)  # 2 windows after it was seen: still known
    assert signer._first_sight(b"n" * 32, start + 10_000)  # long quiet: everything old is forgotten
    assert signer._first_sight(mac, start + 10_001)
