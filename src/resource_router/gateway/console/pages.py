"""The console's page (``/console``, its script and style from the package) and the JSON endpoints
behind it (``/v1/console/...``). ``install_console`` adds both to a replica's app."""

from __future__ import annotations

import time
from pathlib import Path as FilePath
from typing import Any

from fastapi import APIRouter, FastAPI, Header, Path, Request
from fastapi.responses import HTMLResponse, StreamingResponse
from fastapi.staticfiles import StaticFiles

from resource_router._version import __version__
from resource_router.gateway.state import GatewayState
from resource_router.ids import RESOURCE_ID_SCHEMA, SERVICE_NAME_SCHEMA, validate_service_name
from resource_router.settings import DEFAULT_CONSOLE_RECENT_EVENTS

from .feed import SSE_MEDIA_TYPE, event_stream, resume_point
from .overview import ConsoleReader

__all__ = ["ASSETS_URL", "CONSOLE_URL", "console_router", "install_console"]

CONSOLE_URL = "/console"
ASSETS_URL = "/console/assets"
_STATIC = FilePath(__file__).resolve().parent / "static"

console_router = APIRouter(prefix="/v1/console", tags=["console"])


def _reader(request: Request) -> ConsoleReader:
    reader: ConsoleReader = request.app.state.console
    return reader


def _service() -> Any:
    return Path(json_schema_extra=SERVICE_NAME_SCHEMA)


@console_router.get("/services")
async def console_services(request: Request) -> dict[str, Any]:
    """The namespace's services (every one that ever registered an instance)."""
    reader = _reader(request)
    return {"namespace": reader.namespace, "version": __version__, "services": await reader.services()}


@console_router.get("/services/{service_name}")
async def console_service(request: Request, service_name: str = _service()) -> dict[str, Any]:
    """Live instances (lease left, volunteer flag, owned count) and the spread over partitions and masters."""
    return await _reader(request).service(service_name)


@console_router.get("/services/{service_name}/resources/{resource_id:path}")
async def console_resource(
    request: Request, service_name: str = _service(), resource_id: str = Path(json_schema_extra=RESOURCE_ID_SCHEMA)
) -> dict[str, Any]:
    """One resource: owner, fencing token, metadata, partition and master (404 when nobody owns it)."""
    return await _reader(request).resource(service_name, resource_id)


@console_router.get("/services/{service_name}/events", response_class=StreamingResponse)
async def console_events(
    request: Request,
    service_name: str = _service(),
    last_event_id: str | None = Header(default=None, alias="Last-Event-ID"),
) -> StreamingResponse:
    """The service's ownership events as server-sent events (the recent ones first, then live)."""
    validate_service_name(service_name)
    after = resume_point(last_event_id)
    registry = await _reader(request).registry_for(service_name)
    state = _state(request)
    settings = state.settings
    body = event_stream(
        registry,
        service_name,
        resume_after=after,
        recent=DEFAULT_CONSOLE_RECENT_EVENTS,
        lifetime=settings.console_stream_seconds,
        keepalive=settings.console_keepalive_seconds,
        closing=state.closing,
    )
    return StreamingResponse(
        body,
        media_type=SSE_MEDIA_TYPE,
        headers={"Cache-Control": "no-store", "X-Accel-Buffering": "no"},
    )


@console_router.get("/calls")
async def console_calls(request: Request) -> dict[str, Any]:
    """Calls this replica routed, per answering instance, since it started (the page turns two readings
    into calls per second). Each replica counts its own calls only."""
    return {
        "time": time.time(),
        "calls": [
            {"service_name": service, "instance_id": instance, "total": total}
            for service, instance, total in sorted(_state(request).routed_totals())
        ],
    }


def _state(request: Request) -> GatewayState:
    state: GatewayState = request.app.state.gateway
    return state


def install_console(app: FastAPI, reader: ConsoleReader) -> None:
    """Add the page, its assets and the JSON endpoints, reading through ``reader`` (the app closes it)."""
    app.state.console = reader
    page = (_STATIC / "console.html").read_text(encoding="utf-8")
    app.mount(ASSETS_URL, StaticFiles(directory=str(_STATIC)), name="console-assets")

    @app.get(CONSOLE_URL, include_in_schema=False)
    async def console_page() -> HTMLResponse:
        return HTMLResponse(page, headers={"Cache-Control": "no-store"})

    app.include_router(console_router)
