"""resource-router: route each request for a resource to the one service instance that owns it.

Ownership lives in Redis (one key per resource, taken atomically by Lua scripts, with a TTL renewed by
heartbeats); requests travel over Redis pub/sub to the owner's own channel.

Every name of ``__all__`` is listed in the README's "Public API" table (a test keeps them equal). The
bodies of the HTTP gateway live in :mod:`resource_router.gateway`.
"""

from __future__ import annotations

from resource_router._version import __version__
from resource_router.errors import (
    InstanceNotAliveError,
    InvalidRequestError,
    MethodNotFoundError,
    OwnerUnavailableError,
    RedisUnavailableError,
    RemoteHandlerError,
    ResourceConflictError,
    ResourceLimitExceededError,
    ResourceNotFoundError,
    ResourceReleaseError,
    ResourceRouterError,
    RouteTimeoutError,
    ServiceUnavailableError,
    StaleOwnerError,
    StateStoreUnavailableError,
    StateTooLargeError,
    StateVersionConflictError,
)
from resource_router.models import (
    HeartbeatResult,
    InstanceInfo,
    OwnershipEvent,
    Resource,
    ResourceRegistrationResponse,
    ResourceReleaseResponse,
    RouteRequest,
)
from resource_router.ownership.events import EventLog
from resource_router.ownership.registry import ResourceRegistry
from resource_router.ownership.sweeper import Sweeper
from resource_router.routing.client import ServiceClient
from resource_router.routing.instance import ServiceInstance
from resource_router.settings import RouterSettings
from resource_router.state import PostgresStateStore, RedisStateStore, ResourceState, StateStore
from resource_router.transport.connection import connect

__all__ = [
    "EventLog",
    "HeartbeatResult",
    "InstanceInfo",
    "InstanceNotAliveError",
    "InvalidRequestError",
    "MethodNotFoundError",
    "OwnerUnavailableError",
    "OwnershipEvent",
    "PostgresStateStore",
    "RedisStateStore",
    "RedisUnavailableError",
    "RemoteHandlerError",
    "Resource",
    "ResourceConflictError",
    "ResourceLimitExceededError",
    "ResourceNotFoundError",
    "ResourceRegistrationResponse",
    "ResourceRegistry",
    "ResourceReleaseError",
    "ResourceReleaseResponse",
    "ResourceRouterError",
    "ResourceState",
    "RouteRequest",
    "RouteTimeoutError",
    "RouterSettings",
    "ServiceClient",
    "ServiceInstance",
    "ServiceUnavailableError",
    "StaleOwnerError",
    "StateStore",
    "StateStoreUnavailableError",
    "StateTooLargeError",
    "StateVersionConflictError",
    "Sweeper",
    "__version__",
    "connect",
]
