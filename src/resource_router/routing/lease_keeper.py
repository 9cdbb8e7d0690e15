"""Keeps an instance's ownership view equal to Redis: heartbeats, lost ids, takeovers, adoption.

* Heartbeats every ``ttl / 3`` renew the lease and every owned resource in one round trip; ids reported
  lost (expired, or taken by force) leave the view at once (``OwnershipView.lose``). After a failure
  the next attempt comes sooner: the lease is running out.
* A heartbeat whose reply was lost (Redis unreachable) may have carried a report of lost ids: the
  view is then re-read from Redis (``list_resources``) at the next successful heartbeat.
* Ownership events: a forced takeover naming this instance as previous owner suspends those ids at
  once, then confirms with the owner keys (the instance may have taken some back); ids registered
  for this instance by someone else (a router replica, a handoff from another instance) are adopted
  at once rather than at the next reconciliation.
* A lease that ran out in Redis loses everything; the instance registers again, empty-handed.
* **Master change** (a failover, a restart: the hub identified another server): every owned id is
  held at once (requests for it wait), the fencing counters are raised past the tokens the instance
  holds, and each id is confirmed against the new master. Ids it still has are served again; ids it
  does not have (the grant was lost with the old master) or that another instance owns now are
  reported to ``on_resource_lost`` (reason ``failover``); with ``reclaim_after_failover`` the free
  ones are registered again at once (a new, larger token) and the waiting requests run here.

Every change of the view that talks to Redis holds ``lock`` (registrations, releases and moves hold
it too), so that a reply read from Redis is never applied over a newer one.

The keeper gets the objects it acts on: the registry, the view, the lock, the instance's background
tasks and, for a placement volunteer, its ``Volunteering`` (listed again after the lease had to be
registered anew).
"""

from __future__ import annotations

import asyncio
import time
from typing import Any

from resource_router.errors import InstanceNotAliveError, ResourceRouterError
from resource_router.models import OwnershipEvent
from resource_router.observability.logs import Logger, id_fields
from resource_router.ownership.registry import ResourceRegistry
from resource_router.ownership.view import OwnershipView
from resource_router.placement.volunteering import Volunteering
from resource_router.reasons import LossReason
from resource_router.transport.tasks import TaskSet

__all__ = ["LeaseKeeper"]


