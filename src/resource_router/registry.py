"""Ownership in Redis: one owner key per resource, Lua scripts for every multi-key change.

Guarantees (each call is one atomic step on one Redis; on Redis Cluster, on the service's slot):

* A resource has at most one owner: the owner key ``rr:{S}:owner:R`` is written only by scripts
  that checked it first (or by a forced takeover, which the previous owner learns at its next
  heartbeat).
* Owner keys carry the instance's remaining lease, so an instance's resources never outlive it.
* Fencing tokens: each grant to a new owner gets a token greater than every token issued before in
  the service. The counter lives in ``rr:{S}:fence`` and is seeded from Redis TIME (microseconds), so
  tokens keep increasing after owner keys expire or are released and even after Redis lost its data
  in a restart, as long as the Redis server clock does not step back by more than the time since
  the last grant. Re-registering an owned id keeps its token. Tokens order grants; they do not stop
  a paused old owner from acting: the resource's own store must reject writes with a lower token.
* The per-instance limit is checked in the same step as the grant; a call that would exceed it
  writes nothing.
"""

from __future__ import annotations

import json
import time
from collections.abc import Iterable, Sequence
from typing import Any

from prometheus_client import CollectorRegistry
from pydantic import ValidationError
from redis.exceptions import NoScriptError

from .connection import RedisLike, connect
from .errors import (
    InstanceNotAliveError,
    InvalidRequestError,
    ResourceLimitExceededError,
    ResourceNotFoundError,
    ResourceReleaseError,
    ResourceRouterError,
)
from .events import EventLog
from .keys import (
    KeySpace,
    ServiceKeys,
    validate_instance_id,
    validate_resource_id,
    validate_resource_ids,
    validate_text,
)
from .metrics import get_metrics
from .models import (
    HeartbeatResult,
    InstanceInfo,
    Resource,
    ResourceRegistrationResponse,
    ResourceReleaseResponse,
    ms_to_datetime,
    trusted,
)
from .retry import call_redis
from .scripts import (
    STATUS_INSTANCE_NOT_ALIVE,
    STATUS_LIMIT_EXCEEDED,
    STATUS_NOT_OWNER,
    STATUS_OK,
    ScriptSet,
    check_status,
)
from .settings import RouterSettings
from .tracing import id_fields, logger, new_trace_id, timed

__all__ = ["ResourceRegistry"]

MIN_TTL = 0.05
MAX_TTL = 86_400.0


def _s(value: Any) -> str:
    return value.decode("utf-8", "surrogateescape") if isinstance(value, bytes) else str(value)


def _ttl_ms(ttl: object) -> int:
    if isinstance(ttl, bool) or not isinstance(ttl, int | float) or not MIN_TTL <= ttl <= MAX_TTL:
        raise InvalidRequestError(f"ttl must be a number of seconds in [{MIN_TTL}, {MAX_TTL}]", field="ttl")
    return max(1, round(ttl * 1000))


def _pairs(flat: Sequence[Any]) -> dict[str, str]:
    return {_s(flat[i]): _s(flat[i + 1]) for i in range(0, len(flat), 2)}


def _parse_grant(raw: Any) -> tuple[int, int, dict[str, Any]] | None:
    """A grant record ``fencing_token|registered_ms|metadata_json`` -> parts; None when absent or unreadable."""
    if raw is None or raw is False:
        return None
    try:
        token, registered_ms, meta = _s(raw).split("|", 2)
        metadata = json.loads(meta) if meta else {}
        return int(token), int(registered_ms), metadata if isinstance(metadata, dict) else {}
    except ValueError:
        return None


def _log_context(
    operation: str, elapsed: float, service_name: str, instance_id: str, trace_id: str, ids: list[str]
) -> dict[str, Any]:
    return {
        "service_name": service_name,
        "instance_id": instance_id,
        "trace_id": trace_id,
        "operation": operation,
        "duration_ms": round(elapsed * 1000.0, 3),
        **id_fields(ids),
    }


