"""The app factory: one FastAPI app per replica, configured only by ``GatewaySettings``."""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

from fastapi import FastAPI
from fastapi_offline import FastAPIOffline
from prometheus_client import CollectorRegistry

from resource_router import __version__

from .errors import install_error_handlers
from .middleware import BodyLimitMiddleware, TraceMiddleware
from .routes import router
from .settings import GatewaySettings
from .state import GatewayState

__all__ = ["create_app"]


def create_app(
    settings: GatewaySettings | None = None, *, metrics_registry: CollectorRegistry | None = None
) -> FastAPI:
    """Build a replica's app. ``settings`` defaults to ``GatewaySettings.from_env()``; the library's
    and the replica's metrics go to ``metrics_registry`` (the default Prometheus registry when None),
    which ``/metrics`` serves."""
    settings = settings or GatewaySettings.from_env()
    state = GatewayState(settings, metrics_registry=metrics_registry)

    @asynccontextmanager
    async def lifespan(_app: FastAPI) -> AsyncIterator[None]:
        await state.start()
        try:
            yield
        finally:
            await state.stop()

    app = FastAPIOffline(  # /docs and /redoc load their assets from the replica, not a CDN
        title="resource-router gateway",
        version=__version__,
        description=(
            "Stateless router replica: routes each request for a resource to the instance that owns it. "
            'Every error answers with `{"error": {"type", "code", "message", ...}, "trace_id"}`.'
        ),
        lifespan=lifespan,
        redirect_slashes=False,  # an API answers a wrong path with the JSON 404, not an empty redirect
    )
    _fix_openapi(app)
    app.state.gateway = state
    app.state.settings = settings
    install_error_handlers(app)
    app.include_router(router)
    # Last added runs first: trace ids are set before the body limit can answer 413.
    app.add_middleware(BodyLimitMiddleware, max_bytes=settings.max_body_bytes)
    app.add_middleware(TraceMiddleware, metrics_registry=metrics_registry)
    return app


def _fix_openapi(app: FastAPI) -> None:
    """Validation failures answer 400 with ``ErrorResponse`` (never FastAPI's 422): say so in the schema."""
    generate = app.openapi

    def openapi() -> dict[str, Any]:
        if app.openapi_schema is None:
            schema = generate()
            for operations in schema.get("paths", {}).values():
                for operation in operations.values():
                    operation.get("responses", {}).pop("422", None)
            for name in ("HTTPValidationError", "ValidationError"):
                schema.get("components", {}).get("schemas", {}).pop(name, None)
            app.openapi_schema = schema
        return app.openapi_schema

    app.openapi = openapi  # type: ignore[method-assign]
