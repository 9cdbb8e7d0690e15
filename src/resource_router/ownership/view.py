"""The ownership view of one instance: what it owns, until when, and the hooks run when that changes.

No Redis here. The lease keeper (``routing/lease_keeper.py``) feeds the view from registrations,
heartbeats and ownership events; the dispatcher reads it for every request (through its admission
rule, ``routing/admission.py``); moves (``placement/handoff.py``) take ids out of it. Everything is
plain state and asyncio, so it is tested without a server. Every change goes through a method, which
bumps ``epoch``: a request admitted at one epoch may run without asking again while the epoch and the
lease clock say nothing changed.

* ``owned``: resource id -> fencing token, the ids the instance serves.
* The **lease clock**: ``lease_until = t_sent + ttl`` of the last successful heartbeat (or
  registration), by the monotonic clock. Redis set its expiry later than ``t_sent``, so the local lease
  never outlives the one in Redis; once it has run out the instance serves nothing.
* ``placed``: ids the instance got by placement (activation on a call) or by handoff, with the time of
  their last request: the ones ``idle_timeout`` may release. Ids registered explicitly are not in it.
* **Moves**: ids being released or handed over (``leaving``) and ids being adopted (``adopting``) are
  not served; requests for them wait for ``settled(id)``, which resolves when the move or the
  adoption is over (``end_leave``, ``end_adopt``).
* **Lifecycle hooks.** ``on_activate(resource_id)`` runs once before the first request the instance
  serves for a resource it gained (by registration, activation or handoff); ``on_deactivate(
  resource_id, reason)`` runs once when it loses a resource it had activated, with a ``LossReason``.
  Hooks may be plain or ``async`` functions. A failing ``on_activate`` fails the request (and the
  dispatcher releases the resource); a failing ``on_deactivate`` is logged. ``on_deactivate`` waits
  for the requests still running for the resource (``RunningRequests.quiesce``).
* ``on_resource_lost(ids)``: the application's callback for ids lost *involuntarily* (expired, taken
  by force), called once per loss, before anything else runs.
"""

from __future__ import annotations

import asyncio
import inspect
import time
from collections.abc import Awaitable, Callable, Iterable, Mapping
from typing import Any, Final, Protocol

from resource_router.errors import ActivationError
from resource_router.observability.logs import Logger, get_logger, id_fields
from resource_router.reasons import LossReason
from resource_router.transport.tasks import TaskSet

__all__ = [
    "ActivateHook",
    "DeactivateHook",
    "OwnershipView",
    "ResourceLostCallback",
    "RunningRequests",
]

#: ``async def on_activate(resource_id: str) -> None`` (a plain function is accepted too).
ActivateHook = Callable[[str], Awaitable[None] | None]
#: ``async def on_deactivate(resource_id: str, reason: str) -> None``.
DeactivateHook = Callable[[str, str], Awaitable[None] | None]
#: Called with the ids an instance lost (sync, or async: then run as a task).
ResourceLostCallback = Callable[[list[str]], Awaitable[None] | None]

_MOVED_LIMIT: Final = 100_000


class RunningRequests(Protocol):
    """The instance's requests, as the view waits for them before ``on_deactivate``."""

    async def quiesce(self, ids: list[str], grace: float | None = None) -> None:
        """Wait until no request for ``ids`` runs; after ``grace`` seconds, cancel them."""


async def _call_hook(fn: Callable[..., Awaitable[None] | None], *args: Any) -> None:
    result = fn(*args)
    if inspect.isawaitable(result):
        await result


