"""``ResourceRegistry``: the one entry object for ownership in Redis (a facade over its parts).

* ``leases.py``: instances register, heartbeat (one lease key per partition, whatever they own),
  deregister, and are swept after they die;
* ``grants.py``: resources are registered and released, partition by partition;
* ``owners.py``: owners are read (one resource, many, everything an instance or a service owns);
* ``volunteers.py``: the records of placement volunteers;
* ``events.py``: the audit streams, read back;
* ``store.py``: what they share (client, scripts, settings, keys, metrics, the partition check).

Guarantees (``grants.py`` says what holds across partitions):

* A resource has at most one owner: its owner key ``rr:{T}:owner:R`` is written only by scripts that
  checked it first (or by a forced takeover, which the previous owner learns at its next heartbeat),
  and it is valid only while its owner's lease in the partition lives.
* Fencing tokens: each grant to a new owner gets a token greater than every token issued before in
  the resource's partition. The counter lives in ``rr:{T}:fence`` and is seeded from Redis TIME
  (microseconds), so tokens keep increasing after owners die or release, and even after Redis lost
  its data in a restart, as long as the Redis server clock does not step back by more than the time
  since the last grant. Re-registering an owned id keeps its token. Tokens order grants; they do not
  stop a paused old owner from acting: the resource's own store must reject writes with a lower token.
* The per-instance limit is never exceeded; a call that would exceed it registers nothing.
"""

from __future__ import annotations

import json
from collections.abc import Iterable
from typing import Any

from prometheus_client import CollectorRegistry
from pydantic import ValidationError

from resource_router.errors import InvalidRequestError, ResourceRouterError
from resource_router.ids import validate_resource_id, validate_resource_ids, validate_text
from resource_router.models import (
    HeartbeatResult,
    InstanceInfo,
    Resource,
    ResourceRegistrationResponse,
    ResourceReleaseResponse,
    ms_to_datetime,
)
from resource_router.observability import otel
from resource_router.observability.logs import get_logger
from resource_router.observability.metrics import get_metrics
from resource_router.ownership.events import EventLog
from resource_router.ownership.grants import Grants
from resource_router.ownership.keys import KeySpace, ServiceKeys
from resource_router.ownership.leases import Leases
from resource_router.ownership.owners import Owners
from resource_router.ownership.store import Store, text
from resource_router.ownership.volunteers import Volunteer, Volunteers
from resource_router.settings import RouterSettings
from resource_router.transport.connection import RedisLike, close_client, connect
from resource_router.transport.retry import call_redis

__all__ = ["ResourceRegistry"]

logger = get_logger(__name__)