class ResourceRegistry:
    """Register instances and resources, look up owners, renew leases and clean up after the dead.

    ``redis`` is a URL (``redis://``, ``rediss://``, ``unix://``, ``memory://``) or an asyncio client.
    A client passed in stays the caller's to close; a client made from a URL is closed by ``aclose()``.
    """

    def __init__(
        self,
        redis: RedisLike,
        *,
        namespace: str = "rr",
        max_resources_per_instance: int = 1000,
        settings: RouterSettings | None = None,
        metrics_registry: CollectorRegistry | None = None,
    ) -> None:
        base = settings or RouterSettings()
        self.settings = base.model_copy(
            update={"namespace": namespace, "max_resources_per_instance": max_resources_per_instance}
        )
        try:
            RouterSettings.model_validate(self.settings.model_dump())  # re-check the overrides
        except ValidationError as exc:
            field = str(exc.errors()[0]["loc"][0]) if exc.errors() else None
            raise InvalidRequestError(f"invalid registry settings: {exc}", field=field) from exc
        self.keys = KeySpace(namespace)
        self._owns_client = isinstance(redis, str)
        self.redis = connect(redis)
        self._scripts = ScriptSet.for_client(self.redis)
        self.metrics = get_metrics(metrics_registry)
        self.events = EventLog(self.redis, self.keys, self.settings)
        self._service_keys: dict[str, ServiceKeys] = {}
        self._lookup_metrics: dict[str, tuple[Any, Any, Any]] = {}
        self._children: dict[tuple[str, ...], Any] = {}

    # -- lifecycle -------------------------------------------------------------------------------
    @property
    def namespace(self) -> str:
        return self.keys.namespace

    @property
    def max_resources_per_instance(self) -> int:
        return self.settings.max_resources_per_instance

    async def aclose(self) -> None:
        if self._owns_client:
            await self.redis.aclose()

    async def __aenter__(self) -> ResourceRegistry:
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self.aclose()

    async def ping(self) -> bool:
        """True when Redis answers (used by readiness checks)."""
        return bool(await call_redis("ping", self.redis.ping, settings=self.settings, idempotent=True))

    # -- helpers -----------------------------------------------------------------------------------
    def _sk(self, service_name: str) -> ServiceKeys:
        """Validated keys of a service, cached (the hot paths build keys for few services)."""
        sk = self._service_keys.get(service_name)
        if sk is None:
            sk = self.keys.service(service_name)
            if len(self._service_keys) < 4096:
                self._service_keys[service_name] = sk
        return sk

    def _child(self, metric: str, *labels: str) -> Any:
        """A labelled metric child, cached (``labels()`` costs about 1 us per call)."""
        key = (metric, *labels)
        child = self._children.get(key)
        if child is None:
            child = getattr(self.metrics, metric).labels(*labels)
            if len(self._children) < 65536:
                self._children[key] = child
        return child

    def _lookup_children(self, service_name: str) -> tuple[Any, Any, Any]:
        """(found, not found, duration) metric children for lookups of a service, cached."""
        children = self._lookup_metrics.get(service_name)
        if children is None:
            m = self.metrics
            children = (
                m.lookups.labels(service_name, "true"),
                m.lookups.labels(service_name, "false"),
                m.operation_duration.labels("lookup"),
            )
            if len(self._lookup_metrics) < 4096:
                self._lookup_metrics[service_name] = children
        return children

    def _common(self, sk: ServiceKeys, instance_id: str, trace_id: str | None) -> list[Any]:
        return [sk.service_name, instance_id, sk.events_channel, self.settings.audit_maxlen, trace_id or ""]

    def _instance_keys(self, sk: ServiceKeys, instance_id: str) -> list[str]:
        return [
            sk.instance(instance_id),
            sk.instances,
            sk.owned(instance_id),
            sk.lost(instance_id),
            sk.audit,
        ]

    def _metadata_json(self, metadata: object, field: str = "metadata") -> str:
        if metadata is None:
            return ""
        if not isinstance(metadata, dict):
            raise InvalidRequestError(f"{field} must be a JSON object (dict)", field=field)
        try:
            text = json.dumps(metadata, separators=(",", ":"), ensure_ascii=False, allow_nan=False)
        except (TypeError, ValueError) as exc:
            raise InvalidRequestError(f"{field} is not JSON-serialisable: {exc}", field=field) from exc
        validate_text(text, field)
        if len(text.encode()) > self.settings.max_metadata_bytes:
            raise InvalidRequestError(
                f"{field} is {len(text.encode())} bytes as JSON; the limit is {self.settings.max_metadata_bytes}",
                field=field,
            )
        return text

    def _not_alive(self, service_name: str, instance_id: str) -> InstanceNotAliveError:
        return InstanceNotAliveError(
            f"instance {instance_id!r} of service {service_name!r} is not registered or its lease expired; "
            "call register_instance first",
            instance_id=instance_id,
            service_name=service_name,
        )

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
        sk = self._sk(service_name)
        validate_instance_id(instance_id)
        ttl_ms = _ttl_ms(ttl)
        meta = self._metadata_json(metadata)
        keys = self._instance_keys(sk, instance_id)
        args = [*self._common(sk, instance_id, None), ttl_ms, meta or "{}", sk.owner_prefix]

        async def run() -> Any:
            reply = await self._scripts.register_instance(keys=keys, args=args)
            if not reply[3]:  # a new lease: make the service discoverable for sweepers and tools
                await self.redis.sadd(self.keys.services, service_name)  # type: ignore[misc]
            return reply

        with timed(self.metrics, "register_instance") as info:
            reply = await call_redis("register_instance", run, settings=self.settings, idempotent=True)
        check_status(reply, "register_instance")
        swept = [_s(r) for r in reply[4]]
        if swept:
            self.metrics.releases.labels(service_name, "instance_offline").inc(len(swept))
        self.metrics.resources_per_instance.labels(service_name, instance_id).set(0)
        logger.info(
            "instance.register",
            service_name=service_name,
            instance_id=instance_id,
            ttl=ttl,
            existed=bool(reply[3]),
            swept=len(swept),
            **info,
        )
        return InstanceInfo(
            service_name=service_name,
            instance_id=instance_id,
            registered_at=ms_to_datetime(reply[1]),
            last_heartbeat=ms_to_datetime(reply[2]),
            ttl=ttl_ms / 1000.0,
            metadata=metadata or {},
            resource_count=None if reply[3] else 0,
        )

    async def heartbeat(self, service_name: str, instance_id: str, *, ttl: float) -> HeartbeatResult:
        """Renew the instance and everything it owns in one round trip; report ids it has lost.

        Raises ``InstanceNotAliveError`` when the lease already ran out (register again: everything
        it owned is gone). Not retried: a lost reply would lose the report of lost ids, so callers
        that see ``RedisUnavailableError`` should re-read their resources (``list_resources``).
        """
        sk = self._sk(service_name)
        validate_instance_id(instance_id)
        ttl_ms = _ttl_ms(ttl)
        keys = self._instance_keys(sk, instance_id)
        args = [*self._common(sk, instance_id, None), ttl_ms, sk.owner_prefix]
        with timed(self.metrics, "heartbeat") as info:
            reply = await call_redis(
                "heartbeat",
                lambda: self._scripts.renew_instance(keys=keys, args=args),
                settings=self.settings,
                idempotent=False,
            )
        if check_status(reply, "renew_instance") == STATUS_INSTANCE_NOT_ALIVE:
            raise self._not_alive(service_name, instance_id)
        lost = [_s(r) for r in reply[2]]
        self.metrics.resources_per_instance.labels(service_name, instance_id).set(reply[1])
        if lost:
            self.metrics.releases.labels(service_name, "lost").inc(len(lost))
            logger.warning(
                "instance.resources_lost",
                service_name=service_name,
                instance_id=instance_id,
                **id_fields(lost),
                **info,
            )
        return HeartbeatResult(
            service_name=service_name,
            instance_id=instance_id,
            lost=lost,
            owned_count=reply[1],
            ttl=ttl_ms / 1000.0,
        )

    async def deregister_instance(self, service_name: str, instance_id: str) -> list[str]:
        """Release everything the instance owns and remove it. Returns the released ids."""
        sk = self._sk(service_name)
        validate_instance_id(instance_id)
        keys = self._instance_keys(sk, instance_id)
        args = [*self._common(sk, instance_id, None), sk.owner_prefix]
        with timed(self.metrics, "deregister_instance") as info:
            reply = await call_redis(
                "deregister_instance",
                lambda: self._scripts.deregister_instance(keys=keys, args=args),
                settings=self.settings,
                idempotent=True,
            )
        check_status(reply, "deregister_instance")
        released = [_s(r) for r in reply[1]]
        if released:
            self.metrics.releases.labels(service_name, "deregistered").inc(len(released))
        self.metrics.resources_per_instance.labels(service_name, instance_id).set(0)
        logger.info(
            "instance.deregister",
            service_name=service_name,
            instance_id=instance_id,
            released=len(released),
            **info,
        )
        return released

    async def list_instances(self, service_name: str) -> list[InstanceInfo]:
        """Live instances of the service (lease not expired), sorted by id."""
        sk = self._sk(service_name)

        async def run() -> list[Any]:
            ids = [_s(m) for m in await self.redis.zrange(sk.instances, 0, -1)]
            if not ids:
                return []
            async with self.redis.pipeline(transaction=False) as pipe:
                for iid in ids:
                    pipe.hgetall(sk.instance(iid))
                    pipe.hlen(sk.owned(iid))
                replies = await pipe.execute()
            return [(iid, replies[2 * i], replies[2 * i + 1]) for i, iid in enumerate(ids)]

        rows = await call_redis("list_instances", run, settings=self.settings, idempotent=True)
        out = []
        for iid, raw, count in sorted(rows):
            if not raw:
                continue  # lease ran out; the sweeper will remove it from the index
            h = {_s(k): _s(v) for k, v in raw.items()}
            try:
                meta = json.loads(h.get("metadata") or "{}")
            except ValueError:
                meta = {}
            out.append(
                InstanceInfo(
                    service_name=service_name,
                    instance_id=iid,
                    registered_at=ms_to_datetime(int(h.get("registered_at_ms", 0))),
                    last_heartbeat=ms_to_datetime(int(h.get("heartbeat_at_ms", 0))),
                    ttl=int(h.get("ttl_ms", 0)) / 1000.0,
                    metadata=meta if isinstance(meta, dict) else {},
                    resource_count=int(count),
                )
            )
        return out

    async def live_instance_ids(self, service_name: str) -> list[str]:
        """Ids whose lease, as recorded at their last heartbeat, has not run out (one ZRANGEBYSCORE)."""
        sk = self._sk(service_name)
        now_ms = int(time.time() * 1000)
        raw = await call_redis(
            "live_instances",
            lambda: self.redis.zrangebyscore(sk.instances, now_ms, "+inf"),
            settings=self.settings,
            idempotent=True,
        )
        return [_s(m) for m in raw]

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
        """Claim ``resource_ids`` for the instance in one atomic step (see the module docstring)."""
        sk = self._sk(service_name)
        validate_instance_id(instance_id)
        ids = validate_resource_ids(resource_ids, max_count=self.settings.max_batch_size)
        meta = self._metadata_json(metadata)
        trace_id = validate_text(trace_id, "trace_id") if trace_id else new_trace_id()
        start = time.perf_counter()
        chunk = self.settings.register_chunk_size
        if chunk is not None and len(ids) > chunk:
            reply = await self._register_chunked(sk, instance_id, ids, force, meta, trace_id, chunk)
        else:
            reply = await self._register_step(sk, instance_id, ids, force, meta, trace_id)
        elapsed = time.perf_counter() - start
        self._child("operation_duration", "register_resource").observe(elapsed)
        status = check_status(reply, "register_resources")
        ctx = _log_context("register_resource", elapsed, service_name, instance_id, trace_id, ids)
        if status == STATUS_INSTANCE_NOT_ALIVE:
            self._child("registrations", service_name, "rejected").inc(len(ids))
            logger.warning("resource.register_rejected", reason="instance_not_alive", **ctx)
            raise self._not_alive(service_name, instance_id)
        if status == STATUS_LIMIT_EXCEEDED:
            current, requested, limit = int(reply[1]), int(reply[2]), int(reply[3])
            self._child("registrations", service_name, "rejected").inc(len(ids))
            logger.warning("resource.register_rejected", reason="limit", limit=limit, **ctx)
            raise ResourceLimitExceededError(
                f"instance {instance_id!r} owns {current} resource(s); taking {requested} more would exceed "
                f"the limit of {limit}; nothing was registered",
                limit=limit,
                current=current,
                requested=requested,
            )
        per_id, prev_flat, owned_count = reply[1], reply[2], reply[3]
        registered: list[str] = []
        tokens: dict[str, int] = {}
        conflicts: dict[str, str] = {}
        for rid, value in zip(ids, per_id, strict=True):
            if isinstance(value, int):
                registered.append(rid)
                tokens[rid] = value
            else:
                conflicts[rid] = _s(value)
        taken_over = _pairs(prev_flat) if prev_flat else {}
        if registered:
            self._child("registrations", service_name, "granted").inc(len(registered))
        if conflicts:
            self._child("registrations", service_name, "conflict").inc(len(conflicts))
            self._child("conflicts", service_name).inc(len(conflicts))
        self._child("resources_per_instance", service_name, instance_id).set(owned_count)
        logger.info(
            "resource.register",
            registered=len(registered),
            conflicts=len(conflicts),
            taken_over=len(taken_over),
            force=force,
            **ctx,
        )
        return trusted(
            ResourceRegistrationResponse,
            {
                "success": not conflicts,
                "registered": registered,
                "conflicts": conflicts,
                "fencing_tokens": tokens,
                "taken_over": taken_over,
                "trace_id": trace_id,
            },
        )

    async def _register_step(
        self, sk: ServiceKeys, instance_id: str, ids: list[str], force: bool, meta: str, trace_id: str
    ) -> list[Any]:
        """One run of register_resources.lua (one atomic step); the raw reply."""
        keys = [sk.instance(instance_id), sk.owned(instance_id), sk.fence, sk.audit, *sk.owner_keys(ids)]
        args = [
            *self._common(sk, instance_id, trace_id),
            "1" if force else "0",
            self.settings.max_resources_per_instance,
            meta,
            sk.owned_prefix,
            sk.lost_prefix,
            sk.owner_prefix,
        ]
        reply: list[Any] = await call_redis(
            "register_resource",
            lambda: self._scripts.register_resources(keys=keys, args=args),
            settings=self.settings,
            idempotent=True,  # re-registering owned ids is a no-op that keeps their tokens
        )
        return reply

    async def _register_chunked(
        self, sk: ServiceKeys, instance_id: str, ids: list[str], force: bool, meta: str, trace_id: str, chunk: int
    ) -> list[Any]:
        """``settings.register_chunk_size``: a large batch as several atomic steps of ``chunk`` ids, so
        that no single script holds Redis for long. The whole batch is checked first (liveness and the
        limit, exactly, in one read-only round trip); each step checks again. If a concurrent change
        makes a later step exceed the limit, the ids this call newly took are released again and the
        call fails with 429, as a single step would have. Readers may see the batch half-applied
        while it runs. Returns a reply in the single step's shape."""
        limit = self.settings.max_resources_per_instance

        async def precheck() -> list[Any]:
            async with self.redis.pipeline(transaction=False) as pipe:
                pipe.exists(sk.instance(instance_id))
                pipe.hlen(sk.owned(instance_id))
                for start in range(0, len(ids), 500):
                    pipe.mget(sk.owner_keys(ids[start : start + 500]))
                result: list[Any] = await pipe.execute()
                return result

        checked = await call_redis("register_resource", precheck, settings=self.settings, idempotent=True)
        if not checked[0]:
            return [STATUS_INSTANCE_NOT_ALIVE]
        before = [None if o is None else _s(o) for part in checked[2:] for o in part]
        new = [rid for rid, o in zip(ids, before, strict=True) if o is None or (force and o != instance_id)]
        if int(checked[1]) + len(new) > limit:
            return [STATUS_LIMIT_EXCEEDED, int(checked[1]), len(new), limit]
        was_mine = {rid for rid, o in zip(ids, before, strict=True) if o == instance_id}
        per_id: list[Any] = []
        prev_flat: list[Any] = []
        owned_count = 0
        for start in range(0, len(ids), chunk):
            part = ids[start : start + chunk]
            reply = await self._register_step(sk, instance_id, part, force, meta, trace_id)
            status = check_status(reply, "register_resources")
            if status == STATUS_LIMIT_EXCEEDED:
                taken = [r for r, v in zip(ids, per_id, strict=False) if isinstance(v, int) and r not in was_mine]
                if taken:
                    await self._release_step(sk, instance_id, taken, trace_id, "rolled_back")
                return [STATUS_LIMIT_EXCEEDED, int(reply[1]) - len(taken), len(new), limit]
            if status != STATUS_OK:
                return reply  # the lease ran out meanwhile: everything it took is gone with it
            per_id.extend(reply[1])
            prev_flat.extend(reply[2])
            owned_count = reply[3]
        return [STATUS_OK, per_id, prev_flat, owned_count]

    async def _release_step(
        self, sk: ServiceKeys, instance_id: str, ids: list[str], trace_id: str, reason: str
    ) -> list[Any]:
        """One run of release_resources.lua; the raw reply."""
        keys = [sk.owned(instance_id), sk.audit, *sk.owner_keys(ids)]
        args = [*self._common(sk, instance_id, trace_id), reason, sk.owner_prefix]
        reply: list[Any] = await call_redis(
            "release_resource",
            lambda: self._scripts.release_resources(keys=keys, args=args),
            settings=self.settings,
            idempotent=False,
        )
        return reply

    async def release_resource(
        self,
        service_name: str,
        instance_id: str,
        resource_ids: str | Iterable[str],
        *,
        trace_id: str | None = None,
    ) -> ResourceReleaseResponse:
        """Owner-checked, all-or-nothing release. Ids without an owner are reported in ``not_found``."""
        sk = self._sk(service_name)
        validate_instance_id(instance_id)
        ids = validate_resource_ids(resource_ids, max_count=self.settings.max_batch_size)
        trace_id = validate_text(trace_id, "trace_id") if trace_id else new_trace_id()
        start = time.perf_counter()
        reply = await self._release_step(sk, instance_id, ids, trace_id, "released")
        elapsed = time.perf_counter() - start
        self._child("operation_duration", "release_resource").observe(elapsed)
        ctx = _log_context("release_resource", elapsed, service_name, instance_id, trace_id, ids)
        if check_status(reply, "release_resources") == STATUS_NOT_OWNER:
            owners = _pairs(reply[1])
            logger.warning("resource.release_forbidden", owners=owners, **ctx)
            shown = ", ".join(f"{r} (owned by {o})" for r, o in list(owners.items())[:10])
            raise ResourceReleaseError(
                f"instance {instance_id!r} cannot release resources owned by other instances: {shown}; "
                "nothing was released",
                owners=owners,
            )
        flags = reply[1]
        released = [rid for rid, flag in zip(ids, flags, strict=True) if flag == 1]
        not_found = [rid for rid, flag in zip(ids, flags, strict=True) if flag != 1] if len(released) < len(ids) else []
        if released:
            self._child("releases", service_name, "released").inc(len(released))
        self._child("resources_per_instance", service_name, instance_id).set(reply[2])
        logger.info("resource.release", released=len(released), not_found=len(not_found), **ctx)
        return trusted(
            ResourceReleaseResponse,
            {"success": True, "released": released, "not_found": not_found, "trace_id": trace_id},
        )

    async def get_resource_owner(self, service_name: str, resource_id: str) -> Resource:
        """The resource's owner, fencing token and metadata in one round trip (lookup_resource.lua)."""
        sk = self._sk(service_name)
        validate_resource_id(resource_id)
        found, missing, duration = self._lookup_children(service_name)
        okey = sk.owner_prefix + resource_id
        start = time.perf_counter()
        reply = await call_redis(
            "lookup",
            lambda: self._lookup_script(okey, sk.owned_prefix, resource_id),
            settings=self.settings,
            idempotent=True,
        )
        duration.observe(time.perf_counter() - start)
        owner = reply[1] if len(reply) > 1 else None
        grant = reply[2] if len(reply) > 2 else None
        if owner is None:
            missing.inc()
            raise ResourceNotFoundError(
                f"resource {resource_id!r} of service {service_name!r} has no owner",
                resource_id=resource_id,
                service_name=service_name,
            )
        found.inc()
        return self._resource(service_name, resource_id, _s(owner), grant)

    async def _lookup_script(self, owner_key: str, owned_prefix: str, resource_id: str) -> Any:
        """lookup_resource.lua by its SHA (EVALSHA through ``execute_command``: the script object's
        own call costs several microseconds more); loads it when the server does not know it."""
        script = self._scripts.lookup_resource
        try:
            return await self.redis.execute_command("EVALSHA", script.sha, 1, owner_key, owned_prefix, resource_id)
        except NoScriptError:
            return await script(keys=[owner_key], args=[owned_prefix, resource_id])

    async def get_owner_id(self, service_name: str, resource_id: str) -> str | None:
        """Just the owner's instance id (one GET), or None. The routing hot path uses this."""
        sk = self._sk(service_name)
        validate_resource_id(resource_id)
        found, missing, duration = self._lookup_children(service_name)
        okey = sk.owner_prefix + resource_id
        start = time.perf_counter()
        owner = await call_redis("lookup", lambda: self.redis.get(okey), settings=self.settings, idempotent=True)
        duration.observe(time.perf_counter() - start)
        if owner is None:
            missing.inc()
            return None
        found.inc()
        return _s(owner)

    async def get_resources(self, service_name: str, resource_ids: Iterable[str]) -> dict[str, Resource]:
        """Owners of many resources (MGET in chunks); ids nobody owns are left out."""
        sk = self._sk(service_name)
        ids = validate_resource_ids(resource_ids, max_count=self.settings.max_batch_size)

        rows = await call_redis("lookup", lambda: self._read_rows(sk, ids), settings=self.settings, idempotent=True)
        return {rid: self._resource(service_name, rid, _s(o), g) for rid, o, g in rows if o is not None}

    async def _read_rows(self, sk: ServiceKeys, rids: list[str]) -> list[tuple[str, Any, Any]]:
        """(id, owner, grant record) for each id: MGET of the owner keys, then HMGET of each owner's
        owned hash, 500 ids per command."""
        owners: list[Any] = []
        for start in range(0, len(rids), 500):
            owners.extend(await self.redis.mget(sk.owner_keys(rids[start : start + 500])))
        by_owner: dict[str, list[str]] = {}
        for rid, owner in zip(rids, owners, strict=True):
            if owner is not None:
                by_owner.setdefault(_s(owner), []).append(rid)
        records: dict[str, Any] = {}
        for owner, owned in by_owner.items():
            for start in range(0, len(owned), 500):
                chunk = owned[start : start + 500]
                records.update(zip(chunk, await self.redis.hmget(sk.owned(owner), chunk), strict=True))  # type: ignore[misc]
        return [(rid, owner, records.get(rid)) for rid, owner in zip(rids, owners, strict=True)]

    def _resource(self, service_name: str, resource_id: str, owner: str, grant: Any) -> Resource:
        parsed = _parse_grant(grant)
        if parsed is None:
            # Cannot happen through the scripts (the owner key and the grant record are written
            # together); keep the owner, which is authoritative, and say the rest is unknown.
            logger.warning("resource.grant_missing", service_name=service_name, resource_id=resource_id)
            parsed = (0, 0, {})
        return trusted(
            Resource,
            {
                "resource_id": resource_id,
                "owner_instance_id": owner,
                "service_name": service_name,
                "registered_at": ms_to_datetime(parsed[1]),
                "fencing_token": parsed[0],
                "metadata": parsed[2],
            },
        )

    async def list_resources(self, service_name: str, instance_id: str | None = None) -> list[Resource]:
        """Resources currently owned in the service, or by one instance; sorted by resource id."""
        sk = self._sk(service_name)
        if instance_id is not None:
            validate_instance_id(instance_id)

        async def run() -> list[tuple[str, Any, Any]]:
            if instance_id is not None:
                instance_ids = [instance_id]
            else:
                instance_ids = [_s(m) for m in await self.redis.zrange(sk.instances, 0, -1)]
            if not instance_ids:
                return []
            async with self.redis.pipeline(transaction=False) as pipe:
                for iid in instance_ids:
                    pipe.hkeys(sk.owned(iid))
                member_sets = await pipe.execute()
            return await self._read_rows(sk, sorted({_s(r) for members in member_sets for r in members}))

        rows = await call_redis("list_resources", run, settings=self.settings, idempotent=True)
        out = []
        for rid, owner, grant in rows:
            if owner is None:
                continue
            owner_id = _s(owner)
            if instance_id is not None and owner_id != instance_id:
                continue
            out.append(self._resource(service_name, rid, owner_id, grant))
        return out

    async def list_services(self) -> list[str]:
        raw = await call_redis(
            "list_services",
            lambda: self.redis.smembers(self.keys.services),  # type: ignore[arg-type,return-value]
            settings=self.settings,
            idempotent=True,
        )
        return sorted(_s(s) for s in raw)

    # -- cleanup -----------------------------------------------------------------------------------
    async def sweep_instance(self, service_name: str, instance_id: str) -> list[str] | None:
        """Clean up one instance if its lease ran out. Returns the released ids, or None when there
        was nothing to do (alive, or another sweeper got there first)."""
        sk = self._sk(service_name)
        validate_instance_id(instance_id)
        keys = self._instance_keys(sk, instance_id)
        args = [*self._common(sk, instance_id, None), sk.owner_prefix]
        reply = await call_redis(
            "sweep",
            lambda: self._scripts.sweep_instance(keys=keys, args=args),
            settings=self.settings,
            idempotent=True,  # a second run finds nothing to do
        )
        check_status(reply, "sweep_instance")
        if not reply[1]:
            return None
        released = [_s(r) for r in reply[2]]
        self.metrics.releases.labels(service_name, "instance_offline").inc(len(released))
        self.metrics.resources_per_instance.labels(service_name, instance_id).set(0)
        logger.info(
            "instance.swept",
            service_name=service_name,
            instance_id=instance_id,
            released=len(released),
            operation="sweep",
        )
        return released

    async def sweep(self, service_name: str) -> dict[str, list[str]]:
        """Clean up every instance of the service whose lease ran out. Safe to run concurrently in
        many processes: each dead instance is cleaned (and recorded in the audit stream) exactly once.
        Returns {instance_id: released ids} for the instances this call cleaned."""
        sk = self._sk(service_name)
        now_ms = int(time.time() * 1000)
        candidates = await call_redis(
            "sweep",
            lambda: self.redis.zrangebyscore(sk.instances, "-inf", now_ms),
            settings=self.settings,
            idempotent=True,
        )
        swept: dict[str, list[str]] = {}
        for raw in candidates:
            iid = _s(raw)
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
