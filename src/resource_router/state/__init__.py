"""Per-resource state that only the current owner can write (fenced by the grant's token).

``backend.py`` is the seam (``StateStore``, ``StateRecord``), with one implementation per store:
``redis_state.py`` (the default, in the instance's own Redis: one script checks the grant record and
writes the state) and ``postgres_state.py`` (the ``postgres`` extra: an upsert applied only when the
writer's token is at least the row's). ``codec.py`` turns values into bytes (msgpack, an optional
pydantic model, the size limit); ``handle.py`` is what handlers get as ``request.state`` and
``inst.state(resource_id)``: a resource's state bound to one fencing token; ``snapshot.py`` is what
the read-only faces (replicas, the command line) show of it.
"""

from __future__ import annotations

from resource_router.state.backend import StateRecord, StateStore
from resource_router.state.codec import StateCodec
from resource_router.state.handle import ResourceState, StateBinding
from resource_router.state.postgres_state import PostgresStateStore
from resource_router.state.redis_state import RedisStateStore
from resource_router.state.snapshot import StateSnapshot, read_snapshot

__all__ = [
    "PostgresStateStore",
    "RedisStateStore",
    "ResourceState",
    "StateBinding",
    "StateCodec",
    "StateRecord",
    "StateSnapshot",
    "StateStore",
    "read_snapshot",
]
