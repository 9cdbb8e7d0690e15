"""The ``resource-router`` command line: inspect ownership, follow events, run a replica or the demo.

::

    resource-router owner SERVICE RESOURCE_ID      who owns a resource
    resource-router resources SERVICE [--instance ID]
    resource-router instances SERVICE              live instances
    resource-router events SERVICE [--follow]      audit stream (recent, or live)
    resource-router serve [--port 8000]            a stateless HTTP router replica
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
import contextlib
import errno
import inspect
import json
import os
import re
import signal
import socket
import sys
from collections.abc import Awaitable, Callable, Coroutine, Iterable
from datetime import UTC, datetime
from typing import Annotated, Any, NoReturn, TypeVar

from pydantic import BaseModel, ValidationError

from resource_router.errors import (
    InvalidRequestError,
    RedisUnavailableError,
    ResourceNotFoundError,
    ResourceRouterError,
)
from resource_router.models import InstanceInfo, OwnershipEvent, Resource
from resource_router.ownership.registry import ResourceRegistry
from resource_router.ownership.volunteers import Volunteer
from resource_router.settings import (
    DEFAULT_NAMESPACE,
    DEFAULT_REDIS_URL,
    ENV_PREFIX,
    ENV_REDIS_URL,
    RouterSettings,
    redact_url,
)
from resource_router.transport.redis_errors import redis_errors

try:  # the ``cli`` extra; main() says which pip command to run when it is missing
    import structlog  # noqa: F401  (the renderer of .logs)
    import typer
    from rich.console import Console
    from rich.markup import escape
    from rich.table import Table
except ModuleNotFoundError as _exc:  # pragma: no cover - exercised in a subprocess test
    _MISSING_EXTRA: str | None = _exc.name
else:
    _MISSING_EXTRA = None
    from resource_router.observability.rendering import configure_logging

__all__ = [
    "EXIT_CANNOT_LISTEN",
    "EXIT_ERROR",
    "EXIT_INVALID",
    "EXIT_OK",
    "EXIT_REDIS_UNAVAILABLE",
    "build_app",
    "configure_logging",
    "main",
]

EXIT_OK = 0
EXIT_ERROR = 1
EXIT_INVALID = 2
EXIT_REDIS_UNAVAILABLE = 3
EXIT_CANNOT_LISTEN = 4

ENV_NAMESPACE = f"{ENV_PREFIX}NAMESPACE"
_STREAM_ID = re.compile(r"\$|\d+(-\d+)?")

T = TypeVar("T")


# -- helpers ---------------------------------------------------------------------------------------


def _out() -> Console:
    return Console(soft_wrap=False)


def _err() -> Console:
    return Console(stderr=True, highlight=False, soft_wrap=True)


def _fail(message: str, code: int, hint: str | None = None) -> NoReturn:
    err = _err()
    err.print(f"[bold red]error:[/] {escape(message)}", markup=True)
    if hint:
        err.print(hint, markup=False, style="dim")
    raise typer.Exit(code)


def _problems(exc: ValidationError) -> str:
    """A pydantic validation error on one line: ``field: message; ...``."""
    parts = []
    for error in exc.errors():
        where = ".".join(str(p) for p in error["loc"])
        message = error["msg"].removeprefix("Value error, ")
        parts.append(f"{where}: {message}" if where else message)
    return "; ".join(parts)


def _settings(redis_url: str | None, namespace: str | None) -> RouterSettings:
    """Options first, then ``RESOURCE_ROUTER_*`` variables and ``.env``, then the defaults."""
    try:
        return RouterSettings.from_env(redis_url=redis_url, namespace=namespace, retry_attempts=2)
    except ValidationError as exc:
        _fail(f"invalid settings: {_problems(exc)}", EXIT_INVALID)


def _inspected_url(settings: RouterSettings) -> str:
    """The URL to read; with none given, ``memory://`` and a note that it starts empty."""
    if not settings.redis_url_given:
        _err().print(
            f"note: no --redis URL given and {ENV_REDIS_URL} is not set, so this reads the embedded "
            f"{DEFAULT_REDIS_URL} store, which is empty in a new process. Point it at your Redis: "
            f"--redis redis://localhost:6379/0 or export {ENV_REDIS_URL}=redis://localhost:6379/0",
            markup=False,
            style="yellow",
        )
    return settings.redis_url.get_secret_value()


