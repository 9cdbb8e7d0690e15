"""Instance leases: register, renew (heartbeat), deregister, and sweep up after dead instances.

An instance has a record on its service's slot (``rr:{S}:instance:I``, with the index
``rr:{S}:instances``) and one lease key in each partition (``rr:{T}:lease:I``). Every owner key that
names it is valid only while the lease key of its partition lives, so a heartbeat renews one key
per partition, however many resources the instance owns: its cost grows with the partitions, not
with the resources. All of a heartbeat's commands travel in one round trip (a pipeline on a single
Redis; each master's share in parallel on a cluster).

With several partitions an instance also has a quota (``rr:{S}:quota:I``): its owned count and the
reservations of registrations in flight (see ``ownership.py``). Heartbeats reconcile the owned
count with what the partitions hold.
"""

from __future__ import annotations

import json
import time
from typing import Any

from resource_router.errors import InstanceNotAliveError, InvalidRequestError
from resource_router.ids import validate_instance_id
from resource_router.models import HeartbeatResult, InstanceInfo, ms_to_datetime
from resource_router.observability.logs import get_logger, id_fields, timed
from resource_router.ownership.keys import ServiceKeys
from resource_router.ownership.store import ScriptCall, Store, text, ttl_ms
from resource_router.status import ScriptStatus
from resource_router.transport.retry import call_redis

__all__ = ["Leases", "not_alive"]

logger = get_logger(__name__)


def not_alive(service_name: str, instance_id: str) -> InstanceNotAliveError:
    return InstanceNotAliveError(
        f"instance {instance_id!r} of service {service_name!r} is not registered or its lease expired; "
        "call register_instance first",
        instance_id=instance_id,
        service_name=service_name,
    )


