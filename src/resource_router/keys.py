"""Every Redis key and channel name, and the rules for the ids that go into them.

Nothing else in the package formats a key string. Layout for namespace ``rr``, service ``S``,
instance ``I``, resource ``R`` and the tag ``T`` of R's partition (README, "Keys", has the same
table with example commands). ``T`` is ``S`` when the service has one partition (the default), else
``partition_tag(S, p, partitions)`` with ``p = partition_of(R, partitions)``: ``S:p``, or ``S:p.k``
for the first ``k`` that puts the tag's slot in the band of the slot space that follows p's order.
One partition is one Redis Cluster slot, and partitions fall evenly on masters with even slot ranges.

==============================  ======  ==========================  ==========================================
key                             type    TTL                         holds
==============================  ======  ==========================  ==========================================
``rr:{T}:owner:R``              string  none (valid while the       owner instance id, plain text
                                        owner's lease key lives)
``rr:{T}:lease:I``              string  the instance's lease        I's lease in the partition (renewed by
                                                                    heartbeats, one command per partition)
``rr:{T}:owned:I``              hash    none (swept)                resource id -> grant record
                                                                    ``fencing_token|registered_ms|meta``
``rr:{T}:lost:I``               set     none (drained by heartbeat) ids taken from the instance by force
``rr:{T}:fence``                string  none                        last fencing token issued in the partition
``rr:{T}:audit``                stream  MAXLEN ~ (bounded)          resource events, one JSON field ``event``
``rr:{S}:instance:I``           hash    the instance's lease        ttl_ms, registered_at_ms, heartbeat_at_ms,
                                                                    metadata (JSON)
``rr:{S}:instances``            zset    none                        instance id -> lease expiry (ms, Redis time)
``rr:{S}:partitions``           string  none                        the service's partition count
``rr:{S}:quota:I``              hash    none (swept)                owned count, reservations (partitions > 1)
``rr:{S}:sweeping:I``           string  30 s                        the claim of the sweeper cleaning up I
``rr:{S}:audit``                stream  MAXLEN ~ (bounded)          instance events (partitions > 1)
``rr:services``                 set     none                        service names that registered an instance
``rr:{S}:volunteers``           hash    none (cleaned by readers)   placement volunteer id -> JSON
                                                                    ``{"placement", "limit"}``
==============================  ======  ==========================  ==========================================

An owner key is valid only while its owner's lease key in the same partition exists: lookups,
registrations and releases check both in one script, so heartbeats renew one key per partition
however many resources the instance owns. Keys of dead owners are free for the taking and are
removed by the sweeper.

Pub/sub channels (not keys): ``rr:{T}:events`` (resource events, published by the scripts on the
partition's slot; ``rr:{S}:events`` too for instance events when there are several partitions),
``rr:rpc:S:I`` (requests to an instance) and ``rr:reply:C`` (replies to client process ``C``). On
Redis Cluster they are sharded channels (``SSUBSCRIBE``/``SPUBLISH``): the last two carry no hash tag,
so each lives on the shard of its own slot.

Scripts receive the keys they are about in ``KEYS``. Keys that follow from those are built inside
Lua from prefixes made here (the owner keys of the ids in an owned hash, the lease key of a current
owner, the previous owner's hash and set in a forced takeover): their names depend on what the
script reads. They carry the script's hash tag, so every script runs on one slot.
"""

from __future__ import annotations

import binascii
import re
import unicodedata
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from functools import cached_property, lru_cache
from typing import Any

from .errors import InvalidRequestError
from .settings import DEFAULT_NAMESPACE

__all__ = [
    "INSTANCE_ID_SCHEMA",
    "MAX_INSTANCE_ID_LENGTH",
    "MAX_RESOURCE_ID_LENGTH",
    "MAX_SERVICE_NAME_LENGTH",
    "RESOURCE_ID_SCHEMA",
    "SERVICE_NAME_SCHEMA",
    "KeySpace",
    "PartitionKeys",
    "ServiceKeys",
    "partition_of",
    "partition_tag",
    "validate_instance_id",
    "validate_namespace",
    "validate_partitions",
    "validate_resource_id",
    "validate_resource_ids",
    "validate_service_name",
    "validate_text",
]

MAX_SERVICE_NAME_LENGTH = 128
MAX_INSTANCE_ID_LENGTH = 128
MAX_RESOURCE_ID_LENGTH = 256
MAX_NAMESPACE_LENGTH = 64
MAX_PARTITIONS = 1024
CLUSTER_SLOTS = 16384
TAG_BANDS = 64  # partition_tag: the slot space cut in 64 bands of 256 slots

