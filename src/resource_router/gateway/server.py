"""Run a replica under uvicorn: one process, or ``settings.workers`` processes sharing one port.

Logging is configured by the caller (the CLI); uvicorn is told to leave it alone, so its lines go
through the same structlog renderer. uvloop and httptools are used when installed (the ``gateway``
extra installs them).
"""

from __future__ import annotations

import inspect
import math
import socket
from collections.abc import Callable
from typing import Any

from .replica import ReplicaApp, create_app
from .replica_settings import GatewaySettings

__all__ = ["run"]

#: ``setup_logging(log_format, log_level)``: configures logging in each worker process.
LoggingSetup = Callable[[str, str], None]


class _AppFactory:
    """What each worker process calls to build its app (picklable: workers are spawned, not forked).
    A worker is a whole replica of its own: its Redis connections, routing client, sweeper, NATS
    subscriptions and metrics."""

    def __init__(self, settings: GatewaySettings, setup_logging: LoggingSetup | None) -> None:
        self.settings = settings
        self.setup_logging = setup_logging

    def __call__(self) -> ReplicaApp:
        if self.setup_logging is not None:
            self.setup_logging(self.settings.log_format, self.settings.log_level)
        return create_app(self.settings)


def _server_class() -> type[Any]:
    import uvicorn

    class Server(uvicorn.Server):  # type: ignore[misc,unused-ignore]
        """uvicorn's server, telling the app when a signal starts the shutdown (its open event
        streams end then, rather than when the graceful shutdown's timeout cancels them)."""

        def __init__(self, config: Any, on_exit: Callable[[], None]) -> None:
            super().__init__(config)
            self.on_exit = on_exit

        def handle_exit(self, sig: int, frame: Any) -> None:
            super().handle_exit(sig, frame)
            self.on_exit()

    return Server


def run(
    settings: GatewaySettings,
    *,
    setup_logging: LoggingSetup | None = None,
    sockets: list[socket.socket] | None = None,
) -> None:
    """Serve until SIGINT/SIGTERM. On a signal a replica stops accepting connections, lets in-flight
    requests finish (up to ``settings.shutdown_timeout`` seconds), then closes its Redis clients.

    With ``settings.workers > 1`` this process binds the port and supervises that many worker
    processes (uvicorn's supervisor: a worker that dies is replaced); ``setup_logging`` is then called
    in each worker, where the caller's logging configuration does not reach. ``sockets``: listen on
    these, bound already (one process), instead of binding ``settings.host`` and ``settings.port``."""
    import uvicorn

    options: dict[str, Any] = {
        "host": settings.host,
        "port": settings.port,
        "lifespan": "on",
        "log_config": None,
        "access_log": False,  # TraceMiddleware logs one ``http.request`` line per request, with trace_id
        "server_header": False,
        "proxy_headers": False,  # nothing reads the client address; spares a layer per request
        "timeout_graceful_shutdown": math.ceil(settings.shutdown_timeout),
        "log_level": settings.log_level.lower(),
    }
    if settings.workers == 1:
        app = create_app(settings)
        _server_class()(uvicorn.Config(app, **options), app.state.gateway.begin_shutdown).run(sockets=sockets)
        return
    from uvicorn.supervisors import Multiprocess

    config = uvicorn.Config(_AppFactory(settings, setup_logging), factory=True, workers=settings.workers, **options)
    bound = [config.bind_socket()]
    supervisor: Any = Multiprocess  # its signature changed across uvicorn versions
    if "target" in inspect.signature(supervisor).parameters:  # older uvicorn: each worker runs this server
        supervisor(config, target=uvicorn.Server(config).run, sockets=bound).run()
    else:
        supervisor(config, sockets=bound).run()
