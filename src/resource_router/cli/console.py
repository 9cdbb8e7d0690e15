"""``resource-router console``: the operator console on this machine only (a replica bound to
127.0.0.1, its sweeper off: it only reads), its URL printed once it listens."""

from __future__ import annotations

import socket
from typing import Annotated

import typer
from pydantic import ValidationError

from resource_router.cli.exit_codes import EXIT_CANNOT_LISTEN, EXIT_ERROR, EXIT_INVALID
from resource_router.cli.invocation import NamespaceOpt, RedisOpt
from resource_router.cli.output import echo, fail, problems
from resource_router.observability.rendering import configure_logging
from resource_router.settings import DEFAULT_CONSOLE_SHUTDOWN_TIMEOUT

__all__ = ["console"]

_LOCAL = "127.0.0.1"


def console(
    redis: RedisOpt = None,
    namespace: NamespaceOpt = None,
    port: Annotated[int, typer.Option(min=0, max=65535, help="local port (default: a free one)")] = 0,
    log_level: Annotated[str, typer.Option(help="debug, info, warning (default), error")] = "warning",
) -> None:
    """Open the operator console on a local port and print its URL (Ctrl-C stops it).

    Shows the services of the namespace, their live instances, the owner of a resource, the spread over
    partitions and masters, and the ownership events as they happen.
    """
    try:
        from resource_router.gateway import GatewaySettings, run
        from resource_router.gateway.console import CONSOLE_URL
    except ImportError as exc:
        fail(str(exc), EXIT_ERROR)
    try:
        settings = GatewaySettings.from_env(
            redis_url=redis,
            namespace=namespace,
            host=_LOCAL,
            port=port,
            log_format="console",
            log_level=log_level,
            sweep_interval=0,
            shutdown_timeout=DEFAULT_CONSOLE_SHUTDOWN_TIMEOUT,
            workers=1,
        )
    except ValidationError as exc:
        fail(f"invalid settings: {problems(exc)}", EXIT_INVALID)
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind((_LOCAL, port))
    except OSError as exc:
        sock.close()
        fail(f"cannot listen on {_LOCAL}:{port}: {exc.strerror or exc}", EXIT_CANNOT_LISTEN, "Choose another --port.")
    sock.listen(128)  # connections wait in the backlog until the replica has started: the URL works at once
    configure_logging(settings.log_format, settings.log_level)
    echo(f"console of namespace {settings.namespace}: http://{_LOCAL}:{sock.getsockname()[1]}{CONSOLE_URL}")
    try:
        run(settings, sockets=[sock])
    except ImportError as exc:
        fail(str(exc), EXIT_ERROR)
    except SystemExit as exc:
        if exc.code in (0, None):
            raise
        fail("the console could not start: see its log above", EXIT_ERROR)
    finally:
        sock.close()
