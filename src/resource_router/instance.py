"""A service instance: owns resources, serves requests for them on its own channel.

``async with ServiceInstance(redis, "user-service") as inst`` subscribes the instance's channel
``{ns}:rpc:{S}:{instance_id}``, takes a lease (``register_instance``), and then:

* heartbeats every ``ttl / 3``, renewing the lease and every resource it owns in one round trip;
  ids reported lost (expired, or taken by force) leave the local view at once and are passed to
  ``on_resource_lost``. A forced takeover is also seen at once on the service's events channel;
* dispatches each request to the handler registered for its method, at most ``max_concurrency``
  at a time, and replies on the caller's reply channel;
* answers "not owner" (and runs nothing) for a resource it does not own, and for every request when
  its lease may have run out by its own clock: the local lease ends ``ttl`` after the last
  successful heartbeat (or registration) was *sent*, which is never later than the lease in Redis;
* drops requests whose deadline has passed without running them;
* sweeps its service every ``sweep_interval`` so that dead peers are cleaned up (safe in every
  process at once).

Leaving the context stops taking requests, lets running handlers finish (up to ``drain_timeout``),
releases everything (``deregister_instance``) and unsubscribes.
"""

from __future__ import annotations

import asyncio
import contextlib
import inspect
import os
import re
import secrets
import socket
import time
from collections.abc import Awaitable, Callable, Iterable
from typing import Any

from prometheus_client import CollectorRegistry

from .connection import RedisLike
from .deadline import stop_task
from .errors import (
    InstanceNotAliveError,
    InvalidRequestError,
    MethodNotFoundError,
    ResourceRouterError,
)
from .events import parse_event
from .keys import validate_instance_id, validate_resource_ids
from .models import ResourceRegistrationResponse, ResourceReleaseResponse, RouteRequest
from .protocol import (
    ProtocolError,
    Request,
    decode_request,
    encode_error_reply,
    encode_not_owner_reply,
    encode_ok_reply,
    handler_error,
)
from .pubsub import PubSubHub
from .registry import ResourceRegistry
from .settings import (
    DEFAULT_MAX_RESOURCES_PER_INSTANCE,
    DEFAULT_NAMESPACE,
    DEFAULT_TIMEOUT,
    DEFAULT_TTL,
    MAX_TTL,
    MIN_TTL,
    RouterSettings,
)
from .signing import SEAL_OVERHEAD, Signer
from .sweeper import Sweeper
from .tracing import LogThrottle, get_logger, id_fields

logger = get_logger(__name__)

__all__ = ["Handler", "ResourceLostCallback", "ServiceInstance", "default_instance_id"]

#: ``async def handler(request: RouteRequest) -> Any`` (plain functions are accepted too).
Handler = Callable[[RouteRequest], Awaitable[Any] | Any]
#: Called with the ids an instance lost (sync, or async: then run as a task).
ResourceLostCallback = Callable[[list[str]], Awaitable[None] | None]

_ID_CLEAN = re.compile(r"[^A-Za-z0-9._:@-]+")
_REFUSE = -1
_NO_RESOURCE = 0


def default_instance_id() -> str:
    """``hostname-pid-random``, restricted to the characters instance ids allow."""
    host = _ID_CLEAN.sub("-", socket.gethostname()).strip("-._:@")[:60] or "host"
    return f"{host}-{os.getpid()}-{secrets.token_hex(3)}"


