"""Reading ownership: the owner of one resource, of many, and everything an instance or a service owns.

Every read checks an owner key against its owner's lease in the same script (``lookup_resource.lua``,
``read_owners.lua``), so an owner whose lease ran out is never reported. Many ids are read a
thousand at a time, every partition at once (one round trip on a single Redis).
"""

from __future__ import annotations

import time
from collections.abc import Iterable
from typing import Any

from resource_router._trusted import trusted
from resource_router.errors import ResourceNotFoundError
from resource_router.ids import validate_instance_id, validate_resource_id, validate_resource_ids
from resource_router.models import Resource, ms_to_datetime
from resource_router.observability.logs import get_logger
from resource_router.ownership.keys import PartitionKeys, ServiceKeys
from resource_router.ownership.leases import Leases
from resource_router.ownership.store import ScriptCall, Store, parse_grant, text
from resource_router.transport.retry import call_redis

__all__ = ["Owners"]

logger = get_logger(__name__)

_READ_CHUNK = 1000


class Owners:
    """The reading half of the registry (see the module docstring)."""

    def __init__(self, store: Store, leases: Leases) -> None:
        self.store = store
        self.leases = leases

    # -- read owners -----------------------------------------------------------------------------------
    async def read_owners(self, sk: ServiceKeys, ids: list[str]) -> dict[str, str | None]:
        """The one read of owners: the valid owner of each id (None: no owner, or its lease ran out),
        every partition at once, in chunks of 1000 ids."""
        rows = await self._read(sk, ids, grants=False)
        return {rid: owner for rid, owner, _grant in rows}

    async def _read(self, sk: ServiceKeys, ids: list[str], *, grants: bool) -> list[tuple[str, str | None, Any]]:
        store = self.store
        batches: list[tuple[PartitionKeys, list[str]]] = []
        for p, group in sk.split(ids).items():
            part = sk.parts[p]
            for start in range(0, len(group), _READ_CHUNK):
                batches.append((part, group[start : start + _READ_CHUNK]))
        calls: list[ScriptCall] = [
            (
                store.scripts.read_owners,
                part.owner_keys(chunk),
                [part.lease_prefix, part.owned_prefix, "1" if grants else "0", part.owner_prefix],
            )
            for part, chunk in batches
        ]
        replies = await store.run_all("lookup", calls, idempotent=True) if calls else []
        rows: list[tuple[str, str | None, Any]] = []
        for (_part, chunk), reply in zip(batches, replies, strict=True):
            records = reply[2] if grants else [None] * len(chunk)
            for rid, owner, grant in zip(chunk, reply[1], records, strict=True):
                rows.append((rid, None if owner is None or owner is False else text(owner), grant))
        return rows

    async def get_resource_owner(self, service_name: str, resource_id: str) -> Resource:
        """The resource's owner, fencing token and metadata in one round trip (lookup_resource.lua)."""
        store = self.store
        sk = await store.service(service_name, "lookup")
        validate_resource_id(resource_id)
        part = sk.part_of(resource_id)
        start = time.perf_counter()
        reply = await store.run(
            "lookup",
            store.scripts.lookup_resource,
            [part.owner(resource_id)],
            [part.owned_prefix, resource_id, part.lease_prefix],
            idempotent=True,
        )
        store.child("operation_duration", "lookup").observe(time.perf_counter() - start)
        owner = reply[1] if len(reply) > 1 else None
        if owner is None:
            store.child("lookups", service_name, "false").inc()
            raise ResourceNotFoundError(
                f"resource {resource_id!r} of service {service_name!r} has no owner",
                resource_id=resource_id,
                service_name=service_name,
            )
        store.child("lookups", service_name, "true").inc()
        return self.resource(service_name, resource_id, text(owner), reply[2])

    async def get_resources(self, service_name: str, resource_ids: Iterable[str]) -> dict[str, Resource]:
        """Owners of many resources; ids nobody owns are left out."""
        sk = await self.store.service(service_name, "lookup")
        ids = validate_resource_ids(resource_ids, max_count=self.store.settings.max_batch_size)
        rows = await self._read(sk, ids, grants=True)
        return {rid: self.resource(service_name, rid, o, g) for rid, o, g in rows if o is not None}

    async def list_resources(self, service_name: str, instance_id: str | None) -> list[Resource]:
        """Resources currently owned in the service, or by one instance; sorted by resource id."""
        store = self.store
        sk = await store.service(service_name, "list_resources")
        if instance_id is not None:
            validate_instance_id(instance_id)
        instance_ids = [instance_id] if instance_id is not None else await self.leases.instance_ids(service_name)
        if not instance_ids:
            return []

        async def members() -> list[Any]:
            async with store.redis.pipeline(transaction=False) as pipe:
                for iid in instance_ids:
                    for part in sk.parts:
                        pipe.hkeys(part.owned(iid))
                result: list[Any] = await pipe.execute()
                return result

        member_sets = await call_redis("list_resources", members, settings=store.settings, idempotent=True)
        ids = sorted({text(r) for members_ in member_sets for r in members_})
        if not ids:
            return []
        rows = await self._read(sk, ids, grants=True)
        return [
            self.resource(service_name, rid, owner, grant)
            for rid, owner, grant in rows
            if owner is not None and (instance_id is None or owner == instance_id)
        ]

    def resource(self, service_name: str, resource_id: str, owner: str, grant: Any) -> Resource:
        parsed = parse_grant(grant)
        if parsed is None:
            # Cannot happen through the scripts (the owner key and the grant record are written
            # together); keep the owner, which is authoritative, and say the rest is unknown.
            logger.warning("resource.grant_missing", service_name=service_name, resource_id=resource_id)
            parsed = (0, 0, {})
        return trusted(
            Resource,
            {
                "resource_id": resource_id,
                "owner_instance_id": owner,
                "service_name": service_name,
                "registered_at": ms_to_datetime(parsed[1]),
                "fencing_token": parsed[0],
                "metadata": parsed[2],
            },
        )
