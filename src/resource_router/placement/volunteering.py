"""The volunteer side of placement: being listed, claiming activations, rebalancing, idle release.

An instance made with ``accept_placement=True`` joins the service's volunteers when it starts
(``registry.add_volunteer``) and stays listed while it is alive and not draining (it re-asserts its
record every ttl, and after its lease had to be registered again). While it accepts:

* **claims**: an activation request for a resource nobody owned is claimed through the registry's
  atomic grant (``register_resource``, not forced). Claims made in the same moment share one
  registration (one round trip for up to 500 ids). A conflict means another instance won (the caller is
  redirected there); at the per-instance limit the instance takes as many as fit and answers the rest
  "full" (the caller tries the next volunteer).
* **rebalance** (``rebalance=True``): when a volunteer joins (its ``VolunteerJoined`` event) and every
  ttl, placed resources whose strategy choice is another volunteer are handed there (``handoff.py``).
* **idle** (``idle_timeout``): placed resources without a request for that long are released.
"""

from __future__ import annotations

import asyncio
import contextlib
from typing import NamedTuple

from resource_router.errors import InstanceNotAliveError, ResourceLimitExceededError, ResourceRouterError
from resource_router.observability.logs import Logger, id_fields
from resource_router.ownership.registry import ResourceRegistry
from resource_router.ownership.view import OwnershipView
from resource_router.placement.handoff import Mover

__all__ = ["Claim", "Volunteering"]

_CLAIM_BATCH = 500


class Claim(NamedTuple):
    """The outcome of claiming a resource for an activation: its token, or why not."""

    token: int | None = None
    owner: str | None = None  # another instance owns it
    full: bool = False  # the per-instance limit is reached
    refused: bool = False  # the instance takes no activations (draining, lease lost)