class _StdoutClosed(Exception):
    """The reader of our output went away (``| head``): not an error, nothing more to print."""


def _write(emit: Callable[[], None]) -> None:
    """Print something on stdout; a closed pipe becomes :class:`_StdoutClosed`."""
    try:
        emit()
        sys.stdout.flush()
    except BrokenPipeError as exc:
        raise _StdoutClosed from exc


def _echo(line: str) -> None:
    _write(lambda: print(line))


def _show(renderable: Any) -> None:
    _write(lambda: _out().print(renderable))


def _stdout_gone() -> NoReturn:
    """Stop quietly: point stdout at /dev/null so that the interpreter's last flush finds no broken
    pipe to complain about, and exit 0."""
    with contextlib.suppress(OSError, ValueError, AttributeError):
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
    raise typer.Exit(EXIT_OK)


def _run(
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
    url = _inspected_url(settings)

    async def runner() -> None:
        async with ResourceRegistry(url, namespace=settings.namespace, settings=settings) as registry:
            result = await work(registry)
        if show is not None:
            show(result)

    try:
        with redis_errors("the command"):  # the library's one mapping of redis-py failures
            asyncio.run(runner())
    except _StdoutClosed:
        _stdout_gone()
    except _UnknownService as exc:
        _fail(str(exc), EXIT_ERROR, exc.hint)
    except ResourceRouterError as exc:
        _fail_with(exc, url)
    except ImportError as exc:  # memory:// without the 'memory' extra
        _fail(str(exc), EXIT_ERROR)


def _fail_with(exc: ResourceRouterError, url: str) -> NoReturn:
    """The exit code and hint of a library error."""
    if isinstance(exc, RedisUnavailableError):
        _fail(exc.message, EXIT_REDIS_UNAVAILABLE, _redis_hint(url))
    if isinstance(exc, InvalidRequestError):
        _fail(exc.message, EXIT_INVALID)
    _fail(exc.message, EXIT_ERROR)


def _redis_hint(url: str) -> str:
    return (
        f"Is Redis running and reachable at {redact_url(url)}? "
        f"Set --redis URL or {ENV_REDIS_URL} (e.g. redis://localhost:6379/0)."
    )


class _UnknownService(Exception):
    """Nothing of the service was ever registered in this namespace (a typo, or the wrong namespace)."""

    def __init__(self, service: str, namespace: str, known: list[str]) -> None:
        super().__init__(f"unknown service {service!r}: no instance of it ever registered in namespace {namespace!r}")
        self.hint = (
            f"known services: {', '.join(sorted(known))}"
            if known
            else "no service registered in this namespace: check --namespace and --redis"
        )


async def _check_service(registry: ResourceRegistry, service: str, found: bool) -> None:
    """Raise :class:`_UnknownService` when nothing was found and the service is not known at all."""
    if found:
        return
    registry.keys.service(service)  # an invalid name is bad usage (exit 2), not an unknown service
    known = await registry.list_services()
    if service not in known:
        raise _UnknownService(service, registry.namespace, known)


def _print_json(data: Any) -> None:
    if isinstance(data, BaseModel):
        data = data.model_dump(mode="json")
    elif isinstance(data, list):
        data = [d.model_dump(mode="json") if isinstance(d, BaseModel) else d for d in data]
    _echo(json.dumps(data, indent=2, sort_keys=True, ensure_ascii=False))


def _ts(value: datetime) -> str:
    return value.astimezone(UTC).strftime("%Y-%m-%d %H:%M:%S.%f")[:-3] + "Z"


def _meta(value: dict[str, Any]) -> str:
    return json.dumps(value, separators=(",", ":"), sort_keys=True, ensure_ascii=False) if value else ""


def _table(title: str, columns: dict[str, str]) -> Table:
    """Ids and metadata fold at narrow widths; ``fixed`` columns (numbers, times) never split."""
    table = Table(title=title, title_justify="left")
    for name, kind in columns.items():
        if kind == "text":
            table.add_column(name, overflow="fold")
        else:
            table.add_column(name, no_wrap=True, justify="right" if kind == "number" else "left")
    return table


def _fit(table: Table, rows: list[list[str]]) -> Table:
    """Add ``rows``; columns that never split are given the width of their widest cell."""
    for column_index, column in enumerate(table.columns):
        if column.no_wrap and rows:
            column.min_width = max(len(row[column_index]) for row in rows)
    for row in rows:
        table.add_row(*row)
    return table


def _resources_table(title: str, resources: Iterable[Resource]) -> Table:
    table = _table(
        title,
        {
            "resource_id": "text",
            "owner_instance_id": "text",
            "fencing_token": "number",
            "registered_at": "time",
            "metadata": "text",
        },
    )
    rows = [
        [r.resource_id, r.owner_instance_id, str(r.fencing_token), _ts(r.registered_at), _meta(r.metadata)]
        for r in resources
    ]
    return _fit(table, rows)


def _instances_table(title: str, instances: Iterable[InstanceInfo], volunteers: dict[str, Volunteer]) -> Table:
    table = _table(
        title,
        {
            "instance_id": "text",
            "resources": "number",
            "ttl": "number",
            "placement": "text",
            "last_heartbeat": "time",
            "registered_at": "time",
            "metadata": "text",
        },
    )
    rows = [
        [
            i.instance_id,
            "" if i.resource_count is None else str(i.resource_count),
            f"{i.ttl:g}s",
            volunteers[i.instance_id].placement if i.instance_id in volunteers else "-",
            _ts(i.last_heartbeat),
            _ts(i.registered_at),
            _meta(i.metadata),
        ]
        for i in instances
    ]
    return _fit(table, rows)


def _event_time(event: OwnershipEvent) -> str:
    return _ts(datetime.fromtimestamp(event.ts_ms / 1000.0, tz=UTC)) if event.ts_ms else ""


def _event_line(event: OwnershipEvent) -> str:
    parts = [_event_time(event), event.type, f"instance={event.instance_id}"]
    if event.reason:
        parts.append(f"reason={event.reason}")
    if event.resource_ids:
        shown = ",".join(event.resource_ids[:20])
        more = "" if len(event.resource_ids) <= 20 else f",...(+{len(event.resource_ids) - 20})"
        parts.append(f"resources={shown}{more}")
    if event.previous_owners:
        parts.append("previous_owners=" + ",".join(f"{r}:{o}" for r, o in event.previous_owners.items()))
    if event.trace_id:
        parts.append(f"trace_id={event.trace_id}")
    return " ".join(p for p in parts if p)


def _events_table(title: str, events: Iterable[OwnershipEvent]) -> Table:
    table = _table(
        title,
        {
            "time": "time",
            "type": "text",
            "instance_id": "text",
            "reason": "text",
            "resources": "text",
            "trace_id": "text",
        },
    )
    rows = [
        [_event_time(e), e.type, e.instance_id, e.reason or "", ",".join(e.resource_ids), e.trace_id or ""]
        for e in events
    ]
    return _fit(table, rows)


# -- option types ----------------------------------------------------------------------------------

if _MISSING_EXTRA is None:  # the aliases need typer; the commands are only built when it is there
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


# -- commands --------------------------------------------------------------------------------------


def owner(
    service: Annotated[str, typer.Argument(metavar="SERVICE", help="service name")],
    resource_id: Annotated[str, typer.Argument(metavar="RESOURCE_ID", help="resource id")],
    redis: RedisOpt = None,
    namespace: NamespaceOpt = None,
    as_json: JsonOpt = False,
) -> None:
    """Show which instance owns a resource.

    Exit code 1 when nobody does.
    """
    settings = _settings(redis, namespace)

    async def work(registry: ResourceRegistry) -> Resource | None:
        try:
            return await registry.get_resource_owner(service, resource_id)
        except ResourceNotFoundError:
            await _check_service(registry, service, found=False)
            return None

    def show(resource: Resource | None) -> None:
        if resource is None:
            if as_json:
                _print_json({"resource_id": resource_id, "service_name": service, "owner_instance_id": None})
            _fail(f"resource {resource_id!r} of service {service!r} has no owner", EXIT_ERROR)
        elif as_json:
            _print_json(resource)
        else:
            _show(_resources_table(f"owner of {resource_id} in {service}", [resource]))

    _run(settings, work, show)


def resources(
    service: Annotated[str, typer.Argument(metavar="SERVICE", help="service name")],
    instance: Annotated[str | None, typer.Option("--instance", "-i", help="only this instance's resources")] = None,
    redis: RedisOpt = None,
    namespace: NamespaceOpt = None,
    as_json: JsonOpt = False,
) -> None:
    """List the resources owned in a service (or by one instance)."""
    settings = _settings(redis, namespace)

    async def work(registry: ResourceRegistry) -> list[Resource]:
        found = await registry.list_resources(service, instance)
        await _check_service(registry, service, found=bool(found))
        return found

    def show(found: list[Resource]) -> None:
        if as_json:
            _print_json(found)
        else:
            who = f" owned by {instance}" if instance else ""
            _show(_resources_table(f"{len(found)} resource(s) in {service}{who}", found))

    _run(settings, work, show)


def instances(
    service: Annotated[str, typer.Argument(metavar="SERVICE", help="service name")],
    redis: RedisOpt = None,
    namespace: NamespaceOpt = None,
    as_json: JsonOpt = False,
) -> None:
    """List the live instances of a service, and which are placement volunteers (column placement:
    their strategy, or - ).

    Exit code 1 for a service nothing ever registered in (a typo, or the wrong namespace).
    """
    settings = _settings(redis, namespace)

    async def work(registry: ResourceRegistry) -> tuple[list[InstanceInfo], dict[str, Volunteer]]:
        found = await registry.list_instances(service)
        await _check_service(registry, service, found=bool(found))
        volunteers = {v.instance_id: v for v in await registry.list_volunteers(service)} if found else {}
        return found, volunteers

    def show(result: tuple[list[InstanceInfo], dict[str, Volunteer]]) -> None:
        found, volunteers = result
        if as_json:
            _print_json(
                [
                    i.model_dump(mode="json")
                    | {
                        "volunteer": {"placement": v.placement, "limit": v.limit}
                        if (v := volunteers.get(i.instance_id))
                        else None
                    }
                    for i in found
                ]
            )
        else:
            _show(_instances_table(f"{len(found)} live instance(s) of {service}", found, volunteers))

    _run(settings, work, show)


def events(
    service: Annotated[str, typer.Argument(metavar="SERVICE", help="service name")],
    follow: Annotated[bool, typer.Option("--follow", "-f", help="keep printing new events (Ctrl-C stops)")] = False,
    count: Annotated[int, typer.Option("--count", "-c", min=1, max=10_000, help="how many recent events")] = 20,
    since: Annotated[
        str,
        typer.Option(help="with --follow: start after this stream id ('$' = only new events, '0' = replay all)"),
    ] = "$",
    redis: RedisOpt = None,
    namespace: NamespaceOpt = None,
    as_json: JsonOpt = False,
) -> None:
    """Show the recent ownership events of a service, or follow them live.

    The events come from the service's audit stream.
    """
    settings = _settings(redis, namespace)
    if not follow:

        async def recent(registry: ResourceRegistry) -> list[OwnershipEvent]:
            found = await registry.events.recent(service, count)
            await _check_service(registry, service, found=bool(found))
            return found

        def show(found: list[OwnershipEvent]) -> None:
            if as_json:
                _print_json(found)
            else:
                _show(_events_table(f"last {len(found)} event(s) of {service}", found))

        _run(settings, recent, show)
        return

    if not _STREAM_ID.fullmatch(since):
        _fail(f"--since must be '$', '0' or a stream id like 1700000000000-0, not {since!r}", EXIT_INVALID)

    async def pump(registry: ResourceRegistry) -> None:
        async for event in registry.events.follow(service, since=since):
            if as_json:
                _echo(json.dumps(event.model_dump(mode="json"), sort_keys=True, ensure_ascii=False))
            else:
                _echo(_event_line(event))

    async def tail(registry: ResourceRegistry) -> None:
        registry.keys.service(service)  # validate the name before announcing anything
        unknown = service not in await registry.list_services()

        def announce() -> None:
            if unknown:  # it may be about to start: follow anyway, but say so
                _err().print(
                    f"note: no instance of {service!r} ever registered in namespace {registry.namespace!r} (yet)",
                    markup=False,
                    style="yellow",
                )
            _err().print(f"following ownership events of {service} (Ctrl-C to stop)", markup=False, style="dim")

        await _until_signalled(pump(registry), started=announce)

    try:
        _run(settings, tail)
    except KeyboardInterrupt:  # a second Ctrl-C, or a platform without loop signal handlers
        raise typer.Exit(EXIT_OK) from None


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
        _fail(str(exc), EXIT_ERROR)
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
        _check_address(settings.host, settings.port)
        configure_logging(settings.log_format, settings.log_level)
        run(settings, setup_logging=configure_logging)
    except ValidationError as exc:
        _fail(f"invalid settings: {_problems(exc)}", EXIT_INVALID)
    except InvalidRequestError as exc:
        _fail(exc.message, EXIT_INVALID)
    except ImportError as exc:  # --embedded without the 'memory' extra
        _fail(str(exc), EXIT_ERROR)
    except SystemExit as exc:  # uvicorn's startup failure (its log says why)
        if exc.code in (0, None):
            raise
        _fail("the replica could not start: see its log above", EXIT_ERROR)


def _check_address(host: str, port: int) -> None:
    """Fail with its own message and exit code when the replica cannot listen on ``host:port``
    (the port is taken, or needs privileges), before anything else starts."""
    if port == 0:
        return
    try:
        infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE)
    except socket.gaierror as exc:
        _fail(f"cannot listen on {host}:{port}: {exc.strerror}", EXIT_INVALID)
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
            _fail(f"cannot listen on {host}:{port}: {reason}", EXIT_CANNOT_LISTEN, "Choose another --port or --host.")


