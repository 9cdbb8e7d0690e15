"""The parts of one ``ServiceInstance``, built in one place, each given the objects it works on.

Built bottom-up so that no part needs a callback into another: the running requests (``Jobs``), the
ownership view (waits for the jobs of a resource before ``on_deactivate``), the mover and the
volunteer side of placement, the lease keeper, the replies, stale-request confirmation, and the
dispatcher over all of them. They share one lock (every change of the view that talks to Redis
holds it) and one set of background tasks.
"""

from __future__ import annotations

import asyncio
from dataclasses import dataclass

from prometheus_client import CollectorRegistry
from pydantic import BaseModel

from resource_router.observability.logs import Logger
from resource_router.ownership.registry import ResourceRegistry
from resource_router.ownership.view import OwnershipView, ResourceLostCallback
from resource_router.placement.directory import VolunteerDirectory
from resource_router.placement.handoff import Mover
from resource_router.placement.volunteering import Volunteering
from resource_router.routing.dispatcher import Dispatcher, Handler
from resource_router.routing.jobs import Jobs
from resource_router.routing.lease_keeper import LeaseKeeper
from resource_router.routing.options import InstanceOptions
from resource_router.routing.replies import Replies
from resource_router.routing.signing import Signer
from resource_router.routing.staleness import Staleness
from resource_router.settings import DEFAULT_CONFIRM_BATCH
from resource_router.state.backend import StateStore
from resource_router.state.codec import StateCodec
from resource_router.state.handle import StateBinding
from resource_router.state.redis_state import RedisStateStore
from resource_router.transport.tasks import TaskSet

__all__ = ["InstanceParts"]


@dataclass(frozen=True, slots=True)
class InstanceParts:
    """Everything an instance runs (see the module docstring)."""

    tasks: TaskSet
    lock: asyncio.Lock
    jobs: Jobs
    view: OwnershipView
    mover: Mover
    volunteering: Volunteering
    keeper: LeaseKeeper
    replies: Replies
    staleness: Staleness
    dispatcher: Dispatcher
    state: StateBinding

    @classmethod
    def build(
        cls,
        options: InstanceOptions,
        registry: ResourceRegistry,
        *,
        service_name: str,
        instance_id: str,
        channel: str,
        handlers: dict[str, Handler],
        on_resource_lost: ResourceLostCallback | None,
        metrics_registry: CollectorRegistry | None,
        log: Logger,
        state_store: StateStore | None = None,
        state_model: type[BaseModel] | None = None,
    ) -> InstanceParts:
        service, iid, settings = service_name, instance_id, registry.settings
        tasks = TaskSet()
        lock = asyncio.Lock()  # every change of the view that talks to Redis holds it
        jobs = Jobs(options.max_concurrency, serial=options.serial_per_resource, log=log)
        view = OwnershipView(options.ttl, requests=jobs, log=log)
        view.on_resource_lost = on_resource_lost
        mover = Mover(
            registry=registry,
            view=view,
            requests=jobs,
            lock=lock,
            directory=VolunteerDirectory(registry, max_age=0.5),
            service_name=service,
            instance_id=iid,
            log=log,
            metrics_registry=metrics_registry,
        )
        volunteering = Volunteering(
            registry=registry,
            view=view,
            mover=mover,
            lock=lock,
            service_name=service,
            instance_id=iid,
            placement=options.placement,
            ttl=options.ttl,
            rebalance=options.rebalance,
            rebalance_rate=options.rebalance_rate,
            idle_timeout=options.idle_timeout,
            drain_timeout=options.drain_timeout,
            log=log,
        )
        keeper = LeaseKeeper(
            registry,
            view,
            lock=lock,
            tasks=tasks,
            service_name=service,
            instance_id=iid,
            ttl=options.ttl,
            metadata=options.metadata,
            placed_on_adopt=options.accept_placement,
            volunteering=volunteering,
            log=log,
            reclaim_after_failover=options.reclaim_after_failover,
        )
        signer = Signer.from_settings(settings)
        state = StateBinding(  # a refused stale write stops serving the id, as a takeover seen does
            (state_store if state_store is not None else RedisStateStore()).bind(registry),
            StateCodec(state_model, settings.max_state_bytes),
            service_name=service,
            instance_id=iid,
            on_stale=keeper.stale,
        )
        replies = Replies(
            instance_id=iid, metrics=registry.metrics, signer=signer, max_payload=settings.max_payload_bytes, log=log
        )
        staleness = Staleness(
            confirm_after=options.confirm_after,
            registry=registry,
            view=view,
            keeper=keeper,
            service_name=service,
            instance_id=iid,
            batch=min(DEFAULT_CONFIRM_BATCH, settings.max_batch_size),
            log=log,
        )
        dispatcher = Dispatcher(
            view=view,
            jobs=jobs,
            replies=replies,
            staleness=staleness,
            handlers=handlers,
            service_name=service,
            instance_id=iid,
            channel=channel,
            reply_prefix=registry.keys.reply_prefix,
            metrics=registry.metrics,
            max_payload=settings.max_payload_bytes,
            signer=signer,
            volunteering=volunteering if options.accept_placement else None,
            mover=mover,
            tasks=tasks,
            drain_timeout=options.drain_timeout,
            log=log,
            state=state,
        )
        return cls(tasks, lock, jobs, view, mover, volunteering, keeper, replies, staleness, dispatcher, state)
