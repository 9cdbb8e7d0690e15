"""Moving resources off an instance: drain, rebalance and idle release, all with one handoff.

A **handoff** of a batch of resources from instance A to volunteers:

1. A stops serving them (``OwnershipView.begin_leave``): requests that arrive for them wait (parked);
2. requests already running for them finish (up to the grace time; then they are cancelled, so that no
   handler of a resource ever runs on two instances at once);
3. ``on_deactivate(id, reason)`` runs for the ones A had activated (it may save state);
4. A reads their registration metadata, then releases them in Redis (owner-checked, one atomic step);
5. A registers each, with its metadata, for the volunteer the strategy picks (not forced: if a caller activated it
   somewhere meanwhile, that owner stays), with that volunteer's own per-instance limit (a full or
   dead volunteer is skipped for the next one). The new grant carries a larger fencing token. The
   volunteer learns it from the ownership event and serves it; ``on_activate`` runs there before its
   first request;
6. the parked requests are answered "not owner" naming the new owner, so their callers follow at once.
   Callers that still had A cached get the same redirect for a while.

Between 4 and 5 a resource has no owner for one round trip; a call in that moment activates it on a
volunteer (the same one, under ``hash``). There is never a moment with two owners.

* **drain**: every resource of the instance, in batches, to the other volunteers (the instance has
  stopped volunteering first). With no volunteer left, resources are only released.
* **rebalance** (opt-in): placed resources whose strategy choice is now another volunteer move there
  (``hash``: exactly the ids the newcomer wins; ``least_loaded``/``random``: the surplus above the
  average load), at most ``rate`` ids per second.
* **idle**: placed resources without a request for ``idle_timeout`` seconds are released.
"""

from __future__ import annotations

import asyncio
import json
import math
import time
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol

from prometheus_client import CollectorRegistry

from resource_router.errors import (
    InstanceNotAliveError,
    ResourceLimitExceededError,
    ResourceReleaseError,
    ResourceRouterError,
)
from resource_router.models import ResourceReleaseResponse
from resource_router.observability.logs import Logger, id_fields
from resource_router.ownership.registry import ResourceRegistry
from resource_router.ownership.view import OwnershipView
from resource_router.ownership.volunteers import Volunteer
from resource_router.placement.directory import VolunteerDirectory
from resource_router.placement.strategies import rank, service_strategy
from resource_router.reasons import LossReason

__all__ = ["MoveReport", "Mover"]

_BATCH = 200


@dataclass
class MoveReport:
    """What a drain (or another move) did: ``moved`` (id -> new owner), ``released`` (no volunteer
    took them), ``kept`` (still here: the release failed, e.g. Redis unreachable)."""

    moved: dict[str, str] = field(default_factory=dict)
    released: list[str] = field(default_factory=list)
    kept: list[str] = field(default_factory=list)

    @property
    def moved_count(self) -> int:
        return len(self.moved)

    def add(self, other: MoveReport) -> None:
        self.moved.update(other.moved)
        self.released.extend(other.released)
        self.kept.extend(other.kept)


class Requests(Protocol):
    """What a move needs from the instance's request side (its dispatcher)."""

    async def quiesce(self, ids: list[str], grace: float | None = None) -> None:
        """Wait until no request for ``ids`` runs here; after ``grace`` seconds, cancel them."""

    def busy(self) -> set[str]:
        """Resources with a request running, queued or waiting here."""


