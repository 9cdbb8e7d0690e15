"""Every Redis key and channel name (the rules for the ids that go into them are ``ids.py``'s).

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
``rr:{T}:state:R``              hash    none (kept across moves)    R's state: ``v`` (msgpack), ``ver``
                                                                    (version), ``tok`` (token it was written
                                                                    under); written by the owner only
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
from dataclasses import dataclass
from functools import cached_property, lru_cache

from resource_router.errors import InvalidRequestError
from resource_router.ids import validate_namespace, validate_service_name
from resource_router.settings import DEFAULT_NAMESPACE

__all__ = [
    "CLUSTER_SLOTS",
    "MAX_PARTITIONS",
    "KeySpace",
    "PartitionKeys",
    "ServiceKeys",
    "partition_of",
    "partition_tag",
    "validate_partitions",
]

MAX_PARTITIONS = 1024
CLUSTER_SLOTS = 16384
TAG_BANDS = 64  # partition_tag: the slot space cut in 64 bands of 256 slots


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
    def state_prefix(self) -> str:
        return self.prefix + "state:"

    def state(self, resource_id: str) -> str:
        """The resource's state (``RedisStateStore``): in the partition's slot, so that one script
        checks the grant record and writes the state."""
        return self.state_prefix + resource_id

    @cached_property
    def fence(self) -> str:
        return self.prefix + "fence"

    @cached_property
    def audit(self) -> str:
        return self.prefix + "audit"

    @cached_property
    def events_channel(self) -> str:
        return self.prefix + "events"

    def notice_channel(self, instance_id: str) -> str:
        """Grants that concern one instance (it is the new owner or a previous one), published by the
        scripts next to the events channel: ``events_channel + ":" + instance_id`` (``_prelude.lua``
        builds the same name; the hash tag keeps it on the partition's slot)."""
        return f"{self.events_channel}:{instance_id}"


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

    def state(self, resource_id: str) -> str:
        return self.part_of(resource_id).state(resource_id)

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
    def members_channel(self) -> str:
        """Volunteers joining and leaving: what running instances need of the service-wide events."""
        return self.prefix + "members"

    @cached_property
    def events_channels(self) -> tuple[str, ...]:
        """Every channel of the service-wide events feed: the service's own (and the members'), then
        one per partition."""
        channels = [part.events_channel for part in self.parts]
        if self.events_channel not in channels:
            channels.insert(0, self.events_channel)
        channels.insert(1, self.members_channel)
        return tuple(channels)

    def notice_channels(self, instance_id: str) -> tuple[str, ...]:
        """An instance's notice channels, one per partition (``PartitionKeys.notice_channel``)."""
        return tuple(part.notice_channel(instance_id) for part in self.parts)

    def instance_channels(self, instance_id: str, *, volunteer: bool) -> tuple[str, ...]:
        """What a running instance listens to besides its requests: its notice channels and, for a
        volunteer, the members channel (volunteers joining)."""
        notices = self.notice_channels(instance_id)
        return (*notices, self.members_channel) if volunteer else notices

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
