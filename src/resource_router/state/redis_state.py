"""``RedisStateStore``: per-resource state in the instance's own Redis, next to the grants.

Each state is a hash ``{ns}:{T}:state:R`` in the partition slot of the resource (``keys.py``), so
one script (``save_state.lua``, ``delete_state.lua``) reads the owner key, the owner's lease and the
grant record, and writes the state only when the writer holds the current grant: atomic on a single
Redis, on ``memory://`` and on Redis Cluster (one slot). Reads (``load_state.lua``) are not fenced.
A save is not retried (it is not idempotent); a load is. With ``min_replicas`` a save or delete is
followed by ``WAIT`` and reported done only once that many replicas have it (``DurabilityError``
otherwise), as writes of ownership are. While an instance runs, the scripts go
on its hub's pipelined command connection (the owner lookup's path, half the latency of a redis-py
call); a load that fails there is read again through the registry's client, under its retries.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from resource_router.errors import (
    InvalidRequestError,
    ResourceRouterError,
    StaleOwnerError,
    StateVersionConflictError,
)
from resource_router.ids import validate_resource_id
from resource_router.ownership.scripts import check_status
from resource_router.ownership.store import Store
from resource_router.state.backend import StateRecord, StateStore
from resource_router.status import ScriptStatus

if TYPE_CHECKING:
    from resource_router.ownership.registry import ResourceRegistry
    from resource_router.transport.hub import PubSubHub

__all__ = ["RedisStateStore"]


class RedisStateStore(StateStore):
    """The default state store (see the module docstring). ``RedisStateStore()`` is bound to the
    Redis of the instance (or replica) it is given to."""

    name = "redis"

    def __init__(self) -> None:
        self._store: Store | None = None
        self._hub: PubSubHub | None = None

    def attach(self, hub: PubSubHub | None) -> None:
        self._hub = hub

    def bind(self, registry: ResourceRegistry) -> StateStore:
        if self._store is registry.store:
            return self
        bound = RedisStateStore()
        bound._store = registry.store
        return bound

    @property
    def store(self) -> Store:
        if self._store is None:
            raise RuntimeError("RedisStateStore() is used through a ServiceInstance (or bind(registry))")
        return self._store

    async def load(
        self, service_name: str, resource_id: str, *, fencing_token: int | None = None
    ) -> StateRecord | None:
        store = self.store
        sk = await store.service(service_name, "state.load")
        validate_resource_id(resource_id)
        keys = [sk.state(resource_id)]
        hub, reply = self._hub, None
        if hub is not None:
            try:
                reply = await hub.evalsha("state.load", store.scripts.load_state, keys, [])
                check_status(reply, "state.load")
            except InvalidRequestError:
                raise
            except ResourceRouterError:
                reply = None  # the pipelined connection failed: read through the registry (retried)
        if reply is None:
            reply = await store.run("state.load", store.scripts.load_state, keys, [], idempotent=True)
        if len(reply) < 4:
            return None
        return StateRecord(bytes(reply[1]), int(reply[2]), int(reply[3]))

    async def save(
        self,
        service_name: str,
        resource_id: str,
        data: bytes,
        *,
        instance_id: str,
        fencing_token: int,
        version: int | None = None,
    ) -> int:
        reply = await self._write("state.save", service_name, resource_id, instance_id, fencing_token, version, data)
        return int(reply[1])

    async def delete(
        self,
        service_name: str,
        resource_id: str,
        *,
        instance_id: str,
        fencing_token: int,
        version: int | None = None,
    ) -> bool:
        reply = await self._write("state.delete", service_name, resource_id, instance_id, fencing_token, version, None)
        return bool(int(reply[1]) == 1)

    async def _write(
        self,
        operation: str,
        service_name: str,
        resource_id: str,
        instance_id: str,
        token: int,
        version: int | None,
        data: bytes | None,
    ) -> list[Any]:
        store = self.store
        sk = await store.service(service_name, operation)
        validate_resource_id(resource_id)
        if isinstance(token, bool) or not isinstance(token, int) or token < 0:
            raise InvalidRequestError("fencing_token must be a non-negative integer", field="fencing_token")
        part = sk.part_of(resource_id)
        args: list[object] = [
            part.owned_prefix,
            part.lease_prefix,
            resource_id,
            instance_id,
            str(token),
            "" if version is None else str(version),
        ]
        script = store.scripts.delete_state
        if data is not None:
            args.append(data)
            script = store.scripts.save_state
        keys = [part.state(resource_id), part.owner(resource_id)]
        hub = self._hub
        reply: list[Any]
        if hub is not None and store.replicated is None:  # with min_replicas: the registry's WAIT path
            reply = await hub.evalsha(operation, script, keys, args)
            check_status(reply, operation)
        else:
            reply = await store.run(operation, script, keys, args, idempotent=False)
        status = reply[0]
        if status == ScriptStatus.STALE_OWNER:
            current = int(reply[1])
            raise StaleOwnerError(
                f"{instance_id!r} wrote {resource_id!r} with fencing token {token}, but "
                + ("nobody holds a live grant of it" if current < 0 else f"the current token is {current}")
                + ": refused, nothing written (a newer owner has it)",
                resource_id=resource_id,
                fencing_token=token,
                current_token=None if current < 0 else current,
            )
        if status == ScriptStatus.VERSION_CONFLICT:
            actual = int(reply[1])
            raise StateVersionConflictError(
                f"state of {resource_id!r} is at version {actual}, not {version}: nothing written",
                resource_id=resource_id,
                expected=version if version is not None else -1,
                actual=actual,
            )
        return reply
