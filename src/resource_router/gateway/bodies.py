"""Request bodies that only replicas take: a routed call from outside (HTTP ``POST /v1/route`` and NATS
``<prefix>.route``) and an owner lookup over NATS (``<prefix>.resource.query``).

``RouteCall`` is the caller's part of ``resource_router.RouteRequest``. The other fields of that model
are set by the replica (``request_id``, ``deadline`` from ``timeout``) or by the owner for its handler
(``fencing_token``): a caller that sends them gets a 400 naming the field, and the OpenAPI schema does
not offer them.
"""

from __future__ import annotations

from typing import Any

from pydantic import BaseModel, ConfigDict, Field
from pydantic.json_schema import SkipJsonSchema

from resource_router.errors import InvalidRequestError
from resource_router.ids import RESOURCE_ID_SCHEMA, SERVICE_NAME_SCHEMA, validate_text

__all__ = ["ResourceQuery", "RouteCall"]

#: Fields of ``RouteRequest`` that callers must not send, and why.
_RESERVED = {
    "fencing_token": "fencing_token is set by the owning instance for its handler; callers must not send it",
    "deadline": "deadline is set by the replica from timeout; send timeout (seconds) instead",
    "request_id": "request_id is set by the replica for each call; callers must not send it",
}


class RouteCall(BaseModel):
    """Call ``method`` on the instance that owns ``resource_id`` (or on any live instance of the service)."""

    model_config = ConfigDict(extra="forbid")

    service_name: str = Field(json_schema_extra=SERVICE_NAME_SCHEMA)
    method: str = Field(description="the handler to run")
    params: Any = Field(default=None, description="passed to the handler as RouteRequest.params")
    resource_id: str | None = Field(
        default=None,
        description="the resource whose owner runs the call; without it, any live instance of the service",
        json_schema_extra={"anyOf": [{"type": "string", **RESOURCE_ID_SCHEMA}, {"type": "null"}]},
    )
    timeout: float | None = Field(default=None, gt=0, le=3600, description="seconds (default 5)")
    trace_id: str | None = None
    # Declared only to be refused by name (``check_caller_fields``); absent from the schema.
    fencing_token: SkipJsonSchema[Any] = None
    deadline: SkipJsonSchema[Any] = None
    request_id: SkipJsonSchema[Any] = None

    def check_caller_fields(self) -> None:
        """Refuse the fields the replica or the owner sets, and a method that is not text."""
        for name, why in _RESERVED.items():
            if getattr(self, name) is not None:
                raise InvalidRequestError(why, field=name)
        validate_text(self.method, "method")


class ResourceQuery(BaseModel):
    """The owner of one resource (``<prefix>.resource.query`` over NATS)."""

    model_config = ConfigDict(extra="forbid")

    service_name: str = Field(json_schema_extra=SERVICE_NAME_SCHEMA)
    resource_id: str = Field(json_schema_extra=RESOURCE_ID_SCHEMA)
