"""Run a replica under uvicorn. Logging is configured by the caller (the CLI); uvicorn is told to
leave it alone, so its lines go through the same structlog renderer."""

from __future__ import annotations

import math

from .app import create_app
from .settings import GatewaySettings

__all__ = ["run"]


def run(settings: GatewaySettings) -> None:
    """Serve until SIGINT/SIGTERM. On a signal the replica stops accepting connections, lets in-flight
    requests finish (up to ``settings.shutdown_timeout`` seconds), then closes its Redis clients."""
    import uvicorn

    app = create_app(settings)
    config = uvicorn.Config(
        app,
        host=settings.host,
        port=settings.port,
        lifespan="on",
        log_config=None,
        access_log=False,  # TraceMiddleware logs one ``http.request`` line per request, with trace_id
        server_header=False,
        timeout_graceful_shutdown=math.ceil(settings.shutdown_timeout),
        log_level=settings.log_level.lower(),
    )
    uvicorn.Server(config).run()