class Volunteering:
    """Placement on one instance (see the module docstring)."""

    def __init__(
        self,
        *,
        registry: ResourceRegistry,
        view: OwnershipView,
        mover: Mover,
        lock: asyncio.Lock,
        service_name: str,
        instance_id: str,
        placement: str,
        ttl: float,
        rebalance: bool,
        rebalance_rate: float,
        idle_timeout: float | None,
        drain_timeout: float,
        log: Logger,
    ) -> None:
        self._registry = registry
        self._view = view
        self._mover = mover
        self._lock = lock
        self._service = service_name
        self._iid = instance_id
        self.placement = placement
        self._ttl = ttl
        self.rebalance = rebalance
        self.rebalance_rate = rebalance_rate
        self.idle_timeout = idle_timeout
        self._drain_timeout = drain_timeout
        self._log = log
        #: True while activations are claimed here (a volunteer that is not draining or stopping)
        self.accepting = False
        self._claims: dict[str, asyncio.Future[Claim]] = {}
        self._queue: list[str] = []
        self._claimer: asyncio.Task[None] | None = None
        self._wanted = asyncio.Event()
        #: ids per claim outcome: activated (granted here), owned_elsewhere, full, refused, error
        self._activations = {
            name: registry.metrics.activations.labels(service_name, name)
            for name in ("activated", "owned_elsewhere", "full", "refused", "error")
        }

    # -- the volunteer hash ------------------------------------------------------------------------
    async def join(self) -> None:
        self.accepting = True
        await self._registry.add_volunteer(
            self._service, self._iid, placement=self.placement, limit=self._registry.max_resources_per_instance
        )

    async def rejoin(self) -> None:
        """The lease was registered again (it had run out): list it again if it was a volunteer."""
        if self.accepting:
            await self.join()

    async def leave(self) -> None:
        """No more activations here, and off the list (callers stop choosing this instance)."""
        was = self.accepting
        self.accepting = False
        if not was:
            return
        try:
            await self._registry.remove_volunteer(self._service, self._iid)
        except ResourceRouterError as exc:  # its record goes with its lease anyway
            self._log.warning("instance.leave_volunteers_failed", error=str(exc))

    def volunteer_joined(self, instance_id: str) -> None:
        if self.rebalance and instance_id != self._iid:
            self._wanted.set()

    # -- claims ------------------------------------------------------------------------------------
    async def claim(self, resource_id: str) -> Claim:
        """Claim ``resource_id`` for an activation (coalesced with the claims of the same moment)."""
        if not self.accepting:
            return Claim(refused=True)
        pending = self._claims.get(resource_id)
        if pending is None:
            pending = asyncio.get_running_loop().create_future()
            self._claims[resource_id] = pending
            self._queue.append(resource_id)
            if self._claimer is None:
                self._claimer = asyncio.get_running_loop().create_task(self._claim_batches())
        return await asyncio.shield(pending)

    async def _claim_batches(self) -> None:
        try:
            while self._queue:
                ids, self._queue = self._queue[:_CLAIM_BATCH], self._queue[_CLAIM_BATCH:]
                try:
                    results = await self._claim_ids(ids)
                except ResourceRouterError as exc:
                    self._activations["error"].inc(len(ids))
                    for rid in ids:
                        fut = self._claims.pop(rid)
                        fut.set_exception(exc)
                        fut.exception()  # retrieved: each waiter sees it through its own await
                    continue
                for rid in ids:
                    self._claims.pop(rid).set_result(results[rid])
        finally:
            self._claimer = None

    async def _claim_ids(self, ids: list[str]) -> dict[str, Claim]:
        results = await self._grant(ids)
        for claim in results.values():
            if claim.token is None:
                self._activations["owned_elsewhere" if claim.owner else "full" if claim.full else "refused"].inc()
        return results

    async def _grant(self, ids: list[str]) -> dict[str, Claim]:
        registry = self._registry
        results: dict[str, Claim] = {}
        async with self._lock:
            if not self.accepting:
                return dict.fromkeys(ids, Claim(refused=True))
            try:
                try:
                    response = await registry.register_resource(self._service, self._iid, ids)
                except ResourceLimitExceededError as exc:
                    room = max(0, exc.limit - exc.current)
                    results.update(dict.fromkeys(ids[room:], Claim(full=True)))
                    ids = ids[:room]
                    if not ids:
                        return results
                    response = await registry.register_resource(self._service, self._iid, ids)
            except ResourceLimitExceededError:
                return {**results, **dict.fromkeys(ids, Claim(full=True))}
            except InstanceNotAliveError:
                return {**results, **dict.fromkeys(ids, Claim(refused=True))}
            self._view.gain(response.fencing_tokens, placed=True)
        for rid, token in response.fencing_tokens.items():
            results[rid] = Claim(token=token)
        for rid, owner in response.conflicts.items():
            results[rid] = Claim(owner=owner)
        if response.registered:
            self._activations["activated"].inc(len(response.registered))
            self._log.info("instance.activated", **id_fields(response.registered))
        return results

    # -- background loops --------------------------------------------------------------------------
    async def keep_listed(self) -> None:
        """Every ttl (and soon after a volunteer joins): stay listed; rebalance if asked to."""
        while True:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._wanted.wait(), self._ttl)
            await asyncio.sleep(0.05)  # joins close together are handled once
            self._wanted.clear()
            if not self.accepting:
                continue
            try:
                await self.join()
                if self.rebalance:
                    await self._mover.rebalance_once(self.rebalance_rate)
            except ResourceRouterError as exc:
                self._log.warning("instance.placement_check_failed", error=str(exc))
            except Exception:  # never let the loop die silently
                self._log.exception("instance.placement_check_failed")

    async def release_idle(self) -> None:
        """Every quarter of ``idle_timeout``: release the placed resources not called for that long."""
        assert self.idle_timeout is not None
        interval = max(0.01, min(self.idle_timeout / 4.0, 5.0))
        while True:
            await asyncio.sleep(interval)
            try:
                await self._mover.release_idle(self.idle_timeout, self._drain_timeout)
            except ResourceRouterError as exc:
                self._log.warning("instance.idle_release_failed", error=str(exc))
            except Exception:
                self._log.exception("instance.idle_release_failed")
