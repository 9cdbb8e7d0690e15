"""Ownership events: every change of ownership is appended (by the Lua scripts, in the same atomic
step) to the service's audit stream ``rr:{S}:audit`` and published on ``rr:{S}:events``.

Event types and reasons:

=====================  ==================================================================
``ResourceRegistered``  reason ``registered`` or ``forced`` (``previous_owners`` is set)
``ResourceReleased``    reason ``released``, ``deregistered``, ``expired`` (seen by a late
                        heartbeat) or ``instance_offline`` (the sweeper, once per dead instance)
``InstanceRegistered``  a new instance (or a restarted one) took a lease
=====================  ==================================================================
"""

from __future__ import annotations

import json
from collections.abc import AsyncIterator
from typing import Any

from .keys import KeySpace
from .models import OwnershipEvent
from .retry import call_redis
from .settings import RouterSettings

__all__ = ["EventLog", "parse_event"]


def _s(value: Any) -> str:
    return value.decode("utf-8", "replace") if isinstance(value, bytes) else str(value)


def parse_event(payload: bytes | str, stream_id: bytes | str | None = None) -> OwnershipEvent:
    """Parse one event (JSON written by the scripts). cjson writes empty lists as ``{}``."""
    data = json.loads(payload)
    if not isinstance(data, dict):
        raise ValueError("an ownership event must be a JSON object")
    for list_field in ("resource_ids",):
        if data.get(list_field) == {}:
            data[list_field] = []
    if data.get("previous_owners") in ([], None):
        data.pop("previous_owners", None)
    if stream_id is not None:
        data["stream_id"] = _s(stream_id)
    return OwnershipEvent.model_validate(data)


class EventLog:
    """Read the audit stream of a service: recent history, or follow it live (XREAD BLOCK)."""

    def __init__(self, redis: Any, keys: KeySpace, settings: RouterSettings | None = None) -> None:
        self._redis = redis
        self._keys = keys
        self._settings = settings or RouterSettings()

    async def recent(self, service_name: str, count: int = 50) -> list[OwnershipEvent]:
        """The last ``count`` events, oldest first."""
        stream = self._keys.service(service_name).audit
        entries = await call_redis(
            "events", lambda: self._redis.xrevrange(stream, count=count), settings=self._settings, idempotent=True
        )
        return [self._entry(eid, fields) for eid, fields in reversed(entries)]

    async def follow(
        self, service_name: str, *, since: str = "$", block_ms: int = 1000
    ) -> AsyncIterator[OwnershipEvent]:
        """Yield events as they are appended (``since="0"`` replays the whole stream first).

        Redis failures surface as ``RedisUnavailableError`` (after the usual retries), like every
        other read of the library."""
        stream = self._keys.service(service_name).audit
        last = since
        # XREAD BLOCK waits up to block_ms by design: give each attempt that much on top.
        settings = self._settings.model_copy(
            update={"operation_timeout": self._settings.operation_timeout + block_ms / 1000.0}
        )
        while True:
            reply = await call_redis(
                "events",
                lambda last=last: self._redis.xread({stream: last}, block=block_ms, count=100),  # type: ignore[misc]
                settings=settings,
                idempotent=True,
            )
            for _stream, entries in reply or ():
                for eid, fields in entries:
                    last = _s(eid)
                    yield self._entry(eid, fields)

    @staticmethod
    def _entry(eid: Any, fields: dict[Any, Any]) -> OwnershipEvent:
        payload = fields.get(b"event", fields.get("event"))
        if payload is None:
            raise ValueError(f"audit entry {_s(eid)} has no 'event' field")
        return parse_event(payload, eid)
