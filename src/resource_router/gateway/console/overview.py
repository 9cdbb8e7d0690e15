"""What the operator console reads: services, live instances with the lease they have left, the
volunteers, the spread of resources over partitions and Redis masters, one resource's owner.

Only reads, all of them commands a replica already runs (``SMEMBERS``, ``GET``, ``ZRANGE``,
``HGETALL``, ``HLEN``, ``HKEYS``, the read-only lookup script, ``TIME``, ``XREAD``): the console works
with the replica's ACL user (docs/security.md). A service is read with the partition count recorded
for it in Redis, whatever the replica's own setting, so one console shows services of every count.
"""

from __future__ import annotations

import asyncio
from typing import Any

from resource_router.gateway.state import GatewayState
from resource_router.ids import validate_resource_id, validate_service_name
from resource_router.observability.logs import get_logger
from resource_router.ownership.keys import PartitionKeys, ServiceKeys, partition_of
from resource_router.ownership.registry import ResourceRegistry
from resource_router.transport.connection import describe, is_cluster
from resource_router.transport.retry import call_redis

__all__ = ["ConsoleReader"]

logger = get_logger(__name__)


def _text(value: Any) -> str:
    return value.decode("utf-8", "replace") if isinstance(value, bytes) else str(value)


class ConsoleReader:
    """The console's reads over one replica's Redis client. ``aclose`` closes the registries it made
    for services recorded with another partition count than the replica's."""

    def __init__(self, state: GatewayState) -> None:
        self._state = state
        self._base = state.registry
        self._registries: dict[int, ResourceRegistry] = {self._base.partitions: self._base}
        self._lock = asyncio.Lock()

    @property
    def namespace(self) -> str:
        return self._base.namespace

    async def services(self) -> list[str]:
        """Every service that ever registered an instance in the namespace, sorted."""
        return await self._base.list_services()

    async def registry_for(self, service_name: str) -> ResourceRegistry:
        """A registry reading ``service_name`` with the partition count recorded for it."""
        key = ServiceKeys(self._base.namespace, validate_service_name(service_name)).partitions_key
        base = self._base
        raw = await call_redis("console", lambda: base.redis.get(key), settings=base.settings, idempotent=True)
        count = int(raw) if raw is not None else base.partitions
        registry = self._registries.get(count)
        if registry is not None:
            return registry
        async with self._lock:
            registry = self._registries.get(count)
            if registry is None:
                registry = ResourceRegistry(
                    base.redis,
                    partitions=count,
                    settings=base.settings,
                    metrics_registry=self._state.metrics_registry,
                )
                self._registries[count] = registry
            return registry

    async def service(self, service_name: str) -> dict[str, Any]:
        """Instances (lease left, volunteer flag, owned count), and the spread over partitions and masters."""
        registry = await self.registry_for(service_name)
        instances = await registry.list_instances(service_name)
        volunteers = {v.instance_id: v for v in await registry.list_volunteers(service_name)}
        now_s = await self._redis_time(registry)
        rows = []
        for info in instances:
            expires = info.last_heartbeat.timestamp() + info.ttl
            volunteer = volunteers.get(info.instance_id)
            rows.append(
                {
                    "instance_id": info.instance_id,
                    "ttl": info.ttl,
                    "lease_left": round(max(0.0, expires - now_s), 3),
                    "registered_at": info.registered_at.isoformat(),
                    "last_heartbeat": info.last_heartbeat.isoformat(),
                    "owned": info.resource_count or 0,
                    "volunteer": {"placement": volunteer.placement, "limit": volunteer.limit} if volunteer else None,
                    "metadata": info.metadata,
                }
            )
        sk = registry.keys.service(service_name, registry.partitions)
        partitions = await self._spread(registry, sk, [i.instance_id for i in instances])
        masters: dict[str, dict[str, int]] = {}
        for part in partitions:
            entry = masters.setdefault(part["master"], {"partitions": 0, "resources": 0})
            entry["partitions"] += 1
            entry["resources"] += part["resources"]
        return {
            "service_name": service_name,
            "namespace": registry.namespace,
            "partitions": registry.partitions,
            "cluster": is_cluster(registry.redis),
            "instances": rows,
            "spread": partitions,
            "masters": [{"master": name, **counts} for name, counts in sorted(masters.items())],
        }

    async def resource(self, service_name: str, resource_id: str) -> dict[str, Any]:
        """The owner of one resource, its fencing token, metadata, partition and master
        (``ResourceNotFoundError`` when nobody owns it)."""
        registry = await self.registry_for(service_name)
        validate_resource_id(resource_id)
        resource = await registry.get_resource_owner(service_name, resource_id)
        sk = registry.keys.service(service_name, registry.partitions)
        index = partition_of(resource_id, sk.partitions)
        return resource.model_dump(mode="json") | {
            "partition": index,
            "master": self._master(registry, sk.parts[index]),
        }

    async def _spread(
        self, registry: ResourceRegistry, sk: ServiceKeys, instance_ids: list[str]
    ) -> list[dict[str, Any]]:
        """Resources per partition (HLEN of each live instance's owned hash in each partition)."""
        counts = [0] * sk.partitions
        if instance_ids:

            async def read() -> list[Any]:
                async with registry.redis.pipeline(transaction=False) as pipe:
                    for part in sk.parts:
                        for iid in instance_ids:
                            pipe.hlen(part.owned(iid))
                    result: list[Any] = await pipe.execute()
                    return result

            replies = await call_redis("console", read, settings=registry.settings, idempotent=True)
            n = len(instance_ids)
            counts = [sum(int(c) for c in replies[p * n : (p + 1) * n]) for p in range(sk.partitions)]
        return [
            {"partition": part.index, "tag": part.tag, "master": self._master(registry, part), "resources": counts[i]}
            for i, part in enumerate(sk.parts)
        ]

    @staticmethod
    def _master(registry: ResourceRegistry, part: PartitionKeys) -> str:
        """The Redis master holding a partition's slot (``host:port``); the one server otherwise."""
        redis: Any = registry.redis
        if is_cluster(redis):
            try:
                node = redis.get_node_from_key(part.fence)
            except Exception:  # the slot map is being refreshed: say so rather than fail the page
                return "unknown"
            return f"{node.host}:{node.port}" if node is not None else "unknown"
        return describe(redis)

    @staticmethod
    async def _redis_time(registry: ResourceRegistry) -> float:
        """Redis's clock (leases are measured by it), in seconds."""
        reply = await call_redis("console", registry.redis.time, settings=registry.settings, idempotent=True)
        if isinstance(reply, dict):  # a cluster asked every node: any one will do
            reply = next(iter(reply.values()))
        seconds, micros = reply
        return int(seconds) + int(micros) / 1e6

    async def aclose(self) -> None:
        made = [r for r in self._registries.values() if r is not self._base]
        self._registries = {self._base.partitions: self._base}
        for registry in made:
            await registry.aclose()