class Leases:
    """The instance half of the registry (see the module docstring)."""

    def __init__(self, store: Store) -> None:
        self.store = store

    # -- register ----------------------------------------------------------------------------------
    async def register_instance(
        self, service_name: str, instance_id: str, *, ttl: float, metadata: str
    ) -> dict[str, Any]:
        """Create or refresh the record and open the leases (ids left by a previous incarnation are
        released, counted and logged); the record's facts."""
        store = self.store
        sk = await store.service(service_name, "register_instance", record=True)
        validate_instance_id(instance_id)
        lease_ms = ttl_ms(ttl)
        with timed(store.metrics, "register_instance") as info:
            reply = await store.run(
                "register_instance",
                store.scripts.register_instance,
                [sk.instance(instance_id), sk.instances, sk.audit],
                [*store.common(sk.events_channel, service_name, instance_id, None), lease_ms, metadata],
                idempotent=True,
            )
            existed = bool(reply[3])
            if not existed:  # a new lease: make the service discoverable for sweepers and tools
                await call_redis(
                    "register_instance",
                    lambda: store.redis.sadd(store.keys.services, service_name),  # type: ignore[misc,unused-ignore]
                    settings=store.settings,
                    idempotent=True,
                )
            opened = await store.run_all(
                "register_instance",
                [
                    (
                        store.scripts.open_lease,
                        [part.lease(instance_id), part.owned(instance_id), part.lost(instance_id), part.audit],
                        [*store.part_common(part, instance_id, None), lease_ms, part.owner_prefix],
                    )
                    for part in sk.parts
                ],
                idempotent=True,
            )
        swept = [text(r) for reply_p in opened for r in reply_p[2]]
        if swept:
            store.child("releases", service_name, "instance_offline").inc(len(swept))
        store.child("resources_per_instance", service_name, instance_id).set(0)
        logger.info(
            "instance.register",
            service_name=service_name,
            instance_id=instance_id,
            ttl=ttl,
            existed=existed,
            swept=len(swept),
            **info,
        )
        return {"registered_at": reply[1], "now": reply[2], "existed": existed, "ttl_ms": lease_ms}

    # -- heartbeat -----------------------------------------------------------------------------------
    async def heartbeat(self, service_name: str, instance_id: str, *, ttl: float) -> HeartbeatResult:
        """Renew the record and one lease key per partition, in one round trip; report the ids taken
        from the instance by force since the last heartbeat.

        Raises ``InstanceNotAliveError`` when the lease already ran out (anywhere: register again,
        everything it owned is gone). Not retried: a lost reply would lose the report of lost ids, so
        callers that see ``RedisUnavailableError`` should re-read their resources (``list_resources``).
        """
        store = self.store
        sk = store.service_keys(service_name)
        validate_instance_id(instance_id)
        lease_ms = ttl_ms(ttl)
        several = sk.partitions > 1
        service_keys = [sk.instance(instance_id), sk.instances]
        if several:
            service_keys.append(sk.quota(instance_id))
        calls: list[ScriptCall] = [(store.scripts.renew_instance, service_keys, [instance_id, lease_ms])]
        calls += [
            (
                store.scripts.renew_lease,
                [part.lease(instance_id), part.owned(instance_id), part.lost(instance_id)],
                [lease_ms],
            )
            for part in sk.parts
        ]
        with timed(store.metrics, "heartbeat") as info:
            replies = await store.run_all("heartbeat", calls, idempotent=False)
        if any(r[0] == ScriptStatus.INSTANCE_NOT_ALIVE for r in replies):
            raise not_alive(service_name, instance_id)
        owned_count = sum(int(r[1]) for r in replies[1:])
        lost = [text(rid) for r in replies[1:] for rid in r[2]]
        if several:
            await self._reconcile(sk, instance_id, int(replies[0][1]), owned_count)
        store.child("resources_per_instance", service_name, instance_id).set(owned_count)
        if lost:
            store.child("releases", service_name, "lost").inc(len(lost))
            logger.warning(
                "instance.resources_lost", service_name=service_name, instance_id=instance_id, **id_fields(lost), **info
            )
        return HeartbeatResult(
            service_name=service_name,
            instance_id=instance_id,
            lost=lost,
            owned_count=owned_count,
            ttl=lease_ms / 1000.0,
        )

    async def _reconcile(self, sk: ServiceKeys, instance_id: str, version: int, owned_count: int) -> None:
        """Set the quota's owned count to what the partitions hold, if no registration settled since
        ``version`` was read (then the count stays above the truth until the next heartbeat)."""
        await self.store.run(
            "heartbeat",
            self.store.scripts.settle_quota,
            [sk.quota(instance_id)],
            ["reconcile", version, owned_count],
            idempotent=True,
        )

    async def owned_counts(self, sk: ServiceKeys, instance_id: str) -> tuple[int, int]:
        """(quota version, resources owned in all partitions); the version is read first, as a
        reconciliation needs."""
        store = self.store
        version = await call_redis(
            "reconcile",
            lambda: store.redis.hget(sk.quota(instance_id), "ver"),  # type: ignore[misc,unused-ignore]
            settings=store.settings,
            idempotent=True,
        )
        (owned,) = await call_redis(
            "reconcile", lambda: store.owned_totals(sk, [instance_id]), settings=store.settings, idempotent=True
        )
        return int(version or 0), owned

    async def reconcile(self, service_name: str, instance_id: str) -> None:
        """Bring the quota's owned count down to the truth now (after releases), when nothing races."""
        sk = self.store.service_keys(service_name)
        if sk.partitions == 1:
            return
        version, owned = await self.owned_counts(sk, instance_id)
        await self._reconcile(sk, instance_id, version, owned)

    # -- deregister and sweep ------------------------------------------------------------------------
    async def deregister_instance(self, service_name: str, instance_id: str) -> list[str]:
        """Release everything the instance owns (every partition) and remove it. Returns the ids."""
        store = self.store
        sk = store.service_keys(service_name)
        validate_instance_id(instance_id)
        with timed(store.metrics, "deregister_instance") as info:
            released = await self._close(sk, instance_id, "deregister") or []
            await store.run(
                "deregister_instance",
                store.scripts.deregister_instance,
                [sk.instance(instance_id), sk.instances, sk.quota(instance_id)],
                [instance_id],
                idempotent=True,
            )
        if released:
            store.child("releases", service_name, "deregistered").inc(len(released))
        store.metrics.forget_instance(service_name, instance_id)
        logger.info(
            "instance.deregister", service_name=service_name, instance_id=instance_id, released=len(released), **info
        )
        return released

    async def _close(self, sk: ServiceKeys, instance_id: str, mode: str) -> list[str] | None:
        """close_lease in every partition; the released ids (sweep: None when some lease still lives)."""
        store = self.store
        always = "1" if mode == "deregister" and sk.partitions == 1 else "0"
        replies = await store.run_all(
            mode,
            [
                (
                    store.scripts.close_lease,
                    [part.lease(instance_id), part.owned(instance_id), part.lost(instance_id), part.audit],
                    [*store.part_common(part, instance_id, None), mode, part.owner_prefix, always],
                )
                for part in sk.parts
            ],
            idempotent=True,  # a second run finds nothing to do
        )
        if any(reply[1] == 2 for reply in replies):  # a lease outlived the record by moments (sweep only)
            return None
        return [text(rid) for reply in replies if reply[1] == 1 for rid in reply[2]]

    async def sweep_instance(self, service_name: str, instance_id: str) -> list[str] | None:
        """Clean up one instance if its lease ran out. Returns the released ids, or None when there
        was nothing to do (alive, or another sweeper got there first: exactly one sweeper claims a
        dead instance, cleans every partition, then forgets it)."""
        store = self.store
        sk = store.service_keys(service_name)
        validate_instance_id(instance_id)
        service_keys = [sk.instance(instance_id), sk.instances, sk.quota(instance_id), sk.sweeping(instance_id)]
        claim_ms = int(max(30.0, 2 * store.settings.operation_timeout * store.settings.retry_attempts) * 1000)
        claimed = await store.run(
            "sweep", store.scripts.sweep_instance, service_keys, [instance_id, "claim", claim_ms], idempotent=False
        )
        if not claimed[1]:
            return None
        released = await self._close(sk, instance_id, "sweep")
        if released is None:  # a lease outlived the record by moments: next time
            await store.run(
                "sweep", store.scripts.sweep_instance, service_keys, [instance_id, "abandon", claim_ms], idempotent=True
            )
            return None
        await store.run(
            "sweep", store.scripts.sweep_instance, service_keys, [instance_id, "finish", claim_ms], idempotent=True
        )
        store.child("releases", service_name, "instance_offline").inc(len(released))
        store.metrics.forget_instance(service_name, instance_id)
        logger.info(
            "instance.swept",
            service_name=service_name,
            instance_id=instance_id,
            released=len(released),
            operation="sweep",
        )
        return released

    async def dead_instance_ids(self, sk: ServiceKeys) -> list[str]:
        now_ms = int(time.time() * 1000)
        raw = await call_redis(
            "sweep",
            lambda: self.store.redis.zrangebyscore(sk.instances, "-inf", now_ms),
            settings=self.store.settings,
            idempotent=True,
        )
        return [text(m) for m in raw]

    # -- reading -------------------------------------------------------------------------------------
    async def live_instance_ids(self, service_name: str) -> list[str]:
        """Ids whose lease, as recorded at their last heartbeat, has not run out (one ZRANGEBYSCORE)."""
        sk = self.store.service_keys(service_name)
        now_ms = int(time.time() * 1000)
        raw = await call_redis(
            "live_instances",
            lambda: self.store.redis.zrangebyscore(sk.instances, now_ms, "+inf"),
            settings=self.store.settings,
            idempotent=True,
        )
        return [text(m) for m in raw]

    async def list_instances(self, service_name: str) -> list[InstanceInfo]:
        """Live instances of the service (lease not expired), sorted by id."""
        store = self.store
        sk = store.service_keys(service_name)

        async def run() -> list[Any]:
            ids = [text(m) for m in await store.redis.zrange(sk.instances, 0, -1)]
            if not ids:
                return []
            async with store.redis.pipeline(transaction=False) as pipe:
                for iid in ids:
                    pipe.hgetall(sk.instance(iid))
                records = await pipe.execute()
            counts = await store.owned_totals(sk, ids)
            return [(iid, records[i], counts[i]) for i, iid in enumerate(ids)]

        rows = await call_redis("list_instances", run, settings=store.settings, idempotent=True)
        out = []
        for iid, raw, count in sorted(rows):
            if not raw:
                continue  # lease ran out; the sweeper will remove it from the index
            h = {text(k): text(v) for k, v in raw.items()}
            try:
                meta = json.loads(h.get("metadata") or "{}")
            except ValueError:
                meta = {}
            out.append(
                InstanceInfo(
                    service_name=service_name,
                    instance_id=iid,
                    registered_at=ms_to_datetime(int(h.get("registered_at_ms", 0))),
                    last_heartbeat=ms_to_datetime(int(h.get("heartbeat_at_ms", 0))),
                    ttl=int(h.get("ttl_ms", 0)) / 1000.0,
                    metadata=meta if isinstance(meta, dict) else {},
                    resource_count=int(count),
                )
            )
        return out

    async def instance_ids(self, service_name: str) -> list[str]:
        """Every id in the service's index (live or not yet swept)."""
        sk = self.store.service_keys(service_name)
        raw = await call_redis(
            "list_resources",
            lambda: self.store.redis.zrange(sk.instances, 0, -1),
            settings=self.store.settings,
            idempotent=True,
        )
        out: list[str] = []
        for m in raw:
            try:
                out.append(validate_instance_id(text(m)))
            except InvalidRequestError:
                continue  # not written by this library
        return out
