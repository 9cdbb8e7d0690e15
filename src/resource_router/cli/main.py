"""The ``resource-router`` command line: inspect ownership, follow events, run a replica or the demo.

::

    resource-router owner SERVICE RESOURCE_ID      who owns a resource
    resource-router resources SERVICE [--instance ID]
    resource-router instances SERVICE              live instances
    resource-router events SERVICE [--follow]      audit stream (recent, or live)
    resource-router serve [--port 8000]            a stateless HTTP router replica (and its /console)
    resource-router console [--port 0]             the operator console on a local port (prints its URL)
    resource-router demo                           the demo (embedded memory:// unless a URL is given)

Every command takes ``--redis URL`` and ``--namespace``; like every other setting they can come from
``RESOURCE_ROUTER_*`` variables or a ``.env`` file (:mod:`resource_router.settings`). The inspection
commands also take ``--json``. Exit codes: 0 ok (also when the reader of the output goes away, as
with ``| head``), 1 not found (an unknown service too), a missing extra or another library error,
2 bad usage, an invalid id, URL or setting, 3 Redis unreachable, 4 the replica cannot listen on its
address. Needs the ``cli`` extra (typer, rich, structlog); ``serve`` also needs the ``gateway`` extra
(FastAPI, uvicorn).
"""

from __future__ import annotations

import asyncio
import inspect
import sys
from typing import Annotated

from resource_router.cli.exit_codes import EXIT_ERROR, EXIT_OK
from resource_router.errors import ResourceRouterError
from resource_router.transport.redis_errors import redis_errors

try:  # the ``cli`` extra; main() says which pip command to run when it is missing
    import structlog  # noqa: F401  (the renderer of observability/rendering.py)
    import typer
    from rich.console import Console  # noqa: F401
except ModuleNotFoundError as _exc:  # pragma: no cover - exercised in a subprocess test
    _MISSING_EXTRA: str | None = _exc.name
else:
    _MISSING_EXTRA = None
    from resource_router.cli.console import console
    from resource_router.cli.inspect import events, instances, owner, resources, state
    from resource_router.cli.invocation import RedisOpt, await_result, fail_with, settings_from
    from resource_router.cli.output import StdoutClosed, echo, fail, stdout_gone
    from resource_router.cli.serve import serve
    from resource_router.observability.rendering import configure_logging

__all__ = ["build_app", "main"]


def demo(redis: RedisOpt = None) -> None:
    """Run the demo: instances own resources, a client routes calls to them.

    Uses the embedded memory:// store unless --redis (or RESOURCE_ROUTER_REDIS_URL) is given.
    """
    try:
        from resource_router.demo import DEMO_URL, run_demo
    except ImportError as exc:
        fail(f"the demo is not available in this installation: {exc}", EXIT_ERROR)
    settings = settings_from(redis, None)
    url = settings.redis_url.get_secret_value() if settings.redis_url_given else DEMO_URL
    configure_logging("console", "error")  # the demo provokes failures on purpose; its story is its output
    try:
        with redis_errors("the demo"):
            outcome = run_demo(url, out=echo)
            if inspect.isawaitable(outcome):
                asyncio.run(await_result(outcome))
    except StdoutClosed:
        stdout_gone()
    except ResourceRouterError as exc:
        fail_with(exc, url)
    except ImportError as exc:  # memory:// without the 'memory' extra
        fail(str(exc), EXIT_ERROR)
    except KeyboardInterrupt:
        raise typer.Exit(130) from None


def _version(value: bool) -> None:
    if value:
        from resource_router._version import __version__

        print(f"resource-router {__version__}")
        raise typer.Exit()


def _root(
    version: Annotated[
        bool, typer.Option("--version", callback=_version, is_eager=True, help="print the version and exit")
    ] = False,
) -> None:
    """Route each request for a resource to the one service instance that owns it (ownership in Redis)."""
    # Inspection commands log library warnings only; ``serve`` reconfigures for its own format.
    configure_logging("console", "warning")


def build_app() -> typer.Typer:
    """The typer application (a function so that importing this module never needs typer)."""
    app = typer.Typer(
        name="resource-router",
        no_args_is_help=True,
        add_completion=False,
        pretty_exceptions_enable=False,
        rich_markup_mode=None,  # plain help: rich's panels label flags as taking a <bool> value
        context_settings={"help_option_names": ["-h", "--help"]},
    )
    app.callback()(_root)
    for fn in (owner, state, resources, instances, events, serve, console, demo):
        app.command(fn.__name__)(fn)
    return app


def main(argv: list[str] | None = None) -> int:
    """Console-script entry point. Returns the exit code."""
    if _MISSING_EXTRA is not None:
        print(
            f"resource-router's command line needs the 'cli' extra ({_MISSING_EXTRA} is not installed): "
            "pip install 'resource-router[cli]'",
            file=sys.stderr,
        )
        return EXIT_ERROR
    app = build_app()
    try:
        app(args=argv, prog_name="resource-router", standalone_mode=True)
    except SystemExit as exc:
        return exc.code if isinstance(exc.code, int) else (0 if exc.code is None else EXIT_ERROR)
    return EXIT_OK


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
