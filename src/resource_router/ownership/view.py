"""The ownership view of one instance: what it owns, until when, and the hooks run when that changes.

No Redis here. The lease keeper (``lease.py``) feeds the view from registrations, heartbeats and
ownership events; the dispatcher (``dispatcher.py``) reads it for every request; moves (``handoff.py``)
take ids out of it. Everything is plain state and asyncio, so it is tested without a server.

* ``owned``: resource id -> fencing token, the ids the instance serves.
* The **lease clock**: ``lease_until = t_sent + ttl`` of the last successful heartbeat (or
  registration), by the monotonic clock. Redis set its expiry later than ``t_sent``, so the local lease
  never outlives the one in Redis; once it has run out the instance serves nothing.
* ``placed``: ids the instance got by placement (activation on a call) or by handoff, with the time of
  their last request: the ones ``idle_timeout`` may release. Ids registered explicitly are not in it.
* **Lifecycle hooks.** ``on_activate(resource_id)`` runs once before the first request the instance
  serves for a resource it gained (by registration, activation or handoff); ``on_deactivate(
  resource_id, reason)`` runs once when it loses a resource it had activated, with one of the
  ``REASON_*`` values. Hooks may be plain or ``async`` functions. A failing ``on_activate`` fails the
  request (and the dispatcher releases the resource); a failing ``on_deactivate`` is logged.
* ``on_resource_lost(ids)``: the application's callback for ids lost *involuntarily* (expired, taken
  by force), called once per loss, before anything else runs.
"""

from __future__ import annotations

import asyncio
import inspect
import time
from collections.abc import Awaitable, Callable, Iterable, Mapping
from typing import Any, Final

from resource_router.observability.logs import Logger, get_logger, id_fields

__all__ = [
    "NO_RESOURCE",
    "REASONS",
    "REASON_DRAINED",
    "REASON_EXPIRED",
    "REASON_IDLE",
    "REASON_REBALANCED",
    "REASON_RELEASED",
    "REASON_STOPPED",
    "REASON_TAKEN",
    "REFUSE",
    "ActivateHook",
    "ActivationError",
    "DeactivateHook",
    "OwnershipView",
    "ResourceLostCallback",
]

#: ``async def on_activate(resource_id: str) -> None`` (a plain function is accepted too).
ActivateHook = Callable[[str], Awaitable[None] | None]
#: ``async def on_deactivate(resource_id: str, reason: str) -> None``.
DeactivateHook = Callable[[str, str], Awaitable[None] | None]
#: Called with the ids an instance lost (sync, or async: then run as a task).
ResourceLostCallback = Callable[[list[str]], Awaitable[None] | None]

#: Why ``on_deactivate`` runs.
REASON_RELEASED: Final = "released"  # release_resource
REASON_DRAINED: Final = "drained"  # handed to another instance by drain()
REASON_REBALANCED: Final = "rebalanced"  # handed to a volunteer that joined (rebalance=True)
REASON_IDLE: Final = "idle"  # not called for idle_timeout seconds
REASON_EXPIRED: Final = "expired"  # the lease ran out (in Redis, or by the local clock)
REASON_TAKEN: Final = "taken"  # taken over by force by another instance
REASON_STOPPED: Final = "stopped"  # the instance stopped gracefully and released everything
REASONS: Final = (
    REASON_RELEASED,
    REASON_DRAINED,
    REASON_REBALANCED,
    REASON_IDLE,
    REASON_EXPIRED,
    REASON_TAKEN,
    REASON_STOPPED,
)

REFUSE: Final = -1  # may_serve: answer "not owner"
NO_RESOURCE: Final = 0  # may_serve: a service-level call (tokens are positive)
_MOVED_LIMIT: Final = 100_000


