"""The request side of an instance: each message on its channel goes through the steps of
``docs/protocol.md`` §4, in this order, each one method here:

=====  ====================================================  ==============================================
step   check                                                 when it fails
=====  ====================================================  ==============================================
0      ``_authenticate``: sealed, fresh, not replayed        dropped (signing keys set)
1-5    ``_decode``: a protocol-1 request map, in size        dropped, or a 400 when it says where to answer
6      the reply channel is inside the namespace             dropped (``_foreign_reply_channel``)
7      the request is for this instance's service            400 (``_wrong_service``)
8      its deadline has not passed                           dropped (``Replies.expired``)
9      the admission rule (``admission.py``)                 "not owner"; a resource being moved waits
                                                             (parked); an activation request is claimed
10     a handler for the method                              404 (``_method_not_found``)
11     ``_job``: a slot (``jobs.py``; per resource when serial)
12     steps 8 and 9 again when the wait may have changed them
13     ``staleness.py``: a stale request confirmed in Redis   "not owner"
14     ``_run_handler``: the handler, then the reply           an error reply
=====  ====================================================  ==============================================

Activation (a request with ``act`` for a resource nobody owned when the caller looked, on a volunteer):
the resource is claimed through the registry's atomic grant (``placement/volunteering.py``); a
conflict is answered "not owner" naming the real owner, a full instance "not owner" with reason
``full``. ``on_message`` runs steps 0 to 10 in that order (a step that passes costs one comparison)
and starts ``_job`` for 11 to 14. ``on_activate`` runs before the first request a resource gets
here. Requests parked while their resource moves are served here afterwards if it stayed, else
answered "not owner" naming where it went, so the caller follows at once.
"""

from __future__ import annotations

import inspect
import time
from collections.abc import Awaitable, Callable
from typing import Any

from resource_router._trusted import trusted
from resource_router.errors import (
    ActivationError,
    InvalidRequestError,
    MethodNotFoundError,
    ProtocolError,
    RemoteHandlerError,
    ResourceRouterError,
)
from resource_router.models import RouteRequest
from resource_router.observability import otel
from resource_router.observability.logs import Logger
from resource_router.observability.metrics import Metrics
from resource_router.ownership.view import OwnershipView
from resource_router.placement.handoff import Mover
from resource_router.placement.volunteering import Volunteering
from resource_router.reasons import LossReason, RefusalReason
from resource_router.routing.admission import Admission, Refusal, Verdict
from resource_router.routing.jobs import Jobs
from resource_router.routing.protocol import Request, decode_request, handler_error
from resource_router.routing.replies import Replies
from resource_router.routing.signing import SEAL_OVERHEAD, Signer
from resource_router.routing.staleness import Staleness
from resource_router.state.handle import StateBinding
from resource_router.transport.tasks import TaskSet

__all__ = ["Dispatcher", "Handler"]

#: ``async def handler(request: RouteRequest) -> Any`` (plain functions are accepted too).
Handler = Callable[[RouteRequest], Awaitable[Any] | Any]

_OUTCOMES = ("ok", "error", "not_owner", "method_not_found", "invalid")


