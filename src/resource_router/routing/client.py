"""The caller's side: ``ServiceClient.call`` runs a method on a resource's owner over pub/sub.

A routed call, top to bottom (``call`` → ``_deliver``):

1. **resolve** the owner: the owner cache, else one lookup in Redis, else (nobody owns it) the placement
   volunteer the service's strategy picks, which claims the resource (``resolver.py``);
2. **send** the request on the owner's channel and **wait** for the reply on the client's one reply
   channel (``calls.py``);
3. a refusal or a silent channel goes to the routing policy (``attempts.py``): follow a redirect,
   resolve again, try the next volunteer, or give up (503; with ``wait_for_owner``, pause and start over);
4. the reply becomes the result, or the library's error (``error_from_dict``).

One deadline covers the whole call (``deadline.bounded``): lookups and publishes on a paused or
partitioned Redis end at the caller's timeout too, not only the wait for the reply. No owner and no
volunteer: ``ResourceNotFoundError`` (404); every volunteer full: 429; no reply in time:
``RouteTimeoutError`` (504). Without ``resource_id`` the call goes to any live instance (round-robin).
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from typing import Any, Final

from prometheus_client import CollectorRegistry

from resource_router.errors import (
    InvalidRequestError,
    ResourceRouterError,
    RouteTimeoutError,
    ServiceUnavailableError,
    error_from_dict,
)
from resource_router.ids import default_instance_id, new_trace_id, validate_instance_id, validate_resource_id
from resource_router.models import Resource, RouteRequest, RouteResponse
from resource_router.observability import otel
from resource_router.observability.logs import get_logger
from resource_router.ownership.registry import ResourceRegistry
from resource_router.routing.attempts import Attempts, Next
from resource_router.routing.call import Call, Target
from resource_router.routing.calls import CallTable
from resource_router.routing.protocol import STATUS_NOT_OWNER, STATUS_OK, Reply
from resource_router.routing.resolver import OwnerResolver
from resource_router.routing.signing import Signer
from resource_router.settings import (
    DEFAULT_OWNER_CACHE_TTL,
    DEFAULT_TIMEOUT,
    MAX_CALL_TIMEOUT,
    RouterSettings,
    validate_seconds,
)
from resource_router.transport.connection import RedisLike
from resource_router.transport.deadline import bounded
from resource_router.transport.hub import PubSubHub

logger = get_logger(__name__)

__all__ = ["ServiceClient"]

#: Cached metric children of call outcomes (beyond it, the cache starts over).
_OUTCOME_CACHE_LIMIT: Final = 4096


class ServiceClient:
    """Call resources' owners (and services) over Redis pub/sub; see the module docstring.

    Usable as ``async with``; ``call`` also starts the client on first use. ``aclose()`` releases the
    reply subscription (and the Redis client, when it was made here from a URL).
    """

    def __init__(
        self,
        redis: RedisLike,
        *,
        namespace: str | None = None,
        client_id: str | None = None,
        owner_cache_ttl: float = DEFAULT_OWNER_CACHE_TTL,
        default_timeout: float = DEFAULT_TIMEOUT,
        partitions: int | None = None,
        settings: RouterSettings | None = None,
        metrics_registry: CollectorRegistry | None = None,
    ) -> None:
        owner_cache_ttl = validate_seconds(owner_cache_ttl, "owner_cache_ttl", low=0.0)
        self._registry = ResourceRegistry(
            redis, namespace=namespace, partitions=partitions, settings=settings, metrics_registry=metrics_registry
        )
        self.client_id = validate_instance_id(client_id if client_id is not None else default_instance_id())
        self.reply_channel = self._registry.keys.reply_channel(self.client_id)
        self.owner_cache_ttl = float(owner_cache_ttl)
        self.default_timeout = _check_timeout(default_timeout)
        self._metrics = self._registry.metrics
        self._resolver = OwnerResolver(self._registry, owner_cache_ttl=self.owner_cache_ttl)
        self._calls = CallTable(
            self.client_id,
            self.reply_channel,
            self._registry.settings,
            self._metrics,
            Signer.from_settings(self._registry.settings),  # None: signing off
        )
        self._hub: PubSubHub | None = None
        self._start_lock = asyncio.Lock()
        self._closed = False
        self._outcomes: dict[tuple[str, str], Any] = {}
        self._duration = self._metrics.operation_duration.labels("route")

    # -- lifecycle -------------------------------------------------------------------------------
    @property
    def registry(self) -> ResourceRegistry:
        return self._registry

    @property
    def namespace(self) -> str:
        return self._registry.namespace

    @property
    def listening(self) -> bool:
        """True while Redis has confirmed the reply channel on a live connection (replies can arrive)."""
        return self._calls.listening

    async def __aenter__(self) -> ServiceClient:
        try:
            await self.start()
        except BaseException:
            await self.aclose()  # a failed start leaves no connection behind
            raise
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self.aclose()

    async def start(self) -> None:
        """Subscribe the reply channel (done by ``call`` on first use when not started)."""
        if self._hub is not None:
            return
        if self._closed:
            raise RuntimeError("the ServiceClient is closed")
        async with self._start_lock:
            if self._hub is None:
                hub = await PubSubHub.acquire(self._registry.redis, self._registry.settings)
                try:
                    await self._calls.open(hub)
                except BaseException:
                    await hub.release()
                    raise
                self._resolver.attach(hub)
                hub.on_master_change(self._resolver.master_changed)
                self._hub = hub

    async def aclose(self) -> None:
        if self._closed:
            return
        self._closed = True
        hub, self._hub = self._hub, None
        await self._calls.close()
        if hub is not None:
            hub.off_master_change(self._resolver.master_changed)
            with contextlib.suppress(ResourceRouterError):
                await self._resolver.close(hub)
            await hub.release()
        await self._registry.aclose()

    # -- public API ------------------------------------------------------------------------------
    async def call(
        self,
        service_name: str,
        method: str,
        params: Any = None,
        *,
        resource_id: str | None = None,
        timeout: float = DEFAULT_TIMEOUT,  # noqa: ASYNC109 - the contract's name; also the message deadline
        trace_id: str | None = None,
        wait_for_owner: bool = False,
    ) -> Any:
        """Run ``method`` on the owner of ``resource_id`` (or on any live instance when None) and
        return its result. Raises the contract's errors (404, 429, 500, 503, 504, ...).

        A resource nobody owns is activated on a placement volunteer of the service when there is
        one (else 404). ``wait_for_owner=True``: when the owner is unavailable (it died and its lease
        has not run out yet: 503) or there is no owner and no volunteer (404), keep resolving until
        ``timeout`` instead of failing at once; the last error is raised when time is up."""
        reply = await self._route(service_name, method, params, resource_id, timeout, trace_id, wait_for_owner)
        return reply.result

    async def route(self, request: RouteRequest) -> RouteResponse:
        """``call`` for a ``RouteRequest`` (the HTTP gateway's entry point)."""
        timeout = request.timeout if request.timeout is not None else self.default_timeout
        if request.deadline is not None:
            timeout = min(timeout, request.deadline - time.time())
            if timeout <= 0:
                raise RouteTimeoutError("the request's deadline has already passed", timeout=0.0)
        reply = await self._route(
            request.service_name, request.method, request.params, request.resource_id, timeout, request.trace_id
        )
        return RouteResponse.model_construct(
            result=reply.result, trace_id=reply.trace_id, instance_id=reply.instance_id
        )

    async def get_resource_owner(self, service_name: str, resource_id: str) -> Resource:
        """The owner record (instance id, fencing token, metadata); ``ResourceNotFoundError`` if none."""
        return await self._registry.get_resource_owner(service_name, resource_id)

    def cached_owner(self, service_name: str, resource_id: str) -> str | None:
        """The owner this client would call without a lookup, if any (for tests and debugging)."""
        return self._resolver.cached_owner(service_name, resource_id)

    def forget_owner(self, service_name: str, resource_id: str | None = None) -> None:
        """Drop cached owners (of one resource, or of the whole service)."""
        self._resolver.forget(service_name, resource_id)

    # -- one call, top to bottom ---------------------------------------------------------------------
    async def _route(
        self,
        service_name: str,
        method: str,
        params: Any,
        resource_id: str | None,
        seconds: float,
        trace_id: str | None,
        wait_for_owner: bool = False,
    ) -> Reply:
        sk = self._resolver.keys(service_name)
        if not isinstance(method, str) or not method:
            raise InvalidRequestError("method must be a non-empty string", field="method")
        if resource_id is not None:
            validate_resource_id(resource_id)
        seconds = _check_timeout(seconds)
        if self._hub is None:
            await self.start()
        with otel.call_span(service_name, method, resource_id) as span:
            if trace_id is None:  # the span's trace id when there is one: logs and traces agree
                trace_id = otel.current_trace_id() if span is not None else None
                trace_id = trace_id or new_trace_id()
            started = asyncio.get_running_loop().time()
            call = Call(sk, method, params, resource_id, trace_id, seconds, started + seconds, wait_for_owner)
            if span is not None:
                call.span = span
                call.traceparent = otel.span_traceparent(span)
            try:
                try:  # resolve, send and wait within the one deadline of the call
                    to = self._to_owner if resource_id is not None else self._to_any_instance
                    reply = await bounded(lambda: to(call), seconds)
                except TimeoutError:
                    raise call.timeout_error() from None
                self._metrics.labels.learn_service(service_name)  # an instance answered: a metric label
                if reply.status != STATUS_OK:  # the outcome: the result, or the library's error
                    raise error_from_dict(reply.error or {})
            except ResourceRouterError as exc:
                self._failed(call, exc, started)
                raise
            self._succeeded(call, reply, started)
            if span is not None:
                span.set_attribute("instance_id", reply.instance_id or "")
                if reply.fencing_token is not None:
                    span.set_attribute("fencing_token", reply.fencing_token)
            return reply

    async def _to_owner(self, call: Call) -> Reply:
        """Resolve, send, wait; on a refusal ask the routing policy where to go next."""
        resolver = self._resolver
        if not resolver.prepared(call):
            await resolver.prepare(call)
        target = resolver.cached(call)
        attempts: Attempts | None = None  # made at the first refusal (the usual call has none)
        while True:
            if target is None:
                attempts = attempts or Attempts(call)
                found = await resolver.resolve(call, attempts.skipped)
                if isinstance(found, ResourceRouterError):  # no volunteer (404), or none can take it (503)
                    await attempts.give_up(found)
                    continue
                target = found
            reply = await self._calls.send(call, target)
            if reply is not None and reply.status != STATUS_NOT_OWNER:
                resolver.served(call, target, target.served(reply))
                return reply
            resolver.refused(call)
            self._log_refusal(call, target, reply)
            attempts = attempts or Attempts(call)
            step = attempts.after(target, reply)
            if step is Next.RECHECK:
                step = attempts.rechecked(target, await resolver.owner_now(call))
            if step is Next.GIVE_UP:
                await attempts.give_up()
                target = None
            elif step is Next.RESOLVE:
                target = None
            else:
                assert isinstance(step, Target)
                target = step

    async def _to_any_instance(self, call: Call) -> Reply:
        """Any live instance: round-robin, skipping instances that do not listen or refuse."""
        resolver = self._resolver
        name = call.sk.service_name
        ids, fresh = await resolver.live_instances(name, fresh=False)
        tried: set[str] = set()
        refusals = 0
        while True:
            candidates = [i for i in ids if i not in tried]
            if not candidates:
                if not fresh:
                    resolver.forget_live(name)
                    ids, fresh = await resolver.live_instances(name, fresh=True)
                    continue
                raise ServiceUnavailableError(
                    f"no live instance of service {name!r} is listening"
                    + (f" ({len(tried)} tried)" if tried else " (none registered)"),
                    service_name=name,
                )
            instance_id = candidates[resolver.next_turn(name) % len(candidates)]
            reply = await self._calls.send(call, Target(instance_id, fresh=True))
            if reply is not None and reply.status != STATUS_NOT_OWNER:
                return reply
            tried.add(instance_id)
            if reply is None:
                resolver.forget_live(name)
                continue
            refusals += 1
            if refusals > 1:
                raise ServiceUnavailableError(
                    f"instances of service {name!r} refused the request (draining or lease expired)",
                    service_name=name,
                )

    # -- what a call leaves behind: metrics and logs -----------------------------------------------
    def _outcome(self, service_name: str, outcome: str) -> Any:
        child = self._outcomes.get((service_name, outcome))
        if child is None:
            child = self._metrics.route_calls.labels(service_name, outcome)
            if len(self._outcomes) >= _OUTCOME_CACHE_LIMIT:
                self._outcomes.clear()  # callers may send any service name: the cache stays bounded
            self._outcomes[(service_name, outcome)] = child
        return child

    def _succeeded(self, call: Call, reply: Reply, started: float) -> None:
        elapsed = asyncio.get_running_loop().time() - started
        self._duration.observe(elapsed)
        self._outcome(call.sk.service_name, "ok").inc()
        logger.debug(
            "route.call",
            service_name=call.sk.service_name,
            method=call.method,
            resource_id=call.resource_id,
            instance_id=reply.instance_id,
            trace_id=call.trace_id,
            fencing_token=reply.fencing_token,
            outcome="ok",
            duration_ms=round(elapsed * 1000.0, 3),
            operation="route",
        )

    def _failed(self, call: Call, exc: ResourceRouterError, started: float) -> None:
        elapsed = asyncio.get_running_loop().time() - started
        self._outcome(call.sk.service_name, exc.type).inc()
        log = logger.warning if exc.code >= 500 else logger.info
        log(
            "route.call",
            service_name=call.sk.service_name,
            method=call.method,
            resource_id=call.resource_id,
            instance_id=getattr(exc, "instance_id", None),
            trace_id=call.trace_id,
            outcome=exc.type,
            code=exc.code,
            error=exc.message,
            duration_ms=round(elapsed * 1000.0, 3),
            operation="route",
        )

    @staticmethod
    def _log_refusal(call: Call, target: Target, reply: Reply | None) -> None:
        logger.info(
            "route.not_owner" if reply is not None else "route.no_subscriber",
            service_name=call.sk.service_name,
            resource_id=call.resource_id,
            instance_id=target.instance_id,
            trace_id=call.trace_id,
            cached=not target.fresh,
            activate=target.activate,
            redirect=None if reply is None else reply.redirect,
            reason=None if reply is None else reply.reason,
        )


def _check_timeout(timeout: object) -> float:
    return validate_seconds(timeout, "timeout", low=0.0, high=MAX_CALL_TIMEOUT, low_open=True)
