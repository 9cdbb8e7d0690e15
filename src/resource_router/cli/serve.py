"""``resource-router serve``: a stateless HTTP (and NATS) router replica (needs the ``gateway`` extra)."""

from __future__ import annotations

import errno
import socket
from typing import Annotated

import typer
from pydantic import ValidationError

from resource_router.cli.exit_codes import EXIT_CANNOT_LISTEN, EXIT_ERROR, EXIT_INVALID
from resource_router.cli.invocation import NamespaceOpt, RedisOpt
from resource_router.cli.output import fail, problems
from resource_router.errors import InvalidRequestError
from resource_router.observability.rendering import configure_logging

__all__ = ["check_address", "serve"]


def serve(
    redis: RedisOpt = None,
    namespace: NamespaceOpt = None,
    host: Annotated[
        str | None, typer.Option(envvar="RESOURCE_ROUTER_HOST", help="interface to bind (default 127.0.0.1)")
    ] = None,
    port: Annotated[int | None, typer.Option(envvar="RESOURCE_ROUTER_PORT", help="port (default 8000)")] = None,
    log_format: Annotated[
        str | None, typer.Option(envvar="RESOURCE_ROUTER_LOG_FORMAT", help="json (default) or console")
    ] = None,
    log_level: Annotated[
        str | None, typer.Option(envvar="RESOURCE_ROUTER_LOG_LEVEL", help="debug, info (default), warning, error")
    ] = None,
    max_body_bytes: Annotated[
        int | None,
        typer.Option(
            envvar="RESOURCE_ROUTER_MAX_BODY_BYTES", help="largest request body; larger gets 413 (default 1048576)"
        ),
    ] = None,
    sweep_interval: Annotated[
        float | None,
        typer.Option(
            envvar="RESOURCE_ROUTER_SWEEP_INTERVAL",
            help="seconds between sweeps for dead instances; 0 disables (default 1)",
        ),
    ] = None,
    shutdown_timeout: Annotated[
        float | None,
        typer.Option(
            envvar="RESOURCE_ROUTER_SHUTDOWN_TIMEOUT",
            help="seconds to let in-flight requests finish on SIGTERM (default 30)",
        ),
    ] = None,
    max_resources_per_instance: Annotated[
        int | None,
        typer.Option(
            envvar="RESOURCE_ROUTER_MAX_RESOURCES_PER_INSTANCE",
            help="per-instance limit applied to registrations (default 1000)",
        ),
    ] = None,
    embedded: Annotated[
        bool,
        typer.Option(
            "--embedded",
            envvar="RESOURCE_ROUTER_EMBEDDED",
            help="without a Redis URL, serve a private in-process memory:// store (trying it out only)",
        ),
    ] = False,
    workers: Annotated[
        int | None,
        typer.Option(envvar="RESOURCE_ROUTER_WORKERS", help="replica processes sharing the port (default 1)"),
    ] = None,
    max_in_flight: Annotated[
        int | None,
        typer.Option(
            envvar="RESOURCE_ROUTER_MAX_IN_FLIGHT",
            help="requests one process serves at once; above it 503 with Retry-After (default 1024)",
        ),
    ] = None,
    nats: Annotated[
        str | None,
        typer.Option(
            envvar="RESOURCE_ROUTER_NATS_URL",
            help="also answer the NATS subjects (ipc.route, ipc.resource.*) on this server, e.g. nats://host:4222",
        ),
    ] = None,
    nats_prefix: Annotated[
        str | None,
        typer.Option(envvar="RESOURCE_ROUTER_NATS_SUBJECT_PREFIX", help="NATS subject prefix (default ipc)"),
    ] = None,
    nats_queue: Annotated[
        str | None,
        typer.Option(
            envvar="RESOURCE_ROUTER_NATS_QUEUE",
            help="NATS queue group shared by the replicas (default resource-router)",
        ),
    ] = None,
) -> None:
    """Run a stateless HTTP router replica (FastAPI on uvicorn).

    Run as many as you like.
    """
    try:
        from resource_router.gateway import GatewaySettings, run
    except ImportError as exc:
        fail(str(exc), EXIT_ERROR)
    try:
        settings = GatewaySettings.from_env(
            redis_url=redis,
            namespace=namespace,
            host=host,
            port=port,
            log_format=log_format,
            log_level=log_level,
            max_body_bytes=max_body_bytes,
            sweep_interval=sweep_interval,
            shutdown_timeout=shutdown_timeout,
            max_resources_per_instance=max_resources_per_instance,
            embedded=embedded or None,
            workers=workers,
            max_in_flight=max_in_flight,
            nats_url=nats,
            nats_subject_prefix=nats_prefix,
            nats_queue=nats_queue,
        )
        check_address(settings.host, settings.port)
        configure_logging(settings.log_format, settings.log_level)
        run(settings, setup_logging=configure_logging)
    except ValidationError as exc:
        fail(f"invalid settings: {problems(exc)}", EXIT_INVALID)
    except InvalidRequestError as exc:
        fail(exc.message, EXIT_INVALID)
    except ImportError as exc:  # --embedded without the 'memory' extra
        fail(str(exc), EXIT_ERROR)
    except SystemExit as exc:  # uvicorn's startup failure (its log says why)
        if exc.code in (0, None):
            raise
        fail("the replica could not start: see its log above", EXIT_ERROR)


def check_address(host: str, port: int) -> None:
    """Fail with its own message and exit code when the replica cannot listen on ``host:port``
    (the port is taken, or needs privileges), before anything else starts."""
    if port == 0:
        return
    try:
        infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE)
    except socket.gaierror as exc:
        fail(f"cannot listen on {host}:{port}: {exc.strerror}", EXIT_INVALID)
    family, kind, proto, _name, address = infos[0]
    with socket.socket(family, kind, proto) as probe:
        probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)  # as uvicorn binds
        try:
            probe.bind(address)
        except OSError as exc:
            reason = {
                errno.EADDRINUSE: "the address is already in use (another replica or program listens there)",
                errno.EACCES: "permission denied (ports below 1024 need privileges)",
                errno.EADDRNOTAVAIL: "no such address on this machine",
            }.get(exc.errno or 0, exc.strerror or str(exc))
            fail(f"cannot listen on {host}:{port}: {reason}", EXIT_CANNOT_LISTEN, "Choose another --port or --host.")
