"""The request side of an instance: decode, check, run the handler, reply.

Each message on the instance's channel goes through the steps of ``docs/protocol.md`` §4: decode and
validate, service and deadline, ownership by the ``OwnershipView`` (an unknown method is a 404), then a
job runs it, at most ``max_concurrency`` at a time:

* **Concurrent** (the default): each request is a task of its own.
* **Serial per resource** (``serial_per_resource=True``): requests for one resource run one after
  another in arrival order, from a mailbox drained by one task per busy resource; requests for
  different resources still run concurrently. The actor guarantee: a handler never runs while
  another handler of the same resource runs on this instance.

Before the handler, a job checks the deadline and ownership again (the wait may have been long), runs
``on_activate`` the first time a resource is served, and:

* **Activation** (a request with ``act``, for a resource nobody owned when the caller looked): the
  resource is claimed first through the registry's atomic grant (``claim``); a conflict is answered
  "not owner" naming the real owner, a full instance "not owner" with reason ``full``.
* **Stale requests** (issue 10): a request that waited longer than ``confirm_after`` since its caller
  sent it (``ts``), or that was read while or just after the event loop stalled (a GC pause, SIGSTOP,
  an overloaded host: a timer that should tick every few ms did not), may have been queued in the
  socket *ahead of* the event that took its resource away. Its ownership is confirmed in Redis first
  (one batched read of owners, ``registry.get_owner_ids``, for all the requests waiting), and it is
  refused if another instance owns the resource now.
* **Moves**: requests for a resource being handed over wait (parked) until the move is done, then
  are answered "not owner" naming where it went, so the caller follows at once. Requests for a
  resource registered for this instance elsewhere (a handoff to it, a replica) wait the same way
  until the instance has adopted it, instead of being refused in that moment.
"""

from __future__ import annotations

import asyncio
import inspect
import time
from collections import deque
from collections.abc import Awaitable, Callable, Iterable
from typing import Any

from resource_router.errors import InvalidRequestError, MethodNotFoundError, RemoteHandlerError, ResourceRouterError
from resource_router.models import RouteRequest, trusted
from resource_router.observability import otel
from resource_router.observability.logs import Logger, LogThrottle
from resource_router.observability.metrics import Metrics
from resource_router.ownership.view import NO_RESOURCE, REFUSE, ActivationError, OwnershipView
from resource_router.placement.volunteering import Claim
from resource_router.routing.protocol import (
    REASON_CONFLICT,
    REASON_DRAINING,
    REASON_FULL,
    REASON_MOVED,
    ProtocolError,
    Request,
    decode_request,
    encode_error_reply,
    encode_not_owner_reply,
    encode_ok_reply,
    handler_error,
)
from resource_router.routing.signing import SEAL_OVERHEAD, Signer

__all__ = ["Dispatcher", "Handler"]

_SUSPECT = float("-inf")  # "received" of a request that must be confirmed in Redis before it runs

#: ``async def handler(request: RouteRequest) -> Any`` (plain functions are accepted too).
Handler = Callable[[RouteRequest], Awaitable[Any] | Any]


