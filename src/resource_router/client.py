"""The caller's side: resolve a resource's owner and call it over pub/sub.

``ServiceClient.call`` does one owner lookup (``GET`` of the owner key, skipped while a short-lived
cache entry is fresh) and one ``PUBLISH`` to the owner's channel, then waits for the reply on the
client's single reply channel ``{ns}:reply:{client_id}``; one reader fans replies out to per-request
futures keyed by request id.

Failure handling:

* nobody listening on the owner's channel (``PUBLISH`` returns 0): re-resolve the owner once; if it
  is the same (or the new one does not listen either) raise ``OwnerUnavailableError`` at once;
* a "not owner" reply: re-resolve and retry once; a second refusal raises ``OwnerUnavailableError``.
  A refusal that names where the resource went (``to``: it was handed over by a drain or a
  rebalance, or another volunteer won its activation) is followed at once;
* no owner: when the service has placement volunteers, the call goes to the one the service's
  strategy picks (``placement.py``) with the activation flag; the volunteer claims the resource
  (the registry's atomic grant decides between racing callers) and serves it. A volunteer that is
  full, draining or silent is skipped for the next; every one full raises
  ``ResourceLimitExceededError`` (429). Without volunteers: ``ResourceNotFoundError`` (404);
* ``wait_for_owner=True``: instead of raising 503 (the owner died and its lease runs) or 404, keep
  resolving until the timeout (pauses of 25 to 250 ms); the last error is raised when time is up;
* no reply before the timeout: ``RouteTimeoutError``; errors raised by the remote side come back as
  the library's exceptions (``error_from_dict``).

The owner cache never makes a request run on a non-owner (instances refuse what they do not own,
and any refusal or silent channel drops the entry), and it is never stale for long: the client
listens to the ownership events of every service it calls and drops an entry as soon as its
resource is registered, taken over or released. Owners are cached only while that subscription is
heard (its connection dropping empties the service's cache); ``owner_cache_ttl`` (seconds, 0
disables the cache) is only a backstop.

One deadline covers a call from start to reply (``deadline.bounded``). When the reply subscription
is lost (the connection dropped, a health check found it dead, or Redis disconnected a slow
subscriber), every call waiting for a reply fails at once with ``RedisUnavailableError``
(``operation="reply"``, retryable) instead of waiting out its timeout. A call made while the reply
channel is being subscribed again waits for it (up to ``health_check_timeout``, within its own
deadline) and then fails the same way rather than sending a request whose reply could not arrive.
``listening`` says whether replies can arrive (router replicas report it in ``/readyz``).
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from typing import Any

from prometheus_client import CollectorRegistry

from . import otel
from .connection import RedisLike
from .deadline import bounded, stop_task
from .errors import (
    InvalidRequestError,
    OwnerUnavailableError,
    RedisUnavailableError,
    ResourceLimitExceededError,
    ResourceNotFoundError,
    ResourceRouterError,
    RouteTimeoutError,
    ServiceUnavailableError,
    error_from_dict,
)
from .events import parse_event
from .instance import default_instance_id
from .keys import ServiceKeys, validate_instance_id, validate_resource_id
from .models import Resource, RouteRequest, RouteResponse
from .placement import VolunteerDirectory, rank, service_strategy
from .protocol import (
    REASON_DRAINING,
    REASON_FULL,
    STATUS_NOT_OWNER,
    STATUS_OK,
    ProtocolError,
    Reply,
    decode_reply,
    encode_request,
)
from .pubsub import PubSubHub
from .registry import ResourceRegistry
from .settings import DEFAULT_TIMEOUT, RouterSettings
from .signing import Signer
from .tracing import LogThrottle, RandomIds, get_logger, new_trace_id

logger = get_logger(__name__)

__all__ = ["ServiceClient"]

MAX_TIMEOUT = 3600.0
#: The owner cache's backstop TTL: entries are dropped by ownership events long before it.
DEFAULT_OWNER_CACHE_TTL = 5.0
_CACHE_LIMIT = 100_000
#: Services whose ownership events one client follows (only services with owners; beyond it, none).
_EVENT_SERVICES_LIMIT = 1024
#: Services whose partition count one client remembers as checked.
_SERVICES_LIMIT = 4096
#: Reasons of a ``ResourceReleased`` event that mean the instance itself is gone.
_INSTANCE_GONE = frozenset(("deregistered", "instance_offline"))
#: Cached metric children of call outcomes (beyond it, the cache starts over).
_OUTCOME_CACHE_LIMIT = 4096
#: Seconds a service's list of placement volunteers is kept (events drop it sooner).
_VOLUNTEERS_MAX_AGE = 1.0
#: Sends of one resource call before it gives up (redirects, re-resolutions, volunteers tried).
_MAX_HOPS = 8
#: wait_for_owner: pauses between attempts grow from the first to the last.
_WAIT_FIRST, _WAIT_LAST = 0.025, 0.25


def _retrieve(task: asyncio.Task[Any]) -> None:
    if not task.cancelled():
        task.exception()


class _Call:
    """What one call needs on its way (kept on one object to avoid passing ten arguments around)."""

    __slots__ = (
        "deadline",
        "method",
        "params",
        "resource_id",
        "seconds",
        "sk",
        "span",
        "trace_id",
        "traceparent",
        "wait_for_owner",
        "wall_deadline",
    )

    def __init__(
        self,
        sk: ServiceKeys,
        method: str,
        params: Any,
        resource_id: str | None,
        trace_id: str,
        seconds: float,
        deadline: float,
        wait_for_owner: bool = False,
    ) -> None:
        self.sk = sk
        self.method = method
        self.params = params
        self.resource_id = resource_id
        self.trace_id = trace_id
        self.seconds = seconds  # the caller's timeout
        self.deadline = deadline  # loop time
        self.wall_deadline = time.time() + seconds  # sent to the instance (UNIX time)
        self.wait_for_owner = wait_for_owner  # keep resolving (and activating) until the deadline
        self.span: Any = None  # the OpenTelemetry ``call`` span (None without the otel extra)
        self.traceparent: str | None = None  # its W3C trace context, sent in the envelope

    def timeout_error(self) -> RouteTimeoutError:
        return RouteTimeoutError(f"no reply within {self.seconds:g}s", timeout=self.seconds)


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
        if isinstance(owner_cache_ttl, bool) or not isinstance(owner_cache_ttl, int | float) or owner_cache_ttl < 0:
            raise InvalidRequestError("owner_cache_ttl must be a number of seconds >= 0", field="owner_cache_ttl")
        self._registry = ResourceRegistry(
            redis, namespace=namespace, partitions=partitions, settings=settings, metrics_registry=metrics_registry
        )
        self.client_id = validate_instance_id(client_id if client_id is not None else default_instance_id())
        self.reply_channel = self._registry.keys.reply_channel(self.client_id)
        self.owner_cache_ttl = float(owner_cache_ttl)
        self.default_timeout = self._check_timeout(default_timeout)
        self._max_payload = self._registry.settings.max_payload_bytes
        self._lookup_script = self._registry.store.scripts.lookup_resource
        self._metrics = self._registry.metrics
        self._hub: PubSubHub | None = None
        self._start_lock = asyncio.Lock()
        self._closed = False
        self._pending: dict[str, asyncio.Future[Reply]] = {}
        self._reply_heard = asyncio.Event()  # set while the reply channel is subscribed
        self._drop_log = LogThrottle()
        self._id_prefix = self.client_id + ":"
        self._random_ids = RandomIds()
        self._signer = Signer.from_settings(self._registry.settings)  # None: signing off
        self._service_keys: dict[str, ServiceKeys] = {}
        self._owner_cache: dict[tuple[str, str], tuple[str, float]] = {}
        #: service -> True while its events subscription is heard (owners are cached only then)
        self._following: dict[str, bool] = {}
        self._live_cache: dict[str, tuple[list[str], float]] = {}
        self._round_robin: dict[str, int] = {}
        self._outcomes: dict[tuple[str, str], Any] = {}
        self._event_handlers: dict[str, tuple[Any, Any]] = {}
        self._ready: set[str] = set()
        self._preparing: dict[str, asyncio.Task[None]] = {}
        self._duration = self._metrics.operation_duration.labels("route")
        self._volunteers = VolunteerDirectory(self._registry, max_age=min(self.owner_cache_ttl, _VOLUNTEERS_MAX_AGE))

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
        hub = self._hub
        return hub is not None and hub.heard(self.reply_channel)

    async def __aenter__(self) -> ServiceClient:
        await self.start()
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
                    await hub.subscribe(self.reply_channel, self._on_reply, self._on_reply_state)
                except BaseException:
                    await hub.release()
                    raise
                self._hub = hub
                if hub.heard(self.reply_channel):
                    self._reply_heard.set()

    async def aclose(self) -> None:
        if self._closed:
            return
        self._closed = True
        hub, self._hub = self._hub, None
        for task in list(self._preparing.values()):
            await stop_task(task)
        for fut in self._pending.values():
            if not fut.done():
                fut.set_exception(ResourceRouterError("the ServiceClient was closed while waiting for a reply"))
        if hub is not None:
            with contextlib.suppress(ResourceRouterError):
                await hub.unsubscribe(self.reply_channel, self._on_reply, self._on_reply_state)
                for service_name in list(self._following):
                    await self._unfollow(hub, service_name)
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
        return self._cached_owner((service_name, resource_id))

    def forget_owner(self, service_name: str, resource_id: str | None = None) -> None:
        """Drop cached owners (of one resource, or of the whole service)."""
        if resource_id is not None:
            self._owner_cache.pop((service_name, resource_id), None)
            return
        for key in [k for k in self._owner_cache if k[0] == service_name]:
            del self._owner_cache[key]
        self._live_cache.pop(service_name, None)

    # -- the call path ---------------------------------------------------------------------------
    @staticmethod
    def _check_timeout(timeout: object) -> float:
        if isinstance(timeout, bool) or not isinstance(timeout, int | float) or not 0 < timeout <= MAX_TIMEOUT:
            raise InvalidRequestError(f"timeout must be a number of seconds in (0, {MAX_TIMEOUT:g}]", field="timeout")
        return float(timeout)

    def _keys_for(self, service_name: str) -> ServiceKeys:
        sk = self._service_keys.get(service_name)
        if sk is None:
            sk = self._registry.store.service_keys(service_name)  # validates the name
            if len(self._service_keys) > 10_000:
                self._service_keys.clear()
            self._service_keys[service_name] = sk
        return sk

    def _outcome(self, service_name: str, outcome: str) -> Any:
        child = self._outcomes.get((service_name, outcome))
        if child is None:
            child = self._metrics.route_calls.labels(service_name, outcome)
            if len(self._outcomes) >= _OUTCOME_CACHE_LIMIT:
                self._outcomes.clear()  # callers may send any service name: the cache stays bounded
            self._outcomes[(service_name, outcome)] = child
        return child

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
        sk = self._keys_for(service_name)
        if not isinstance(method, str) or not method:
            raise InvalidRequestError("method must be a non-empty string", field="method")
        if resource_id is not None:
            validate_resource_id(resource_id)
        seconds = self._check_timeout(seconds)
        if self._hub is None:
            await self.start()
        with otel.call_span(service_name, method, resource_id) as span:
            if trace_id is None:  # the span's trace id when there is one: logs and traces agree
                trace_id = otel.current_trace_id() if span is not None else None
                trace_id = trace_id or new_trace_id()
            reply = await self._traced_route(sk, method, params, resource_id, seconds, trace_id, wait_for_owner, span)
            if span is not None:
                span.set_attribute("instance_id", reply.instance_id or "")
                if reply.fencing_token is not None:
                    span.set_attribute("fencing_token", reply.fencing_token)
            return reply

    async def _traced_route(
        self,
        sk: ServiceKeys,
        method: str,
        params: Any,
        resource_id: str | None,
        seconds: float,
        trace_id: str,
        wait_for_owner: bool,
        span: Any,
    ) -> Reply:
        service_name = sk.service_name
        loop = asyncio.get_running_loop()
        started = loop.time()
        call = _Call(sk, method, params, resource_id, trace_id, seconds, started + seconds, wait_for_owner)
        if span is not None:
            call.span = span
            call.traceparent = otel.span_traceparent(span)
        try:
            try:
                # One bound for the whole call: lookups and publishes on a paused or partitioned
                # Redis end at the caller's timeout too, not only the wait for the reply.
                if resource_id is None:
                    reply = await bounded(lambda: self._call_service(call), seconds)
                else:
                    reply = await bounded(lambda: self._call_resource(call, resource_id), seconds)
            except TimeoutError:
                raise call.timeout_error() from None
            self._metrics.labels.learn_service(service_name)  # an instance answered: a metric label
            if reply.status != STATUS_OK:
                raise error_from_dict(reply.error or {})
        except ResourceRouterError as exc:
            elapsed = loop.time() - started
            self._outcome(service_name, exc.type).inc()
            log = logger.warning if exc.code >= 500 else logger.info
            log(
                "route.call",
                service_name=service_name,
                method=method,
                resource_id=resource_id,
                instance_id=getattr(exc, "instance_id", None),
                trace_id=trace_id,
                outcome=exc.type,
                code=exc.code,
                error=exc.message,
                duration_ms=round(elapsed * 1000.0, 3),
                operation="route",
            )
            raise
        elapsed = loop.time() - started
        self._duration.observe(elapsed)
        self._outcome(service_name, "ok").inc()
        logger.debug(
            "route.call",
            service_name=service_name,
            method=method,
            resource_id=resource_id,
            instance_id=reply.instance_id,
            trace_id=trace_id,
            fencing_token=reply.fencing_token,
            outcome="ok",
            duration_ms=round(elapsed * 1000.0, 3),
            operation="route",
        )
        return reply

    async def _lookup(self, call: _Call, resource_id: str) -> str:
        """The owner's instance id from Redis (one script: the owner key, checked against its owner's
        lease); ``ResourceNotFoundError`` when none."""
        sk = call.sk
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

    async def _send(self, call: _Call, instance_id: str, *, activate: bool = False) -> Reply | None:
        """Publish one request to ``instance_id``; its reply, or None when nobody listens. ``activate``:
        the instance may claim the resource (placement) if nobody owns it."""
        hub = self._hub
        if hub is None:
            raise RuntimeError("the ServiceClient is closed")
        loop = asyncio.get_running_loop()
        remaining = call.deadline - loop.time()
        if remaining <= 0:
            raise call.timeout_error()
        request_id = self._id_prefix + self._random_ids.next()  # unguessable: replies cannot be forged blind
        channel = call.sk.rpc_channel(instance_id)
        if call.span is not None:
            call.span.set_attribute("messaging.destination.name", channel)
            call.span.set_attribute("messaging.message.id", request_id)
        data = encode_request(
            request_id=request_id,
            reply_channel=self.reply_channel,
            service_name=call.sk.service_name,
            method=call.method,
            resource_id=call.resource_id,
            params=call.params,
            deadline=call.wall_deadline,
            trace_id=call.trace_id,
            max_bytes=self._max_payload,
            sent_at=None if self._signer is not None else time.time(),  # a seal carries its own ``ts``
            activate=activate,
            traceparent=call.traceparent,
        )
        if self._signer is not None:
            data = self._signer.seal(channel, data)
        if not self._reply_heard.is_set():
            await self._wait_for_reply_channel(min(remaining, self._registry.settings.health_check_timeout))
        fut: asyncio.Future[Reply] = loop.create_future()
        self._pending[request_id] = fut
        try:
            if not await hub.publish(channel, data):
                return None
            return await fut  # the call's one deadline (``bounded`` in ``_route``) ends this wait
        finally:
            del self._pending[request_id]
            if fut.done() and not fut.cancelled():
                fut.exception()  # seen: a failure set while the call ended another way is not "unretrieved"

    def _cached_owner(self, key: tuple[str, str]) -> str | None:
        entry = self._owner_cache.get(key)
        if entry is None:
            return None
        if entry[1] < time.monotonic():
            del self._owner_cache[key]
            return None
        return entry[0]

    def _cache_owner(self, key: tuple[str, str], owner: str) -> None:
        if self.owner_cache_ttl <= 0 or not self._following.get(key[0]):
            return  # not hearing the service's events: a cached owner could go stale unseen
        if len(self._owner_cache) >= _CACHE_LIMIT:
            self._owner_cache.clear()
        self._owner_cache[key] = (owner, time.monotonic() + self.owner_cache_ttl)

    async def _call_resource(self, call: _Call, resource_id: str) -> Reply:
        """Send to the owner; follow "not owner" answers (re-resolve, or go where the answer points);
        activate the resource on a volunteer when nobody owns it; see the module docstring."""
        key = (call.sk.service_name, resource_id)
        if key[0] not in self._ready:
            await self._once(key[0], "partitions", self._check_partitions)
        owner = self._cached_owner(key)
        fresh = owner is None  # the owner came from Redis (not from the cache)
        activate = False
        refusals = 0  # "not owner" answers from owners Redis named
        skipped: dict[str, str] = {}  # volunteers that cannot take the resource now -> why
        hops = waits = 0
        while True:
            if owner is None:
                try:
                    owner = await self._lookup(call, resource_id)
                    activate = False
                    if key[0] not in self._following and self.owner_cache_ttl > 0:
                        # A service that has owners: hear its ownership events before caching any of them.
                        await self._once(key[0], "events", self._follow)
                except ResourceNotFoundError as exc:
                    owner, why = await self._volunteer_for(call, resource_id, skipped, exc)
                    activate = True
                    if owner is None:  # no volunteer (404), or none can take it now (503)
                        await self._wait(call, why, waits)
                        waits, hops, refusals = waits + 1, 0, 0
                        skipped.clear()
                        continue
                fresh = True
            reply = await self._send(call, owner, activate=activate)
            if reply is not None and reply.status != STATUS_NOT_OWNER:
                if fresh:
                    self._cache_owner(key, reply.instance_id or owner)
                return reply
            self._owner_cache.pop(key, None)
            logger.info(
                "route.not_owner" if reply is not None else "route.no_subscriber",
                service_name=call.sk.service_name,
                resource_id=resource_id,
                instance_id=owner,
                trace_id=call.trace_id,
                cached=not fresh,
                activate=activate,
                redirect=None if reply is None else reply.redirect,
                reason=None if reply is None else reply.reason,
            )
            hops += 1
            redirect = None if reply is None else reply.redirect
            error: ResourceRouterError | None = None
            if hops > _MAX_HOPS:
                error = self._unavailable(call, resource_id, owner, reply)
            elif redirect is not None and redirect != owner:
                owner, activate, fresh = redirect, True, True  # moved, or another volunteer won: follow
                continue
            elif activate:
                # This volunteer cannot take it (full, draining, dead): the next one, after a new lookup.
                skipped[owner] = "full" if reply is not None and reply.reason == REASON_FULL else "unavailable"
                owner = None
                continue
            elif not fresh:
                owner = None  # a stale cache entry: resolve again
                continue
            elif reply is not None:
                refusals += 1
                if refusals <= 1:
                    owner = None
                    continue
                error = self._unavailable(call, resource_id, owner, reply)
            else:
                try:
                    new_owner = await self._lookup(call, resource_id)
                except ResourceNotFoundError:
                    owner = None  # the dead owner's lease ended: activate it (or 404)
                    continue
                if new_owner != owner:
                    owner = new_owner
                    continue
                error = self._unavailable(call, resource_id, owner, reply)
            await self._wait(call, error, waits)
            waits, hops, refusals, owner = waits + 1, 0, 0, None
            skipped.clear()

    async def _volunteer_for(
        self, call: _Call, resource_id: str, skipped: dict[str, str], not_found: ResourceNotFoundError
    ) -> tuple[str | None, ResourceRouterError]:
        """The volunteer to activate ``resource_id`` on, by the service's strategy, skipping those that
        could not take it; else None and the error to report: ``not_found`` when the service has no
        volunteer, 503 when none can take it now. 429 (raised) when every volunteer is full."""
        name = call.sk.service_name
        volunteers = await self._volunteers.get(name, fresh=bool(skipped))
        if not volunteers:
            return None, not_found
        for volunteer in rank(service_strategy(volunteers), resource_id, volunteers):
            if volunteer.instance_id not in skipped:
                self._volunteers.placed(name, volunteer.instance_id)
                return volunteer.instance_id, not_found
        if all(skipped.get(v.instance_id) == "full" for v in volunteers):
            limit = max(v.limit for v in volunteers)
            raise ResourceLimitExceededError(
                f"resource {resource_id!r} of service {name!r} has no owner and every volunteer "
                f"({len(volunteers)}) is at its per-instance limit",
                limit=limit,
                current=limit,
                requested=1,
            )
        return None, ServiceUnavailableError(
            f"resource {resource_id!r} of service {name!r} has no owner and no volunteer can take it now "
            f"({len(volunteers)} tried: full, draining or not listening)",
            service_name=name,
        )

    async def _wait(self, call: _Call, error: ResourceRouterError, waits: int) -> None:
        """``wait_for_owner``: pause before resolving again; else (or when time is up) raise ``error``."""
        if not call.wait_for_owner:
            raise error
        pause = min(_WAIT_LAST, _WAIT_FIRST * (2**waits))
        if call.deadline - asyncio.get_running_loop().time() <= pause:
            raise error
        await asyncio.sleep(pause)

    @staticmethod
    def _unavailable(call: _Call, resource_id: str, owner: str, reply: Reply | None) -> OwnerUnavailableError:
        if reply is None:
            why = "nobody is listening on its channel"
        elif reply.reason == REASON_DRAINING:
            why = "it takes no activations (draining)"
        else:
            why = "it refused the request (not owner)"
        return OwnerUnavailableError(
            f"owner {owner!r} of resource {resource_id!r} (service {call.sk.service_name!r}) is unavailable: {why}",
            resource_id=resource_id,
            instance_id=owner,
        )

    async def _live_instances(self, service_name: str, *, fresh: bool) -> tuple[list[str], bool]:
        if not fresh and self.owner_cache_ttl > 0:
            entry = self._live_cache.get(service_name)
            if entry is not None and entry[1] >= time.monotonic():
                return entry[0], False
        ids = sorted(await self._registry.live_instance_ids(service_name))  # stable order for round-robin
        if self.owner_cache_ttl > 0:
            self._live_cache[service_name] = (ids, time.monotonic() + self.owner_cache_ttl)
        return ids, True

    async def _call_service(self, call: _Call) -> Reply:
        """Any live instance: round-robin, skipping instances that do not listen or refuse."""
        name = call.sk.service_name
        ids, fresh = await self._live_instances(name, fresh=False)
        tried: set[str] = set()
        refusals = 0
        while True:
            candidates = [i for i in ids if i not in tried]
            if not candidates:
                if not fresh:
                    self._live_cache.pop(name, None)
                    ids, fresh = await self._live_instances(name, fresh=True)
                    continue
                raise ServiceUnavailableError(
                    f"no live instance of service {name!r} is listening"
                    + (f" ({len(tried)} tried)" if tried else " (none registered)"),
                    service_name=name,
                )
            turn = self._round_robin.get(name, 0)
            self._round_robin[name] = turn + 1
            instance_id = candidates[turn % len(candidates)]
            reply = await self._send(call, instance_id)
            if reply is not None and reply.status != STATUS_NOT_OWNER:
                return reply
            tried.add(instance_id)
            if reply is not None:
                refusals += 1
                if refusals > 1:
                    raise ServiceUnavailableError(
                        f"instances of service {name!r} refused the request (draining or lease expired)",
                        service_name=name,
                    )
            else:
                self._live_cache.pop(name, None)

    # -- ownership events: the owner cache's invalidation ------------------------------------------
    async def _once(self, service_name: str, stage: str, step: Any) -> None:
        """Run ``step(service_name)`` once per service and stage, shared by concurrent first calls
        (each waits for it within its own deadline). A step that failed runs again next time."""
        key = f"{stage}:{service_name}"
        task = self._preparing.get(key)
        if task is None:
            task = asyncio.get_running_loop().create_task(step(service_name))
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
        sk = self._keys_for(service_name)
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
                    channels = self._keys_for(service_name).events_channels
                    self._following[service_name] = heard and all(hub.heard(ch) for ch in channels)
                if not heard:
                    self.forget_owner(service_name)

            callbacks = self._event_handlers[service_name] = (on_event, on_state)
        return callbacks

    async def _unfollow(self, hub: PubSubHub, service_name: str) -> None:
        self._following.pop(service_name, None)
        on_event, on_state = self._event_handlers.pop(service_name, (None, None))
        if on_event is not None:
            for channel in self._keys_for(service_name).events_channels:
                await hub.unsubscribe(channel, on_event, on_state)

    def _on_event(self, service_name: str, data: bytes) -> None:
        try:
            event = parse_event(data)
        except Exception:
            self._metrics.dropped_messages.labels("malformed").inc()
            return
        cache = self._owner_cache
        if event.type in ("VolunteerJoined", "VolunteerLeft"):
            self._volunteers.forget(service_name)
            return
        if event.type == "InstanceRegistered":
            return
        if event.type == "ResourceReleased" and event.reason in _INSTANCE_GONE and event.instance_id:
            self._metrics.forget_instance(service_name, event.instance_id)  # its gauges, if this process has any
        if not event.resource_ids and event.type == "ResourceReleased":
            self.forget_owner(service_name)  # a whole instance went: drop the service's entries
            self._volunteers.forget(service_name)
            return
        for rid in event.resource_ids:
            cache.pop((service_name, rid), None)

    # -- replies ---------------------------------------------------------------------------------
    async def _wait_for_reply_channel(self, seconds: float) -> None:
        """Wait for the reply channel to be subscribed again; ``RedisUnavailableError`` after ``seconds``."""
        try:
            await asyncio.wait_for(self._reply_heard.wait(), seconds)
        except TimeoutError:
            raise RedisUnavailableError(
                "the reply channel is not subscribed (its connection is being re-established): retry",
                operation="reply",
            ) from None

    def _on_reply_state(self, heard: bool) -> None:
        """The reply subscription dropped: no reply can arrive for calls in flight; fail them now."""
        if heard:
            self._reply_heard.set()
            return
        self._reply_heard.clear()
        if not self._pending:
            return
        pending = [fut for fut in self._pending.values() if not fut.done()]
        logger.warning("route.reply_channel_lost", client_id=self.client_id, failed_calls=len(pending))
        for fut in pending:
            fut.set_exception(
                RedisUnavailableError(
                    "the connection carrying replies was lost while waiting; the request may or may not "
                    "have run: retry if it is safe to",
                    operation="reply",
                )
            )

    def _reply_dropped(self, reason: str, error: str) -> None:
        self._metrics.dropped_messages.labels(reason).inc()
        suppressed = self._drop_log.allow()  # rate-limited: anyone may publish garbage on the channel
        if suppressed is not None:
            logger.warning(
                "route.reply_dropped", reason=reason, error=error, client_id=self.client_id, suppressed=suppressed
            )

    def _on_reply(self, data: bytes) -> None:
        if self._signer is not None:
            verdict = self._signer.verify(self.reply_channel, data, replay=False)
            if isinstance(verdict, str):  # never accepted, whatever it claims
                self._reply_dropped(verdict, "the reply is not authenticated")
                return
        try:
            reply = decode_reply(data)
        except ProtocolError as exc:
            self._reply_dropped(exc.reason, exc.message)
            fut = self._pending.get(exc.request_id) if exc.request_id else None
            if fut is not None and not fut.done():
                fut.set_exception(ResourceRouterError(f"malformed reply: {exc.message}"))
            return
        fut = self._pending.get(reply.request_id)
        if fut is None or fut.done():
            self._metrics.dropped_messages.labels("late").inc()
            return
        fut.set_result(reply)
