"""Authenticated envelopes: HMAC-SHA256 over each request and reply, its channel and a timestamp.

With ``RouterSettings.signing_keys`` set (env ``RESOURCE_ROUTER_SIGNING_KEYS``, comma-separated),
every envelope a client or an instance publishes is sealed with the first key, and every envelope
it receives must verify with one of the keys. An instance answers with the key its caller used,
so keys rotate without a flag day: give instances ``[new, old]``, then callers ``[new]`` (or
``[new, old]``), then drop ``old`` from the instances (``docs/security.md``). Unsigned, forged
(including envelopes published to another channel than the one they were sealed for), stale and
replayed envelopes are dropped and counted, never executed or accepted.

**Layout** (``docs/protocol.md`` §11). A sealed envelope is the protocol-1 msgpack map with two more
entries at its end, in this order and encoding::

    ... entries of the map ...  a2 74 73  cf <8 bytes>   a2 73 67  c4 20 <32 bytes>
                                "ts"      uint 64        "sg"      bin 8 (32 bytes)

``ts`` is the sealing time in milliseconds since the UNIX epoch; the map header counts both
entries. The MAC is ``HMAC-SHA256(key, u32_be(len(channel)) || channel || envelope[:-32])``: every
byte of the envelope before the MAC itself (the map header, all entries, ``ts`` and the ``sg`` key
and bin header) bound to the channel it is published on. Receivers that do not sign ignore the two
entries (unknown keys are ignored within protocol version 1).

A receiver checks, in this order, on the raw bytes before decoding anything: the layout
(``unsigned``), the MAC (``forged``), ``ts`` within ``signing_window`` seconds of its clock
(``stale``), and, for requests, that it has not seen the same MAC within the window (``replayed``).
``signing_accept_unsigned`` (for a rolling switch only) lets envelopes without any seal through.
"""

from __future__ import annotations

import hashlib
import hmac
import struct
import time
from collections.abc import Sequence
from typing import Any, Final

from pydantic import SecretStr

from resource_router.errors import InvalidRequestError
from resource_router.settings import RouterSettings

__all__ = ["MIN_KEY_BYTES", "REASONS", "SEAL_OVERHEAD", "Signer"]

#: Shortest key accepted (bytes of its UTF-8 form); use 32 random bytes, e.g. ``openssl rand -base64 32``.
MIN_KEY_BYTES: Final = 16
#: Why a received envelope was refused (the ``reason`` label of ``ipc_dropped_messages_total``).
REASONS: Final = ("unsigned", "forged", "stale", "replayed")

_TS: Final = b"\xa2ts\xcf"
_SG: Final = b"\xa2sg\xc4\x20"
_MAC_SIZE: Final = 32
_BLOCK: Final = 64  # SHA-256's block size
_TRAILER: Final = len(_TS) + 8 + len(_SG) + _MAC_SIZE  # 49 bytes
#: Bytes sealing adds to an envelope (``max_payload_bytes`` bounds the envelope before sealing).
SEAL_OVERHEAD: Final = _TRAILER + 2  # the map header may grow by 2 bytes (15 -> 16 or 65535 -> 65536 entries)
_SG_AT: Final = -(len(_SG) + _MAC_SIZE)
#: Replay memory per receiver and window: beyond it a window's MACs are forgotten early.
_REPLAY_LIMIT: Final = 1_000_000


def _header(count: int) -> bytes:
    if count < 16:
        return bytes((0x80 | count,))
    if count < 1 << 16:
        return b"\xde" + struct.pack(">H", count)
    return b"\xdf" + struct.pack(">I", count)


def _split_header(data: bytes) -> tuple[int, int]:
    """(entry count, header length) of an encoded msgpack map."""
    first = data[0] if data else 0
    if 0x80 <= first <= 0x8F:
        return first & 0x0F, 1
    if first == 0xDE and len(data) >= 3:
        return struct.unpack_from(">H", data, 1)[0], 3
    if first == 0xDF and len(data) >= 5:
        return struct.unpack_from(">I", data, 1)[0], 5
    raise ValueError("not an encoded msgpack map")


def _hmac_pads(key: bytes) -> tuple[Any, Any]:
    """SHA-256 states after absorbing ``key XOR ipad`` and ``key XOR opad`` (RFC 2104)."""
    if len(key) > _BLOCK:
        key = hashlib.sha256(key).digest()
    key = key.ljust(_BLOCK, b"\0")
    inner = hashlib.sha256(bytes(b ^ 0x36 for b in key))
    outer = hashlib.sha256(bytes(b ^ 0x5C for b in key))
    return inner, outer


