"""A service instance: owns resources, serves requests for them on its own channel.

``async with ServiceInstance(redis, "user-service") as inst`` subscribes the instance's channel
``{ns}:rpc:{S}:{instance_id}``, takes a lease (``register_instance``), and then runs its parts, each
given the objects it works on:

* the **ownership view** (``ownership/view.py``): what it owns, its lease clock, lifecycle hooks;
* the **lease keeper** (``lease_keeper.py``): heartbeats, lost ids, takeovers and adoptions seen at once
  on the instance's notice channels;
* the **dispatcher** (``dispatcher.py``): each request through the ordered steps of the protocol to
  its handler, at most ``max_concurrency`` at a time (``jobs.py``), admitted by one rule
  (``admission.py``), confirmed in Redis when it may have queued behind a takeover (``staleness.py``),
  answered through ``replies.py``;
* for placement, the volunteer's claims and the moves of drain, rebalance and idle release
  (``placement/``).

It also sweeps its service every ``sweep_interval`` (safe in every process at once). Leaving the
context stops taking requests, lets running handlers finish (up to ``drain_timeout``), releases
everything and unsubscribes.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import Callable, Iterable
from typing import Any, Generic, TypeVar

from prometheus_client import CollectorRegistry
from pydantic import BaseModel

from resource_router.errors import InvalidRequestError, ResourceRouterError, StaleOwnerError
from resource_router.ids import default_instance_id, validate_instance_id, validate_resource_ids
from resource_router.models import ResourceRegistrationResponse, ResourceReleaseResponse
from resource_router.observability.logs import get_logger
from resource_router.ownership.events import parse_event
from resource_router.ownership.registry import ResourceRegistry
from resource_router.ownership.sweeper import Sweeper
from resource_router.ownership.view import ActivateHook, DeactivateHook, ResourceLostCallback
from resource_router.placement.handoff import MoveReport
from resource_router.placement.strategies import DEFAULT_STRATEGY
from resource_router.reasons import LossReason
from resource_router.routing.dispatcher import Handler
from resource_router.routing.options import InstanceOptions
from resource_router.routing.parts import InstanceParts
from resource_router.settings import (
    DEFAULT_CONFIRM_AFTER,
    DEFAULT_MAX_CONCURRENCY,
    DEFAULT_REBALANCE_RATE,
    DEFAULT_TIMEOUT,
    DEFAULT_TTL,
    RouterSettings,
    validate_seconds,
)
from resource_router.state.backend import StateStore
from resource_router.state.handle import ResourceState
from resource_router.transport.connection import RedisLike
from resource_router.transport.hub import PubSubHub
from resource_router.transport.tasks import stop_task

logger = get_logger(__name__)

__all__ = ["Handler", "MoveReport", "ResourceLostCallback", "ServiceInstance"]


T = TypeVar("T")


class _Option(Generic[T]):
    """A read-only attribute of ``ServiceInstance`` that reads its ``InstanceOptions``."""

    def __init__(self, name: str) -> None:
        self._name = name

    def __get__(self, instance: ServiceInstance | None, owner: type[ServiceInstance]) -> T:
        value: T = getattr(instance.options, self._name)  # type: ignore[union-attr]
        return value


class ServiceInstance:
    """One running instance of a service (see the module docstring)."""

    def __init__(
        self,
        redis: RedisLike,
        service_name: str,
        instance_id: str | None = None,
        *,
        ttl: float = DEFAULT_TTL,
        namespace: str | None = None,
        max_resources_per_instance: int | None = None,
        partitions: int | None = None,
        on_resource_lost: ResourceLostCallback | None = None,
        max_concurrency: int = DEFAULT_MAX_CONCURRENCY,
        metadata: dict[str, Any] | None = None,
        sweep_interval: float | None = None,
        drain_timeout: float = DEFAULT_TIMEOUT,
        accept_placement: bool = False,
        placement: str = DEFAULT_STRATEGY,
        rebalance: bool = False,
        rebalance_rate: float = DEFAULT_REBALANCE_RATE,
        idle_timeout: float | None = None,
        serial_per_resource: bool = False,
        confirm_after: float = DEFAULT_CONFIRM_AFTER,
        reclaim_after_failover: bool = True,
        settings: RouterSettings | None = None,
        metrics_registry: CollectorRegistry | None = None,
        state_store: StateStore | None = None,
        state_model: type[BaseModel] | None = None,
    ) -> None:
        self.options = InstanceOptions.checked(
            ttl=ttl,
            metadata=metadata,
            max_concurrency=max_concurrency,
            sweep_interval=sweep_interval,
            drain_timeout=drain_timeout,
            accept_placement=accept_placement,
            placement=placement,
            rebalance=rebalance,
            rebalance_rate=rebalance_rate,
            idle_timeout=idle_timeout,
            serial_per_resource=serial_per_resource,
            confirm_after=confirm_after,
            reclaim_after_failover=reclaim_after_failover,
        )
        self._registry = registry = ResourceRegistry(
            redis,
            namespace=namespace,
            max_resources_per_instance=max_resources_per_instance,
            partitions=partitions,
            settings=settings,
            metrics_registry=metrics_registry,
        )
        self._keys = registry.store.service_keys(service_name)
        self._instance_id = validate_instance_id(instance_id if instance_id is not None else default_instance_id())
        self._settings = registry.settings
        self._metrics = registry.metrics
        self._channel = self._keys.rpc_channel(self._instance_id)
        self._log = logger.bind(service_name=self._keys.service_name, instance_id=self._instance_id)
        self._metrics.labels.learn_service(self._keys.service_name, own=True)  # metric labels: see metrics.py
        self._handlers: dict[str, Handler] = {}
        self._started = False
        self._closed = False
        self._hub: PubSubHub | None = None
        self._heartbeat_task: asyncio.Task[None] | None = None
        self._sweeper: Sweeper | None = None
        self._loops: list[asyncio.Task[None]] = []
        parts = InstanceParts.build(
            self.options,
            registry,
            service_name=self._keys.service_name,
            instance_id=self._instance_id,
            channel=self._channel,
            handlers=self._handlers,
            on_resource_lost=on_resource_lost,
            metrics_registry=metrics_registry,
            log=self._log,
            state_store=state_store,
            state_model=state_model,
        )
        self._tasks, self._lock, self._jobs, self._view = parts.tasks, parts.lock, parts.jobs, parts.view
        self._mover, self._volunteering, self._keeper = parts.mover, parts.volunteering, parts.keeper
        self._replies, self._staleness, self._dispatcher = parts.replies, parts.staleness, parts.dispatcher
        self._state = parts.state

    # -- options (read-only; ``options`` holds them all) -------------------------------------------
    ttl = _Option[float]("ttl")
    metadata = _Option[dict[str, Any]]("metadata")
    max_concurrency = _Option[int]("max_concurrency")
    sweep_interval = _Option[float]("sweep_interval")
    drain_timeout = _Option[float]("drain_timeout")
    accept_placement = _Option[bool]("accept_placement")
    placement = _Option[str]("placement")
    rebalance = _Option[bool]("rebalance")
    rebalance_rate = _Option[float]("rebalance_rate")
    idle_timeout = _Option[float | None]("idle_timeout")
    serial_per_resource = _Option[bool]("serial_per_resource")
    reclaim_after_failover = _Option[bool]("reclaim_after_failover")

    # -- state ------------------------------------------------------------------------------------
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
        return frozenset(self._view.owned)

    @property
    def fencing_tokens(self) -> dict[str, int]:
        """Fencing token of each owned resource."""
        return dict(self._view.owned)

    def fencing_token(self, resource_id: str) -> int | None:
        return self._view.owned.get(resource_id)

    def state(self, resource_id: str) -> ResourceState:
        """The state of a resource this instance owns, bound to its current fencing token (for
        ``on_activate``, timers, background work); ``StaleOwnerError`` for an id it does not own."""
        token = self._view.owned.get(resource_id)
        if token is None:
            raise StaleOwnerError(
                f"instance {self._instance_id!r} does not own {resource_id!r}: its state is not its to write",
                resource_id=resource_id,
                fencing_token=None,
            )
        return self._state.handle(resource_id, token)

    @property
    def state_store(self) -> StateStore:
        """Where this instance keeps per-resource state (a ``RedisStateStore`` unless given)."""
        return self._state.store

    @property
    def lease_valid(self) -> bool:
        """True while the local lease (last successful heartbeat send + ttl) has not run out."""
        return self._view.lease_valid

    @property
    def serving(self) -> bool:
        return self._view.serving and self._view.lease_valid

    @property
    def listening(self) -> bool:
        """True while Redis has confirmed this instance's request channel on a live connection. While
        False (the connection dropped and is being re-established), requests sent to it are lost:
        callers see "owner unavailable" at once, since nobody receives them."""
        hub = self._hub
        return hub is not None and hub.heard(self._channel)

    @property
    def in_flight(self) -> int:
        return self._dispatcher.in_flight

    @property
    def heartbeats(self) -> int:
        """Successful heartbeats so far."""
        return self._keeper.heartbeats

    @property
    def on_resource_lost(self) -> ResourceLostCallback | None:
        """Called with the ids lost involuntarily (expired, taken by force); sync or async."""
        return self._view.on_resource_lost

    @on_resource_lost.setter
    def on_resource_lost(self, callback: ResourceLostCallback | None) -> None:
        self._view.on_resource_lost = callback

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

    def on_activate(self, fn: ActivateHook) -> ActivateHook:
        """Decorator: ``async def f(resource_id)`` runs once before the first request this instance serves
        for a resource it gained (by registration, activation or handoff); it may load state. If it
        raises, the request fails with 500 (``RemoteHandlerError``) and the resource is released."""
        if not callable(fn):
            raise TypeError("on_activate needs a callable")
        self._view.on_activate = fn
        return fn

    def on_deactivate(self, fn: DeactivateHook) -> DeactivateHook:
        """Decorator: ``async def f(resource_id, reason)`` runs once when the instance loses a resource it
        had activated, after the requests running for it are done. ``reason``: ``released``,
        ``drained``, ``rebalanced``, ``idle``, ``expired``, ``taken`` (by force) or ``stopped``."""
        if not callable(fn):
            raise TypeError("on_deactivate needs a callable")
        self._view.on_deactivate = fn
        return fn

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
            self._hub = hub = await PubSubHub.acquire(self._registry.redis, self._settings)
            self._replies.attach(hub)
            self._state.store.attach(hub)
            hub.on_master_change(self._keeper.master_changed)
            await hub.subscribe(self._channel, self._dispatcher.on_message, self._on_channel_state)
            for events in self._keys.instance_channels(self._instance_id, volunteer=self.accept_placement):
                await hub.subscribe(events, self._on_event, self._keeper.on_events_state)
            await self._keeper.register()
            self._view.set_serving(True)
            if self.accept_placement:
                await self._volunteering.join()
        except BaseException:
            await self._shutdown(deregister=False)
            raise
        self._staleness.start()
        self._heartbeat_task = asyncio.create_task(self._keeper.loop(), name=f"rr-heartbeat-{self._instance_id}")
        if self.sweep_interval > 0:
            self._sweeper = Sweeper(self._registry, services=[self.service_name], interval=self.sweep_interval)
            self._sweeper.start()
        volunteering = self._volunteering
        if self.accept_placement:
            self._loops.append(
                asyncio.create_task(volunteering.keep_listed(), name=f"rr-placement-{self._instance_id}")
            )
        if self.idle_timeout is not None:
            self._loops.append(asyncio.create_task(volunteering.release_idle(), name=f"rr-idle-{self._instance_id}"))
        placement = self.placement if self.accept_placement else None
        self._log.info("instance.start", channel=self._channel, ttl=self.ttl, placement=placement)

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
        self._keeper.closed = True
        self._view.set_serving(False)
        if deregister:
            await self._volunteering.leave()
        self._volunteering.accepting = False
        for task in self._loops:
            await stop_task(task)
        await self._dispatcher.finish(self.drain_timeout if drain else 0.0)
        if deregister and self._view.active:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(
                    self._view.deactivate(list(self._view.active), LossReason.STOPPED), self.drain_timeout
                )
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
                self._view.clear(LossReason.STOPPED, involuntary=False)
                self._view.expire()
        hub = self._hub
        if hub is not None:
            for channel, callback, listener in (
                (self._channel, self._dispatcher.on_message, self._on_channel_state),
                *(
                    (events, self._on_event, self._keeper.on_events_state)
                    for events in self._keys.instance_channels(self._instance_id, volunteer=self.accept_placement)
                ),
            ):
                with contextlib.suppress(ResourceRouterError):
                    await hub.unsubscribe(channel, callback, listener)  # requests until then: "not owner"
            self._hub = None
            hub.off_master_change(self._keeper.master_changed)
            self._replies.attach(None)
            self._state.store.attach(None)
            await hub.release()
        self._metrics.forget_instance(self.service_name, self._instance_id)  # its gauges go with it
        await self._view.aclose()
        await self._tasks.cancel()
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
            self._view.gain(response.fencing_tokens)
            self._view.pin(response.fencing_tokens)
        return response

    async def release_resource(
        self, resource_ids: str | Iterable[str], *, trace_id: str | None = None
    ) -> ResourceReleaseResponse:
        """Release resources: they stop being served at once, requests running for them finish (up to
        ``drain_timeout``), ``on_deactivate(id, "released")`` runs, then the release is sent."""
        self._check_running()
        ids = validate_resource_ids(
            resource_ids if isinstance(resource_ids, str) else list(resource_ids),
            max_count=self._settings.max_batch_size,
        )
        leaving = self._view.begin_leave(ids)
        return await self._mover.release(ids, leaving, LossReason.RELEASED, grace=self.drain_timeout, trace_id=trace_id)

    def _check_running(self) -> None:
        if not self._started or self._closed:
            raise RuntimeError("the ServiceInstance is not running (use `async with` or start())")

    async def heartbeat(self) -> None:
        """Renew now (the background loop calls this every ttl/3)."""
        self._check_running()
        await self._keeper.heartbeat()

    # -- placement -------------------------------------------------------------------------------
    @property
    def accepting_placement(self) -> bool:
        """True while this instance is a placement volunteer that takes activations (not draining)."""
        return self._volunteering.accepting

    async def drain(self, timeout: float | None = None) -> MoveReport:  # noqa: ASYNC109 - the contract's name
        """Hand every resource to the other volunteers and take no more activations.

        The instance leaves the volunteers first (callers stop activating here), then moves its resources
        in batches (``handoff.py``): each stops being served, its running requests finish (at most
        ``timeout`` seconds for the whole drain, default ``drain_timeout``; then they are cancelled),
        ``on_deactivate(id, "drained")`` runs, it is released and registered for the volunteer the
        strategy picks (a larger fencing token), and requests that arrived meanwhile are redirected
        there. Calls made during a drain are not failed. Without other volunteers, resources are
        released. The instance keeps serving service-level calls until it stops."""
        self._check_running()
        seconds = self.drain_timeout if timeout is None else validate_seconds(timeout, "timeout", low=0.0)
        await self._volunteering.leave()
        started = time.perf_counter()
        report = await self._mover.drain(seconds)
        self._log.info(
            "instance.drained",
            moved=report.moved_count,
            released=len(report.released),
            kept=len(report.kept),
            duration_ms=round((time.perf_counter() - started) * 1000.0, 3),
        )
        return report

    # -- channel and events ------------------------------------------------------------------------
    def _on_channel_state(self, heard: bool) -> None:
        if heard:
            self._log.info("instance.listening", channel=self._channel)
        else:
            self._log.warning("instance.not_listening", channel=self._channel)
        if not self._closed:
            self._metrics.instance_listening.labels(self.service_name, self._instance_id).set(1 if heard else 0)

    def _on_event(self, data: bytes) -> None:
        try:
            event = parse_event(data)
        except Exception:
            self._metrics.dropped_messages.labels("malformed").inc()
            return
        if event.type == "VolunteerJoined":
            self._volunteering.volunteer_joined(event.instance_id)
        self._keeper.on_event(event)