class Mover:
    """Hands resources of one instance to volunteers (see the module docstring)."""

    def __init__(
        self,
        *,
        registry: ResourceRegistry,
        view: OwnershipView,
        requests: Requests,
        lock: asyncio.Lock,
        directory: VolunteerDirectory,
        service_name: str,
        instance_id: str,
        log: Logger,
        metrics_registry: CollectorRegistry | None,
    ) -> None:
        self._registry = registry
        self._view = view
        self._requests = requests
        self._lock = lock
        self.directory = directory
        self._service = service_name
        self._iid = instance_id
        self._log = log
        self._metrics_registry = metrics_registry
        self._moves = registry.metrics.moves
        self._by_limit: dict[int, ResourceRegistry] = {}

    # -- a release --------------------------------------------------------------------------------
    async def release(
        self, ids: list[str], leaving: list[str], reason: str, *, grace: float, trace_id: str | None = None
    ) -> ResourceReleaseResponse:
        """Release ``ids``, of which ``leaving`` were taken out of service (``begin_leave``): wait for
        their running requests, run ``on_deactivate``, then release them in Redis (errors raised)."""
        view = self._view
        keep: list[str] = []
        try:
            await self._requests.quiesce(leaving, grace)
            await view.deactivate(leaving, reason)
            async with self._lock:
                try:
                    return await self._registry.release_resource(self._service, self._iid, ids, trace_id=trace_id)
                except ResourceRouterError as exc:
                    owners = getattr(exc, "owners", None)
                    if isinstance(owners, dict):  # 403: nothing was released; ids owned by others are gone
                        keep = [rid for rid in leaving if rid not in owners]
                    else:  # Redis failed: the release may or may not have happened
                        self._view.needs_reconcile = True  # the release may or may not have happened
                    raise
        finally:
            view.end_leave(leaving, keep=keep)

    async def release_quietly(self, ids: list[str], reason: str, *, grace: float) -> None:
        try:
            await self.release(ids, ids, reason, grace=grace)
        except ResourceRouterError as exc:
            self._log.warning("instance.release_failed", error=str(exc), resources=len(ids))

    # -- one batch -------------------------------------------------------------------------------
    async def move(
        self, ids: Sequence[str], reason: str, volunteers: list[Volunteer] | None, *, grace: float
    ) -> MoveReport:
        """Hand ``ids`` (those still owned) to ``volunteers`` by the service's strategy, or only release
        them when ``volunteers`` is None or empty."""
        view = self._view
        leaving = view.begin_leave(ids)
        report = MoveReport()
        if not leaving:
            return report
        try:
            await self._requests.quiesce(leaving, grace)
            try:
                await asyncio.wait_for(view.deactivate(leaving, reason), max(grace, 0.001))
            except TimeoutError:
                self._log.warning("instance.deactivate_timeout", reason=reason, resources=len(leaving))
            metadata = await self._metadata(leaving) if volunteers else {}
            done, taken = await self._release(leaving)
            report.moved.update(taken)
            if done is None:
                report.kept = leaving
                return report
            released = done
            if volunteers:
                report.moved.update(await self._hand_over(released, volunteers, metadata))
            report.released = [rid for rid in released if rid not in report.moved]
            self._log.info(
                "instance.moved",
                reason=reason,
                moved=len(report.moved),
                released=len(report.released),
                **id_fields(leaving),
            )
        finally:
            view.end_leave(leaving, moved=report.moved, keep=report.kept)
            for result, ids_ in (("moved", report.moved), ("released", report.released), ("kept", report.kept)):
                self._moves.labels(self._service, reason, result).inc(len(ids_))
        return report

    async def _release(self, ids: list[str]) -> tuple[list[str] | None, dict[str, str]]:
        """Release ``ids`` in Redis: (released ids, or None when it failed; ids another instance took)."""
        async with self._lock:
            try:
                await self._registry.release_resource(self._service, self._iid, ids)
                return ids, {}
            except ResourceReleaseError as exc:  # some were taken by force meanwhile: release the others
                taken = dict(exc.owners)
                rest = [rid for rid in ids if rid not in taken]
                try:
                    if rest:
                        await self._registry.release_resource(self._service, self._iid, rest)
                    return rest, taken
                except ResourceRouterError as again:
                    self._log.warning("instance.move_release_failed", error=str(again))
            except ResourceRouterError as exc:
                self._log.warning("instance.move_release_failed", error=str(exc))
            self._view.needs_reconcile = True  # the release may or may not have happened
            return None, {}

    async def _metadata(self, ids: list[str]) -> dict[str, dict[str, Any]]:
        """The registration metadata of ``ids`` (one read), to register them with it where they go;
        empty when the read fails (they move without it, as a warning says)."""
        try:
            found = await self._registry.get_resources(self._service, ids)
        except ResourceRouterError as exc:
            self._log.warning("instance.handoff_metadata_unread", error=str(exc), resources=len(ids))
            return {}
        return {rid: r.metadata for rid, r in found.items() if r.metadata and r.owner_instance_id == self._iid}

    async def _hand_over(
        self, ids: list[str], volunteers: list[Volunteer], metadata: dict[str, dict[str, Any]]
    ) -> dict[str, str]:
        """Register ``ids`` for the volunteers the strategy picks, each with its ``metadata`` (one call
        per target and distinct metadata); returns id -> new owner."""
        strategy = service_strategy(volunteers)
        candidates = [Volunteer(v.instance_id, v.placement, v.limit, v.owned) for v in volunteers]
        out: dict[str, str] = {}
        todo = list(ids)
        while todo and candidates:
            plan: dict[str, list[str]] = {}
            for rid in todo:
                target = rank(strategy, rid, candidates)[0]
                target.owned += 1
                plan.setdefault(target.instance_id, []).append(rid)
            todo = []
            for target_id, rids in plan.items():
                target = next(v for v in candidates if v.instance_id == target_id)
                registry = self._registry_for(target.limit)
                for meta, group in _by_metadata(rids, metadata):
                    try:
                        response = await registry.register_resource(self._service, target_id, group, metadata=meta)
                    except (ResourceLimitExceededError, InstanceNotAliveError) as exc:
                        self._log.info("instance.handoff_skipped", to=target_id, error=exc.type)
                        candidates.remove(target)
                        todo.extend(rid for rid in rids if rid not in out)
                        break
                    except ResourceRouterError as exc:
                        self._log.warning("instance.handoff_failed", to=target_id, error=str(exc))
                        continue
                    out.update(dict.fromkeys(response.registered, target_id))
                    out.update(response.conflicts)
        return out

    def _registry_for(self, limit: int) -> ResourceRegistry:
        """A registry on the same client that enforces the target volunteer's own limit."""
        if limit <= 0:
            return self._registry
        registry = self._by_limit.get(limit)
        if registry is None:
            registry = ResourceRegistry(
                self._registry.redis,
                namespace=self._registry.namespace,
                max_resources_per_instance=limit,
                settings=self._registry.settings,
                metrics_registry=self._metrics_registry,
            )
            self._by_limit[limit] = registry
        return registry

    # -- drain -----------------------------------------------------------------------------------
    async def drain(self, seconds: float) -> MoveReport:
        """Hand every resource of the instance to the other volunteers, within ``seconds``."""
        deadline = time.monotonic() + seconds
        report = MoveReport()
        try:
            volunteers = [v for v in await self.directory.get(self._service, fresh=True) if v.instance_id != self._iid]
        except ResourceRouterError as exc:
            self._log.warning("instance.drain_no_volunteers", error=str(exc))
            volunteers = []
        for _pass in range(3):  # ids gained meanwhile (adoptions in flight) get another pass
            ids = sorted(set(self._view.owned).difference(report.kept))
            if not ids:
                break
            for start in range(0, len(ids), _BATCH):
                grace = max(0.0, deadline - time.monotonic())
                report.add(await self.move(ids[start : start + _BATCH], LossReason.DRAINED, volunteers, grace=grace))
        return report

    # -- rebalance -------------------------------------------------------------------------------
    async def rebalance_once(self, rate: float, *, pause: Callable[[float], Awaitable[Any]] = asyncio.sleep) -> int:
        """Move placed ids whose strategy choice is another volunteer now; returns how many moved."""
        volunteers = await self.directory.get(self._service, fresh=True)
        me = next((v for v in volunteers if v.instance_id == self._iid), None)
        if me is None or len(volunteers) < 2:
            return 0
        others = [v for v in volunteers if v.instance_id != self._iid]
        strategy = service_strategy(volunteers)
        placed = sorted(rid for rid in self._view.placed if rid in self._view.owned)
        if strategy == "hash":
            wanted = [rid for rid in placed if rank("hash", rid, volunteers)[0].instance_id != self._iid]
        else:
            average = sum(v.owned for v in volunteers) / len(volunteers)
            surplus = me.owned - math.ceil(average)
            wanted = placed[: max(0, surplus)]
        if not wanted:
            return 0
        batch = max(1, min(_BATCH, int(rate / 10) or 1))
        moved = 0
        for start in range(0, len(wanted), batch):
            chunk = [rid for rid in wanted[start : start + batch] if rid in self._view.owned]
            # Among the others, the hash choice of an id this instance does not win stays the same.
            report = await self.move(chunk, LossReason.REBALANCED, others, grace=5.0)
            moved += len(report.moved)
            await pause(len(chunk) / rate)
        self._log.info("instance.rebalanced", moved=moved, strategy=strategy)
        return moved

    # -- idle ------------------------------------------------------------------------------------
    async def release_idle(self, idle_timeout: float, grace: float) -> int:
        """Release placed ids not called for ``idle_timeout`` seconds (and not busy); returns how many."""
        busy = self._requests.busy()
        ids = [rid for rid in self._view.idle(idle_timeout) if rid not in busy]
        released = 0
        for start in range(0, len(ids), _BATCH):
            report = await self.move(ids[start : start + _BATCH], LossReason.IDLE, None, grace=grace)
            released += len(report.released)
        return released


def _by_metadata(ids: list[str], metadata: dict[str, dict[str, Any]]) -> list[tuple[dict[str, Any] | None, list[str]]]:
    """``ids`` grouped by equal metadata, in first-seen order (ids without metadata: ``None``)."""
    groups: dict[str, tuple[dict[str, Any] | None, list[str]]] = {}
    for rid in ids:
        meta = metadata.get(rid)
        key = "" if meta is None else json.dumps(meta, sort_keys=True)
        groups.setdefault(key, (meta, []))[1].append(rid)
    return list(groups.values())
