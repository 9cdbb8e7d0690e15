"""resource-router: route each request for a resource to the one service instance that owns it.

Ownership lives in Redis (one key per resource, taken atomically by Lua scripts, with a TTL renewed by
heartbeats); requests travel over Redis pub/sub to the owner's own channel.
"""

from __future__ import annotations

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
    ErrorResponse,
    HeartbeatResult,
    InstanceInfo,
    OwnershipEvent,
    Resource,
    ResourceRegistrationRequest,
    ResourceRegistrationResponse,
    ResourceReleaseRequest,
    ResourceReleaseResponse,
    RouteRequest,
    RouteResponse,
)
from .registry import ResourceRegistry
from .settings import RouterSettings
from .sweeper import Sweeper

__version__ = "0.1.0"

__all__ = [
    "ErrorResponse",
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
    "ResourceRegistrationRequest",
    "ResourceRegistrationResponse",
    "ResourceRegistry",
    "ResourceReleaseError",
    "ResourceReleaseRequest",
    "ResourceReleaseResponse",
    "ResourceRouterError",
    "RouteRequest",
    "RouteResponse",
    "RouteTimeoutError",
    "RouterSettings",
    "ServiceClient",
    "ServiceInstance",
    "ServiceUnavailableError",
    "Sweeper",
    "__version__",
    "connect",
]
