"""Resource ownership: register, release and read owners, partition by partition.

A resource lives in partition ``partition_of(R, partitions)`` (``keys.py``); every script runs on one
partition's slot. What holds across partitions (the README's guarantee table says the same):

* **conflicts** are reported per id, each from the atomic step of its partition;
* **the per-instance limit** is never exceeded: with several partitions, room for the new grants is
  reserved in the instance's quota first (``reserve_quota``), each partition grants at most its share,
  and what was granted is settled after (``settle_quota``). A call that would exceed the limit
  registers nothing (429). A partition that finds more new ids than its share (the ownership changed
  since the caller looked) writes nothing, and the call's own new grants elsewhere are rolled back
  id by id (owner-checked) before it tries again;
* **release** checks every partition first and releases nothing when any id is owned by another live
  instance (403); an id taken by force between the check and the release stays with its new owner
  and is reported in ``not_found``;
* **fencing tokens** strictly increase per resource: each partition has its own counter and a
  resource never leaves its partition.

With one partition (the default) every call is one atomic step, as it always was. With
``register_chunk_size`` and one partition, a large batch runs as several atomic steps of that many
ids: the whole batch is checked first (liveness and the limit), and a step that then hits the limit
rolls back what this call newly took, id by id and owner-checked, and reports exactly what stayed.
"""

from __future__ import annotations

import asyncio
import secrets
import time
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any

from resource_router._trusted import trusted
from resource_router.errors import (
    ResourceLimitExceededError,
    ResourceReleaseError,
    ResourceRouterError,
)
from resource_router.ids import (
    new_trace_id,
    validate_instance_id,
    validate_resource_ids,
    validate_text,
)
from resource_router.models import (
    ResourceRegistrationResponse,
    ResourceReleaseResponse,
)
from resource_router.observability.logs import get_logger
from resource_router.ownership.keys import PartitionKeys, ServiceKeys
from resource_router.ownership.leases import Leases, not_alive
from resource_router.ownership.owners import Owners
from resource_router.ownership.scripts import check_status
from resource_router.ownership.store import ScriptCall, Store, log_context, pairs, text
from resource_router.status import ScriptStatus
from resource_router.transport.retry import call_redis

__all__ = ["Grants", "RegisterOutcome"]

logger = get_logger(__name__)

_READ_CHUNK = 1000
_MAX_RACES = 3  # attempts of a registration across partitions when ownership keeps changing under it


@dataclass
class RegisterOutcome:
    """The decoded reply of one or more register_resources steps (one typed result for every path)."""

    status: ScriptStatus
    tokens: dict[str, int] = field(default_factory=dict)
    conflicts: dict[str, str] = field(default_factory=dict)
    taken_over: dict[str, str] = field(default_factory=dict)
    owned_count: int = 0
    new_grants: int = 0
    current: int = 0
    requested: int = 0
    limit: int = 0

    @classmethod
    def decode(cls, reply: list[Any], ids: list[str]) -> RegisterOutcome:
        status = check_status(reply, "register_resources")
        if status == ScriptStatus.LIMIT_EXCEEDED:
            return cls(status, current=int(reply[1]), requested=int(reply[2]), limit=int(reply[3]))
        if status == ScriptStatus.OVER_BUDGET:
            return cls(status, requested=int(reply[1]), limit=int(reply[2]))
        if status != ScriptStatus.OK:
            return cls(status)
        out = cls(status, owned_count=int(reply[3]), new_grants=int(reply[4]))
        for rid, value in zip(ids, reply[1], strict=True):
            if isinstance(value, int):
                out.tokens[rid] = value
            else:
                out.conflicts[rid] = text(value)
        if reply[2]:
            out.taken_over = pairs(reply[2])
        return out

    def merge(self, other: RegisterOutcome) -> None:
        self.tokens.update(other.tokens)
        self.conflicts.update(other.conflicts)
        self.taken_over.update(other.taken_over)
        self.new_grants += other.new_grants


