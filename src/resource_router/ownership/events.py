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

import asyncio
import json
from collections.abc import AsyncIterator
from typing import Any

from resource_router.models import OwnershipEvent
from resource_router.ownership.keys import KeySpace
from resource_router.settings import RouterSettings
from resource_router.transport.connection import is_cluster
from resource_router.transport.retry import call_redis
from resource_router.transport.tasks import stop_task

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
    """Read the audit streams of a service (the service's own, and one per partition): recent
    history, or follow them live (XREAD BLOCK). Events of different partitions are ordered by their
    stream ids (Redis time, milliseconds)."""

    def __init__(self, redis: Any, keys: KeySpace, settings: RouterSettings | None = None) -> None:
        self._redis = redis
        self._keys = keys
        self._settings = settings or RouterSettings()

    def _streams(self, service_name: str) -> tuple[str, ...]:
        return self._keys.service(service_name, self._settings.partitions).audits

    async def recent(self, service_name: str, count: int = 50) -> list[OwnershipEvent]:
        """The last ``count`` events, oldest first."""
        streams = self._streams(service_name)

        async def read() -> list[Any]:
            found: list[Any] = []
            for stream in streams:
                found.extend(await self._redis.xrevrange(stream, count=count))
            return found

        entries = await call_redis("events", read, settings=self._settings, idempotent=True)
        entries.sort(key=lambda entry: _order(entry[0]))
        return [self._entry(eid, fields) for eid, fields in entries[-count:]]

    async def follow(
        self, service_name: str, *, since: str = "$", block_ms: int = 1000
    ) -> AsyncIterator[OwnershipEvent]:
        """Yield events as they are appended (``since="0"`` replays the whole history first).

        Redis failures surface as ``RedisUnavailableError`` (after the usual retries), like every
        other read of the library."""
        streams = self._streams(service_name)
        # XREAD BLOCK waits up to block_ms by design: give each attempt that much on top.
        settings = self._settings.model_copy(
            update={"operation_timeout": self._settings.operation_timeout + block_ms / 1000.0}
        )
        if len(streams) == 1 or not is_cluster(self._redis):
            last = dict.fromkeys(streams, since)  # one XREAD over every stream
            while True:
                reply = await call_redis(
                    "events",
                    lambda: self._redis.xread(dict(last), block=block_ms, count=100),
                    settings=settings,
                    idempotent=True,
                )
                batch = [(_s(stream), eid, fields) for stream, entries in reply or () for eid, fields in entries]
                batch.sort(key=lambda item: _order(item[1]))
                for stream, eid, fields in batch:
                    last[stream] = _s(eid)
                    yield self._entry(eid, fields)
        else:  # a cluster: the streams live on different slots; one reader each
            async for event in self._follow_each(streams, since, block_ms, settings):
                yield event

    async def _follow_each(
        self, streams: tuple[str, ...], since: str, block_ms: int, settings: RouterSettings
    ) -> AsyncIterator[OwnershipEvent]:
        queue: asyncio.Queue[Any] = asyncio.Queue()

        async def reader(stream: str) -> None:
            last = since
            try:
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
                            queue.put_nowait((eid, fields))
            except Exception as exc:
                queue.put_nowait(exc)

        tasks = [asyncio.get_running_loop().create_task(reader(stream)) for stream in streams]
        try:
            while True:
                item = await queue.get()
                if isinstance(item, Exception):
                    raise item
                yield self._entry(*item)
        finally:
            for task in tasks:
                await stop_task(task)

    @staticmethod
    def _entry(eid: Any, fields: dict[Any, Any]) -> OwnershipEvent:
        payload = fields.get(b"event", fields.get("event"))
        if payload is None:
            raise ValueError(f"audit entry {_s(eid)} has no 'event' field")
        return parse_event(payload, eid)


def _order(stream_id: Any) -> tuple[int, int]:
    ms, _, seq = _s(stream_id).partition("-")
    return int(ms), int(seq or 0)