# Names that appear inside the hash tag or as a path segment: a conservative, shell-safe alphabet.
_NAME_RE = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]*")
# Instance ids often look like host:pid or pod names; '|' (the separator of stored records) stays out.
_INSTANCE_RE = re.compile(r"[A-Za-z0-9][A-Za-z0-9._:@-]*")
# Characters refused in resource ids besides control/format/separator code points:
# braces would change the hash tag, '*?[]' are glob characters that make SCAN/KEYS patterns ambiguous.
_RESOURCE_FORBIDDEN = frozenset('{}*?[]\\"')
_PLAIN_FORBIDDEN_RE = re.compile(r'[ {}*?\[\]\\"]')

# The same rules as JSON-schema keywords, for API schemas (OpenAPI) that tell clients what an id may be.
# They describe; the validate_* functions below decide (and name the offending character).
SERVICE_NAME_SCHEMA: dict[str, Any] = {
    "pattern": f"^{_NAME_RE.pattern}$",
    "maxLength": MAX_SERVICE_NAME_LENGTH,
    "description": "letters, digits, '.', '_' and '-'; the first a letter or digit",
}
INSTANCE_ID_SCHEMA: dict[str, Any] = {
    "pattern": f"^{_INSTANCE_RE.pattern}$",
    "maxLength": MAX_INSTANCE_ID_LENGTH,
    "description": "letters, digits, '.', '_', ':', '@' and '-'; the first a letter or digit",
}
RESOURCE_ID_SCHEMA: dict[str, Any] = {
    # ASCII part of the rule; other Unicode whitespace, control and format characters are refused too.
    "pattern": r'^[^\s{}*?\[\]\\"\u0000-\u001f\u007f]+$',
    "maxLength": MAX_RESOURCE_ID_LENGTH,
    "description": "any printable Unicode text except whitespace, control and format characters, "
    "braces, glob characters (*?[]), double quotes and backslashes",
}


def _check_type_and_length(value: object, field: str, max_length: int) -> str:
    if not isinstance(value, str):
        raise InvalidRequestError(f"{field} must be a string, got {type(value).__name__}", field=field)
    if not value:
        raise InvalidRequestError(f"{field} must not be empty", field=field)
    if len(value) > max_length:
        raise InvalidRequestError(f"{field} is {len(value)} characters long; the limit is {max_length}", field=field)
    return value


def validate_namespace(value: object) -> str:
    value = _check_type_and_length(value, "namespace", MAX_NAMESPACE_LENGTH)
    if not _NAME_RE.fullmatch(value):
        raise InvalidRequestError(
            f"namespace {value!r} may only use letters, digits, '.', '_' and '-' (first: letter or digit)",
            field="namespace",
        )
    return value


def validate_service_name(value: object) -> str:
    value = _check_type_and_length(value, "service_name", MAX_SERVICE_NAME_LENGTH)
    if not _NAME_RE.fullmatch(value):
        raise InvalidRequestError(
            f"service_name {value!r} may only use letters, digits, '.', '_' and '-' (first: letter or digit)",
            field="service_name",
        )
    return value


def validate_instance_id(value: object) -> str:
    value = _check_type_and_length(value, "instance_id", MAX_INSTANCE_ID_LENGTH)
    if not _INSTANCE_RE.fullmatch(value):
        raise InvalidRequestError(
            f"instance_id {value!r} may only use letters, digits, '.', '_', ':', '@' and '-' (first: letter or digit)",
            field="instance_id",
        )
    return value


def validate_resource_id(value: object, field: str = "resource_id") -> str:
    """Resource ids are opaque Unicode text: any printable character except whitespace, braces,
    glob characters, quote and backslash. They are stored and returned exactly as given."""
    value = _check_type_and_length(value, field, MAX_RESOURCE_ID_LENGTH)
    if value.isascii() and value.isprintable():
        found = _PLAIN_FORBIDDEN_RE.search(value)
        bad = found.group() if found else None
    else:
        bad = next(
            (ch for ch in value if ch in _RESOURCE_FORBIDDEN or unicodedata.category(ch)[0] in ("C", "Z")),
            None,
        )
    if bad is not None:
        raise InvalidRequestError(
            f"{field} {value!r} contains {bad!r} (U+{ord(bad):04X}); whitespace, control characters, "
            "braces, glob characters, quotes and backslashes are not allowed",
            field=field,
        )
    return value


def validate_text(value: str, field: str) -> str:
    """``value`` when it can be stored as UTF-8 text; ``InvalidRequestError`` naming ``field`` when it
    holds a lone surrogate (``"\\ud800"`` decoded from JSON), which no Redis value or wire message can carry."""
    try:
        value.encode("utf-8")
    except UnicodeEncodeError as exc:
        bad = value[exc.start]
        raise InvalidRequestError(
            f"{field} contains U+{ord(bad):04X}, a lone surrogate that is not valid Unicode text; "
            "send characters, not halves of a UTF-16 pair",
            field=field,
        ) from None
    return value


