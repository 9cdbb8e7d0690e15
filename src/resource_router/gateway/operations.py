"""What a replica does for each request, whichever way it came: the FastAPI routes, the HTTP fast path
and the NATS subjects all call these, so each rule (refused fields, trace ids, conflicts as 409) has
one place. Each takes the request's trace id already chosen by its face (header, body or new).
"""

from __future__ import annotations

from typing import Any

from resource_router._trusted import trusted
from resource_router.models import (
    Resource,
    ResourceRegistrationRequest,
    ResourceRegistrationResponse,
    ResourceReleaseRequest,
    ResourceReleaseResponse,
    RouteRequest,
    RouteResponse,
)
from resource_router.state.snapshot import StateSnapshot, read_snapshot

from .bodies import RouteCall
from .error_bodies import RegistrationConflictError
from .state import GatewayState

__all__ = ["answer", "lookup", "read_state", "register", "release", "route"]


async def route(state: GatewayState, call: RouteCall, trace_id: str) -> RouteResponse:
    """Route ``call`` to its owner (or any live instance) and return the owner's answer."""
    call.check_caller_fields()
    client = await state.client()
    request = trusted(
        RouteRequest,
        {
            "service_name": call.service_name,
            "method": call.method,
            "params": call.params,
            "resource_id": call.resource_id,
            "timeout": call.timeout,
            "trace_id": trace_id,
            "fencing_token": None,
            "deadline": None,
            "request_id": None,
        },
    )
    response = await client.route(request)
    if response.trace_id is None:
        response.trace_id = trace_id
    if response.instance_id is not None:
        state.count_routed(call.service_name, response.instance_id)
    return response


def answer(response: RouteResponse) -> dict[str, Any]:
    """The body of a routed call's answer, over HTTP (the fast path) and NATS alike."""
    return {"result": response.result, "trace_id": response.trace_id, "instance_id": response.instance_id}


async def lookup(state: GatewayState, service_name: str, resource_id: str) -> Resource:
    """The owner of a resource (``ResourceNotFoundError`` when it has none)."""
    return await state.registry.get_resource_owner(service_name, resource_id)


async def read_state(state: GatewayState, service_name: str, resource_id: str) -> StateSnapshot:
    """A resource's stored state (``ResourceNotFoundError`` when it has none); replicas never write it."""
    return await read_snapshot(state.state_store, service_name, resource_id)


async def register(
    state: GatewayState, body: ResourceRegistrationRequest, trace_id: str
) -> ResourceRegistrationResponse:
    """Register ids for a live instance; conflicts raise ``RegistrationConflictError`` (409), whose body
    also lists what was registered in the same atomic step."""
    response = await state.registry.register_resource(
        body.service_name,
        body.instance_id,
        body.resource_ids,
        force=body.force,
        metadata=body.metadata,
        trace_id=trace_id,
    )
    if response.conflicts:
        raise RegistrationConflictError(response)
    return response


async def release(state: GatewayState, body: ResourceReleaseRequest, trace_id: str) -> ResourceReleaseResponse:
    """Release ids of an instance (all or nothing when another instance owns any of them: 403)."""
    return await state.registry.release_resource(
        body.service_name, body.instance_id, body.resource_ids, trace_id=trace_id
    )
