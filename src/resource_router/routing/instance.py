"""A service instance: owns resources, serves requests for them on its own channel.

``async with ServiceInstance(redis, "user-service") as inst`` subscribes the instance's channel
``{ns}:rpc:{S}:{instance_id}``, takes a lease (``register_instance``), and then runs three parts:

* the **ownership view** (``ownership.py``): what it owns, its lease clock, lifecycle hooks;
* the **lease keeper** (``lease.py``): heartbeats every ``ttl / 3`` renewing the lease and every owned
  resource in one round trip, lost ids, forced takeovers seen at once on the events channel, adoption
  of ids registered for it elsewhere;
* the **dispatcher** (``dispatcher.py``): each request to its handler, at most ``max_concurrency`` at a
  time; "not owner" (and nothing run) for a resource it does not own or when its lease may have run
  out by its own clock; requests past their deadline dropped; requests that may have been queued
  behind a takeover (they waited more than ``confirm_after``, or the event loop stalled) confirmed in
  Redis before they run.

It also sweeps its service every ``sweep_interval`` so that dead peers are cleaned up (safe in every
process at once). Leaving the context stops taking requests, lets running handlers finish (up to
``drain_timeout``), releases everything (``deregister_instance``) and unsubscribes.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import time
from collections.abc import Awaitable, Callable, Iterable
from typing import Any

from prometheus_client import CollectorRegistry

from resource_router.errors import InvalidRequestError, ResourceRouterError
from resource_router.ids import default_instance_id, validate_instance_id, validate_resource_ids
from resource_router.models import ResourceRegistrationResponse, ResourceReleaseResponse
from resource_router.observability.logs import get_logger
from resource_router.ownership.events import parse_event
from resource_router.ownership.registry import ResourceRegistry
from resource_router.ownership.sweeper import Sweeper
from resource_router.ownership.view import (
    REASON_RELEASED,
    REASON_STOPPED,
    ActivateHook,
    DeactivateHook,
    OwnershipView,
    ResourceLostCallback,
)
from resource_router.placement.directory import VolunteerDirectory
from resource_router.placement.handoff import Mover, MoveReport
from resource_router.placement.strategies import DEFAULT_STRATEGY, validate_strategy
from resource_router.placement.volunteering import Claim, Volunteering
from resource_router.routing.dispatcher import Dispatcher, Handler
from resource_router.routing.lease_keeper import LeaseKeeper
from resource_router.routing.signing import Signer
from resource_router.settings import DEFAULT_TIMEOUT, DEFAULT_TTL, MAX_TTL, MIN_TTL, RouterSettings
from resource_router.transport.connection import RedisLike
from resource_router.transport.deadline import stop_task
from resource_router.transport.hub import PubSubHub

logger = get_logger(__name__)

__all__ = ["Handler", "MoveReport", "ResourceLostCallback", "ServiceInstance"]


def _seconds(value: object, field: str, *, low: float, high: float = float("inf")) -> float:
    if isinstance(value, bool) or not isinstance(value, int | float) or not low <= value <= high:
        raise InvalidRequestError(f"{field} must be a number of seconds in [{low:g}, {high:g}]", field=field)
    return float(value)


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
        max_concurrency: int = 256,
        metadata: dict[str, Any] | None = None,
        sweep_interval: float | None = None,
        drain_timeout: float = DEFAULT_TIMEOUT,
        accept_placement: bool = False,
        placement: str = DEFAULT_STRATEGY,
        rebalance: bool = False,
        rebalance_rate: float = 100.0,
        idle_timeout: float | None = None,
        serial_per_resource: bool = False,
        confirm_after: float = 0.1,
        settings: RouterSettings | None = None,
        metrics_registry: CollectorRegistry | None = None,
    ) -> None:
        self.ttl = _seconds(ttl, "ttl", low=MIN_TTL, high=MAX_TTL)
        if isinstance(max_concurrency, bool) or not isinstance(max_concurrency, int) or max_concurrency < 1:
            raise InvalidRequestError("max_concurrency must be a positive integer", field="max_concurrency")
        confirm = _seconds(confirm_after, "confirm_after", low=0.0, high=self.ttl)
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
        self.metadata = dict(metadata or {})
        self.sweep_interval = self.ttl if sweep_interval is None else float(sweep_interval)
        self.drain_timeout = float(drain_timeout)
        self.max_concurrency = max_concurrency
        self.serial_per_resource = bool(serial_per_resource)
        self.accept_placement = bool(accept_placement)
        self.placement = validate_strategy(placement)
        self.rebalance = bool(rebalance)
        self.rebalance_rate = _seconds(rebalance_rate, "rebalance_rate", low=0.1)  # ids per second
        self.idle_timeout = None if idle_timeout is None else _seconds(idle_timeout, "idle_timeout", low=0.01)
        self._settings = self._registry.settings
        self._metrics = self._registry.metrics
        self._channel = self._keys.rpc_channel(self._instance_id)
        self._log = logger.bind(service_name=self._keys.service_name, instance_id=self._instance_id)

        self._handlers: dict[str, Handler] = {}
        self._started = False
        self._closed = False
        self._background: set[asyncio.Task[Any]] = set()
        self._hub: PubSubHub | None = None
        self._heartbeat_task: asyncio.Task[None] | None = None
        self._sweeper: Sweeper | None = None

        self._metrics.labels.learn_service(self._keys.service_name, own=True)  # metric labels: see metrics.py
        self._view = OwnershipView(self.ttl, log=self._log)
        self._view.on_resource_lost = on_resource_lost
        self._keeper = LeaseKeeper(
            self._registry,
            self._view,
            service_name=self._keys.service_name,
            instance_id=self._instance_id,
            ttl=self.ttl,
            metadata=self.metadata,
            log=self._log,
            spawn=self._spawn,
            placed_on_adopt=lambda: self.accept_placement,
            on_adopted=self._unpark,
            on_registered_again=self._rejoin,
        )
        self._dispatcher = Dispatcher(
            self._view,
            service_name=self._keys.service_name,
            instance_id=self._instance_id,
            handlers=self._handlers,
            metrics=self._metrics,
            max_payload=self._settings.max_payload_bytes,
            reply_prefix=self._registry.keys.reply_prefix,
            publish=self._publish,
            signer=Signer.from_settings(self._settings),
            channel=self._channel,
            owners=functools.partial(self._registry.get_owner_ids, self._keys.service_name),
            owners_batch=min(5000, self._registry.settings.max_batch_size),
            on_stale=self._keeper.stale,
            log=self._log,
            max_concurrency=max_concurrency,
            serial=self.serial_per_resource,
            confirm_after=confirm,
            claim=self._claim if self.accept_placement else None,
            on_activation_failed=self._activation_failed,
        )
        self._view.quiesce = self._dispatcher.quiesce
        self._mover = Mover(
            registry=self._registry,
            view=self._view,
            dispatcher=self._dispatcher,
            lock=self._keeper.lock,
            directory=VolunteerDirectory(self._registry, max_age=0.5),
            service_name=self._keys.service_name,
            instance_id=self._instance_id,
            log=self._log,
            metrics_registry=metrics_registry,
            on_failure=self._reconcile_later,
        )
        self._volunteering = Volunteering(
            registry=self._registry,
            view=self._view,
            mover=self._mover,
            lock=self._keeper.lock,
            service_name=self._keys.service_name,
            instance_id=self._instance_id,
            placement=self.placement,
            ttl=self.ttl,
            rebalance=self.rebalance,
            rebalance_rate=self.rebalance_rate,
            idle_timeout=self.idle_timeout,
            drain_timeout=self.drain_timeout,
            log=self._log,
        )
        self._loops: list[asyncio.Task[None]] = []

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
        return frozenset(self._view.owned)

    @property
    def fencing_tokens(self) -> dict[str, int]:
        """Fencing token of each owned resource."""
        return dict(self._view.owned)

    def fencing_token(self, resource_id: str) -> int | None:
        return self._view.owned.get(resource_id)

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
            self._hub = await PubSubHub.acquire(self._registry.redis, self._settings)
            await self._hub.subscribe(self._channel, self._dispatcher.on_message, self._on_channel_state)
            for events in self._keys.events_channels:
                await self._hub.subscribe(events, self._on_event, self._keeper.on_events_state)
            await self._keeper.register()
            self._view.serving = True
            if self.accept_placement:
                await self._volunteering.join()
        except BaseException:
            await self._shutdown(deregister=False)
            raise
        self._dispatcher.start()
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
        self._view.serving = False
        if deregister:
            await self._volunteering.leave()
        self._volunteering.accepting = False
        for task in self._loops:
            await stop_task(task)
        await self._dispatcher.finish(self.drain_timeout if drain else 0.0)
        if deregister and self._view.active:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(
                    self._view.deactivate(list(self._view.active), REASON_STOPPED), self.drain_timeout
                )
        await stop_task(self._heartbeat_task)
        self._heartbeat_task = None
        if self._sweeper is not None:
            await self._sweeper.stop()
            self._sweeper = None
        released: list[str] = []
        if deregister:
            async with self._keeper.lock:
                try:
                    released = await self._registry.deregister_instance(self.service_name, self._instance_id)
                except ResourceRouterError as exc:
                    self._log.warning("instance.deregister_failed", error=str(exc))
                self._view.clear(REASON_STOPPED, involuntary=False)
                self._view.expire()
        hub = self._hub
        if hub is not None:
            for channel, callback, listener in (
                (self._channel, self._dispatcher.on_message, self._on_channel_state),
                *((events, self._on_event, self._keeper.on_events_state) for events in self._keys.events_channels),
            ):
                with contextlib.suppress(ResourceRouterError):
                    await hub.unsubscribe(channel, callback, listener)  # requests until then: "not owner"
            self._hub = None
            await hub.release()
        self._metrics.forget_instance(self.service_name, self._instance_id)  # its gauges go with it
        await self._view.aclose()
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
        async with self._keeper.lock:
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
        return await self._mover.release(ids, leaving, REASON_RELEASED, grace=self.drain_timeout, trace_id=trace_id)

    def _activation_failed(self, resource_id: str) -> None:
        """``on_activate`` raised: the resource is released (the next call may activate it again)."""
        leaving = self._view.begin_leave([resource_id])
        if leaving and not self._closed:
            self._spawn(self._mover.release_quietly(leaving, REASON_RELEASED, grace=self.drain_timeout))

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
        seconds = self.drain_timeout if timeout is None else _seconds(timeout, "timeout", low=0.0)
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

    def _reconcile_later(self) -> None:
        self._keeper.needs_reconcile = True

    # -- plumbing --------------------------------------------------------------------------------
    async def _claim(self, resource_id: str) -> Claim:
        return await self._volunteering.claim(resource_id)

    async def _rejoin(self) -> None:
        await self._volunteering.rejoin()

    def _unpark(self, resource_ids: list[str]) -> None:
        self._dispatcher.unpark(resource_ids)

    def _spawn(self, coro: Awaitable[Any]) -> None:
        task = asyncio.ensure_future(coro)
        self._background.add(task)
        task.add_done_callback(self._background.discard)

    def _publish(self, channel: str, data: bytes) -> None:
        hub = self._hub
        if hub is not None:
            hub.publish_nowait(channel, data)

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
