"""The live volunteers of each service as a caller sees them: read from Redis, kept briefly."""

from __future__ import annotations

import time

from resource_router.ownership.registry import ResourceRegistry
from resource_router.ownership.volunteers import Volunteer

__all__ = ["VolunteerDirectory"]


class VolunteerDirectory:
    """The live volunteers of each service, read from Redis and kept ``max_age`` seconds (callers drop
    an entry as soon as an event says the volunteers changed). ``placed`` counts a resource sent to a
    volunteer, so that a burst of activations spreads under ``least_loaded`` before the next read."""

    def __init__(self, registry: ResourceRegistry, *, max_age: float = 1.0) -> None:
        self._registry = registry
        self.max_age = max_age
        self._cache: dict[str, tuple[list[Volunteer], float]] = {}

    async def get(self, service_name: str, *, fresh: bool = False) -> list[Volunteer]:
        if not fresh and self.max_age > 0:
            entry = self._cache.get(service_name)
            if entry is not None and entry[1] >= time.monotonic():
                return entry[0]
        volunteers = await self._registry.list_volunteers(service_name)
        if self.max_age > 0:
            if len(self._cache) >= 4096:
                self._cache.clear()
            self._cache[service_name] = (volunteers, time.monotonic() + self.max_age)
        return volunteers

    def forget(self, service_name: str | None = None) -> None:
        if service_name is None:
            self._cache.clear()
        else:
            self._cache.pop(service_name, None)

    def placed(self, service_name: str, instance_id: str) -> None:
        entry = self._cache.get(service_name)
        if entry is not None:
            for volunteer in entry[0]:
                if volunteer.instance_id == instance_id:
                    volunteer.owned += 1
