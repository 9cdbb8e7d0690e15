"""What every command shares: its settings and options, running work against a registry, turning
failures into messages and exit codes, and stopping cleanly on SIGINT/SIGTERM."""

from __future__ import annotations

import asyncio
import signal
from collections.abc import Awaitable, Callable, Coroutine
from typing import Annotated, Any, NoReturn, TypeVar

import typer
from pydantic import ValidationError

from resource_router.cli.exit_codes import EXIT_ERROR, EXIT_INVALID, EXIT_REDIS_UNAVAILABLE
from resource_router.cli.output import StdoutClosed, err, fail, problems, stdout_gone
from resource_router.errors import InvalidRequestError, RedisUnavailableError, ResourceRouterError
from resource_router.ownership.registry import ResourceRegistry
from resource_router.settings import (
    DEFAULT_NAMESPACE,
    DEFAULT_REDIS_URL,
    ENV_PREFIX,
    ENV_REDIS_URL,
    RouterSettings,
    redact_url,
)
from resource_router.transport.redis_errors import redis_errors

__all__ = [
    "JsonOpt",
    "NamespaceOpt",
    "RedisOpt",
    "UnknownService",
    "await_result",
    "check_service",
    "fail_with",
    "inspected_url",
    "run_with_registry",
    "settings_from",
    "until_signalled",
]

ENV_NAMESPACE = f"{ENV_PREFIX}NAMESPACE"

T = TypeVar("T")

RedisOpt = Annotated[
    str | None,
    typer.Option(
        "--redis",
        envvar=ENV_REDIS_URL,
        metavar="URL",
        help="Redis URL: redis://host:port/db, rediss://, unix:///path, memory://",
        show_default=False,
    ),
]
NamespaceOpt = Annotated[
    str | None,
    typer.Option(
        "--namespace",
        "-n",
        envvar=ENV_NAMESPACE,
        metavar="NAME",
        help=f"key prefix (default {DEFAULT_NAMESPACE})",
        show_default=False,
    ),
]
JsonOpt = Annotated[bool, typer.Option("--json", help="print JSON instead of a table (for scripts)")]


def settings_from(redis_url: str | None, namespace: str | None) -> RouterSettings:
    """Options first, then ``RESOURCE_ROUTER_*`` variables and ``.env``, then the defaults."""
    try:
        return RouterSettings.from_env(redis_url=redis_url, namespace=namespace, retry_attempts=2)
    except ValidationError as exc:
        fail(f"invalid settings: {problems(exc)}", EXIT_INVALID)


def inspected_url(settings: RouterSettings) -> str:
    """The URL to read; with none given, ``memory://`` and a note that it starts empty."""
    if not settings.redis_url_given:
        err().print(
            f"note: no --redis URL given and {ENV_REDIS_URL} is not set, so this reads the embedded "
            f"{DEFAULT_REDIS_URL} store, which is empty in a new process. Point it at your Redis: "
            f"--redis redis://localhost:6379/0 or export {ENV_REDIS_URL}=redis://localhost:6379/0",
            markup=False,
            style="yellow",
        )
    return settings.redis_url.get_secret_value()


def run_with_registry(
    settings: RouterSettings,
    work: Callable[[ResourceRegistry], Awaitable[T]],
    show: Callable[[T], None] | None = None,
) -> None:
    """Run ``work`` with a registry made from ``settings``, hand its result to ``show``, and turn
    failures into messages and exit codes.

    ``show`` runs inside the event loop on purpose: with the hiredis parser, coverage.py stops
    recording the lines of the frame that called ``asyncio.run`` once it returns, so nothing is left
    to run in that frame after it.
    """
    url = inspected_url(settings)

    async def runner() -> None:
        async with ResourceRegistry(url, namespace=settings.namespace, settings=settings) as registry:
            result = await work(registry)
        if show is not None:
            show(result)

    try:
        with redis_errors("the command"):  # the library's one mapping of redis-py failures
            asyncio.run(runner())
    except StdoutClosed:
        stdout_gone()
    except UnknownService as exc:
        fail(str(exc), EXIT_ERROR, exc.hint)
    except ResourceRouterError as exc:
        fail_with(exc, url)
    except ImportError as exc:  # memory:// without the 'memory' extra
        fail(str(exc), EXIT_ERROR)


def fail_with(exc: ResourceRouterError, url: str) -> NoReturn:
    """The exit code and hint of a library error."""
    if isinstance(exc, RedisUnavailableError):
        fail(exc.message, EXIT_REDIS_UNAVAILABLE, redis_hint(url))
    if isinstance(exc, InvalidRequestError):
        fail(exc.message, EXIT_INVALID)
    fail(exc.message, EXIT_ERROR)


def redis_hint(url: str) -> str:
    return (
        f"Is Redis running and reachable at {redact_url(url)}? "
        f"Set --redis URL or {ENV_REDIS_URL} (e.g. redis://localhost:6379/0)."
    )


class UnknownService(Exception):
    """Nothing of the service was ever registered in this namespace (a typo, or the wrong namespace)."""

    def __init__(self, service: str, namespace: str, known: list[str]) -> None:
        super().__init__(f"unknown service {service!r}: no instance of it ever registered in namespace {namespace!r}")
        self.hint = (
            f"known services: {', '.join(sorted(known))}"
            if known
            else "no service registered in this namespace: check --namespace and --redis"
        )


async def check_service(registry: ResourceRegistry, service: str, found: bool) -> None:
    """Raise :class:`UnknownService` when nothing was found and the service is not known at all."""
    if found:
        return
    registry.keys.service(service)  # an invalid name is bad usage (exit 2), not an unknown service
    known = await registry.list_services()
    if service not in known:
        raise UnknownService(service, registry.namespace, known)


async def until_signalled(work: Coroutine[Any, Any, None], *, started: Callable[[], None] | None = None) -> None:
    """Run ``work`` until it ends or SIGINT/SIGTERM arrives (then cancel it and return normally).

    The signals set an event from the event loop itself, so stopping never depends on where the
    cancellation lands inside the Redis client (a blocking XREAD).
    """
    loop = asyncio.get_running_loop()
    stop = asyncio.Event()
    installed = []
    for sig in (signal.SIGINT, signal.SIGTERM):
        try:
            loop.add_signal_handler(sig, stop.set)
            installed.append(sig)
        except (NotImplementedError, RuntimeError, ValueError):  # not the main thread, or Windows
            pass
    if started is not None:
        started()  # from here on, a signal stops the work cleanly
    task = asyncio.ensure_future(work)
    stopper = asyncio.ensure_future(stop.wait())
    try:
        await asyncio.wait({task, stopper}, return_when=asyncio.FIRST_COMPLETED)
    finally:
        for sig in installed:
            loop.remove_signal_handler(sig)
        for pending in (task, stopper):
            pending.cancel()
        await asyncio.gather(task, stopper, return_exceptions=True)
    if task.done() and not task.cancelled():
        error = task.exception()
        if error is not None:
            raise error  # Redis failures and bad input are reported by the caller


async def await_result(awaitable: Awaitable[Any]) -> Any:
    return await awaitable
