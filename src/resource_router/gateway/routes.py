"""The HTTP endpoints of a replica (the contract's table), one thin function each over ``operations``.

Bodies and answers are pydantic models; failures raise the library's exceptions and ``error_bodies.py``
turns them into the error body with the exception's ``code`` as status. These functions define the
API and its OpenAPI schema; ``fastpath.py`` serves the two hottest of them (``POST /v1/route`` and the
owner lookup) without FastAPI's request machinery, and hands over to these whatever it does not take.
"""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter, Path, Query, Request
from fastapi.responses import Response
from prometheus_client import REGISTRY
from prometheus_client.exposition import choose_encoder

from resource_router.ids import INSTANCE_ID_SCHEMA, RESOURCE_ID_SCHEMA, SERVICE_NAME_SCHEMA
from resource_router.models import (
    ErrorResponse,
    InstanceInfo,
    Resource,
    ResourceRegistrationRequest,
    ResourceRegistrationResponse,
    ResourceReleaseRequest,
    ResourceReleaseResponse,
    RouteResponse,
)
from resource_router.state.snapshot import StateSnapshot

from . import operations
from .bodies import RouteCall
from .error_bodies import JSONBody
from .request_context import current_trace_id, set_trace_id
from .state import GatewayState

__all__ = ["OWNER_PATH", "ROUTE_PATH", "STATE_PATH", "router"]

ROUTE_PATH = "/v1/route"
OWNER_PATH = "/v1/resources/{service_name}/{resource_id:path}"
#: Matched before OWNER_PATH: a path ending in ``/state`` reads the state of the id before it.
STATE_PATH = "/v1/resources/{service_name}/{resource_id:path}/state"


# Path and query parameters state the id rules in the schema; the library validates (400, not 422).
def _service() -> Any:
    return Path(json_schema_extra=SERVICE_NAME_SCHEMA)


def _resource() -> Any:
    return Path(json_schema_extra=RESOURCE_ID_SCHEMA)


def _instance() -> Any:
    return Query(default=None, description="only the resources of this instance", json_schema_extra=INSTANCE_ID_SCHEMA)


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


@router.post(ROUTE_PATH, response_model=RouteResponse, responses=_errors(404, 500, 503, 504), tags=["routing"])
async def route(body: RouteCall, request: Request) -> RouteResponse:
    """Call ``method`` on the instance that owns ``resource_id`` (or on any live instance of the service)."""
    return await operations.route(_gateway(request), body, set_trace_id(request, body.trace_id))


@router.get(STATE_PATH, response_model=StateSnapshot, responses=_errors(404, 503), tags=["resources"])
async def get_resource_state(
    request: Request, service_name: str = _service(), resource_id: str = _resource()
) -> StateSnapshot:
    """The stored state of a resource (read only): its value (msgpack decoded; bytes as
    ``{"$bytes": base64}``), version and the fencing token it was written under. 404 when none."""
    return await operations.read_state(_gateway(request), service_name, resource_id)


@router.get(OWNER_PATH, response_model=Resource, responses=_errors(404, 503), tags=["resources"])
async def get_resource_owner(
    request: Request, service_name: str = _service(), resource_id: str = _resource()
) -> Resource:
    """The owner of a resource, with its fencing token and metadata."""
    return await operations.lookup(_gateway(request), service_name, resource_id)


@router.get("/v1/resources/{service_name}", response_model=list[Resource], responses=_errors(503), tags=["resources"])
async def list_resources(
    request: Request, service_name: str = _service(), instance_id: str | None = _instance()
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
    return await operations.register(_gateway(request), body, set_trace_id(request, body.trace_id))


@router.post(
    "/v1/resources/release",
    response_model=ResourceReleaseResponse,
    responses=_errors(403, 503),
    tags=["resources"],
)
async def release_resources(body: ResourceReleaseRequest, request: Request) -> ResourceReleaseResponse:
    """Release ids owned by the instance; all-or-nothing when any id is owned by someone else (403)."""
    return await operations.release(_gateway(request), body, set_trace_id(request, body.trace_id))


@router.get(
    "/v1/instances/{service_name}", response_model=list[InstanceInfo], responses=_errors(503), tags=["instances"]
)
async def list_instances(request: Request, service_name: str = _service()) -> list[InstanceInfo]:
    """Live instances of the service, sorted by id."""
    return await _gateway(request).registry.list_instances(service_name)


@router.get("/healthz", tags=["operations"])
async def healthz() -> dict[str, str]:
    """Liveness: the process answers. Does not touch Redis."""
    return {"status": "ok"}


@router.get("/readyz", tags=["operations"], responses={503: {"model": ErrorResponse, "description": "Redis down"}})
async def readyz(request: Request) -> JSONBody:
    """Readiness: Redis answers PING (503 with the error body when it does not)."""
    await _gateway(request).ready()
    return JSONBody({"status": "ready", "trace_id": current_trace_id(request)})


@router.get("/metrics", tags=["operations"], response_class=Response)
async def metrics(request: Request) -> Response:
    """Prometheus text of the replica's registry (the library's ``ipc_*`` metrics and HTTP metrics)."""
    registry = _gateway(request).metrics_registry or REGISTRY
    # Negotiated like prometheus_client's own exporters: OpenMetrics when the scraper asks for it,
    # else the classic text format.
    encoder, content_type = choose_encoder(request.headers.get("accept", ""))
    return Response(encoder(registry), headers={"Content-Type": content_type})