class LeaseKeeper:
    """Heartbeats and ownership events of one instance, applied to its ``OwnershipView``."""

    def __init__(
        self,
        registry: ResourceRegistry,
        view: OwnershipView,
        *,
        lock: asyncio.Lock,
        tasks: TaskSet,
        service_name: str,
        instance_id: str,
        ttl: float,
        metadata: dict[str, Any],
        placed_on_adopt: bool,
        volunteering: Volunteering | None,
        log: Logger,
        reclaim_after_failover: bool = True,
    ) -> None:
        self.registry = registry
        self.view = view
        self.service_name = service_name
        self.instance_id = instance_id
        self.ttl = ttl
        self.metadata = metadata
        self.lock = lock
        self.heartbeats = 0
        self.closed = False
        self._tasks = tasks
        self._placed_on_adopt = placed_on_adopt
        self._volunteering = volunteering
        self._log = log
        self.reclaim_after_failover = reclaim_after_failover
        self.failovers = 0

    # -- the lease -----------------------------------------------------------------------------------
    async def register(self) -> None:
        sent = time.monotonic()
        await self.registry.register_instance(
            self.service_name, self.instance_id, ttl=self.ttl, metadata=self.metadata or None
        )
        self.view.renewed(sent)

    async def loop(self) -> None:
        interval = self.ttl / 3.0
        ok = True
        while not self.closed:  # checked too: a cancellation swallowed below must not keep it going
            await asyncio.sleep(interval if ok else min(interval / 3.0, 0.25))
            ok = False
            try:
                await self.heartbeat()
                ok = True
            except ResourceRouterError as exc:
                self._log.warning("instance.heartbeat_failed", error=str(exc), code=exc.code)
            except Exception:  # never let the loop die silently
                self._log.exception("instance.heartbeat_failed")

    async def heartbeat(self) -> None:
        async with self.lock:
            sent = time.monotonic()
            try:
                result = await self.registry.heartbeat(self.service_name, self.instance_id, ttl=self.ttl)
            except InstanceNotAliveError:
                await self._lease_lost()
                return
            except ResourceRouterError:
                # The reply (and its report of lost ids) may be gone: re-read ownership next time.
                self.view.needs_reconcile = True
                raise
            self.view.renewed(sent)
            self.heartbeats += 1
            if self.view.holding:  # a master change is being confirmed: that re-reads ownership
                return
            owned = self.view.owned
            if self.view.needs_reconcile or (result.owned_count != len(owned) and not result.lost):
                await self.reconcile()
            elif result.lost:
                await self._confirm_lost(result.lost)
                if result.owned_count != len(owned):
                    await self.reconcile()

    async def _lease_lost(self) -> None:
        """The lease ran out in Redis: everything is gone. Register again (empty-handed)."""
        self.view.expire()
        self._log.warning("instance.lease_expired", owned=len(self.view.owned))
        self.view.clear(LossReason.EXPIRED, involuntary=True)
        self.view.needs_reconcile = False
        await self.register()
        if self._volunteering is not None:
            await self._volunteering.rejoin()

    async def _confirm_lost(self, ids: list[str]) -> None:
        """Drop ids reported lost unless Redis says this instance owns them (it took them back)."""
        owners = await self.registry.get_owner_ids(self.service_name, ids)
        me = self.instance_id
        self.view.lose([rid for rid in ids if owners.get(rid) is None], LossReason.EXPIRED)
        self.view.lose([rid for rid in ids if owners.get(rid) not in (None, me)], LossReason.TAKEN)

    async def reconcile(self) -> None:
        """Make the view equal to what Redis says this instance owns."""
        resources = await self.registry.list_resources(self.service_name, self.instance_id)
        adopted = self.view.sync({r.resource_id: r.fencing_token for r in resources}, placed=self._placed_on_adopt)
        self._log.info("instance.reconciled", owned=len(self.view.owned), adopted=len(adopted))

    # -- master changes ------------------------------------------------------------------------------
    def master_changed(self, where: str) -> None:
        """The hub's listener: another server answers now. Hold every owned id until it is confirmed
        there (called before anything else is read from the new server)."""
        if self.closed:
            return
        held = self.view.suspend(list(self.view.owned), hold=True)
        self.failovers += 1
        self._log.warning("instance.master_changed", where=where, held=len(held))
        if held:
            self._tasks.spawn(self.confirm_after_failover(held))

    async def confirm_after_failover(self, held: dict[str, int]) -> None:
        """Confirm ``held`` against the new master (retried while the local lease lasts)."""
        pause = min(0.25, self.ttl / 10.0)
        while not self.closed:
            try:
                async with self.lock:
                    await self._reconfirm(held)
                return
            except ResourceRouterError as exc:
                self._log.warning("instance.failover_confirm_failed", error=str(exc), resources=len(held))
            if not self.view.lease_valid:  # its lease ran out meanwhile: nothing is this instance's
                self.view.lose(list(held), LossReason.FAILOVER)
                return
            await asyncio.sleep(pause)

    async def _reconfirm(self, held: dict[str, int]) -> None:
        ids = [rid for rid in held if rid in self.view.suspended]
        if not ids:
            return
        await self.registry.raise_fences(self.service_name, {rid: held[rid] for rid in ids})
        found = await self.registry.get_resources(self.service_name, ids)
        me = self.instance_id
        kept = {rid: r.fencing_token for rid, r in found.items() if r.owner_instance_id == me}
        missing = [rid for rid in ids if rid not in found]
        taken = [rid for rid in ids if rid in found and found[rid].owner_instance_id != me]
        regained: dict[str, int] = {}
        if missing and self.reclaim_after_failover:
            try:
                try:
                    response = await self.registry.register_resource(self.service_name, me, missing)
                except InstanceNotAliveError:  # the new master lost the lease too (a restart): take it again
                    await self.register()
                    if self._volunteering is not None:
                        await self._volunteering.rejoin()
                    response = await self.registry.register_resource(self.service_name, me, missing)
                regained = response.fencing_tokens
            except ResourceRouterError as exc:  # reported lost; callers activate them elsewhere
                self._log.warning("instance.failover_reclaim_failed", error=str(exc), resources=len(missing))
        placed = {rid for rid in regained if rid in self.view.placed}
        # One synchronous step: requests that waited see the outcome, never a moment between.
        self.view.restore(kept)
        self.view.lose([*missing, *taken], LossReason.FAILOVER)
        if regained:
            self.view.gain({rid: tok for rid, tok in regained.items() if rid not in placed})
            self.view.gain({rid: tok for rid, tok in regained.items() if rid in placed}, placed=True)
        self._log.warning(
            "instance.failover_confirmed", kept=len(kept), lost=len(missing) + len(taken), reclaimed=len(regained)
        )

    # -- ownership events ----------------------------------------------------------------------------
    def on_events_state(self, heard: bool) -> None:
        if not heard:
            # Takeover events published meanwhile are lost: re-read ownership at the next heartbeat.
            self.view.needs_reconcile = True

    def on_event(self, event: OwnershipEvent) -> None:
        if event.type != "ResourceRegistered":
            return
        owned = self.view.owned
        if event.instance_id == self.instance_id:
            # Registered for this instance by someone else (a router replica, a handoff): serve them now
            # rather than at the next heartbeat's reconciliation.
            missing = [rid for rid in event.resource_ids if rid not in owned]
            if missing:
                # Requests for them that arrive meanwhile wait for the adoption instead of being refused.
                self.view.begin_adopt(missing)
                self._tasks.spawn(self.adopt(missing))
            return
        # Taken by force (the event names this instance as the previous owner), or granted to another
        # instance although this one believed it owned them (its key was removed by hand, say).
        mine = [rid for rid in event.resource_ids if rid in owned]
        if not mine:
            return
        # Stop serving them now; confirm against Redis (this instance may have taken some back).
        suspended = self.view.suspend(mine)
        if suspended:
            self._log.info("instance.takeover_seen", by=event.instance_id, **id_fields(list(suspended)))
            self._tasks.spawn(self.check_takeover(suspended))

    async def adopt(self, resource_ids: list[str]) -> dict[str, int]:
        """Serve the ids Redis says this instance owns among ``resource_ids``. Returns them."""
        try:
            return await self._adopt(resource_ids)
        finally:
            self.view.end_adopt(resource_ids)

    async def _adopt(self, resource_ids: list[str]) -> dict[str, int]:
        async with self.lock:  # after any register_resource of ours that is in flight
            if self.closed:
                return {}
            view = self.view
            missing = [rid for rid in resource_ids if rid not in view.owned and rid not in view.leaving]
            if not missing:
                return {}
            try:
                found = await self.registry.get_resources(self.service_name, missing)
            except ResourceRouterError as exc:
                self._log.warning("instance.adopt_failed", error=str(exc))
                self.view.needs_reconcile = True
                return {}
            adopted = {rid: r.fencing_token for rid, r in found.items() if r.owner_instance_id == self.instance_id}
            if adopted:
                self.view.gain(adopted, placed=self._placed_on_adopt)
                self._log.info("instance.adopted", **id_fields(list(adopted)))
            return adopted

    def stale(self, resource_ids: list[str]) -> None:
        """Requests found ids that another instance owns now (a confirmation in Redis): stop serving
        them at once, then confirm under the lock (as for a takeover event)."""
        suspended = self.view.suspend(resource_ids)
        if suspended:
            self._log.warning("instance.stale_requests_refused", **id_fields(list(suspended)))
            self._tasks.spawn(self.check_takeover(suspended))

    async def check_takeover(self, suspended: dict[str, int]) -> None:
        async with self.lock:
            if self.closed:
                return
            try:
                owners = await self.registry.get_owner_ids(self.service_name, list(suspended))
            except ResourceRouterError as exc:
                # Still suspended (not served); the next heartbeat re-reads ownership.
                self._log.warning("instance.takeover_check_failed", error=str(exc))
                self.view.needs_reconcile = True
                return
            kept = {rid: tok for rid, tok in suspended.items() if owners.get(rid) == self.instance_id}
            self.view.restore(kept)
            self.view.lose([rid for rid in suspended if rid not in kept], LossReason.TAKEN)
