"""Pydantic v2 models: what the library returns, and the bodies of the HTTP gateway."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, PrivateAttr

from resource_router.errors import ResourceConflictError
from resource_router.ids import INSTANCE_ID_SCHEMA, RESOURCE_ID_SCHEMA, SERVICE_NAME_SCHEMA

if TYPE_CHECKING:
    from resource_router.state.handle import ResourceState

__all__ = [
    "ErrorResponse",
    "HeartbeatResult",
    "InstanceInfo",
    "OwnershipEvent",
    "Resource",
    "ResourceRegistrationRequest",
    "ResourceRegistrationResponse",
    "ResourceReleaseRequest",
    "ResourceReleaseResponse",
    "RouteRequest",
    "RouteResponse",
    "ms_to_datetime",
]


def ms_to_datetime(ms: int | float) -> datetime:
    return datetime.fromtimestamp(ms / 1000.0, tz=UTC)


class _Model(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=False)


# Request fields carry the id rules in their JSON schema (OpenAPI); validation is keys.py's.
_RESOURCE_IDS_SCHEMA: dict[str, Any] = {"items": {"type": "string", **RESOURCE_ID_SCHEMA}, "minItems": 1}


class Resource(_Model):
    resource_id: str
    owner_instance_id: str
    service_name: str
    registered_at: datetime
    fencing_token: int
    metadata: dict[str, Any] = Field(default_factory=dict)


class InstanceInfo(_Model):
    service_name: str
    instance_id: str
    registered_at: datetime
    last_heartbeat: datetime
    ttl: float = Field(description="lease length in seconds")
    metadata: dict[str, Any] = Field(default_factory=dict)
    resource_count: int | None = Field(default=None, description="owned resources, when known")


class HeartbeatResult(_Model):
    service_name: str
    instance_id: str
    lost: list[str] = Field(default_factory=list, description="ids lost since the previous heartbeat")
    owned_count: int = Field(description="resources the instance still owns after this heartbeat")
    ttl: float


class ResourceRegistrationRequest(_Model):
    service_name: str = Field(json_schema_extra=SERVICE_NAME_SCHEMA)
    instance_id: str = Field(json_schema_extra=INSTANCE_ID_SCHEMA)
    resource_ids: list[str] = Field(json_schema_extra=_RESOURCE_IDS_SCHEMA)
    force: bool = False
    metadata: dict[str, Any] | None = None
    trace_id: str | None = None


class ResourceRegistrationResponse(_Model):
    success: bool
    registered: list[str] = Field(default_factory=list)
    conflicts: dict[str, str] = Field(default_factory=dict, description="resource id -> current owner")
    fencing_tokens: dict[str, int] = Field(default_factory=dict, description="token of each registered id")
    taken_over: dict[str, str] = Field(
        default_factory=dict, description="with force: resource id -> the previous owner"
    )
    trace_id: str | None = None

    def raise_for_conflicts(self) -> ResourceRegistrationResponse:
        if self.conflicts:
            owners = ", ".join(f"{r} (owned by {o})" for r, o in list(self.conflicts.items())[:10])
            more = "" if len(self.conflicts) <= 10 else f" and {len(self.conflicts) - 10} more"
            raise ResourceConflictError(
                f"{len(self.conflicts)} resource(s) already owned: {owners}{more}",
                conflicts=self.conflicts,
            )
        return self


class ResourceReleaseRequest(_Model):
    service_name: str = Field(json_schema_extra=SERVICE_NAME_SCHEMA)
    instance_id: str = Field(json_schema_extra=INSTANCE_ID_SCHEMA)
    resource_ids: list[str] = Field(json_schema_extra=_RESOURCE_IDS_SCHEMA)
    trace_id: str | None = None


class ResourceReleaseResponse(_Model):
    success: bool
    released: list[str] = Field(default_factory=list)
    not_found: list[str] = Field(default_factory=list, description="ids that had no owner (already free)")
    trace_id: str | None = None


class RouteRequest(_Model):
    service_name: str
    method: str
    params: Any = None
    resource_id: str | None = None
    timeout: float | None = Field(default=None, gt=0, le=3600)
    trace_id: str | None = None
    fencing_token: int | None = Field(default=None, description="set by the owner for the handler")
    deadline: float | None = Field(default=None, description="absolute UNIX time after which to drop")
    request_id: str | None = None
    _state: Any = PrivateAttr(default=None)

    @property
    def state(self) -> ResourceState:
        """The resource's state bound to this request's fencing token (``load``, ``save``, ``delete``);
        set by the owner for requests that name a resource."""
        private = self.__pydantic_private__
        handle = private.get("_state") if private else None
        if handle is None:
            raise RuntimeError("request.state exists only in a handler serving a request for a resource")
        state: ResourceState = handle
        return state


class RouteResponse(_Model):
    result: Any = None
    trace_id: str | None = None
    instance_id: str | None = None


class ErrorResponse(_Model):
    error: dict[str, Any]
    trace_id: str | None = None


class OwnershipEvent(_Model):
    """An entry of the audit stream / a message on the events channel."""

    model_config = ConfigDict(extra="allow")

    type: (
        Literal[
            "ResourceRegistered",
            "ResourceReleased",
            "InstanceRegistered",
            "InstanceDeregistered",
            "InstanceOffline",
        ]
        | str
    )
    service_name: str
    instance_id: str
    resource_ids: list[str] = Field(default_factory=list)
    reason: str | None = None
    trace_id: str | None = None
    ts_ms: int = 0
    previous_owners: dict[str, str] = Field(default_factory=dict)
    stream_id: str | None = None