class ServiceInstance:
    """One running instance of a service (see the module docstring)."""

    def __init__(
        self,
        redis: RedisLike,
        service_name: str,
        instance_id: str | None = None,
        *,
        ttl: float = DEFAULT_TTL,
        namespace: str = DEFAULT_NAMESPACE,
        max_resources_per_instance: int = DEFAULT_MAX_RESOURCES_PER_INSTANCE,
        partitions: int | None = None,
        on_resource_lost: ResourceLostCallback | None = None,
        max_concurrency: int = 256,
        metadata: dict[str, Any] | None = None,
        sweep_interval: float | None = None,
        drain_timeout: float = DEFAULT_TIMEOUT,
        settings: RouterSettings | None = None,
        metrics_registry: CollectorRegistry | None = None,
    ) -> None:
        if isinstance(ttl, bool) or not isinstance(ttl, int | float) or not MIN_TTL <= ttl <= MAX_TTL:
            raise InvalidRequestError(f"ttl must be a number of seconds in [{MIN_TTL:g}, {MAX_TTL:g}]", field="ttl")
        if isinstance(max_concurrency, bool) or not isinstance(max_concurrency, int) or max_concurrency < 1:
            raise InvalidRequestError("max_concurrency must be a positive integer", field="max_concurrency")
        self._registry = ResourceRegistry(
            redis,
            namespace=namespace,
            max_resources_per_instance=max_resources_per_instance,
            partitions=partitions,
            settings=settings,
            metrics_registry=metrics_registry,
        )
        self._keys = self._registry.store.service_keys(service_name)
        self._instance_id = validate_instance_id(instance_id if instance_id is not None else default_instance_id())
        self.ttl = float(ttl)
        self.metadata = dict(metadata or {})
        self.on_resource_lost = on_resource_lost
        self.sweep_interval = self.ttl if sweep_interval is None else float(sweep_interval)
        self.drain_timeout = float(drain_timeout)
        self.max_concurrency = max_concurrency
        self._settings = self._registry.settings
        self._max_payload = self._settings.max_payload_bytes
        self._signer = Signer.from_settings(self._settings)
        self._max_request = self._max_payload + (0 if self._signer is None else SEAL_OVERHEAD)
        self._reply_keys: dict[str, int] = {}  # reply channel -> number of the key its caller signs with
        self._metrics = self._registry.metrics
        self._reply_prefix = self._registry.keys.reply_prefix
        self._channel = self._keys.rpc_channel(self._instance_id)

        self._handlers: dict[str, Handler] = {}
        self._owned: dict[str, int] = {}  # resource id -> fencing token
        self._lease_until = 0.0  # monotonic
        self._serving = False
        self._started = False
        self._closed = False
        self._lock = asyncio.Lock()  # serialises changes of ownership (register, release, heartbeat)
        self._semaphore = asyncio.Semaphore(max_concurrency)
        self._inflight: set[asyncio.Task[None]] = set()
        self._background: set[asyncio.Task[Any]] = set()
        self._hub: PubSubHub | None = None
        self._heartbeat_task: asyncio.Task[None] | None = None
        self._sweeper: Sweeper | None = None
        self._needs_reconcile = False
        self._drop_log = LogThrottle()
        self.heartbeats = 0
        self._log = logger.bind(service_name=self._keys.service_name, instance_id=self._instance_id)
        svc = self._keys.service_name
        self._metrics.labels.learn_service(svc, own=True)  # metric labels: see metrics.py
        self._outcome = {
            name: self._metrics.route_requests.labels(svc, name)
            for name in ("ok", "error", "not_owner", "method_not_found", "invalid")
        }

    # -- properties ------------------------------------------------------------------------------
    @property
    def instance_id(self) -> str:
        return self._instance_id

    @property
    def service_name(self) -> str:
        return self._keys.service_name

    @property
    def namespace(self) -> str:
        return self._registry.namespace

    @property
    def registry(self) -> ResourceRegistry:
        return self._registry

    @property
    def channel(self) -> str:
        """The pub/sub channel this instance serves."""
        return self._channel

    @property
    def owned_resources(self) -> frozenset[str]:
        """The resources this instance believes it owns (and will serve)."""
        return frozenset(self._owned)

    @property
    def fencing_tokens(self) -> dict[str, int]:
        """Fencing token of each owned resource."""
        return dict(self._owned)

    def fencing_token(self, resource_id: str) -> int | None:
        return self._owned.get(resource_id)

    @property
    def lease_valid(self) -> bool:
        """True while the local lease (last successful heartbeat send + ttl) has not run out."""
        return time.monotonic() < self._lease_until

    @property
    def serving(self) -> bool:
        return self._serving and self.lease_valid

    @property
    def listening(self) -> bool:
        """True while Redis has confirmed this instance's request channel on a live connection. While
        False (the connection dropped and is being re-established), requests sent to it are lost:
        callers see "owner unavailable" at once, since nobody receives them."""
        hub = self._hub
        return hub is not None and hub.heard(self._channel)

    @property
    def in_flight(self) -> int:
        return len(self._inflight)

    # -- handlers --------------------------------------------------------------------------------
    def handler(self, method: str) -> Callable[[Handler], Handler]:
        """Decorator: ``@inst.handler("get_user")`` registers ``async def h(request) -> result``."""

        def register(fn: Handler) -> Handler:
            self.add_handler(method, fn)
            return fn

        return register

    def add_handler(self, method: str, fn: Handler) -> None:
        if not isinstance(method, str) or not method:
            raise InvalidRequestError("method must be a non-empty string", field="method")
        if not callable(fn):
            raise TypeError("a handler must be callable")
        self._handlers[method] = fn

    # -- lifecycle -------------------------------------------------------------------------------
    async def __aenter__(self) -> ServiceInstance:
        await self.start()
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self.stop()

    async def start(self) -> None:
        """Subscribe, take the lease, start heartbeating and sweeping."""
        if self._closed:
            raise RuntimeError("a stopped ServiceInstance cannot be started again; create a new one")
        if self._started:
            return
        self._started = True
        try:
            self._hub = await PubSubHub.acquire(self._registry.redis, self._settings)
            await self._hub.subscribe(self._channel, self._on_message, self._on_channel_state)
            for events in self._keys.events_channels:
                await self._hub.subscribe(events, self._on_event, self._on_events_state)
            sent = time.monotonic()
            await self._registry.register_instance(
                self.service_name, self._instance_id, ttl=self.ttl, metadata=self.metadata or None
            )
            self._lease_until = sent + self.ttl
            self._serving = True
        except BaseException:
            await self._shutdown(deregister=False)
            raise
        self._heartbeat_task = asyncio.create_task(self._heartbeat_loop(), name=f"rr-heartbeat-{self._instance_id}")
        if self.sweep_interval > 0:
            self._sweeper = Sweeper(self._registry, services=[self.service_name], interval=self.sweep_interval)
            self._sweeper.start()
        self._log.info("instance.start", channel=self._channel, ttl=self.ttl)

    async def stop(self) -> None:
        """Graceful exit: stop taking requests, drain, release everything, unsubscribe."""
        if self._closed:
            return
        await self._shutdown(deregister=True)

    async def abort(self) -> None:
        """Stop at once as if the process died: no release, no drain. Its lease and resources run
        out after ``ttl`` (used by the demo and tests to simulate a crash)."""
        if self._closed:
            return
        await self._shutdown(deregister=False, drain=False)

    async def _shutdown(self, *, deregister: bool, drain: bool = True) -> None:
        self._closed = True
        self._serving = False
        if drain and self._inflight:
            _done, pending = await asyncio.wait(set(self._inflight), timeout=self.drain_timeout)
            if pending:
                self._log.warning("instance.drain_timeout", cancelled=len(pending))
        for task in list(self._inflight):
            task.cancel()
        if self._inflight:
            await asyncio.gather(*self._inflight, return_exceptions=True)
        await stop_task(self._heartbeat_task)
        self._heartbeat_task = None
        if self._sweeper is not None:
            await self._sweeper.stop()
            self._sweeper = None
        released: list[str] = []
        if deregister:
            async with self._lock:
                try:
                    released = await self._registry.deregister_instance(self.service_name, self._instance_id)
                except ResourceRouterError as exc:
                    self._log.warning("instance.deregister_failed", error=str(exc))
                self._owned.clear()
                self._lease_until = 0.0
        hub = self._hub
        if hub is not None:
            for channel, callback, listener in (
                (self._channel, self._on_message, self._on_channel_state),
                *((events, self._on_event, self._on_events_state) for events in self._keys.events_channels),
            ):
                with contextlib.suppress(ResourceRouterError):
                    await hub.unsubscribe(channel, callback, listener)  # requests until then: "not owner"
            self._hub = None
            await hub.release()
        self._metrics.forget_instance(self.service_name, self._instance_id)  # its gauges go with it
        for task in list(self._background):
            task.cancel()
        if self._background:
            await asyncio.gather(*self._background, return_exceptions=True)
        self._log.info("instance.stop", graceful=deregister, released=len(released))
        await self._registry.aclose()

    # -- ownership -------------------------------------------------------------------------------
    async def register_resource(
        self,
        resource_ids: str | Iterable[str],
        *,
        force: bool = False,
        metadata: dict[str, Any] | None = None,
        trace_id: str | None = None,
    ) -> ResourceRegistrationResponse:
        """Claim resources for this instance (see ``ResourceRegistry.register_resource``)."""
        self._check_running()
        async with self._lock:
            response = await self._registry.register_resource(
                self.service_name, self._instance_id, resource_ids, force=force, metadata=metadata, trace_id=trace_id
            )
            self._owned.update(response.fencing_tokens)
        return response

    async def release_resource(
        self, resource_ids: str | Iterable[str], *, trace_id: str | None = None
    ) -> ResourceReleaseResponse:
        """Release resources; they stop being served before the release is sent."""
        self._check_running()
        ids = validate_resource_ids(
            resource_ids if isinstance(resource_ids, str) else list(resource_ids),
            max_count=self._settings.max_batch_size,
        )
        async with self._lock:
            before = {rid: self._owned.pop(rid) for rid in ids if rid in self._owned}
            try:
                return await self._registry.release_resource(
                    self.service_name, self._instance_id, ids, trace_id=trace_id
                )
            except ResourceRouterError as exc:
                owners = getattr(exc, "owners", None)
                if isinstance(owners, dict):  # 403: nothing was released; ids owned by others stay gone
                    self._owned.update({rid: tok for rid, tok in before.items() if rid not in owners})
                else:  # Redis failed: the release may or may not have happened
                    self._needs_reconcile = True
                raise

    def _check_running(self) -> None:
        if not self._started or self._closed:
            raise RuntimeError("the ServiceInstance is not running (use `async with` or start())")

    def _lose(self, lost: Iterable[str], reason: str) -> list[str]:
        """Drop ids from the local view and notify ``on_resource_lost``. Returns the ids dropped."""
        dropped = [rid for rid in lost if self._owned.pop(rid, None) is not None]
        if not dropped:
            return dropped
        self._log.warning("instance.resources_lost", reason=reason, **id_fields(dropped))
        self._notify_lost(dropped)
        return dropped

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
        self._background.add(task)
        task.add_done_callback(self._background.discard)

    async def _owners(self, resource_ids: list[str]) -> dict[str, str | None]:
        """Current owners from Redis (one round trip per 500 ids)."""
        return await self._registry.get_owner_ids(self.service_name, resource_ids)

    # -- heartbeat -------------------------------------------------------------------------------
    async def _heartbeat_loop(self) -> None:
        interval = self.ttl / 3.0
        ok = True
        while not self._closed:  # checked too: a cancellation swallowed below must not keep it going
            # After a failure, try again soon: the lease is running out.
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
        """Renew now (the background loop calls this every ttl/3)."""
        self._check_running()
        async with self._lock:
            sent = time.monotonic()
            try:
                result = await self._registry.heartbeat(self.service_name, self._instance_id, ttl=self.ttl)
            except InstanceNotAliveError:
                await self._lease_lost()
                return
            except ResourceRouterError:
                # The reply (and its report of lost ids) may be gone: re-read ownership next time.
                self._needs_reconcile = True
                raise
            self._lease_until = sent + self.ttl
            self.heartbeats += 1
            if self._needs_reconcile or (result.owned_count != len(self._owned) and not result.lost):
                await self._reconcile()
            elif result.lost:
                await self._confirm_lost(result.lost, reason="heartbeat")
                if result.owned_count != len(self._owned):
                    await self._reconcile()

    async def _lease_lost(self) -> None:
        """The lease ran out in Redis: everything is gone. Register again (empty-handed)."""
        self._lease_until = 0.0
        self._log.warning("instance.lease_expired", owned=len(self._owned))
        self._lose(list(self._owned), reason="lease_expired")
        self._owned.clear()
        self._needs_reconcile = False
        sent = time.monotonic()
        await self._registry.register_instance(
            self.service_name, self._instance_id, ttl=self.ttl, metadata=self.metadata or None
        )
        self._lease_until = sent + self.ttl

    async def _confirm_lost(self, ids: list[str], *, reason: str) -> None:
        """Drop ids reported lost unless Redis says this instance owns them (it took them back)."""
        owners = await self._owners(ids)
        self._lose([rid for rid in ids if owners.get(rid) != self._instance_id], reason=reason)

    async def _reconcile(self) -> None:
        """Make the local view equal to what Redis says this instance owns."""
        resources = await self._registry.list_resources(self.service_name, self._instance_id)
        server = {r.resource_id: r.fencing_token for r in resources}
        self._lose([rid for rid in self._owned if rid not in server], reason="reconcile")
        adopted = [rid for rid in server if rid not in self._owned]
        self._owned.update(server)
        self._needs_reconcile = False
        self._log.info("instance.reconciled", owned=len(self._owned), adopted=len(adopted))

    # -- connection state --------------------------------------------------------------------------
    def _on_channel_state(self, heard: bool) -> None:
        if heard:
            self._log.info("instance.listening", channel=self._channel)
        else:
            self._log.warning("instance.not_listening", channel=self._channel)
        if not self._closed:
            self._metrics.instance_listening.labels(self.service_name, self._instance_id).set(1 if heard else 0)

    def _on_events_state(self, heard: bool) -> None:
        if not heard:
            # Takeover events published meanwhile are lost: re-read ownership at the next heartbeat.
            self._needs_reconcile = True

    # -- events (forced takeovers, seen at once) -------------------------------------------------
    def _on_event(self, data: bytes) -> None:
        try:
            event = parse_event(data)
        except Exception:
            self._metrics.dropped_messages.labels("malformed").inc()
            return
        if event.type != "ResourceRegistered":
            return
        if event.instance_id == self._instance_id:
            # Registered for this instance by someone else (a router replica, an operator tool):
            # serve them now rather than at the next heartbeat's reconciliation.
            missing = [rid for rid in event.resource_ids if rid not in self._owned]
            if missing:
                self._spawn(self._adopt(missing))
            return
        # Taken by force (the event names this instance as the previous owner), or granted to another
        # instance although this one believed it owned them (its key was removed by hand, say).
        mine = [rid for rid in event.resource_ids if rid in self._owned]
        if not mine:
            return
        # Stop serving them now; confirm against Redis (this instance may have taken some back).
        suspended = {rid: self._owned.pop(rid) for rid in mine if rid in self._owned}
        if suspended:
            self._log.info("instance.takeover_seen", by=event.instance_id, **id_fields(list(suspended)))
            self._spawn(self._check_takeover(suspended))

    async def _adopt(self, resource_ids: list[str]) -> None:
        async with self._lock:  # after any register_resource of ours that is in flight
            if self._closed:
                return
            missing = [rid for rid in resource_ids if rid not in self._owned]
            if not missing:
                return
            try:
                found = await self._registry.get_resources(self.service_name, missing)
            except ResourceRouterError as exc:
                self._log.warning("instance.adopt_failed", error=str(exc))
                self._needs_reconcile = True
                return
            adopted = {rid: r.fencing_token for rid, r in found.items() if r.owner_instance_id == self._instance_id}
            self._owned.update(adopted)
            if adopted:
                self._log.info("instance.adopted", **id_fields(list(adopted)))

    async def _check_takeover(self, suspended: dict[str, int]) -> None:
        async with self._lock:
            if self._closed:
                return
            try:
                owners = await self._owners(list(suspended))
            except ResourceRouterError as exc:
                self._log.warning("instance.takeover_check_failed", error=str(exc))
                self._needs_reconcile = True
                return
            kept = {rid: tok for rid, tok in suspended.items() if owners.get(rid) == self._instance_id}
            for rid, tok in kept.items():
                self._owned.setdefault(rid, tok)
            lost = [rid for rid in suspended if rid not in kept]
            for rid in lost:
                self._owned.pop(rid, None)  # a register reply may have re-added it meanwhile
            if lost:
                self._log.warning("instance.resources_lost", reason="forced", **id_fields(lost))
                self._notify_lost(lost)

    # -- requests --------------------------------------------------------------------------------
    def _may_serve(self, resource_id: str | None, expected_token: int | None) -> int:
        """``_REFUSE`` when the request must be answered "not owner"; ``_NO_RESOURCE`` for a service
        call; else the fencing token of the resource (tokens are positive)."""
        if not self._serving or time.monotonic() >= self._lease_until:
            return _REFUSE
        if resource_id is None:
            return _NO_RESOURCE
        token = self._owned.get(resource_id)
        if token is None or (expected_token is not None and expected_token != token):
            return _REFUSE
        return token

    def _reply(self, channel: str, data: bytes) -> None:
        hub = self._hub
        if hub is not None:
            if self._signer is not None:  # answered with the key the caller signed with
                data = self._signer.seal(channel, data, key=self._reply_keys.get(channel, 0))
            hub.publish_nowait(channel, data)

    def _on_message(self, data: bytes) -> None:
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
                    encode_error_reply(
                        exc.request_id, exc.to_error(), instance_id=self._instance_id, trace_id=exc.trace_id
                    ),
                )
            return
        if not req.reply_channel.startswith(self._reply_prefix):
            self._dropped("foreign", "reply channel outside the namespace")
            return
        self._note_reply_key(req.reply_channel, key)
        error: ResourceRouterError
        if req.service_name != self.service_name:
            self._outcome["invalid"].inc()
            error = InvalidRequestError(
                f"instance {self._instance_id!r} serves {self.service_name!r}, not {req.service_name!r}",
                field="service_name",
            )
            self._reply(
                req.reply_channel,
                encode_error_reply(req.request_id, error, instance_id=self._instance_id, trace_id=req.trace_id),
            )
            return
        if req.deadline is not None and time.time() > req.deadline:
            self._expired(req)
            return
        if self._may_serve(req.resource_id, req.fencing_token) == _REFUSE:
            self._not_owner(req)
            return
        handler = self._handlers.get(req.method)
        if handler is None:
            self._outcome["method_not_found"].inc()
            self._log.info(
                "route.method_not_found", method=req.method, trace_id=req.trace_id, resource_id=req.resource_id
            )
            error = MethodNotFoundError(
                f"service {self.service_name!r} (instance {self._instance_id!r}) has no handler for {req.method!r}",
                method=req.method,
            )
            self._reply(
                req.reply_channel,
                encode_error_reply(req.request_id, error, instance_id=self._instance_id, trace_id=req.trace_id),
            )
            return
        task = asyncio.get_running_loop().create_task(self._run(req, handler))
        self._inflight.add(task)
        task.add_done_callback(self._inflight.discard)

    def _note_reply_key(self, channel: str, key: int) -> None:
        """Remember which of this instance's keys the (authenticated) caller behind ``channel`` signs
        with, to answer with it; only keys other than the first are kept (during a rotation)."""
        if key:
            if len(self._reply_keys) >= 10_000:
                self._reply_keys.clear()
            self._reply_keys[channel] = key
        elif self._reply_keys:
            self._reply_keys.pop(channel, None)

    def _dropped(self, reason: str, error: str, **fields: Any) -> None:
        """Count a dropped message; log it (rate-limited: anyone may publish garbage on the channel)."""
        self._metrics.dropped_messages.labels(reason).inc()
        suppressed = self._drop_log.allow()
        if suppressed is not None:
            self._log.warning("route.dropped", reason=reason, error=error, suppressed=suppressed, **fields)

    def _expired(self, req: Request) -> None:
        self._metrics.dropped_messages.labels("expired").inc()
        self._log.info(
            "route.expired",
            method=req.method,
            trace_id=req.trace_id,
            resource_id=req.resource_id,
            late_by_ms=round((time.time() - (req.deadline or 0.0)) * 1000.0, 3),
        )

    def _not_owner(self, req: Request) -> None:
        self._outcome["not_owner"].inc()
        self._log.info(
            "route.not_owner",
            method=req.method,
            trace_id=req.trace_id,
            resource_id=req.resource_id,
            lease_valid=self.lease_valid,
        )
        self._reply(
            req.reply_channel,
            encode_not_owner_reply(req.request_id, instance_id=self._instance_id, trace_id=req.trace_id),
        )

    async def _run(self, req: Request, handler: Handler) -> None:
        async with self._semaphore:
            # Checked again right before running: waiting for a slot may have taken a while.
            if req.deadline is not None and time.time() > req.deadline:
                self._expired(req)
                return
            token = self._may_serve(req.resource_id, req.fencing_token)
            if token == _REFUSE:
                self._not_owner(req)
                return
            fencing_token = None if token == _NO_RESOURCE else token
            request = RouteRequest.model_construct(
                service_name=req.service_name,
                method=req.method,
                params=req.params,
                resource_id=req.resource_id,
                timeout=None if req.deadline is None else max(req.deadline - time.time(), 0.001),
                trace_id=req.trace_id,
                fencing_token=fencing_token,
                deadline=req.deadline,
                request_id=req.request_id,
            )
            start = time.perf_counter()
            error_type: str | None = None
            try:
                result = handler(request)
                if inspect.isawaitable(result):
                    result = await result
            except ResourceRouterError as exc:  # a library error raised on purpose: passed on as is
                outcome, error_type = "error", exc.type
                reply = encode_error_reply(
                    req.request_id,
                    exc,
                    instance_id=self._instance_id,
                    trace_id=req.trace_id,
                    fencing_token=fencing_token,
                )
            except Exception as exc:
                outcome, error_type = "error", type(exc).__name__
                reply = encode_error_reply(
                    req.request_id,
                    handler_error(req.method, exc),
                    instance_id=self._instance_id,
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
                    instance_id=self._instance_id,
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
