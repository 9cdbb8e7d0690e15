"""A resource's state as the read-only faces show it (replicas' ``GET .../state``, ``resource-router
state``): the value decoded from msgpack into JSON terms, with its version and fencing token.

Bytes inside the value become ``{"$bytes": "<base64>"}`` (JSON has no bytes); a value that is not
msgpack (written by hand) is shown the same way, whole.
"""

from __future__ import annotations

import base64
from typing import Any

import msgpack
from pydantic import BaseModel

from resource_router.errors import ResourceNotFoundError
from resource_router.state.backend import StateStore

__all__ = ["StateSnapshot", "read_snapshot"]


class StateSnapshot(BaseModel):
    service_name: str
    resource_id: str
    version: int
    fencing_token: int
    size: int
    value: Any = None


def _jsonable(value: Any) -> Any:
    if isinstance(value, bytes | bytearray | memoryview):
        return {"$bytes": base64.b64encode(bytes(value)).decode("ascii")}
    if isinstance(value, dict):
        return {str(k) if not isinstance(k, str) else k: _jsonable(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_jsonable(v) for v in value]
    return value


async def read_snapshot(store: StateStore, service_name: str, resource_id: str) -> StateSnapshot:
    """The stored state of a resource; ``ResourceNotFoundError`` (404) when it has none. Reads only."""
    record = await store.load(service_name, resource_id)
    if record is None:
        raise ResourceNotFoundError(
            f"no state stored for {resource_id!r} of service {service_name!r}",
            resource_id=resource_id,
            service_name=service_name,
        )
    try:
        value = msgpack.unpackb(record.data, raw=False, strict_map_key=False)
    except (ValueError, msgpack.UnpackException):
        value = record.data
    return StateSnapshot(
        service_name=service_name,
        resource_id=resource_id,
        version=record.version,
        fencing_token=record.fencing_token,
        size=len(record.data),
        value=_jsonable(value),
    )