class Signer:
    """Seals and verifies envelopes with a list of keys (the first seals, all verify)."""

    __slots__ = ("_keys", "_prefixes", "_rotate_at", "_seen", "accept_unsigned", "window_ms")

    def __init__(
        self, keys: Sequence[SecretStr | str | bytes], *, window: float = 10.0, accept_unsigned: bool = False
    ) -> None:
        if not keys:
            raise InvalidRequestError("signing needs at least one key", field="signing_keys")
        raw = [
            k.get_secret_value().encode() if isinstance(k, SecretStr) else k.encode() if isinstance(k, str) else k
            for k in keys
        ]
        if any(len(k) < MIN_KEY_BYTES for k in raw):
            raise InvalidRequestError(
                f"every signing key must be at least {MIN_KEY_BYTES} bytes long (use 32 random bytes)",
                field="signing_keys",
            )
        self._keys = [_hmac_pads(k) for k in raw]
        self._prefixes: dict[str | bytes, bytes] = {}
        self.window_ms = int(window * 1000)
        self.accept_unsigned = accept_unsigned
        self._seen: tuple[set[bytes], set[bytes], set[bytes]] = (set(), set(), set())
        self._rotate_at = 0

    @classmethod
    def from_settings(cls, settings: RouterSettings) -> Signer | None:
        """The signer ``settings`` ask for; None when they have no keys (signing off)."""
        if not settings.signing_keys:
            return None
        return cls(
            settings.signing_keys, window=settings.signing_window, accept_unsigned=settings.signing_accept_unsigned
        )

    def _prefix(self, channel: str | bytes) -> bytes:
        """``u32_be(len(channel)) || channel`` (cached: a process talks on few channels)."""
        prefix = self._prefixes.get(channel)
        if prefix is None:
            name = channel.encode() if isinstance(channel, str) else channel
            prefix = struct.pack(">I", len(name)) + name
            if len(self._prefixes) >= 4096:
                self._prefixes.clear()
            self._prefixes[channel] = prefix
        return prefix

    @staticmethod
    def _mac(pads: tuple[Any, Any], prefix: bytes, signed: bytes | memoryview) -> bytes:
        """HMAC-SHA256 (RFC 2104) from precomputed inner and outer states: half the cost of ``hmac``'s."""
        inner = pads[0].copy()
        inner.update(prefix)
        inner.update(signed)
        outer = pads[1].copy()
        outer.update(inner.digest())
        digest: bytes = outer.digest()
        return digest

    def seal(self, channel: str | bytes, envelope: bytes, *, key: int = 0, now_ms: int | None = None) -> bytes:
        """``envelope`` (an encoded msgpack map) with ``ts`` and ``sg`` appended, for ``channel``,
        with the first key (or key number ``key``: instances answer with the key the request used)."""
        count, header = _split_header(envelope)
        ts = int(time.time() * 1000) if now_ms is None else now_ms
        body = b"".join((_header(count + 2), memoryview(envelope)[header:], _TS, struct.pack(">Q", ts), _SG))
        return body + self._mac(self._keys[key], self._prefix(channel), body)

    def verify(self, channel: str | bytes, data: bytes, *, replay: bool) -> int | str:
        """The number of the key that verifies ``data`` as a sealed envelope for ``channel``, fresh
        (and, with ``replay``, not seen before); else the reason to drop it (one of ``REASONS``)."""
        size = len(data)
        if size <= _TRAILER or not data.startswith(_TS, size - _TRAILER) or not data.startswith(_SG, size + _SG_AT):
            return 0 if self.accept_unsigned else "unsigned"
        prefix = self._prefix(channel)
        signed, mac = memoryview(data)[:-_MAC_SIZE], data[-_MAC_SIZE:]
        index = 0
        for pads in self._keys:
            if hmac.compare_digest(self._mac(pads, prefix, signed), mac):
                break
            index += 1
        else:
            return "forged"
        ts = struct.unpack_from(">Q", data, size - _TRAILER + len(_TS))[0]
        now = int(time.time() * 1000)
        if abs(now - ts) > self.window_ms:
            return "stale"
        if replay and not self._first_sight(mac, now):
            return "replayed"
        return index

    def _first_sight(self, mac: bytes, now: int) -> bool:
        """Remember ``mac`` for at least twice the window (older envelopes are refused as stale anyway):
        three generations of one window each; a generation past ``_REPLAY_LIMIT`` entries ends early."""
        if now >= self._rotate_at or len(self._seen[0]) >= _REPLAY_LIMIT:
            windows = max(1, 1 + (now - self._rotate_at) // self.window_ms)  # windows that ended
            for _ in range(min(3, windows)):
                self._seen = (set(), self._seen[0], self._seen[1])
            self._rotate_at = max(self._rotate_at + windows * self.window_ms, now + 1)
        key = mac[:16]
        current, previous, oldest = self._seen
        if key in current or key in previous or key in oldest:
            return False
        current.add(key)
        return True
