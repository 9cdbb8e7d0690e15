"""The HTTP endpoints of a replica (the contract's table), one thin function each over the library.

Bodies and answers are the library's pydantic models; failures raise the library's exceptions and
``errors.py`` turns them into the error body with the exception's ``code`` as status.
"""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter, Query, Request
from fastapi.responses import JSONResponse, Response
from prometheus_client import REGISTRY
from prometheus_client.exposition import choose_encoder

from resource_router.errors import InvalidRequestError
from resource_router.models import (
    ErrorResponse,
    InstanceInfo,
    Resource,
    ResourceRegistrationRequest,
    ResourceRegistrationResponse,
    ResourceReleaseRequest,
    ResourceReleaseResponse,
    RouteRequest,
    RouteResponse,
)

from .context import current_trace_id, set_trace_id
from .errors import RegistrationConflictError
from .state import GatewayState

__all__ = ["router"]

router = APIRouter()


def _errors(*codes: int) -> dict[int | str, dict[str, Any]]:
    """OpenAPI entries for the error statuses an endpoint can answer (always with ``ErrorResponse``)."""
    described = {
        400: "invalid id, parameters or body",
        403: "the ids are owned by another instance; nothing was released",
        404: "no owner for the resource, or no handler for the method",
        409: "some ids are owned by other instances (the body lists them, and what was registered)",
        410: "the instance is not registered or its lease ran out",
        413: "the body is larger than the replica accepts",
        429: "the instance would exceed its resource limit; nothing was registered",
        500: "the handler raised, or an internal error",
        503: "Redis unreachable, no live instance, or the owner is not listening",
        504: "no reply before the timeout",
    }
    return {code: {"model": ErrorResponse, "description": described[code]} for code in (400, 413, *codes)}


def _gateway(request: Request) -> GatewayState:
    state: GatewayState = request.app.state.gateway
    return state


@router.post("/v1/route", response_model=RouteResponse, responses=_errors(404, 500, 503, 504), tags=["routing"])
async def route(body: RouteRequest, request: Request) -> RouteResponse:
    """Call ``method`` on the instance that owns ``resource_id`` (or on any live instance of the service)."""
    trace_id = set_trace_id(request, body.trace_id)
    if body.fencing_token is not None:
        raise InvalidRequestError(
            "fencing_token is set by the owning instance for its handler; callers must not send it",
            field="fencing_token",
        )
    client = await _gateway(request).client()
    response: RouteResponse = await client.route(body.model_copy(update={"trace_id": trace_id, "request_id": None}))
    if response.trace_id is None:
        response = response.model_copy(update={"trace_id": trace_id})
    return response


@router.get(
    "/v1/resources/{service_name}/{resource_id:path}",
    response_model=Resource,
    responses=_errors(404, 503),
    tags=["resources"],
)
async def get_resource_owner(service_name: str, resource_id: str, request: Request) -> Resource:
    """The owner of a resource, with its fencing token and metadata."""
    return await _gateway(request).registry.get_resource_owner(service_name, resource_id)


@router.get("/v1/resources/{service_name}", response_model=list[Resource], responses=_errors(503), tags=["resources"])
async def list_resources(
    service_name: str,
    request: Request,
    instance_id: str | None = Query(default=None, description="only the resources of this instance"),
) -> list[Resource]:
    """Resources owned in the service (or by one instance), sorted by id."""
    return await _gateway(request).registry.list_resources(service_name, instance_id)


@router.post(
    "/v1/resources/register",
    response_model=ResourceRegistrationResponse,
    responses=_errors(409, 410, 429, 503),
    tags=["resources"],
)
async def register_resources(body: ResourceRegistrationRequest, request: Request) -> ResourceRegistrationResponse:
    """Claim ids for a live instance in one atomic step.

    With conflicts the answer is 409: the free ids **were** registered (atomically, with the rest left
    untouched) and the body lists both ``conflicts`` and ``registered``.
    """
    trace_id = set_trace_id(request, body.trace_id)
    response = await _gateway(request).registry.register_resource(
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


@router.post(
    "/v1/resources/release",
    response_model=ResourceReleaseResponse,
    responses=_errors(403, 503),
    tags=["resources"],
)
async def release_resources(body: ResourceReleaseRequest, request: Request) -> ResourceReleaseResponse:
    """Release ids owned by the instance; all-or-nothing when any id is owned by someone else (403)."""
    trace_id = set_trace_id(request, body.trace_id)
    return await _gateway(request).registry.release_resource(
        body.service_name, body.instance_id, body.resource_ids, trace_id=trace_id
    )


@router.get(
    "/v1/instances/{service_name}", response_model=list[InstanceInfo], responses=_errors(503), tags=["instances"]
)
async def list_instances(service_name: str, request: Request) -> list[InstanceInfo]:
    """Live instances of the service, sorted by id."""
    return await _gateway(request).registry.list_instances(service_name)


@router.get("/healthz", tags=["operations"])
async def healthz() -> dict[str, str]:
    """Liveness: the process answers. Does not touch Redis."""
    return {"status": "ok"}


@router.get("/readyz", tags=["operations"], responses={503: {"model": ErrorResponse, "description": "Redis down"}})
async def readyz(request: Request) -> JSONResponse:
    """Readiness: Redis answers PING (503 with the error body when it does not)."""
    await _gateway(request).ready()
    return JSONResponse({"status": "ready", "trace_id": current_trace_id(request)})


@router.get("/metrics", tags=["operations"], response_class=Response)
async def metrics(request: Request) -> Response:
    """Prometheus text of the replica's registry (the library's ``ipc_*`` metrics and HTTP metrics)."""
    registry = _gateway(request).metrics_registry or REGISTRY
    # Negotiated like prometheus_client's own exporters: OpenMetrics when the scraper asks for it,
    # else the classic text format.
    encoder, content_type = choose_encoder(request.headers.get("accept", ""))
    return Response(encoder(registry), headers={"Content-Type": content_type})