def demo(redis: RedisOpt = None) -> None:
    """Run the demo: instances own resources, a client routes calls to them.

    Uses the embedded memory:// store unless --redis (or RESOURCE_ROUTER_REDIS_URL) is given.
    """
    try:
        from resource_router.demo import DEMO_URL, run_demo
    except ImportError as exc:
        _fail(f"the demo is not available in this installation: {exc}", EXIT_ERROR)
    settings = _settings(redis, None)
    url = settings.redis_url.get_secret_value() if settings.redis_url_given else DEMO_URL
    configure_logging("console", "error")  # the demo provokes failures on purpose; its story is its output
    try:
        with redis_errors("the demo"):
            outcome = run_demo(url, out=_echo)
            if inspect.isawaitable(outcome):
                asyncio.run(_await(outcome))
    except _StdoutClosed:
        _stdout_gone()
    except ResourceRouterError as exc:
        _fail_with(exc, url)
    except ImportError as exc:  # memory:// without the 'memory' extra
        _fail(str(exc), EXIT_ERROR)
    except KeyboardInterrupt:
        raise typer.Exit(130) from None


async def _until_signalled(work: Coroutine[Any, Any, None], *, started: Callable[[], None] | None = None) -> None:
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


async def _await(awaitable: Awaitable[Any]) -> Any:
    return await awaitable


# -- the app ---------------------------------------------------------------------------------------


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
    for fn in (owner, resources, instances, events, serve, demo):
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