class Dispatcher:
    """Serves the requests of one instance; see the module docstring."""

    def __init__(
        self,
        *,
        view: OwnershipView,
        jobs: Jobs,
        replies: Replies,
        staleness: Staleness,
        handlers: dict[str, Handler],
        service_name: str,
        instance_id: str,
        channel: str,
        reply_prefix: str,
        metrics: Metrics,
        max_payload: int,
        signer: Signer | None,
        volunteering: Volunteering | None,
        mover: Mover,
        tasks: TaskSet,
        drain_timeout: float,
        log: Logger,
        state: StateBinding | None = None,
    ) -> None:
        self._view = view
        self._state = state
        self._admission = Admission(view)
        self._jobs = jobs
        self._replies = replies
        self._staleness = staleness
        self._handlers = handlers
        self._service = service_name
        self._iid = instance_id
        self._channel = channel
        self._reply_prefix = reply_prefix
        self._signer = signer
        self._max_request = max_payload + (0 if signer is None else SEAL_OVERHEAD)
        self._volunteering = volunteering  # None: no activations here
        self._mover = mover
        self._tasks = tasks
        self._drain_timeout = drain_timeout
        self._log = log
        self._parked: dict[str, list[Request]] = {}
        self._outcome = {name: metrics.route_requests.labels(service_name, name) for name in _OUTCOMES}

    # -- what moves and the instance ask of it -------------------------------------------------------
    @property
    def in_flight(self) -> int:
        return self._jobs.in_flight

    async def quiesce(self, ids: list[str], grace: float | None = None) -> None:
        await self._jobs.quiesce(ids, grace)

    def busy(self) -> set[str]:
        """Resources with a request running, queued or parked here."""
        return self._jobs.busy() | set(self._parked)

    async def finish(self, grace: float) -> None:
        """Let running requests finish (up to ``grace`` seconds), cancel the rest; answer parked ones."""
        await self._jobs.finish(grace)
        for rid in list(self._parked):
            self._unpark(rid)
        self._staleness.stop()

    # -- steps 0 to 10: receiving (the hub's callback, in arrival order; never blocks) ---------------
    def on_message(self, data: bytes) -> None:
        # Each step costs a comparison when it passes; its method runs only when it does not.
        key = 0 if self._signer is None else self._authenticate(data)  # step 0
        if key is None:
            return
        req = self._decode(data, key)  # steps 1 to 5
        if req is None:
            return
        if not req.reply_channel.startswith(self._reply_prefix):  # step 6
            self._foreign_reply_channel()
            return
        if self._signer is not None:  # answered with the key the caller signed with
            self._replies.note_key(req.reply_channel, key)
        if req.service_name != self._service:  # step 7
            self._wrong_service(req)
            return
        now = time.time()
        if req.deadline is not None and now > req.deadline:  # step 8
            self._replies.expired(req)
            return
        verdict, epoch = self._admission.admit(req.resource_id, req.fencing_token)  # step 9
        if isinstance(verdict, Refusal) and not self._activation(req, verdict):
            self._refuse(req, verdict)
            return
        handler = self._handlers.get(req.method)  # step 10
        if handler is None:
            self._method_not_found(req)
            return
        mono = time.monotonic()
        received = mono if req.resource_id is None else self._staleness.received(mono, now, req.sent_at)
        self._jobs.start(req.resource_id, self._job(req, handler, verdict, epoch, received))  # steps 11 to 14

    def _authenticate(self, data: bytes) -> int | None:
        """Step 0: the number of the key the envelope was sealed with (0 when signing is off)."""
        if self._signer is None:
            return 0
        verdict = self._signer.verify(self._channel, data, replay=True)
        if isinstance(verdict, str):  # never answered: an unauthenticated envelope says nothing true
            self._replies.dropped(verdict, "the envelope is not authenticated")
            return None
        return verdict

    def _decode(self, data: bytes, key: int) -> Request | None:
        """Steps 1 to 5."""
        try:
            return decode_request(data, max_bytes=self._max_request)
        except ProtocolError as exc:
            answer = (
                exc.reason != "foreign"
                and exc.request_id is not None
                and exc.reply_channel is not None
                and exc.reply_channel.startswith(self._reply_prefix)
            )
            self._replies.dropped(exc.reason, exc.message, answered=answer, trace_id=exc.trace_id)
            if answer and exc.reply_channel is not None:
                self._replies.note_key(exc.reply_channel, key)
                self._outcome["invalid"].inc()
                self._replies.invalid(exc)
            return None

    def _foreign_reply_channel(self) -> None:
        """Step 6 failed: answers go nowhere but the namespace's reply channels."""
        self._replies.dropped("foreign", "reply channel outside the namespace")

    def _wrong_service(self, req: Request) -> None:
        """Step 7 failed: a request for another service."""
        self._outcome["invalid"].inc()
        self._replies.error(
            req,
            InvalidRequestError(
                f"instance {self._iid!r} serves {self._service!r}, not {req.service_name!r}", field="service_name"
            ),
        )

    def _activation(self, req: Request, refusal: Refusal) -> bool:
        """Step 9 for a resource nobody owns here: True when the request may claim it (placement)."""
        return (
            refusal is Refusal.NOT_OWNED
            and req.activate
            and self._volunteering is not None
            and req.fencing_token is None
        )

    def _refuse(self, req: Request, refusal: Refusal) -> None:
        """A request that is not served as it is: parked while its resource moves, else "not owner"."""
        if refusal is Refusal.MOVING:
            self._park(req)
        else:
            self._not_owner(req)

    def _method_not_found(self, req: Request) -> None:
        """Step 10 failed: no handler for the method."""
        self._outcome["method_not_found"].inc()
        self._log.info("route.method_not_found", method=req.method, trace_id=req.trace_id, resource_id=req.resource_id)
        self._replies.error(
            req,
            MethodNotFoundError(
                f"service {self._service!r} (instance {self._iid!r}) has no handler for {req.method!r}",
                method=req.method,
            ),
        )

    # -- steps 11 to 14: running ---------------------------------------------------------------------
    async def _job(self, req: Request, handler: Handler, verdict: Verdict, epoch: int, received: float) -> None:
        async with self._jobs.slot:
            if req.deadline is not None and time.time() > req.deadline:  # step 12: the wait may have been long
                self._replies.expired(req)
                return
            rid = req.resource_id
            if rid is not None:
                if verdict is Refusal.NOT_OWNED:  # an activation: claim the resource first
                    if not await self._claim(req):
                        return
                    epoch = -1
                elif self._staleness.stale(received) and not await self._staleness.confirm(rid):
                    self._not_owner(req)
                    return
            if not self._admission.still(epoch):
                verdict, epoch = self._admission.admit(rid, req.fencing_token)
                if isinstance(verdict, Refusal):
                    self._refuse(req, verdict)
                    return
            if rid is not None:
                view = self._view
                if view.needs_activation(rid):
                    try:
                        await view.activate(rid)
                    except ActivationError as exc:
                        self._activation_failed(req, exc)
                        return
                    verdict, epoch = self._admission.admit(rid, req.fencing_token)
                    if isinstance(verdict, Refusal):
                        self._not_owner(req)
                        return
                if rid in view.placed:
                    view.touch(rid)
            assert not isinstance(verdict, Refusal)
            await self._run_handler(req, handler, verdict)

    async def _claim(self, req: Request) -> bool:
        """Claim the resource of an activation request; False when it was answered instead."""
        assert self._volunteering is not None
        assert req.resource_id is not None
        if req.resource_id in self._view.owned or req.resource_id in self._view.leaving:
            return True  # it became this instance's meanwhile (or is leaving: admission decides)
        try:
            claim = await self._volunteering.claim(req.resource_id)
        except ResourceRouterError as exc:
            self._outcome["error"].inc()
            self._replies.error(req, exc)
            return False
        if claim.token is not None:
            return True
        if claim.owner is not None:
            self._not_owner(req, redirect=claim.owner, reason=RefusalReason.CONFLICT)
        else:
            self._not_owner(req, reason=RefusalReason.FULL if claim.full else RefusalReason.DRAINING)
        return False

    def _activation_failed(self, req: Request, exc: ActivationError) -> None:
        """``on_activate`` raised: the request fails with 500 and the resource is released."""
        self._outcome["error"].inc()
        self._replies.error(
            req,
            RemoteHandlerError(
                f"{exc}; the resource was released",
                remote_type=type(exc.cause).__name__,
                remote_message=str(exc.cause),
            ),
        )
        leaving = self._view.begin_leave([exc.resource_id]) if exc.resource_id in self._view.owned else []
        if leaving and self._view.serving:
            self._tasks.spawn(self._mover.release_quietly(leaving, LossReason.RELEASED, grace=self._drain_timeout))

    async def _run_handler(self, req: Request, handler: Handler, fencing_token: int | None) -> None:
        """Step 14."""
        rid, binding = req.resource_id, self._state
        private = (
            {"_state": binding.handle(rid, fencing_token)}
            if binding is not None and rid is not None and fencing_token is not None
            else None
        )
        request = trusted(  # every field given, values the dispatcher checked: no validation again
            RouteRequest,
            {
                "service_name": req.service_name,
                "method": req.method,
                "params": req.params,
                "resource_id": req.resource_id,
                "timeout": None if req.deadline is None else max(req.deadline - time.time(), 0.001),
                "trace_id": req.trace_id,
                "fencing_token": fencing_token,
                "deadline": req.deadline,
                "request_id": req.request_id,
            },
            private,
        )
        start = time.perf_counter()
        error_type: str | None = None
        span_scope = otel.handle_span(
            req.traceparent,
            service_name=self._service,
            method=req.method,
            resource_id=req.resource_id,
            instance_id=self._iid,
            channel=self._channel,
            request_id=req.request_id,
        )
        try:
            with span_scope as span:
                if span is not None and fencing_token is not None:
                    span.set_attribute("fencing_token", fencing_token)
                result = handler(request)
                if inspect.isawaitable(result):
                    result = await result
        except ResourceRouterError as exc:  # a library error raised on purpose: passed on as is
            outcome, error_type = "error", exc.type
            self._replies.error(req, exc, fencing_token)
        except Exception as exc:
            outcome, error_type = "error", type(exc).__name__
            self._replies.error(req, handler_error(req.method, exc), fencing_token)
            self._log.warning(
                "route.handler_error",
                method=req.method,
                trace_id=req.trace_id,
                resource_id=req.resource_id,
                error=f"{type(exc).__name__}: {exc}",
            )
        else:
            outcome = "ok"
            self._replies.ok(req, result, fencing_token)
        self._outcome[outcome].inc()
        self._log.debug(
            "route.dispatch",
            method=req.method,
            trace_id=req.trace_id,
            resource_id=req.resource_id,
            fencing_token=fencing_token,
            outcome=outcome,
            error=error_type,
            duration_ms=round((time.perf_counter() - start) * 1000.0, 3),
            operation="dispatch",
        )

    # -- parking and "not owner" ---------------------------------------------------------------------
    def _park(self, req: Request) -> None:
        """Wait until the request's resource is no longer moving or being adopted (``view.settled``)."""
        rid = req.resource_id
        assert rid is not None
        waiting = self._parked.get(rid)
        if waiting is None:
            waiting = self._parked[rid] = []
            self._view.settled(rid).add_done_callback(lambda _fut, rid=rid: self._unpark(rid))  # type: ignore[misc]
        waiting.append(req)

    def _unpark(self, rid: str) -> None:
        """Requests parked while ``rid`` moved: served here if it stayed, else redirected."""
        for req in self._parked.pop(rid, ()):
            if rid in self._view.owned:
                handler = self._handlers.get(req.method)
                if handler is not None:
                    self._jobs.start(rid, self._job(req, handler, None, -1, time.monotonic()))
                    continue
            self._not_owner(req)  # names where it went, when it was moved

    def _not_owner(self, req: Request, *, redirect: str | None = None, reason: str | None = None) -> None:
        if redirect is None and req.resource_id is not None:
            redirect = self._view.moved.get(req.resource_id)
            if redirect is not None and reason is None:
                reason = RefusalReason.MOVED
        if redirect == self._iid:
            redirect = None
        self._outcome["not_owner"].inc()
        self._log.info(
            "route.not_owner",
            method=req.method,
            trace_id=req.trace_id,
            resource_id=req.resource_id,
            lease_valid=self._view.lease_valid,
            redirect=redirect,
            reason=reason,
        )
        self._replies.not_owner(req, redirect=redirect, reason=reason)