def validate_resource_ids(values: object, *, max_count: int | None = None) -> list[str]:
    """Validate a batch of ids and drop duplicates, keeping first-seen order."""
    if isinstance(values, str):
        values = [values]
    elif isinstance(values, bytes | bytearray | dict) or not isinstance(values, Iterable):
        raise InvalidRequestError(
            f"resource_ids must be a list of strings, got {type(values).__name__}", field="resource_ids"
        )
    else:
        values = list(values)
    if not values:
        raise InvalidRequestError("resource_ids must not be empty", field="resource_ids")
    if not _batch_is_plain(values):
        for v in values:
            validate_resource_id(v, "resource_ids")
    out = list(dict.fromkeys(values))
    if max_count is not None and len(out) > max_count:
        raise InvalidRequestError(
            f"{len(out)} resource ids in one call; the limit is {max_count}", field="resource_ids"
        )
    return out


def _batch_is_plain(values: Sequence[object]) -> bool:
    """Fast path for the usual batch: short printable ASCII strings without forbidden characters.
    False means "check each id" (which then names the offending one), not "invalid"."""
    if not all(type(v) is str and 0 < len(v) <= MAX_RESOURCE_ID_LENGTH for v in values):
        return False
    joined = "".join(values)  # type: ignore[arg-type]
    return joined.isascii() and joined.isprintable() and _PLAIN_FORBIDDEN_RE.search(joined) is None


@dataclass(frozen=True, slots=True)
class KeySpace:
    """Key and channel builder for one namespace."""

    namespace: str = DEFAULT_NAMESPACE

    def __post_init__(self) -> None:
        validate_namespace(self.namespace)

    def service(self, service_name: str, partitions: int = 1) -> ServiceKeys:
        return ServiceKeys(self.namespace, validate_service_name(service_name), validate_partitions(partitions))

    @property
    def services(self) -> str:
        return f"{self.namespace}:services"

    @property
    def match_all(self) -> str:
        """A SCAN pattern matching every key of the namespace (namespaces allow no glob characters)."""
        return f"{self.namespace}:*"

    def reply_channel(self, client_id: str) -> str:
        return f"{self.namespace}:reply:{client_id}"

    @property
    def reply_prefix(self) -> str:
        """The start of every reply channel of the namespace (instances answer nowhere else)."""
        return f"{self.namespace}:reply:"


def validate_partitions(value: object) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or not 1 <= value <= MAX_PARTITIONS:
        raise InvalidRequestError(f"partitions must be an integer in [1, {MAX_PARTITIONS}]", field="partitions")
    return value


def partition_of(resource_id: str, partitions: int) -> int:
    """The partition of a resource: CRC-16/XMODEM of its UTF-8 bytes, modulo ``partitions``.

    The same CRC as Redis Cluster's key slots, so for a power-of-two count
    ``partition_of(R, P) == CLUSTER KEYSLOT R mod P`` (resource ids cannot contain braces).
    """
    if partitions == 1:
        return 0
    return binascii.crc_hqx(resource_id.encode("utf-8", "surrogatepass"), 0) % partitions


@lru_cache(maxsize=4096)
def partition_tag(service_name: str, index: int, partitions: int) -> str:
    """The hash tag of partition ``index`` of ``partitions``: ``S`` for one partition; otherwise the
    first of ``S:p``, ``S:p.1``, ``S:p.2``, ... whose Redis Cluster slot ``s`` (CRC-16/XMODEM of the
    tag, mod 16384) lies in band ``s // 256 == (2p + 1) * 64 // (2 * partitions)`` (64 bands of 256
    slots; the band at the middle of p's share of the slot space).

    The partitions' slots then follow their order across the slot space, so masters that hold even,
    contiguous slot ranges (what ``redis-cli --cluster create`` makes) get even shares of the
    partitions, where tags hashed at random pile several onto one master (3, 5 and 8 of 16 seen).
    About 64 candidates are tried per partition, once per process (cached).
    """
    if partitions == 1:
        return service_name
    band = (2 * index + 1) * TAG_BANDS // (2 * partitions)
    base = f"{service_name}:{index}"
    tag, k = base, 0
    while binascii.crc_hqx(tag.encode(), 0) % CLUSTER_SLOTS // (CLUSTER_SLOTS // TAG_BANDS) != band:
        k += 1
        tag = f"{base}.{k}"
    return tag