class OwnershipView:
    """What one instance owns and until when; see the module docstring."""

    def __init__(
        self,
        ttl: float,
        *,
        requests: RunningRequests | None = None,
        tasks: TaskSet | None = None,
        log: Logger | None = None,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.ttl = ttl
        self.owned: dict[str, int] = {}
        self.lease_until = 0.0
        #: bumped by every change of what is served (see the module docstring)
        self.epoch = 0
        #: False until the instance serves, and from the moment it stops (``set_serving``)
        self.serving = False
        self.placed: dict[str, float] = {}
        #: ids not served while a takeover is confirmed (see ``suspend``)
        self.suspended: dict[str, int] = {}
        self.active: set[str] = set()
        #: ids being released or handed over: not served (requests for them wait, then are redirected)
        self.leaving: dict[str, int] = {}
        #: ids registered for this instance elsewhere, being adopted: requests for them wait
        self.adopting: set[str] = set()
        #: suspended ids whose requests wait for the confirmation (after a master change) instead
        #: of being refused
        self.holding: set[str] = set()
        #: id -> where it went (an instance id, or None when it was only released): redirect hints
        self.moved: dict[str, str | None] = {}
        #: the view may differ from Redis (a lost reply, a failed move): re-read it at the next heartbeat
        self.needs_reconcile = False
        self._settled: dict[str, asyncio.Future[None]] = {}
        self._on_activate: ActivateHook | None = None
        self._on_deactivate: DeactivateHook | None = None
        #: True when a hook is set (then resources are activated before their first request)
        self.hooks = False
        self.on_resource_lost: ResourceLostCallback | None = None
        self._requests = requests
        self._activating: dict[str, asyncio.Future[None]] = {}
        self._tasks = tasks if tasks is not None else TaskSet()
        #: the monotonic clock the lease is kept by (a plain function: read on every request)
        self.clock = self._clock = clock
        self._log = log or get_logger(__name__)

    # -- serving and the lease clock ---------------------------------------------------------------
    def set_serving(self, value: bool) -> None:
        """Start (or stop) serving: every request is refused while it is False."""
        self.serving = value
        self.epoch += 1

    def renewed(self, sent: float) -> None:
        """A heartbeat (or registration) sent at ``sent`` (monotonic) succeeded."""
        self.lease_until = sent + self.ttl

    def expire(self) -> None:
        self.lease_until = 0.0

    @property
    def lease_valid(self) -> bool:
        return self._clock() < self.lease_until

    # -- gaining and losing ------------------------------------------------------------------------
    def gain(self, tokens: Mapping[str, int], *, placed: bool = False) -> None:
        """Ids granted to this instance (by registration, activation, handoff or adoption)."""
        self.owned.update(tokens)
        self.epoch += 1
        moved = self.moved
        for rid in tokens:
            moved.pop(rid, None)
        if placed:
            now = self._clock()
            for rid in tokens:
                self.placed.setdefault(rid, now)

    def pin(self, ids: Iterable[str]) -> None:
        """Ids registered explicitly: never released for being idle."""
        for rid in ids:
            self.placed.pop(rid, None)

    def sync(self, server: Mapping[str, int], *, placed: bool) -> dict[str, int]:
        """Make the view equal to ``server`` (what Redis says the instance owns, with tokens): ids it
        does not name are lost (expired), suspended ids it names are served again, ids being moved
        stay out. Returns the ids gained (adopted)."""
        self.lose([rid for rid in [*self.owned, *self.suspended] if rid not in server], LossReason.EXPIRED)
        self.restore({rid: tok for rid, tok in server.items() if rid in self.suspended})
        current = {rid: tok for rid, tok in server.items() if rid not in self.leaving}
        adopted = {rid: tok for rid, tok in current.items() if rid not in self.owned}
        self.owned.update(current)
        self.epoch += 1
        if adopted:
            self.gain(adopted, placed=placed)
        self.needs_reconcile = False
        return adopted

    def suspend(self, ids: Iterable[str], *, hold: bool = False) -> dict[str, int]:
        """Stop serving ``ids`` at once (a takeover was seen); the caller confirms, then ``restore``s or
        ``lose``s them. With ``hold``, requests for them wait for that instead of being refused (a
        master change: they are most likely still this instance's). Returns the ids that were owned,
        with their tokens."""
        taken = {rid: self.owned.pop(rid) for rid in ids if rid in self.owned}
        if taken:
            self.epoch += 1
            if hold:
                self.holding.update(taken)
        self.suspended.update(taken)
        return taken

    def restore(self, tokens: Mapping[str, int]) -> None:
        """Serve suspended ids again (Redis says they are still this instance's), with ``tokens``."""
        for rid, token in tokens.items():
            if self.suspended.pop(rid, None) is not None:
                self.owned.setdefault(rid, token)
        self.epoch += 1
        self._unhold(tokens)

    def begin_leave(self, ids: Iterable[str]) -> list[str]:
        """Stop serving ``ids`` because they are being released or handed over (requests for them wait
        for ``end_leave``). Returns the ids that were owned."""
        out = []
        for rid in ids:
            token = self.owned.pop(rid, None)
            if token is not None:
                self.leaving[rid] = token
                out.append(rid)
        if out:
            self.epoch += 1
        return out

    def end_leave(
        self, ids: Iterable[str], *, moved: Mapping[str, str | None] | None = None, keep: Iterable[str] = ()
    ) -> None:
        """The move of ``ids`` is over: ``keep`` are served again (the release did not happen), the others
        are gone (``moved`` says where to, for redirects). Requests that waited for them go on."""
        kept = set(keep)
        ids = list(ids)
        for rid in ids:
            token = self.leaving.pop(rid, None)
            if rid in kept and token is not None:
                self.owned[rid] = token
            else:
                self.placed.pop(rid, None)
        if moved:
            self.moved_to(moved)
        self.epoch += 1
        self._settle(ids)

    def begin_adopt(self, ids: Iterable[str]) -> None:
        """Ids an event says were registered for this instance elsewhere: requests wait for ``end_adopt``."""
        self.adopting.update(ids)
        self.epoch += 1

    def end_adopt(self, ids: Iterable[str]) -> None:
        ids = list(ids)
        self.adopting.difference_update(ids)
        self.epoch += 1
        self._settle(ids)

    def settled(self, resource_id: str) -> asyncio.Future[None]:
        """Resolved when ``resource_id`` is no longer being moved, adopted or held (at once when it is not)."""
        fut = self._settled.get(resource_id)
        if fut is None:
            fut = asyncio.get_running_loop().create_future()
            if self.waiting(resource_id):
                self._settled[resource_id] = fut
            else:
                fut.set_result(None)
        return fut

    def waiting(self, resource_id: str) -> bool:
        """True while requests for ``resource_id`` wait (it is being moved, adopted or confirmed)."""
        return resource_id in self.leaving or resource_id in self.adopting or resource_id in self.holding

    def _unhold(self, ids: Iterable[str]) -> None:
        if self.holding:
            ids = [rid for rid in ids if rid in self.holding]
            self.holding.difference_update(ids)
            self._settle(ids)

    def settle_all(self) -> None:
        """Let every waiting request go on (the instance stops)."""
        self._settle(list(self._settled))

    def _settle(self, ids: list[str]) -> None:
        for rid in ids:
            if self.waiting(rid):
                continue
            fut = self._settled.pop(rid, None)
            if fut is not None and not fut.done():
                fut.set_result(None)

    def lose(self, ids: Iterable[str], reason: str, *, involuntary: bool = True) -> list[str]:
        """Drop ids (owned or suspended) from the view. Involuntary losses (expired, taken) are logged and
        told to ``on_resource_lost``; ``on_deactivate`` runs for the activated ones once the requests
        still running for them are done. Returns the ids that were owned or active."""
        dropped: list[str] = []
        active: list[str] = []
        for rid in ids:
            was_owned = self.owned.pop(rid, None) is not None
            was_suspended = self.suspended.pop(rid, None) is not None
            self.placed.pop(rid, None)
            if rid in self.active:
                self.active.discard(rid)
                active.append(rid)
            elif not (was_owned or was_suspended):
                continue
            dropped.append(rid)
        self._unhold(dropped)
        if not dropped:
            return dropped
        self.epoch += 1
        if involuntary:
            self._log.warning("instance.resources_lost", reason=reason, **id_fields(dropped))
            self._notify_lost(dropped)
        if active and self.on_deactivate is not None:
            self._tasks.spawn(self._deactivate_after_requests(active, reason))
        return dropped

    def clear(self, reason: str, *, involuntary: bool) -> list[str]:
        """Lose everything (owned and suspended)."""
        return self.lose([*self.owned, *self.suspended], reason, involuntary=involuntary)

    # -- hooks -------------------------------------------------------------------------------------
    @property
    def on_activate(self) -> ActivateHook | None:
        return self._on_activate

    @on_activate.setter
    def on_activate(self, hook: ActivateHook | None) -> None:
        self._on_activate = hook
        self.hooks = hook is not None or self._on_deactivate is not None

    @property
    def on_deactivate(self) -> DeactivateHook | None:
        return self._on_deactivate

    @on_deactivate.setter
    def on_deactivate(self, hook: DeactivateHook | None) -> None:
        self._on_deactivate = hook
        self.hooks = hook is not None or self._on_activate is not None

    def needs_activation(self, resource_id: str) -> bool:
        return self.hooks and resource_id not in self.active

    async def activate(self, resource_id: str) -> None:
        """Run ``on_activate`` once for ``resource_id`` (concurrent callers wait for the same run).
        Raises ``ActivationError`` when it raised."""
        if resource_id in self.active:
            return
        running = self._activating.get(resource_id)
        if running is None:
            running = asyncio.get_running_loop().create_future()
            self._activating[resource_id] = running
            try:
                if self.on_activate is not None:
                    await _call_hook(self.on_activate, resource_id)
            except Exception as exc:
                error = ActivationError(resource_id, exc)
                running.set_exception(error)
                running.exception()  # retrieved: waiters (if any) see it through their await
                self._log.warning("instance.activate_failed", resource_id=resource_id, error=str(error))
                raise error from exc
            else:
                if resource_id in self.owned:
                    self.active.add(resource_id)
                running.set_result(None)
            finally:
                del self._activating[resource_id]
            return
        await asyncio.shield(running)

    async def deactivate(self, ids: Iterable[str], reason: str) -> None:
        """Run ``on_deactivate(id, reason)`` for the activated ones among ``ids`` (concurrently)."""
        active = [rid for rid in ids if rid in self.active]
        for rid in active:
            self.active.discard(rid)
        await self._run_deactivate(active, reason)

    async def _run_deactivate(self, active: list[str], reason: str) -> None:
        hook = self.on_deactivate
        if hook is None or not active:
            return
        results = await asyncio.gather(*(_call_hook(hook, rid, reason) for rid in active), return_exceptions=True)
        for rid, result in zip(active, results, strict=True):
            if isinstance(result, BaseException):
                self._log.warning(
                    "instance.deactivate_failed",
                    resource_id=rid,
                    reason=reason,
                    error=f"{type(result).__name__}: {result}",
                )

    async def _deactivate_after_requests(self, ids: list[str], reason: str) -> None:
        if self._requests is not None:
            await self._requests.quiesce(ids)
        await self._run_deactivate(ids, reason)

    # -- idle and moves ----------------------------------------------------------------------------
    def touch(self, resource_id: str) -> None:
        if resource_id in self.placed:
            self.placed[resource_id] = self._clock()

    def idle(self, timeout: float) -> list[str]:
        """Placed ids without a request for ``timeout`` seconds (and not being moved)."""
        limit = self._clock() - timeout
        return [rid for rid, used in self.placed.items() if used <= limit and rid not in self.leaving]

    def moved_to(self, resource_ids: Mapping[str, str | None]) -> None:
        if len(self.moved) + len(resource_ids) > _MOVED_LIMIT:
            self.moved.clear()
        self.moved.update(resource_ids)

    # -- callbacks ---------------------------------------------------------------------------------
    def _notify_lost(self, ids: list[str]) -> None:
        callback = self.on_resource_lost
        if callback is None:
            return
        try:
            result = callback(list(ids))
        except Exception:
            self._log.exception("instance.on_resource_lost_failed")
            return
        if inspect.isawaitable(result):
            self._tasks.spawn(self._await_logged(result))

    async def _await_logged(self, awaitable: Awaitable[Any]) -> None:
        try:
            await awaitable
        except Exception:
            self._log.exception("instance.on_resource_lost_failed")

    async def aclose(self) -> None:
        """Wait for the hooks and callbacks still running (a stopping instance lets them finish)."""
        await self._tasks.wait()
