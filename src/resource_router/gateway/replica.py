"""The app factory: one app per replica, configured only by ``GatewaySettings``.

The app is FastAPI (the API, its schema, its error handlers) behind a pure-ASGI front that every HTTP
request passes first: trace id, access log and metrics, load shedding, the fast path for the hot
endpoints (which never enter FastAPI), and the body limit. Everything else goes on to FastAPI.
"""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator
from contextlib import AsyncExitStack, asynccontextmanager
from typing import Any

from fastapi import FastAPI
from prometheus_client import CollectorRegistry
from starlette.types import ASGIApp, Receive, Scope, Send

from resource_router._version import __version__

from .console import ConsoleReader, install_console
from .docs import install_offline_docs
from .error_bodies import JSONBody, install_error_handlers
from .fastpath import FastPathMiddleware
from .middleware import (
    BodyLimitMiddleware,
    HeadMiddleware,
    InternalErrorMiddleware,
    LoadShedMiddleware,
    TraceMiddleware,
)
from .replica_settings import GatewaySettings
from .routes import router
from .state import GatewayState

__all__ = ["ReplicaApp", "create_app"]


class ReplicaApp(FastAPI):
    """FastAPI behind the replica's front (``front``, set by ``create_app``): HTTP requests go through
    the front, which hands what it does not serve itself to ``api`` (FastAPI as it is)."""

    front: ASGIApp

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http":
            await self.front(scope, receive, send)
        else:  # lifespan (and websockets, which the API has none of)
            await super().__call__(scope, receive, send)

    async def api(self, scope: Scope, receive: Receive, send: Send) -> None:
        await super().__call__(scope, receive, send)


def create_app(
    settings: GatewaySettings | None = None, *, metrics_registry: CollectorRegistry | None = None
) -> ReplicaApp:
    """Build a replica's app. ``settings`` defaults to ``GatewaySettings.from_env()``; the library's
    and the replica's metrics go to ``metrics_registry`` (the default Prometheus registry when None),
    which ``/metrics`` serves. With ``settings.nats_url`` the app also answers the NATS subjects while
    it runs (``nats_bridge``)."""
    settings = settings or GatewaySettings.from_env()
    state = GatewayState(settings, metrics_registry=metrics_registry)
    console = ConsoleReader(state)

    @asynccontextmanager
    async def lifespan(_app: FastAPI) -> AsyncIterator[None]:
        async with AsyncExitStack() as stack:
            await state.start()
            stack.push_async_callback(state.stop)
            stack.push_async_callback(console.aclose)  # its registries close before the state's
            if settings.nats_url:
                from .nats_bridge import NatsBridge

                bridge = NatsBridge(state, metrics_registry=metrics_registry)
                await bridge.start()
                stack.push_async_callback(bridge.stop)  # stops before the state it uses
            yield

    app = ReplicaApp(
        title="resource-router gateway",
        version=__version__,
        description=(
            "Stateless router replica: routes each request for a resource to the instance that owns it. "
            'Every error answers with `{"error": {"type", "code", "message", ...}, "trace_id"}`.'
        ),
        lifespan=lifespan,
        default_response_class=JSONBody,
        redirect_slashes=False,  # an API answers a wrong path with the JSON 404, not an empty redirect
        docs_url=None,  # /docs and /redoc load their assets from the replica, not a CDN:
        redoc_url=None,
    )
    install_offline_docs(app)
    install_console(app, console)
    _fix_openapi(app)
    app.state.gateway = state
    app.state.settings = settings
    install_error_handlers(app, router.routes)
    app.include_router(router)
    # Inside FastAPI: unexpected errors get the JSON 500 before Starlette's plain-text one.
    app.add_middleware(InternalErrorMiddleware)
    # The front, outermost first: trace id, HEAD as GET, load shedding, the fast path, the body limit,
    # then FastAPI.
    front: ASGIApp = BodyLimitMiddleware(app.api, max_bytes=settings.max_body_bytes)
    front = FastPathMiddleware(front, state=state, routes=router.routes)
    front = LoadShedMiddleware(front, in_flight=state.in_flight, metrics_registry=metrics_registry)
    front = HeadMiddleware(front)
    app.front = TraceMiddleware(front, metrics_registry=metrics_registry, access_log=_logs_info(settings.log_level))
    return app


def _logs_info(level: str) -> bool:
    """Whether the replica's log level includes info (then each request gets its ``http.request`` line)."""
    numeric = logging.getLevelName(level.upper())
    return not isinstance(numeric, int) or numeric <= logging.INFO


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