@dataclass(frozen=True)
class PartitionKeys:
    """Keys and the events channel of one partition of a service; all share the hash tag ``{tag}``
    (``{S}`` when the service has one partition, ``partition_tag(S, p, P)`` otherwise): one partition
    is one slot."""

    namespace: str
    service_name: str
    index: int
    tag: str

    @cached_property
    def prefix(self) -> str:
        return f"{self.namespace}:{{{self.tag}}}:"

    @cached_property
    def owner_prefix(self) -> str:
        return self.prefix + "owner:"

    @cached_property
    def owned_prefix(self) -> str:
        return self.prefix + "owned:"

    @cached_property
    def lost_prefix(self) -> str:
        return self.prefix + "lost:"

    @cached_property
    def lease_prefix(self) -> str:
        return self.prefix + "lease:"

    def owner(self, resource_id: str) -> str:
        return self.owner_prefix + resource_id

    def owner_keys(self, resource_ids: list[str]) -> list[str]:
        p = self.owner_prefix
        return [p + r for r in resource_ids]

    def owned(self, instance_id: str) -> str:
        return self.owned_prefix + instance_id

    def lost(self, instance_id: str) -> str:
        return self.lost_prefix + instance_id

    def lease(self, instance_id: str) -> str:
        return self.lease_prefix + instance_id

    @cached_property
    def fence(self) -> str:
        return self.prefix + "fence"

    @cached_property
    def audit(self) -> str:
        return self.prefix + "audit"

    @cached_property
    def events_channel(self) -> str:
        return self.prefix + "events"


@dataclass(frozen=True)
class ServiceKeys:
    """Keys and channels of one service: per-service keys under the hash tag ``{S}``, per-resource
    keys in ``partitions`` partitions (``PartitionKeys``)."""

    namespace: str
    service_name: str
    partitions: int = 1

    @cached_property
    def prefix(self) -> str:
        return f"{self.namespace}:{{{self.service_name}}}:"

    # -- partitions ----------------------------------------------------------------------------
    @cached_property
    def parts(self) -> tuple[PartitionKeys, ...]:
        name, n = self.service_name, self.partitions
        return tuple(PartitionKeys(self.namespace, name, p, partition_tag(name, p, n)) for p in range(n))

    def part_of(self, resource_id: str) -> PartitionKeys:
        return self.parts[partition_of(resource_id, self.partitions)]

    def split(self, resource_ids: list[str]) -> dict[int, list[str]]:
        """Ids grouped by partition, each group in the order given."""
        if self.partitions == 1:
            return {0: resource_ids}
        groups: dict[int, list[str]] = {}
        n = self.partitions
        for rid in resource_ids:
            groups.setdefault(partition_of(rid, n), []).append(rid)
        return groups

    def owner(self, resource_id: str) -> str:
        return self.part_of(resource_id).owner(resource_id)

    # -- per instance (service slot) -----------------------------------------------------------
    @cached_property
    def instance_prefix(self) -> str:
        return self.prefix + "instance:"

    def instance(self, instance_id: str) -> str:
        return self.instance_prefix + instance_id

    def quota(self, instance_id: str) -> str:
        """Reservations and owned count of an instance across partitions (``partitions > 1`` only)."""
        return self.prefix + "quota:" + instance_id

    def sweeping(self, instance_id: str) -> str:
        """Held (briefly) by the one sweeper cleaning up after a dead instance."""
        return self.prefix + "sweeping:" + instance_id

    def rpc_channel(self, instance_id: str) -> str:
        """Requests to one instance. No hash tag: on Redis Cluster each instance's channel lives on
        the shard of its own slot (sharded pub/sub), so a service's traffic spreads over shards."""
        return f"{self.namespace}:rpc:{self.service_name}:{instance_id}"

    # -- per service ---------------------------------------------------------------------------
    @cached_property
    def instances(self) -> str:
        return self.prefix + "instances"

    @cached_property
    def partitions_key(self) -> str:
        """The partition count the service was set up with (written on first use)."""
        return self.prefix + "partitions"

    @cached_property
    def audit(self) -> str:
        """Instance events (registered, swept); resource events go to each partition's stream."""
        return self.prefix + "audit"

    @cached_property
    def events_channel(self) -> str:
        """Instance events; with one partition, all of the service's events."""
        return self.prefix + "events"

    @cached_property
    def events_channels(self) -> tuple[str, ...]:
        """Every channel carrying the service's ownership events (one per partition, plus the
        service's own when the service has several partitions)."""
        channels = [part.events_channel for part in self.parts]
        if self.events_channel not in channels:
            channels.insert(0, self.events_channel)
        return tuple(channels)

    @cached_property
    def audits(self) -> tuple[str, ...]:
        """Every audit stream of the service, the service's own first."""
        streams = [part.audit for part in self.parts]
        if self.audit not in streams:
            streams.insert(0, self.audit)
        return tuple(streams)

    # -- placement (volunteers) -----------------------------------------------------------------
    @cached_property
    def volunteers(self) -> str:
        """Hash: instance id -> ``{"placement": strategy, "limit": n}`` of each placement volunteer."""
        return self.prefix + "volunteers"
