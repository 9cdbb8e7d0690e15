"""Placement volunteers as Redis records: who is listed in ``rr:{S}:volunteers``, with what strategy
and limit, and how many resources each owns.

An instance made with ``accept_placement=True`` is listed while it is alive and not draining (the
placement side, ``placement/``, decides where an activation goes; this module only keeps the records).
Joining and leaving are published on the service's events channel (``VolunteerJoined``,
``VolunteerLeft``) and not recorded in the audit stream: volunteering is not ownership.
"""

from __future__ import annotations

import json
import time
from dataclasses import dataclass
from typing import Any, Final

from resource_router.ids import validate_instance_id
from resource_router.ownership.keys import ServiceKeys
from resource_router.ownership.store import Store, text
from resource_router.transport.retry import call_redis

__all__ = ["DEFAULT_STRATEGY", "Volunteer", "Volunteers"]

#: The placement strategy of a volunteer that names none (``placement/strategies.py`` has them all).
DEFAULT_STRATEGY: Final = "hash"


@dataclass(slots=True)
class Volunteer:
    """A live volunteer of a service: its strategy, its per-instance limit and how many it owns."""

    instance_id: str
    placement: str = DEFAULT_STRATEGY
    limit: int = 0  # 0: unknown
    owned: int = 0

    @property
    def full(self) -> bool:
        return 0 < self.limit <= self.owned


class Volunteers:
    """The volunteer records of every service (see the module docstring)."""

    def __init__(self, store: Store) -> None:
        self.store = store

    async def add(self, service_name: str, instance_id: str, *, placement: str, limit: int) -> bool:
        """List ``instance_id`` (idempotent). When it was not listed, ``VolunteerJoined`` is published
        on the service's events channel. True when added."""
        store = self.store
        sk = store.service_keys(service_name)
        validate_instance_id(instance_id)
        record = json.dumps({"placement": placement, "limit": int(limit)}, separators=(",", ":"))
        added = await call_redis(
            "add_volunteer",
            lambda: store.redis.hset(sk.volunteers, instance_id, record),  # type: ignore[misc,unused-ignore]
            settings=store.settings,
            idempotent=True,
        )
        if added:
            await self._publish(sk, instance_id, "VolunteerJoined", placement, "add_volunteer")
        return bool(added)

    async def remove(self, service_name: str, instance_id: str) -> bool:
        """Take ``instance_id`` off the list (``VolunteerLeft`` is published when it was listed)."""
        store = self.store
        sk = store.service_keys(service_name)
        validate_instance_id(instance_id)
        removed = await call_redis(
            "remove_volunteer",
            lambda: store.redis.hdel(sk.volunteers, instance_id),  # type: ignore[misc,unused-ignore]
            settings=store.settings,
            idempotent=True,
        )
        if removed:
            await self._publish(sk, instance_id, "VolunteerLeft", None, "remove_volunteer")
        return bool(removed)

    async def list(self, service_name: str) -> list[Volunteer]:
        """The volunteers whose lease has not run out, sorted by id, with how many resources each owns
        (three round trips). Records of instances that are gone from the service are removed."""
        store = self.store
        redis = store.redis
        sk = await store.service(service_name, "list_volunteers")
        now_ms = int(time.time() * 1000)

        async def run() -> list[Volunteer]:
            records = await redis.hgetall(sk.volunteers)  # type: ignore[misc,unused-ignore]
            if not records:
                return []
            members: list[Any] = await redis.zrange(sk.instances, 0, -1, withscores=True)
            leases = {text(member): float(score) for member, score in members}
            found: list[Volunteer] = []
            gone: list[str] = []
            for raw_id, raw in records.items():
                iid = text(raw_id)
                if iid not in leases:
                    gone.append(iid)
                elif leases[iid] >= now_ms:  # else: its lease ran out (dead, or about to be swept)
                    try:
                        record = json.loads(text(raw))
                        found.append(Volunteer(iid, str(record.get("placement")), int(record.get("limit") or 0)))
                    except (ValueError, TypeError, AttributeError):
                        continue
            found.sort(key=lambda v: v.instance_id)
            counts = await store.owned_totals(sk, [v.instance_id for v in found])
            for volunteer, owned in zip(found, counts, strict=True):
                volunteer.owned = owned
            if gone:
                await redis.hdel(sk.volunteers, *gone)  # type: ignore[misc,unused-ignore]
            return found

        volunteers: list[Volunteer] = await call_redis("list_volunteers", run, settings=store.settings, idempotent=True)
        return volunteers

    async def _publish(
        self, sk: ServiceKeys, instance_id: str, kind: str, placement: str | None, operation: str
    ) -> None:
        store = self.store
        event = {
            "type": kind,
            "reason": placement or "left",
            "service_name": sk.service_name,
            "instance_id": instance_id,
            "resource_ids": [],
            "ts_ms": int(time.time() * 1000),
        }
        payload = json.dumps(event, separators=(",", ":"))
        await call_redis(
            operation,
            lambda: store.redis.execute_command(store.publish_command, sk.members_channel, payload),
            settings=store.settings,
            idempotent=True,
        )
