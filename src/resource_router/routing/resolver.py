"""Where a call goes: the owner cache, the owner lookup, placement's choice of a volunteer, and the
ownership events that keep the cache true.

* **Lookup**: one ``EVALSHA`` of ``lookup_resource.lua`` on the hub's pipelined connection (the owner
  key, checked against its owner's lease); if that connection fails, the registry's retried lookup.
* **Owner cache**: owners that answered are kept for ``owner_cache_ttl`` (a backstop only). The
  cache never makes a request run on a non-owner (instances refuse what they do not own, and any
  refusal or silent channel drops the entry), and it is never stale for long: the resolver listens
  to the ownership events of every service it looked up an owner of, and drops an entry as soon as
  its resource is registered, taken over or released. Owners are cached only while that
  subscription is heard (its connection dropping empties the service's cache).
* **Placement**: a resource nobody owns, in a service with volunteers, goes to the volunteer the
  service's strategy ranks first among those not skipped; all of them full is a 429.
* **Any instance** (calls without a resource): the live instances, round-robin.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable
from typing import Any, Final

from resource_router.errors import (
    InvalidRequestError,
    ResourceLimitExceededError,
    ResourceNotFoundError,
    ResourceRouterError,
    ServiceUnavailableError,
)
from resource_router.observability.logs import get_logger
from resource_router.observability.metrics import Metrics
from resource_router.ownership.events import parse_event
from resource_router.ownership.keys import ServiceKeys
from resource_router.ownership.registry import ResourceRegistry
from resource_router.placement.directory import VolunteerDirectory
from resource_router.placement.strategies import rank, service_strategy
from resource_router.reasons import EventReason
from resource_router.routing.call import Call, Target
from resource_router.transport.hub import PubSubHub
from resource_router.transport.tasks import stop_task

__all__ = ["OwnerResolver"]

logger = get_logger(__name__)

_CACHE_LIMIT: Final = 100_000
#: Services whose ownership events one client follows (only services with owners; beyond it, none).
_EVENT_SERVICES_LIMIT: Final = 1024
#: Services whose partition count one client remembers as checked.
_SERVICES_LIMIT: Final = 4096
#: Reasons of a ``ResourceReleased`` event that mean the instance itself is gone.
_INSTANCE_GONE: Final = frozenset((EventReason.DEREGISTERED, EventReason.INSTANCE_OFFLINE))
#: Seconds a service's list of placement volunteers is kept (events drop it sooner).
_VOLUNTEERS_MAX_AGE: Final = 1.0


def _retrieve(task: asyncio.Task[Any]) -> None:
    if not task.cancelled():
        task.exception()


class OwnerResolver:
    """The caller's knowledge of where resources live (see the module docstring)."""

    def __init__(self, registry: ResourceRegistry, *, owner_cache_ttl: float) -> None:
        self._registry = registry
        self._metrics: Metrics = registry.metrics
        self._lookup_script = registry.store.scripts.lookup_resource
        self.owner_cache_ttl = owner_cache_ttl
        self._hub: PubSubHub | None = None
        self._service_keys: dict[str, ServiceKeys] = {}
        self._owners: dict[tuple[str, str], tuple[str, float]] = {}
        #: service -> True while its events subscription is heard (owners are cached only then)
        self._following: dict[str, bool] = {}
        self._event_handlers: dict[str, tuple[Any, Any]] = {}
        self._ready: set[str] = set()
        self._preparing: dict[str, asyncio.Task[None]] = {}
        self._live: dict[str, tuple[list[str], float]] = {}
        self._round_robin: dict[str, int] = {}
        self.volunteers = VolunteerDirectory(registry, max_age=min(owner_cache_ttl, _VOLUNTEERS_MAX_AGE))

    def attach(self, hub: PubSubHub) -> None:
        self._hub = hub

    async def close(self, hub: PubSubHub) -> None:
        """Stop following events (on ``hub``) and the preparations still running."""
        for task in list(self._preparing.values()):
            await stop_task(task)
        for service_name in list(self._following):
            await self._unfollow(hub, service_name)
        self._hub = None

    def keys(self, service_name: str) -> ServiceKeys:
        """The service's keys (validates the name), cached."""
        sk = self._service_keys.get(service_name)
        if sk is None:
            sk = self._registry.store.service_keys(service_name)
            if len(self._service_keys) > 10_000:
                self._service_keys.clear()
            self._service_keys[service_name] = sk
        return sk

    # -- the owner cache -----------------------------------------------------------------------------
    def cached(self, call: Call) -> Target | None:
        """The owner this client would call without a lookup, if any."""
        key = (call.sk.service_name, call.resource_id)
        entry = self._owners.get(key)  # type: ignore[arg-type]
        if entry is None:
            return None
        if entry[1] < time.monotonic():
            del self._owners[key]  # type: ignore[arg-type]
            return None
        return Target(entry[0], fresh=False)

    def cached_owner(self, service_name: str, resource_id: str) -> str | None:
        key = (service_name, resource_id)
        entry = self._owners.get(key)
        if entry is None:
            return None
        if entry[1] < time.monotonic():
            del self._owners[key]
            return None
        return entry[0]

    def served(self, call: Call, target: Target, owner: str) -> None:
        """``owner`` answered ``call``: remember it (when it came from Redis and events are heard)."""
        if not target.fresh or self.owner_cache_ttl <= 0 or not self._following.get(call.sk.service_name):
            return  # not hearing the service's events: a cached owner could go stale unseen
        if len(self._owners) >= _CACHE_LIMIT:
            self._owners.clear()
        assert call.resource_id is not None
        self._owners[(call.sk.service_name, call.resource_id)] = (owner, time.monotonic() + self.owner_cache_ttl)

    def refused(self, call: Call) -> None:
        """The target refused or did not listen: never call it from the cache again."""
        assert call.resource_id is not None
        self._owners.pop((call.sk.service_name, call.resource_id), None)

    def master_changed(self, where: str) -> None:
        """The hub's listener: another server answers now, and what it has may differ from what the
        old one said. Every cached owner and volunteer list is dropped."""
        self._owners.clear()
        self._live.clear()
        self.volunteers.forget()

    def forget(self, service_name: str, resource_id: str | None = None) -> None:
        """Drop cached owners (of one resource, or of the whole service)."""
        if resource_id is not None:
            self._owners.pop((service_name, resource_id), None)
            return
        for key in [k for k in self._owners if k[0] == service_name]:
            del self._owners[key]
        self._live.pop(service_name, None)

    # -- resolving -----------------------------------------------------------------------------------
    def prepared(self, call: Call) -> bool:
        """True once the service's partition count was checked."""
        return call.sk.service_name in self._ready

    async def prepare(self, call: Call) -> None:
        """Check the service's partition count (once per service, shared by concurrent first calls)."""
        await self._once(call.sk.service_name, "partitions", self._check_partitions)

    async def resolve(self, call: Call, skipped: dict[str, str]) -> Target | ResourceRouterError:
        """The owner Redis names, else the volunteer to activate the resource on; else the error to
        report (404 without volunteers, 503 when none can take it now). 429 (raised) when every
        volunteer is full."""
        assert call.resource_id is not None
        try:
            owner = await self.lookup(call)
        except ResourceNotFoundError as exc:
            return await self._volunteer(call, skipped, exc)
        name = call.sk.service_name
        if name not in self._following and self.owner_cache_ttl > 0:
            # A service that has owners: hear its ownership events before caching any of them.
            await self._once(name, "events", self._follow)
        return Target(owner, fresh=True)

    async def owner_now(self, call: Call) -> str | None:
        """The owner Redis names now (None: nobody)."""
        try:
            return await self.lookup(call)
        except ResourceNotFoundError:
            return None

    async def lookup(self, call: Call) -> str:
        """The owner's instance id from Redis (one script: the owner key, checked against its owner's
        lease); ``ResourceNotFoundError`` when none."""
        sk, resource_id = call.sk, call.resource_id
        assert resource_id is not None
        hub = self._hub
        try:
            if hub is None:
                raise ResourceRouterError("not started")
            part = sk.part_of(resource_id)
            reply = await hub.evalsha(
                "lookup",
                self._lookup_script,
                [part.owner(resource_id)],
                [part.owned_prefix, resource_id, part.lease_prefix],
            )
            owner: str | None = reply[1].decode("utf-8", "surrogateescape") if len(reply) > 1 else None
            self._metrics.lookups.labels(sk.service_name, "false" if owner is None else "true").inc()
        except InvalidRequestError:
            raise
        except ResourceRouterError:
            # The pipelined connection failed; the registry retries (the lookup is idempotent).
            owner = await self._registry.get_owner_id(sk.service_name, resource_id)
        if owner is None:
            raise ResourceNotFoundError(
                f"resource {resource_id!r} of service {sk.service_name!r} has no owner",
                resource_id=resource_id,
                service_name=sk.service_name,
            )
        return owner

    async def _volunteer(
        self, call: Call, skipped: dict[str, str], not_found: ResourceNotFoundError
    ) -> Target | ResourceRouterError:
        name, resource_id = call.sk.service_name, call.resource_id
        assert resource_id is not None
        volunteers = await self.volunteers.get(name, fresh=bool(skipped))
        if not volunteers:
            return not_found
        for volunteer in rank(service_strategy(volunteers), resource_id, volunteers):
            if volunteer.instance_id not in skipped:
                self.volunteers.placed(name, volunteer.instance_id)
                return Target(volunteer.instance_id, fresh=True, activate=True)
        if all(skipped.get(v.instance_id) == "full" for v in volunteers):
            limit = max(v.limit for v in volunteers)
            raise ResourceLimitExceededError(
                f"resource {resource_id!r} of service {name!r} has no owner and every volunteer "
                f"({len(volunteers)}) is at its per-instance limit",
                limit=limit,
                current=limit,
                requested=1,
            )
        return ServiceUnavailableError(
            f"resource {resource_id!r} of service {name!r} has no owner and no volunteer can take it now "
            f"({len(volunteers)} tried: full, draining or not listening)",
            service_name=name,
        )

    # -- any instance --------------------------------------------------------------------------------
    async def live_instances(self, service_name: str, *, fresh: bool) -> tuple[list[str], bool]:
        """The live instances (stable order, for round-robin) and whether they were read just now."""
        if not fresh and self.owner_cache_ttl > 0:
            entry = self._live.get(service_name)
            if entry is not None and entry[1] >= time.monotonic():
                return entry[0], False
        ids = sorted(await self._registry.live_instance_ids(service_name))
        if self.owner_cache_ttl > 0:
            self._live[service_name] = (ids, time.monotonic() + self.owner_cache_ttl)
        return ids, True

    def forget_live(self, service_name: str) -> None:
        self._live.pop(service_name, None)

    def next_turn(self, service_name: str) -> int:
        turn = self._round_robin.get(service_name, 0)
        self._round_robin[service_name] = turn + 1
        return turn

    # -- ownership events: the owner cache's invalidation ------------------------------------------
    async def _once(self, service_name: str, stage: str, step: Callable[[str], Awaitable[None]]) -> None:
        """Run ``step(service_name)`` once per service and stage, shared by concurrent first calls
        (each waits for it within its own deadline). A step that failed runs again next time."""
        key = f"{stage}:{service_name}"
        task = self._preparing.get(key)
        if task is None:
            task = asyncio.get_running_loop().create_task(step(service_name))  # type: ignore[arg-type]
            task.add_done_callback(_retrieve)  # its callers may all have given up (deadline) by then
            self._preparing[key] = task
        try:
            await asyncio.shield(task)
        finally:
            if task.done() and self._preparing.get(key) is task:
                del self._preparing[key]

    async def _check_partitions(self, service_name: str) -> None:
        await self._registry.service(service_name, operation="lookup")
        if len(self._ready) < _SERVICES_LIMIT:
            self._ready.add(service_name)

    async def _follow(self, service_name: str) -> None:
        """Hear the service's ownership events; owners are cached only while they are heard. Without
        them (Redis refused, or too many services) the call goes on uncached."""
        hub = self._hub
        if hub is None or len(self._following) >= _EVENT_SERVICES_LIMIT:
            return
        self._following[service_name] = False
        sk = self.keys(service_name)
        on_event, on_state = self._event_callbacks(service_name)
        subscribed: list[str] = []
        try:
            for channel in sk.events_channels:
                await hub.subscribe(channel, on_event, on_state)
                subscribed.append(channel)
        except ResourceRouterError as exc:
            self._following.pop(service_name, None)
            for channel in subscribed:
                await hub.unsubscribe(channel, on_event, on_state)
            logger.debug("route.events_unavailable", service_name=service_name, error=str(exc))
            return
        if service_name in self._following:
            self._following[service_name] = all(hub.heard(channel) for channel in sk.events_channels)

    def _event_callbacks(self, service_name: str) -> tuple[Any, Any]:
        callbacks = self._event_handlers.get(service_name)
        if callbacks is None:

            def on_event(data: bytes) -> None:
                self._on_event(service_name, data)

            def on_state(heard: bool) -> None:
                hub = self._hub
                if service_name in self._following and hub is not None:
                    channels = self.keys(service_name).events_channels
                    self._following[service_name] = heard and all(hub.heard(ch) for ch in channels)
                if not heard:
                    self.forget(service_name)

            callbacks = self._event_handlers[service_name] = (on_event, on_state)
        return callbacks

    async def _unfollow(self, hub: PubSubHub, service_name: str) -> None:
        self._following.pop(service_name, None)
        on_event, on_state = self._event_handlers.pop(service_name, (None, None))
        if on_event is not None:
            for channel in self.keys(service_name).events_channels:
                await hub.unsubscribe(channel, on_event, on_state)

    def _on_event(self, service_name: str, data: bytes) -> None:
        try:
            event = parse_event(data)
        except Exception:
            self._metrics.dropped_messages.labels("malformed").inc()
            return
        if event.type in ("VolunteerJoined", "VolunteerLeft"):
            self.volunteers.forget(service_name)
            return
        if event.type == "InstanceRegistered":
            return
        if event.type == "ResourceReleased" and event.reason in _INSTANCE_GONE and event.instance_id:
            self._metrics.forget_instance(service_name, event.instance_id)  # its gauges, if this process has any
        if not event.resource_ids and event.type == "ResourceReleased":
            self.forget(service_name)  # a whole instance went: drop the service's entries
            self.volunteers.forget(service_name)
            return
        owners = self._owners
        for rid in event.resource_ids:
            owners.pop((service_name, rid), None)