class Dispatcher:
    """Serves the requests of one instance; see the module docstring."""

    def __init__(
        self,
        view: OwnershipView,
        *,
        service_name: str,
        instance_id: str,
        handlers: dict[str, Handler],
        metrics: Metrics,
        max_payload: int,
        reply_prefix: str,
        publish: Callable[[str, bytes], None],
        owners: Callable[[list[str]], Awaitable[dict[str, str | None]]],
        owners_batch: int = 5000,
        signer: Signer | None = None,
        channel: str = "",
        on_stale: Callable[[list[str]], None],
        log: Logger,
        max_concurrency: int = 256,
        serial: bool = False,
        confirm_after: float = 0.1,
        claim: Callable[[str], Awaitable[Claim]] | None = None,
        on_activation_failed: Callable[[str], None] | None = None,
    ) -> None:
        self._view = view
        self._service = service_name
        self._iid = instance_id
        self._handlers = handlers
        self._metrics = metrics
        self._max_payload = max_payload
        # Signing: requests are verified before anything else, replies sealed with the caller's key.
        self._signer = signer
        self._channel = channel
        self._max_request = max_payload + (0 if signer is None else SEAL_OVERHEAD)
        self._reply_keys: dict[str, int] = {}  # reply channel -> number of the key its caller signs with
        self._drop_log = LogThrottle()
        self._reply_prefix = reply_prefix
        self._publish = publish
        self._owners = owners
        self._owners_batch = owners_batch
        self._on_stale = on_stale
        self._log = log
        self._serial = serial
        self._claim = claim
        self._on_activation_failed = on_activation_failed
        self._semaphore = asyncio.Semaphore(max_concurrency)
        self._inflight: dict[asyncio.Task[None], str | None] = {}
        self._mailboxes: dict[str, deque[tuple[Request, Handler, float]]] = {}
        self._parked: dict[str, list[Request]] = {}
        self._outcome = {
            name: metrics.route_requests.labels(service_name, name)
            for name in ("ok", "error", "not_owner", "method_not_found", "invalid")
        }
        # Stale-request detection: a request older than ``confirm_after`` (by its send time), or read
        # while the loop was stalled longer than that or within ``confirm_after`` after it noticed.
        self.confirm_after = confirm_after
        self._tick = min(0.05, max(0.005, confirm_after / 2.0))
        self._stall_limit = self._tick + confirm_after
        self._last_tick = time.monotonic()
        self._stalled_at = float("-inf")
        self._tick_handle: asyncio.TimerHandle | None = None
        self._confirming: dict[str, list[asyncio.Future[bool]]] = {}
        self._confirm_task: asyncio.Task[None] | None = None

    # -- lifecycle -------------------------------------------------------------------------------
    def start(self) -> None:
        self._last_tick = time.monotonic()
        self._tick_handle = asyncio.get_running_loop().call_later(self._tick, self._on_tick)

    def stop_ticking(self) -> None:
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

    @property
    def in_flight(self) -> int:
        return len(self._inflight)

    async def finish(self, grace: float) -> None:
        """Let running requests finish (up to ``grace`` seconds), cancel the rest; answer parked ones."""
        if self._inflight:
            _done, pending = await asyncio.wait(set(self._inflight), timeout=grace)
            if pending:
                self._log.warning("instance.drain_timeout", cancelled=len(pending))
        await self._cancel(list(self._inflight))
        self.unpark(list(self._parked))
        self.stop_ticking()

    async def quiesce(self, ids: Iterable[str], grace: float | None = None) -> None:
        """Wait until no request for ``ids`` is running or queued here; after ``grace`` seconds, cancel them."""
        wanted = set(ids)
        me = asyncio.current_task()  # a handler releasing its own resource does not wait for itself
        tasks = [task for task, rid in self._inflight.items() if rid in wanted and task is not me]
        if not tasks:
            return
        _done, pending = await asyncio.wait(tasks, timeout=grace)
        if pending:
            self._log.warning("instance.move_timeout", cancelled=len(pending))
            await self._cancel(list(pending))

    def busy(self) -> set[str]:
        """Resources with a request running, queued or parked here."""
        out = {rid for rid in self._inflight.values() if rid is not None}
        out.update(self._parked)
        return out

    @staticmethod
    async def _cancel(tasks: list[asyncio.Task[None]]) -> None:
        for task in tasks:
            task.cancel()
        if tasks:
            await asyncio.gather(*tasks, return_exceptions=True)

    # -- receiving -------------------------------------------------------------------------------
    def on_message(self, data: bytes) -> None:
        """The hub's callback for the instance's channel (called in arrival order; never blocks)."""
        key = 0
        if self._signer is not None:  # authenticated first: an unauthenticated envelope is never answered
            verdict = self._signer.verify(self._channel, data, replay=True)
            if isinstance(verdict, str):
                self._dropped(verdict, "the envelope is not authenticated")
                return
            key = verdict
        try:
            req = decode_request(data, max_bytes=self._max_request)
        except ProtocolError as exc:
            self._undecodable(exc, key)
            return
        if not req.reply_channel.startswith(self._reply_prefix):
            self._dropped("foreign", "reply channel outside the namespace")
            return
        if key or self._reply_keys:
            self._note_reply_key(req.reply_channel, key)
        if req.service_name != self._service:
            self._outcome["invalid"].inc()
            error = InvalidRequestError(
                f"instance {self._iid!r} serves {self._service!r}, not {req.service_name!r}", field="service_name"
            )
            self._reply(
                req.reply_channel,
                encode_error_reply(req.request_id, error, instance_id=self._iid, trace_id=req.trace_id),
            )
            return
        now = time.time()
        if req.deadline is not None and now > req.deadline:
            self._expired(req)
            return
        view = self._view
        mono = time.monotonic()
        if not view.serving or mono >= view.lease_until:
            self._not_owner(req)
            return
        rid = req.resource_id
        if rid is not None:
            token = view.owned.get(rid)
            if token is None:
                self._unowned(req)
                return
            if req.fencing_token is not None and req.fencing_token != token:
                self._not_owner(req)
                return
        handler = self._handler(req)
        if handler is None:
            return
        # A request that may have sat behind a takeover event is confirmed in Redis before it runs.
        received = mono
        if rid is not None:
            limit = self._stall_limit
            sent = req.sent_at
            if (
                mono - self._last_tick > limit
                or mono - self._stalled_at < limit
                or (sent is not None and now - sent > self.confirm_after)
            ):
                received = _SUSPECT
            if self._serial:
                self._start(req, handler, received)
                return
        # ``_start`` without the serial branch, inline: the hot path
        task = asyncio.get_running_loop().create_task(self._run(req, handler, received))
        self._inflight[task] = rid
        task.add_done_callback(self._done)

    def _unowned(self, req: Request) -> None:
        rid = req.resource_id
        assert rid is not None
        if self._parked_while_moving(req, rid):
            return
        if req.activate and self._claim is not None and req.fencing_token is None:
            handler = self._handler(req)
            if handler is not None:
                self._start(req, handler, time.monotonic())
        else:
            self._not_owner(req)

    def _parked_while_moving(self, req: Request, rid: str) -> bool:
        """Park ``req`` when its resource is leaving or being adopted (answered once that ends)."""
        if rid in self._view.leaving or rid in self._view.adopting:
            self._parked.setdefault(rid, []).append(req)
            return True
        return False

    def _handler(self, req: Request) -> Handler | None:
        handler = self._handlers.get(req.method)
        if handler is None:
            self._outcome["method_not_found"].inc()
            self._log.info(
                "route.method_not_found", method=req.method, trace_id=req.trace_id, resource_id=req.resource_id
            )
            error = MethodNotFoundError(
                f"service {self._service!r} (instance {self._iid!r}) has no handler for {req.method!r}",
                method=req.method,
            )
            self._reply(
                req.reply_channel,
                encode_error_reply(req.request_id, error, instance_id=self._iid, trace_id=req.trace_id),
            )
        return handler

    def _start(self, req: Request, handler: Handler, received: float) -> None:
        """Run ``req`` (received at ``received``, monotonic; ``_SUSPECT`` to confirm it in any case)."""
        rid = req.resource_id
        if self._serial and rid is not None:
            box = self._mailboxes.get(rid)
            if box is not None:
                box.append((req, handler, received))
                return
            box = self._mailboxes[rid] = deque([(req, handler, received)])
            task = asyncio.get_running_loop().create_task(self._serve_mailbox(rid, box))
        else:
            task = asyncio.get_running_loop().create_task(self._run(req, handler, received))
        self._inflight[task] = rid
        task.add_done_callback(self._done)

    def _done(self, task: asyncio.Task[None]) -> None:
        del self._inflight[task]

    async def _serve_mailbox(self, rid: str, box: deque[tuple[Request, Handler, float]]) -> None:
        try:
            while box:
                req, handler, received = box[0]
                try:
                    await self._run(req, handler, received)
                except Exception:  # never leave the mailbox with requests in it
                    self._log.exception("route.dispatch_failed", resource_id=rid)
                box.popleft()
        finally:
            if self._mailboxes.get(rid) is box:
                del self._mailboxes[rid]

    def unpark(self, ids: Iterable[str]) -> None:
        """Requests parked while ``ids`` were moving: served here if still owned, else redirected."""
        for rid in ids:
            for req in self._parked.pop(rid, ()):
                if rid in self._view.owned:
                    handler = self._handlers.get(req.method)
                    if handler is not None:
                        self._start(req, handler, time.monotonic())
                        continue
                self._not_owner(req)  # names where it went, when it was moved

    # -- running ---------------------------------------------------------------------------------
    async def _run(self, req: Request, handler: Handler, received: float) -> None:
        async with self._semaphore:
            # Checked again right before running: waiting for a slot may have taken a while.
            if req.deadline is not None and time.time() > req.deadline:
                self._expired(req)
                return
            view = self._view
            rid = req.resource_id
            if rid is not None:
                if rid not in view.owned and req.activate and self._claim is not None and rid not in view.leaving:
                    if not await self._activate(req):
                        return
                else:
                    # Stale: it waited here longer than the bound (for a slot, in a mailbox, across a
                    # stall), or was suspect when read, or the loop is stalled right now.
                    now = time.monotonic()
                    if (
                        now - received > self.confirm_after or now - self._last_tick > self._stall_limit
                    ) and not await self._confirm(rid):
                        self._not_owner(req)
                        return
            token = view.may_serve(rid, req.fencing_token)
            if token == REFUSE:
                if rid is None or not self._parked_while_moving(req, rid):
                    self._not_owner(req)
                return
            if rid is not None:
                if view.needs_activation(rid):
                    try:
                        await view.activate(rid)
                    except ActivationError as exc:
                        self._activation_failed(req, exc)
                        return
                    token = view.may_serve(rid, req.fencing_token)
                    if token == REFUSE:
                        self._not_owner(req)
                        return
                if rid in view.placed:
                    view.touch(rid)
            await self._call(req, handler, None if token == NO_RESOURCE else token)

    async def _activate(self, req: Request) -> bool:
        """Claim the resource of an activation request; False when it was answered instead."""
        assert self._claim is not None
        assert req.resource_id is not None
        try:
            claim = await self._claim(req.resource_id)
        except ResourceRouterError as exc:
            self._outcome["error"].inc()
            self._reply(
                req.reply_channel, encode_error_reply(req.request_id, exc, instance_id=self._iid, trace_id=req.trace_id)
            )
            return False
        if claim.token is not None:
            return True
        if claim.owner is not None:
            self._not_owner(req, redirect=claim.owner, reason=REASON_CONFLICT)
        else:
            self._not_owner(req, reason=REASON_FULL if claim.full else REASON_DRAINING)
        return False

    def _activation_failed(self, req: Request, exc: ActivationError) -> None:
        self._outcome["error"].inc()
        error = RemoteHandlerError(
            f"{exc}; the resource was released",
            remote_type=type(exc.cause).__name__,
            remote_message=str(exc.cause),
        )
        self._reply(
            req.reply_channel, encode_error_reply(req.request_id, error, instance_id=self._iid, trace_id=req.trace_id)
        )
        if self._on_activation_failed is not None and exc.resource_id in self._view.owned:
            self._on_activation_failed(exc.resource_id)

    async def _call(self, req: Request, handler: Handler, fencing_token: int | None) -> None:
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
            reply = encode_error_reply(
                req.request_id, exc, instance_id=self._iid, trace_id=req.trace_id, fencing_token=fencing_token
            )
        except Exception as exc:
            outcome, error_type = "error", type(exc).__name__
            reply = encode_error_reply(
                req.request_id,
                handler_error(req.method, exc),
                instance_id=self._iid,
                trace_id=req.trace_id,
                fencing_token=fencing_token,
            )
            self._log.warning(
                "route.handler_error",
                method=req.method,
                trace_id=req.trace_id,
                resource_id=req.resource_id,
                error=f"{type(exc).__name__}: {exc}",
            )
        else:
            outcome = "ok"
            reply = encode_ok_reply(
                req.request_id,
                result,
                instance_id=self._iid,
                trace_id=req.trace_id,
                fencing_token=fencing_token,
                max_bytes=self._max_payload,
            )
        self._outcome[outcome].inc()
        self._reply(req.reply_channel, reply)
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

    # -- confirming ownership in Redis -------------------------------------------------------------
    def _confirm(self, rid: str) -> asyncio.Future[bool]:
        """True when Redis says this instance owns ``rid`` (one batched read for every id waiting)."""
        fut: asyncio.Future[bool] = asyncio.get_running_loop().create_future()
        self._confirming.setdefault(rid, []).append(fut)
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
                    step = self._owners_batch
                    for start in range(0, len(ids), step):
                        owners.update(await self._owners(ids[start : start + step]))
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
                        self._on_stale(taken)
        finally:
            self._confirm_task = None

    # -- answers ---------------------------------------------------------------------------------
    def _reply(self, channel: str, data: bytes) -> None:
        if self._signer is not None:  # answered with the key the caller signed with
            data = self._signer.seal(channel, data, key=self._reply_keys.get(channel, 0))
        self._publish(channel, data)

    def _note_reply_key(self, channel: str, key: int) -> None:
        """Remember which of this instance's keys the (authenticated) caller behind ``channel`` signs
        with, to answer with it; only keys other than the first are kept (during a rotation)."""
        if key:
            if len(self._reply_keys) >= 10_000:
                self._reply_keys.clear()
            self._reply_keys[channel] = key
        else:
            self._reply_keys.pop(channel, None)

    def _dropped(self, reason: str, error: str, **fields: Any) -> None:
        """Count a dropped message; log it (rate-limited: anyone may publish garbage on the channel)."""
        self._metrics.dropped_messages.labels(reason).inc()
        suppressed = self._drop_log.allow()
        if suppressed is not None:
            self._log.warning("route.dropped", reason=reason, error=error, suppressed=suppressed, **fields)

    def _undecodable(self, exc: ProtocolError, key: int) -> None:
        answer = (
            exc.reason != "foreign"
            and exc.request_id is not None
            and exc.reply_channel is not None
            and exc.reply_channel.startswith(self._reply_prefix)
        )
        self._dropped(exc.reason, exc.message, answered=answer, trace_id=exc.trace_id)
        if answer and exc.request_id is not None and exc.reply_channel is not None:
            self._note_reply_key(exc.reply_channel, key)
            self._outcome["invalid"].inc()
            self._reply(
                exc.reply_channel,
                encode_error_reply(exc.request_id, exc.to_error(), instance_id=self._iid, trace_id=exc.trace_id),
            )

    def _expired(self, req: Request) -> None:
        self._metrics.dropped_messages.labels("expired").inc()
        self._log.info(
            "route.expired",
            method=req.method,
            trace_id=req.trace_id,
            resource_id=req.resource_id,
            late_by_ms=round((time.time() - (req.deadline or 0.0)) * 1000.0, 3),
        )

    def _not_owner(self, req: Request, *, redirect: str | None = None, reason: str | None = None) -> None:
        if redirect is None and req.resource_id is not None:
            redirect = self._view.moved.get(req.resource_id)
            if redirect is not None and reason is None:
                reason = REASON_MOVED
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
        self._reply(
            req.reply_channel,
            encode_not_owner_reply(
                req.request_id, instance_id=self._iid, trace_id=req.trace_id, redirect=redirect, reason=reason
            ),
        )