class Grants:
    """The resource half of the registry (see the module docstring)."""

    def __init__(self, store: Store, leases: Leases, owners: Owners) -> None:
        self.store = store
        self.leases = leases
        self.owners = owners

    # -- register ----------------------------------------------------------------------------------
    async def register(
        self,
        service_name: str,
        instance_id: str,
        resource_ids: Iterable[str] | str,
        force: bool,
        meta: str,
        trace_id: str | None,
    ) -> ResourceRegistrationResponse:
        store = self.store
        sk = await store.service(service_name, "register_resource", record=True)
        validate_instance_id(instance_id)
        ids = validate_resource_ids(resource_ids, max_count=store.settings.max_batch_size)
        trace_id = validate_text(trace_id, "trace_id") if trace_id else new_trace_id()
        start = time.perf_counter()
        chunk = store.settings.register_chunk_size
        if sk.partitions > 1:
            outcome = await self._register_partitioned(sk, instance_id, ids, force, meta, trace_id)
        elif chunk is not None and len(ids) > chunk:
            outcome = await self._register_chunked(sk, instance_id, ids, force, meta, trace_id, chunk)
        else:
            outcome = await self._step(sk.parts[0], instance_id, ids, force, meta, trace_id, "")
        elapsed = time.perf_counter() - start
        store.child("operation_duration", "register_resource").observe(elapsed)
        ctx = log_context("register_resource", elapsed, service_name, instance_id, trace_id, ids)
        if outcome.status == ScriptStatus.INSTANCE_NOT_ALIVE:
            store.child("registrations", service_name, "rejected").inc(len(ids))
            logger.warning("resource.register_rejected", reason="instance_not_alive", **ctx)
            raise not_alive(service_name, instance_id)
        if outcome.status == ScriptStatus.LIMIT_EXCEEDED:
            store.child("registrations", service_name, "rejected").inc(len(ids))
            logger.warning("resource.register_rejected", reason="limit", limit=outcome.limit, **ctx)
            raise ResourceLimitExceededError(
                f"instance {instance_id!r} owns {outcome.current} resource(s); taking {outcome.requested} more would "
                f"exceed the limit of {outcome.limit}; nothing was registered",
                limit=outcome.limit,
                current=outcome.current,
                requested=outcome.requested,
            )
        registered = [rid for rid in ids if rid in outcome.tokens]
        if registered:
            store.child("registrations", service_name, "granted").inc(len(registered))
        if outcome.conflicts:
            store.child("registrations", service_name, "conflict").inc(len(outcome.conflicts))
            store.child("conflicts", service_name).inc(len(outcome.conflicts))
        gauge = store.child("resources_per_instance", service_name, instance_id)
        if outcome.owned_count >= 0:
            gauge.set(outcome.owned_count)
        else:  # spread over partitions: counted exactly at the next heartbeat
            gauge.inc(outcome.new_grants)
        logger.info(
            "resource.register",
            registered=len(registered),
            conflicts=len(outcome.conflicts),
            taken_over=len(outcome.taken_over),
            force=force,
            **ctx,
        )
        return trusted(
            ResourceRegistrationResponse,
            {
                "success": not outcome.conflicts,
                "registered": registered,
                "conflicts": {rid: outcome.conflicts[rid] for rid in ids if rid in outcome.conflicts},
                "fencing_tokens": {rid: outcome.tokens[rid] for rid in registered},
                "taken_over": outcome.taken_over,
                "trace_id": trace_id,
            },
        )

    def _step_call(
        self, part: PartitionKeys, instance_id: str, ids: list[str], force: bool, meta: str, trace_id: str, budget: str
    ) -> ScriptCall:
        store = self.store
        keys = [part.lease(instance_id), part.owned(instance_id), part.fence, part.audit, *part.owner_keys(ids)]
        args = [
            *store.part_common(part, instance_id, trace_id),
            "1" if force else "0",
            store.settings.max_resources_per_instance,
            budget,
            meta,
            part.owned_prefix,
            part.lost_prefix,
            part.owner_prefix,
            part.lease_prefix,
        ]
        return store.scripts.register_resources, keys, args

    async def _step(
        self, part: PartitionKeys, instance_id: str, ids: list[str], force: bool, meta: str, trace_id: str, budget: str
    ) -> RegisterOutcome:
        """One run of register_resources.lua (one atomic step). Re-registering owned ids is a no-op that
        keeps their tokens, so a retried step is harmless."""
        script, keys, args = self._step_call(part, instance_id, ids, force, meta, trace_id, budget)
        reply = await self.store.run("register_resource", script, keys, args, idempotent=True)
        return RegisterOutcome.decode(reply, ids)

    async def _register_partitioned(
        self, sk: ServiceKeys, instance_id: str, ids: list[str], force: bool, meta: str, trace_id: str
    ) -> RegisterOutcome:
        """Reserve room in the quota, claim in every partition at once, settle (module docstring)."""
        store = self.store
        groups = sk.split(ids)
        for attempt in range(_MAX_RACES):
            owners = await self.owners.read_owners(sk, ids)
            # Room for the ids that look new now: free ones, and (with force) those of others. After a
            # race, room for every id that could turn out new (ours may be taken and taken back).
            if attempt == 0:
                shares = {
                    p: sum(1 for rid in group if owners[rid] is None or (force and owners[rid] != instance_id))
                    for p, group in groups.items()
                }
            else:
                shares = {
                    p: len(group) if force else sum(1 for rid in group if owners[rid] != instance_id)
                    for p, group in groups.items()
                }
            needed = sum(shares.values())
            reservation = secrets.token_hex(8)
            if needed:
                reply = await store.run(
                    "register_resource",
                    store.scripts.reserve_quota,
                    [sk.instance(instance_id), sk.quota(instance_id)],
                    [reservation, needed, store.settings.max_resources_per_instance, self._reservation_ms()],
                    idempotent=True,
                )
                if reply[0] == ScriptStatus.INSTANCE_NOT_ALIVE:
                    return RegisterOutcome(ScriptStatus.INSTANCE_NOT_ALIVE)
                if reply[0] == ScriptStatus.LIMIT_EXCEEDED:
                    return RegisterOutcome(
                        ScriptStatus.LIMIT_EXCEEDED, current=int(reply[1]), requested=int(reply[2]), limit=int(reply[3])
                    )
            order = list(groups)
            calls = [
                self._step_call(sk.parts[p], instance_id, groups[p], force, meta, trace_id, str(shares[p]))
                for p in order
            ]
            try:
                replies = await store.run_all("register_resource", calls, idempotent=True, interleave=True)
            except ResourceRouterError:
                await self._settle(sk, instance_id, reservation, 0)  # what was granted is counted at reconcile
                raise
            outcomes = [RegisterOutcome.decode(reply, groups[p]) for p, reply in zip(order, replies, strict=True)]
            merged = RegisterOutcome(ScriptStatus.OK)
            for outcome in outcomes:
                merged.merge(outcome)
            failed = [o for o in outcomes if o.status != ScriptStatus.OK]
            if not failed:
                if needed or merged.new_grants:
                    await self._settle(sk, instance_id, reservation, merged.new_grants)
                merged.owned_count = -1  # spread over partitions: the next heartbeat reports it
                return merged
            # A partition refused (ownership changed since the read, or the lease ran out): undo this
            # call's new grants elsewhere, owner-checked, then try again (or report).
            taken = [rid for rid in merged.tokens if owners[rid] != instance_id]
            if taken:
                await self.rollback(sk, instance_id, taken, trace_id)
            await self._settle(sk, instance_id, reservation, 0)
            if any(o.status == ScriptStatus.INSTANCE_NOT_ALIVE for o in failed):
                return RegisterOutcome(ScriptStatus.INSTANCE_NOT_ALIVE)
        raise ResourceRouterError(
            f"registration of {len(ids)} id(s) kept racing with concurrent changes of ownership; try again"
        )

    def _reservation_ms(self) -> int:
        """How long a reservation holds: far longer than a registration can take (its attempts are
        bounded by ``operation_timeout``), so it never lapses while the claim is in flight."""
        s = self.store.settings
        return int(max(60.0, 4 * s.operation_timeout * s.retry_attempts) * 1000)

    async def _settle(self, sk: ServiceKeys, instance_id: str, reservation: str, granted: int) -> None:
        await self.store.run(
            "register_resource",
            self.store.scripts.settle_quota,
            [sk.quota(instance_id)],
            ["settle", reservation, granted],
            idempotent=False,
        )

    async def _register_chunked(
        self, sk: ServiceKeys, instance_id: str, ids: list[str], force: bool, meta: str, trace_id: str, chunk: int
    ) -> RegisterOutcome:
        """``settings.register_chunk_size`` (one partition): a large batch as several atomic steps, so
        that no single script holds Redis for long. The whole batch is checked first (liveness and the
        limit, exactly); each step checks again. If a concurrent change makes a later step exceed the
        limit, the ids this call newly took are released again, id by id and owner-checked (an id taken
        by force meanwhile stays with its new owner), and the call fails with 429."""
        store = self.store
        part = sk.parts[0]
        limit = store.settings.max_resources_per_instance
        alive, current = await call_redis(
            "register_resource",
            lambda: asyncio.gather(
                store.redis.exists(part.lease(instance_id)),
                store.redis.hlen(part.owned(instance_id)),  # type: ignore[misc,unused-ignore]
            ),
            settings=store.settings,
            idempotent=True,
        )
        if not alive:
            return RegisterOutcome(ScriptStatus.INSTANCE_NOT_ALIVE)
        owners = await self.owners.read_owners(sk, ids)
        new = [rid for rid in ids if owners[rid] is None or (force and owners[rid] != instance_id)]
        if int(current) + len(new) > limit:
            return RegisterOutcome(ScriptStatus.LIMIT_EXCEEDED, current=int(current), requested=len(new), limit=limit)
        merged = RegisterOutcome(ScriptStatus.OK)
        for start in range(0, len(ids), chunk):
            part_ids = ids[start : start + chunk]
            outcome = await self._step(part, instance_id, part_ids, force, meta, trace_id, "")
            if outcome.status == ScriptStatus.LIMIT_EXCEEDED:
                taken = [rid for rid in merged.tokens if owners[rid] != instance_id]
                stayed = await self.rollback(sk, instance_id, taken, trace_id) if taken else []
                if stayed:
                    logger.warning("resource.rollback_incomplete", service_name=sk.service_name, stayed=stayed)
                return RegisterOutcome(
                    ScriptStatus.LIMIT_EXCEEDED, current=outcome.current - len(taken), requested=len(new), limit=limit
                )
            if outcome.status != ScriptStatus.OK:
                return outcome  # the lease ran out meanwhile: everything it took is gone with it
            merged.merge(outcome)
            merged.owned_count = outcome.owned_count
        return merged

    async def rollback(self, sk: ServiceKeys, instance_id: str, ids: list[str], trace_id: str) -> list[str]:
        """Release ``ids`` that are still the instance's (owner-checked per id, not all-or-nothing);
        returns the ids that stayed granted because the rollback could not reach Redis."""
        try:
            await self._release_partitions(sk, instance_id, ids, trace_id, "rolled_back")
        except ResourceRouterError as exc:
            logger.warning("resource.rollback_failed", service_name=sk.service_name, error=str(exc))
            return ids
        return []

    # -- fences ------------------------------------------------------------------------------------
    async def raise_fences(self, service_name: str, tokens: dict[str, int]) -> None:
        """Make every later token of the resources' partitions larger than ``tokens`` (the largest
        token held per partition): after a master change, the new master's counters may lag."""
        store = self.store
        sk = await store.service(service_name, "raise_fence")
        highest: dict[int, int] = {}
        for p, group in sk.split(list(tokens)).items():
            highest[p] = max(tokens[rid] for rid in group)
        calls: list[ScriptCall] = [
            (store.scripts.raise_fence, [sk.parts[p].fence], [token]) for p, token in highest.items()
        ]
        if calls:
            await store.run_all("raise_fence", calls, idempotent=True)

    # -- release -----------------------------------------------------------------------------------
    async def release(
        self, service_name: str, instance_id: str, resource_ids: Iterable[str] | str, trace_id: str | None
    ) -> ResourceReleaseResponse:
        """Owner-checked, all-or-nothing release. Ids without an owner are reported in ``not_found``."""
        store = self.store
        sk = await store.service(service_name, "release_resource")
        validate_instance_id(instance_id)
        ids = validate_resource_ids(resource_ids, max_count=store.settings.max_batch_size)
        trace_id = validate_text(trace_id, "trace_id") if trace_id else new_trace_id()
        start = time.perf_counter()
        if sk.partitions > 1:
            owners = await self._check_release(sk, instance_id, ids)
            flags = {} if owners else await self._release_partitions(sk, instance_id, ids, trace_id, "released")
        else:
            owners, flags = await self._release_one(sk.parts[0], instance_id, ids, trace_id)
        elapsed = time.perf_counter() - start
        store.child("operation_duration", "release_resource").observe(elapsed)
        ctx = log_context("release_resource", elapsed, service_name, instance_id, trace_id, ids)
        if owners:
            logger.warning("resource.release_forbidden", owners=owners, **ctx)
            shown = ", ".join(f"{r} (owned by {o})" for r, o in list(owners.items())[:10])
            raise ResourceReleaseError(
                f"instance {instance_id!r} cannot release resources owned by other instances: {shown}; "
                "nothing was released",
                owners=owners,
            )
        released = [rid for rid in ids if flags.get(rid)]
        not_found = [rid for rid in ids if not flags.get(rid)]
        if released:
            store.child("releases", service_name, "released").inc(len(released))
            if sk.partitions > 1:
                store.child("resources_per_instance", service_name, instance_id).dec(len(released))
                try:
                    await self.leases.reconcile(service_name, instance_id)  # the room is free again now
                except ResourceRouterError as exc:  # the next heartbeat reconciles
                    logger.info("resource.reconcile_deferred", error=str(exc), **ctx)
        logger.info("resource.release", released=len(released), not_found=len(not_found), **ctx)
        return trusted(
            ResourceReleaseResponse,
            {"success": True, "released": released, "not_found": not_found, "trace_id": trace_id},
        )

    def _release_call(
        self, part: PartitionKeys, instance_id: str, ids: list[str], trace_id: str, reason: str, mode: str
    ) -> ScriptCall:
        store = self.store
        keys = [part.owned(instance_id), part.audit, *part.owner_keys(ids)]
        args = [*store.part_common(part, instance_id, trace_id), reason, part.owner_prefix, part.lease_prefix, mode]
        return store.scripts.release_resources, keys, args

    async def _release_one(
        self, part: PartitionKeys, instance_id: str, ids: list[str], trace_id: str
    ) -> tuple[dict[str, str], dict[str, int]]:
        """One partition: one atomic, owner-checked step. (owners of refused ids, flags)."""
        script, keys, args = self._release_call(part, instance_id, ids, trace_id, "released", "0")
        reply = await self.store.run("release_resource", script, keys, args, idempotent=False)
        if reply[0] == ScriptStatus.NOT_OWNER:
            return pairs(reply[1]), {}
        self.store.child("resources_per_instance", part.service_name, instance_id).set(int(reply[2]))
        return {}, dict(zip(ids, reply[1], strict=True))

    async def _check_release(self, sk: ServiceKeys, instance_id: str, ids: list[str]) -> dict[str, str]:
        """Phase one across partitions: the ids owned by other live instances (nothing written)."""
        groups = sk.split(ids)
        replies = await self.store.run_all(
            "release_resource",
            [self._release_call(sk.parts[p], instance_id, g, "", "released", "1") for p, g in groups.items()],
            idempotent=True,
        )
        owners: dict[str, str] = {}
        for reply in replies:
            if reply[0] == ScriptStatus.NOT_OWNER:
                owners.update(pairs(reply[1]))
        return owners

    async def _release_partitions(
        self, sk: ServiceKeys, instance_id: str, ids: list[str], trace_id: str, reason: str
    ) -> dict[str, int]:
        """Release in every partition at once what is still the instance's, id by id: ids another
        instance owns by now are skipped, not refused (release mode '2')."""
        groups = sk.split(ids)
        order = list(groups)
        replies = await self.store.run_all(
            "release_resource",
            [self._release_call(sk.parts[p], instance_id, groups[p], trace_id, reason, "2") for p in order],
            idempotent=False,
            interleave=True,
        )
        flags: dict[str, int] = {}
        for p, reply in zip(order, replies, strict=True):
            flags.update(zip(groups[p], reply[1], strict=True))
        return flags
