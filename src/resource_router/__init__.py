"""resource-router: route each request for a resource to the one service instance that owns it.

Ownership lives in Redis (one key per resource, taken atomically by Lua scripts, with a TTL renewed by
heartbeats); requests travel over Redis pub/sub to the owner's own channel.

Every name of ``__all__`` is listed in the README's "Public API" table (a test keeps them equal). The
bodies of the HTTP gateway live in :mod:`resource_router.gateway`.
"""

from __future__ import annotations

from importlib import metadata as _metadata

from .client import ServiceClient
from .connection import connect
from .errors import (
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
)
from .events import EventLog
from .instance import ServiceInstance
from .models import (
    HeartbeatResult,
    InstanceInfo,
    OwnershipEvent,
    Resource,
    ResourceRegistrationResponse,
    ResourceReleaseResponse,
    RouteRequest,
)
from .registry import ResourceRegistry
from .settings import RouterSettings
from .sweeper import Sweeper

try:
    __version__ = _metadata.version("resource-router")
except _metadata.PackageNotFoundError:  # pragma: no cover - a source tree that was never installed
    __version__ = "0+unknown"

__all__ = [
    "EventLog",
    "HeartbeatResult",
    "InstanceInfo",
    "InstanceNotAliveError",
    "InvalidRequestError",
    "MethodNotFoundError",
    "OwnerUnavailableError",
    "OwnershipEvent",
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
    "RouteRequest",
    "RouteTimeoutError",
    "RouterSettings",
    "ServiceClient",
    "ServiceInstance",
    "ServiceUnavailableError",
    "Sweeper",
    "__version__",
    "connect",
]