class ResourceRegistry:
    """Register instances and resources, look up owners, renew leases and clean up after the dead.

    ``redis`` is a URL (``redis://``, ``rediss://``, ``unix://``, ``redis+cluster://``, ``memory://``)
    or an asyncio client. A client passed in stays the caller's to close (the registry talks through a
    twin of it with the library's settings, see ``connection.py``); what the registry made, it closes
    in ``aclose()``.
    """

    def __init__(
        self,
        redis: RedisLike,
        *,
        namespace: str | None = None,
        max_resources_per_instance: int | None = None,
        partitions: int | None = None,
        settings: RouterSettings | None = None,
        metrics_registry: CollectorRegistry | None = None,
    ) -> None:
        base = settings or RouterSettings()
        given = {
            "namespace": namespace,
            "max_resources_per_instance": max_resources_per_instance,
            "partitions": partitions,
        }  # None: the settings' value (the argument, else RESOURCE_ROUTER_<FIELD>, else its default)
        update: dict[str, Any] = {name: value for name, value in given.items() if value is not None}
        self.settings = base.model_copy(update=update)
        try:
            RouterSettings.model_validate(self.settings.model_dump())  # re-check the overrides
        except ValidationError as exc:
            field = str(exc.errors()[0]["loc"][0]) if exc.errors() else None
            raise InvalidRequestError(f"invalid registry settings: {exc}", field=field) from exc
        self.keys = KeySpace(self.settings.namespace)
        self.redis = connect(redis, self.settings)
        self._owns_client = self.redis is not redis
        self.metrics = get_metrics(metrics_registry)
        self.store = Store(self.redis, self.settings, self.keys, self.metrics)
        self.leases = Leases(self.store)
        self.owners = Owners(self.store, self.leases)
        self.grants = Grants(self.store, self.leases, self.owners)
        self.volunteers = Volunteers(self.store)
        self.events = EventLog(self.redis, self.keys, self.settings)

    # -- lifecycle -------------------------------------------------------------------------------
    @property
    def namespace(self) -> str:
        return self.keys.namespace

    @property
    def partitions(self) -> int:
        return self.settings.partitions

    @property
    def max_resources_per_instance(self) -> int:
        return self.settings.max_resources_per_instance

    async def aclose(self) -> None:
        await self.store.aclose()
        if self._owns_client:
            await close_client(self.redis)

    async def __aenter__(self) -> ResourceRegistry:
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self.aclose()

    async def ping(self) -> bool:
        """True when Redis answers (used by readiness checks)."""
        return bool(await call_redis("ping", self.redis.ping, settings=self.settings, idempotent=True))

    async def service(self, service_name: str, *, operation: str = "lookup") -> ServiceKeys:
        """The service's keys, once its partition count matched the one recorded in Redis."""
        return await self.store.service(service_name, operation)

    def _metadata_json(self, metadata: object, field: str = "metadata") -> str:
        if metadata is None:
            return ""
        if not isinstance(metadata, dict):
            raise InvalidRequestError(f"{field} must be a JSON object (dict)", field=field)
        try:
            encoded = json.dumps(metadata, separators=(",", ":"), ensure_ascii=False, allow_nan=False)
        except (TypeError, ValueError) as exc:
            raise InvalidRequestError(f"{field} is not JSON-serialisable: {exc}", field=field) from exc
        validate_text(encoded, field)
        if len(encoded.encode()) > self.settings.max_metadata_bytes:
            raise InvalidRequestError(
                f"{field} is {len(encoded.encode())} bytes as JSON; the limit is {self.settings.max_metadata_bytes}",
                field=field,
            )
        return encoded

    # -- instances ---------------------------------------------------------------------------------
    async def register_instance(
        self,
        service_name: str,
        instance_id: str,
        *,
        ttl: float,
        metadata: dict[str, Any] | None = None,
    ) -> InstanceInfo:
        """Create or refresh an instance's lease. A previous incarnation whose lease ran out is cleaned
        up first (its resources are released with reason ``instance_offline``)."""
        with otel.operation_span("register_instance", service_name=service_name, instance_id=instance_id):
            meta = self._metadata_json(metadata)
            facts = await self.leases.register_instance(service_name, instance_id, ttl=ttl, metadata=meta or "{}")
            return InstanceInfo(
                service_name=service_name,
                instance_id=instance_id,
                registered_at=ms_to_datetime(facts["registered_at"]),
                last_heartbeat=ms_to_datetime(facts["now"]),
                ttl=facts["ttl_ms"] / 1000.0,
                metadata=metadata or {},
                resource_count=None if facts["existed"] else 0,
            )

    async def heartbeat(self, service_name: str, instance_id: str, *, ttl: float) -> HeartbeatResult:
        """Renew the instance's lease (one key per partition, in one round trip); report ids it lost.
        See ``Leases.heartbeat``."""
        with otel.operation_span("heartbeat", service_name=service_name, instance_id=instance_id):
            return await self.leases.heartbeat(service_name, instance_id, ttl=ttl)

    async def deregister_instance(self, service_name: str, instance_id: str) -> list[str]:
        """Release everything the instance owns and remove it. Returns the released ids."""
        with otel.operation_span("deregister_instance", service_name=service_name, instance_id=instance_id):
            return await self.leases.deregister_instance(service_name, instance_id)

    async def list_instances(self, service_name: str) -> list[InstanceInfo]:
        """Live instances of the service (lease not expired), sorted by id."""
        return await self.leases.list_instances(service_name)

    async def live_instance_ids(self, service_name: str) -> list[str]:
        """Ids whose lease, as recorded at their last heartbeat, has not run out."""
        return await self.leases.live_instance_ids(service_name)

    # -- resources ---------------------------------------------------------------------------------
    async def register_resource(
        self,
        service_name: str,
        instance_id: str,
        resource_ids: str | Iterable[str],
        *,
        force: bool = False,
        metadata: dict[str, Any] | None = None,
        trace_id: str | None = None,
    ) -> ResourceRegistrationResponse:
        """Claim ``resource_ids`` for the instance (see the module docstring and ``ownership.py``)."""
        with otel.operation_span("register_resource", service_name=service_name, instance_id=instance_id):
            meta = self._metadata_json(metadata)
            return await self.grants.register(service_name, instance_id, resource_ids, force, meta, trace_id)

    async def release_resource(
        self,
        service_name: str,
        instance_id: str,
        resource_ids: str | Iterable[str],
        *,
        trace_id: str | None = None,
    ) -> ResourceReleaseResponse:
        """Owner-checked, all-or-nothing release. Ids without an owner are reported in ``not_found``."""
        with otel.operation_span("release_resource", service_name=service_name, instance_id=instance_id):
            return await self.grants.release(service_name, instance_id, resource_ids, trace_id)

    async def get_resource_owner(self, service_name: str, resource_id: str) -> Resource:
        """The resource's owner, fencing token and metadata in one round trip."""
        with otel.operation_span("lookup", service_name=service_name, resource_id=resource_id):
            return await self.owners.get_resource_owner(service_name, resource_id)

    async def raise_fences(self, service_name: str, tokens: dict[str, int]) -> None:
        """Make every later fencing token of these resources larger than the given ones (used after
        a master change, when the new master may not have seen the latest grants)."""
        await self.grants.raise_fences(service_name, tokens)

    async def get_owner_id(self, service_name: str, resource_id: str) -> str | None:
        """Just the owner's instance id, or None."""
        validate_resource_id(resource_id)
        return (await self.get_owner_ids(service_name, [resource_id]))[resource_id]

    async def get_owner_ids(self, service_name: str, resource_ids: Iterable[str]) -> dict[str, str | None]:
        """The valid owner of each id (None: no owner), every partition at once."""
        sk = await self.store.service(service_name, "lookup")
        ids = list(resource_ids) if not isinstance(resource_ids, str) else [resource_ids]
        return await self.owners.read_owners(sk, validate_resource_ids(ids, max_count=self.settings.max_batch_size))

    async def get_resources(self, service_name: str, resource_ids: Iterable[str]) -> dict[str, Resource]:
        """Owners of many resources; ids nobody owns are left out."""
        return await self.owners.get_resources(service_name, resource_ids)

    async def list_resources(self, service_name: str, instance_id: str | None = None) -> list[Resource]:
        """Resources currently owned in the service, or by one instance; sorted by resource id."""
        return await self.owners.list_resources(service_name, instance_id)

    async def list_services(self) -> list[str]:
        raw = await call_redis(
            "list_services",
            lambda: self.redis.smembers(self.keys.services),  # type: ignore[arg-type,return-value,unused-ignore]
            settings=self.settings,
            idempotent=True,
        )
        return sorted(text(s) for s in raw)

    # -- cleanup -----------------------------------------------------------------------------------
    async def sweep_instance(self, service_name: str, instance_id: str) -> list[str] | None:
        """Clean up one instance if its lease ran out. Returns the released ids, or None when there
        was nothing to do (alive, or another sweeper got there first)."""
        with otel.operation_span("sweep", service_name=service_name, instance_id=instance_id):
            return await self.leases.sweep_instance(service_name, instance_id)

    async def sweep(self, service_name: str) -> dict[str, list[str]]:
        """Clean up every instance of the service whose lease ran out. Safe to run concurrently in
        many processes: each dead instance is cleaned (and recorded in the audit stream of each
        partition where it held something) exactly once. Returns {instance_id: released ids} for the
        instances this call cleaned."""
        sk = self.store.service_keys(service_name)
        swept: dict[str, list[str]] = {}
        for iid in await self.leases.dead_instance_ids(sk):
            try:
                released = await self.sweep_instance(service_name, iid)
            except InvalidRequestError:
                continue  # not written by this library; leave it alone
            if released is not None:
                swept[iid] = released
        return swept

    async def sweep_all(self) -> dict[str, dict[str, list[str]]]:
        """``sweep`` for every service that ever registered an instance in this namespace."""
        out: dict[str, dict[str, list[str]]] = {}
        for service_name in await self.list_services():
            try:
                swept = await self.sweep(service_name)
            except ResourceRouterError as exc:
                logger.warning("sweep.failed", service_name=service_name, error=str(exc))
                continue
            if swept:
                out[service_name] = swept
        return out

    # -- placement volunteers ------------------------------------------------------------------------
    async def add_volunteer(self, service_name: str, instance_id: str, *, placement: str, limit: int) -> bool:
        """List ``instance_id`` as a placement volunteer of the service (``volunteers.py``)."""
        return await self.volunteers.add(service_name, instance_id, placement=placement, limit=limit)

    async def remove_volunteer(self, service_name: str, instance_id: str) -> bool:
        """Take ``instance_id`` off the service's placement volunteers."""
        return await self.volunteers.remove(service_name, instance_id)

    async def list_volunteers(self, service_name: str) -> list[Volunteer]:
        """The live volunteers of the service, sorted by id, with how many resources each owns."""
        return await self.volunteers.list(service_name)
