"""Stale requests: which requests must have their ownership confirmed in Redis before they run.

A request can sit in the instance's socket *ahead of* the ownership event that takes its resource
away: the instance was paused (a GC pause, SIGSTOP, an overloaded host) for less than its ttl, so its
local lease still looks valid. A request is **stale** when it waited longer than ``confirm_after``
since its caller sent it (``ts``) or inside the instance (for a slot, in a mailbox, across a stall),
or when it was read while the event loop was stalled for longer than that, or just after (a timer
that should tick every few ms did not). Its ownership is confirmed first: one batched read of owners
for every request waiting to be confirmed. Ids another instance owns by then leave the view at once
(``LeaseKeeper.stale``); if the read fails, the request is refused (the caller re-resolves).
"""

from __future__ import annotations

import asyncio
import time
from typing import Final

from resource_router.errors import ResourceRouterError
from resource_router.observability.logs import Logger
from resource_router.ownership.registry import ResourceRegistry
from resource_router.ownership.view import OwnershipView
from resource_router.routing.lease_keeper import LeaseKeeper

__all__ = ["SUSPECT", "Staleness"]

#: ``received`` of a request that must be confirmed in Redis before it runs, however soon it runs.
SUSPECT: Final = float("-inf")


class Staleness:
    """Stall detection and confirmation of one instance (see the module docstring)."""

    def __init__(
        self,
        *,
        confirm_after: float,
        registry: ResourceRegistry,
        view: OwnershipView,
        keeper: LeaseKeeper,
        service_name: str,
        instance_id: str,
        batch: int,
        log: Logger,
    ) -> None:
        self.confirm_after = confirm_after
        self._registry = registry
        self._view = view
        self._keeper = keeper
        self._service = service_name
        self._iid = instance_id
        self._batch = batch
        self._log = log
        self._tick = min(0.05, max(0.005, confirm_after / 2.0))
        self._stall_limit = self._tick + confirm_after
        self._last_tick = time.monotonic()
        self._stalled_at = float("-inf")
        self._tick_handle: asyncio.TimerHandle | None = None
        self._confirming: dict[str, list[asyncio.Future[bool]]] = {}
        self._confirm_task: asyncio.Task[None] | None = None

    # -- the stall clock -----------------------------------------------------------------------------
    def start(self) -> None:
        self._last_tick = time.monotonic()
        self._tick_handle = asyncio.get_running_loop().call_later(self._tick, self._on_tick)

    def stop(self) -> None:
        if self._tick_handle is not None:
            self._tick_handle.cancel()
            self._tick_handle = None

    def _on_tick(self) -> None:
        now = time.monotonic()
        if now - self._last_tick > self._stall_limit:
            self._stalled_at = now
            self._log.warning("instance.loop_stalled", stalled_ms=round((now - self._last_tick) * 1000.0, 1))
        self._last_tick = now
        self._tick_handle = asyncio.get_running_loop().call_later(self._tick, self._on_tick)

    # -- judging requests ----------------------------------------------------------------------------
    def received(self, mono: float, now: float, sent_at: float | None) -> float:
        """When a request read at ``mono`` (monotonic; ``now``: wall clock) counts as received:
        ``mono``, or ``SUSPECT`` when it must be confirmed however soon it runs."""
        limit = self._stall_limit
        if (
            mono - self._last_tick > limit
            or mono - self._stalled_at < limit
            or (sent_at is not None and now - sent_at > self.confirm_after)
        ):
            return SUSPECT
        return mono

    def stale(self, received: float) -> bool:
        """True when a request received at ``received`` must be confirmed before it runs now."""
        now = time.monotonic()
        return now - received > self.confirm_after or now - self._last_tick > self._stall_limit

    # -- confirming in Redis -------------------------------------------------------------------------
    def confirm(self, resource_id: str) -> asyncio.Future[bool]:
        """True when Redis says this instance owns ``resource_id`` (one batched read for every id waiting)."""
        fut: asyncio.Future[bool] = asyncio.get_running_loop().create_future()
        self._confirming.setdefault(resource_id, []).append(fut)
        if self._confirm_task is None:
            self._confirm_task = asyncio.get_running_loop().create_task(self._confirm_batches())
        return fut

    async def _confirm_batches(self) -> None:
        try:
            while self._confirming:
                batch, self._confirming = self._confirming, {}
                ids = list(batch)
                try:
                    owners: dict[str, str | None] = {}
                    for start in range(0, len(ids), self._batch):
                        owners.update(
                            await self._registry.get_owner_ids(self._service, ids[start : start + self._batch])
                        )
                except ResourceRouterError as exc:
                    self._log.warning("instance.confirm_failed", error=str(exc), resources=len(ids))
                    owners = {}  # cannot confirm: refuse (the caller re-resolves)
                stale = {rid for rid in ids if owners.get(rid) != self._iid}
                self._log.info("instance.ownership_confirmed", resources=len(ids), stale=len(stale))
                for rid, futures in batch.items():
                    ok = rid not in stale
                    for fut in futures:
                        if not fut.done():
                            fut.set_result(ok)
                if owners:  # the read worked: ids another instance owns now leave the view
                    taken = [rid for rid in ids if rid in stale and rid in self._view.owned]
                    if taken:
                        self._keeper.stale(taken)
        finally:
            self._confirm_task = None