class ActivationError(Exception):
    """``on_activate`` raised ``cause`` for ``resource_id``."""

    def __init__(self, resource_id: str, cause: BaseException) -> None:
        super().__init__(f"on_activate({resource_id!r}) raised {type(cause).__name__}: {cause}")
        self.resource_id = resource_id
        self.cause = cause


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
        log: Logger | None = None,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.ttl = ttl
        self.owned: dict[str, int] = {}
        self.lease_until = 0.0
        self.serving = False
        self.placed: dict[str, float] = {}
        #: ids not served while a takeover is confirmed (see ``suspend``)
        self.suspended: dict[str, int] = {}
        self.active: set[str] = set()
        #: ids being released or handed over: not served (requests for them wait, then are redirected)
        self.leaving: dict[str, int] = {}
        #: ids registered for this instance elsewhere, being adopted: requests for them wait
        self.adopting: set[str] = set()
        #: id -> where it went (an instance id, or None when it was only released): redirect hints
        self.moved: dict[str, str | None] = {}
        self._on_activate: ActivateHook | None = None
        self._on_deactivate: DeactivateHook | None = None
        #: True when a hook is set (then resources are activated before their first request)
        self.hooks = False
        self.on_resource_lost: ResourceLostCallback | None = None
        #: waits until requests running for the given ids are done (set by the instance)
        self.quiesce: Callable[[list[str]], Awaitable[None]] | None = None
        self._activating: dict[str, asyncio.Future[None]] = {}
        self._tasks: set[asyncio.Task[Any]] = set()
        self._clock = clock
        self._log = log or get_logger(__name__)

    # -- the lease clock ---------------------------------------------------------------------------
    def renewed(self, sent: float) -> None:
        """A heartbeat (or registration) sent at ``sent`` (monotonic) succeeded."""
        self.lease_until = sent + self.ttl

    def expire(self) -> None:
        self.lease_until = 0.0

    @property
    def lease_valid(self) -> bool:
        return self._clock() < self.lease_until

    def may_serve(self, resource_id: str | None, expected_token: int | None) -> int:
        """``REFUSE`` when a request must be answered "not owner"; ``NO_RESOURCE`` for a service call;
        else the fencing token of the resource."""
        if not self.serving or self._clock() >= self.lease_until:
            return REFUSE
        if resource_id is None:
            return NO_RESOURCE
        token = self.owned.get(resource_id)
        if token is None or (expected_token is not None and expected_token != token):
            return REFUSE
        return token

    # -- gaining and losing ------------------------------------------------------------------------
    def gain(self, tokens: Mapping[str, int], *, placed: bool = False) -> None:
        """Ids granted to this instance (by registration, activation, handoff or adoption)."""
        self.owned.update(tokens)
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

    def suspend(self, ids: Iterable[str]) -> dict[str, int]:
        """Stop serving ``ids`` at once (a takeover was seen); the caller confirms, then ``restore``s or
        ``lose``s them. Returns the ids that were owned, with their tokens."""
        taken = {rid: self.owned.pop(rid) for rid in ids if rid in self.owned}
        self.suspended.update(taken)
        return taken

    def restore(self, tokens: Mapping[str, int]) -> None:
        """Serve suspended ids again (Redis says they are still this instance's)."""
        for rid, token in tokens.items():
            if self.suspended.pop(rid, None) is not None:
                self.owned.setdefault(rid, token)

    def begin_leave(self, ids: Iterable[str]) -> list[str]:
        """Stop serving ``ids`` because they are being released or handed over (requests for them wait
        for ``end_leave``). Returns the ids that were owned."""
        out = []
        for rid in ids:
            token = self.owned.pop(rid, None)
            if token is not None:
                self.leaving[rid] = token
                out.append(rid)
        return out

    def end_leave(
        self, ids: Iterable[str], *, moved: Mapping[str, str | None] | None = None, keep: Iterable[str] = ()
    ) -> None:
        """The move of ``ids`` is over: ``keep`` are served again (the release did not happen), the others
        are gone (``moved`` says where to, for redirects)."""
        kept = set(keep)
        for rid in ids:
            token = self.leaving.pop(rid, None)
            if rid in kept and token is not None:
                self.owned[rid] = token
            else:
                self.placed.pop(rid, None)
        if moved:
            self.moved_to(moved)

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
        if not dropped:
            return dropped
        if involuntary:
            self._log.warning("instance.resources_lost", reason=reason, **id_fields(dropped))
            self._notify_lost(dropped)
        if active and self.on_deactivate is not None:
            self._spawn(self._deactivate_after_requests(active, reason))
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
        if self.quiesce is not None:
            await self.quiesce(ids)
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
            self._spawn(self._await_logged(result))

    async def _await_logged(self, awaitable: Awaitable[Any]) -> None:
        try:
            await awaitable
        except Exception:
            self._log.exception("instance.on_resource_lost_failed")

    def _spawn(self, coro: Awaitable[Any]) -> None:
        task = asyncio.ensure_future(coro)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def aclose(self) -> None:
        """Wait for the hooks and callbacks still running (a stopping instance lets them finish)."""
        while self._tasks:
            await asyncio.gather(*list(self._tasks), return_exceptions=True)
