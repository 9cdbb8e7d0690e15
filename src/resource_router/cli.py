"""The ``resource-router`` command line: inspect ownership, follow events, run a replica or the demo.

::

    resource-router owner SERVICE RESOURCE_ID      who owns a resource
    resource-router resources SERVICE [--instance ID]
    resource-router instances SERVICE              live instances
    resource-router events SERVICE [--follow]      audit stream (recent, or live)
    resource-router serve [--port 8000]            a stateless HTTP router replica
    resource-router demo                           the demo (embedded memory:// unless a URL is given)

Every command takes ``--redis URL`` (default: ``RESOURCE_ROUTER_REDIS_URL``) and ``--namespace``;
the inspection commands also take ``--json``. Exit codes: 0 ok, 1 not found or another library error,
2 bad usage or an invalid id, 3 Redis unreachable. Needs the ``cli`` extra (typer, rich); ``serve``
also needs the ``gateway`` extra (FastAPI, uvicorn).
"""

from __future__ import annotations

import asyncio
import inspect
import json
import logging
import re
import signal
import sys
from collections.abc import Awaitable, Callable, Coroutine, Iterable
from datetime import UTC, datetime
from typing import Annotated, Any, NoReturn, TypeVar

import structlog
from pydantic import BaseModel, ValidationError
from redis.exceptions import RedisError

from .errors import InvalidRequestError, RedisUnavailableError, ResourceNotFoundError, ResourceRouterError
from .models import InstanceInfo, OwnershipEvent, Resource
from .registry import ResourceRegistry
from .settings import DEFAULT_REDIS_URL, ENV_REDIS_URL, RouterSettings

try:  # the ``cli`` extra; main() says which pip command to run when it is missing
    import typer
    from rich.console import Console
    from rich.markup import escape
    from rich.table import Table
except ModuleNotFoundError as _exc:  # pragma: no cover - exercised in a subprocess test
    _MISSING_EXTRA: str | None = _exc.name
else:
    _MISSING_EXTRA = None

__all__ = [
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

ENV_NAMESPACE = "RESOURCE_ROUTER_NAMESPACE"
_STREAM_ID = re.compile(r"\$|\d+(-\d+)?")

T = TypeVar("T")


# -- logging --------------------------------------------------------------------------------------


class _StderrHandler(logging.StreamHandler):  # type: ignore[type-arg]
    """Writes to whatever ``sys.stderr`` is at the time of the log call (test runners swap it)."""

    @property
    def stream(self) -> Any:
        return sys.stderr

    @stream.setter
    def stream(self, _value: Any) -> None:
        pass


_HANDLER_NAME = "resource-router"


def configure_logging(fmt: str = "console", level: str = "info") -> None:
    """Route structlog and stdlib logging (uvicorn's too) through one renderer on stderr.

    ``fmt`` is ``json`` (one JSON object per line, for ``serve``) or ``console`` (readable). Every line
    carries the context variables bound for the request (``trace_id``). The library never calls this.
    """
    shared: list[Any] = [
        structlog.contextvars.merge_contextvars,
        structlog.stdlib.add_log_level,
        structlog.stdlib.add_logger_name,
        structlog.processors.TimeStamper(fmt="iso", utc=True),
    ]
    final: list[Any]
    if fmt == "json":
        final = [structlog.processors.format_exc_info, structlog.processors.JSONRenderer()]
    elif fmt == "console":
        # plain tracebacks: rich's default ones print local variables (request bodies, URLs) and are slow
        final = [
            structlog.dev.ConsoleRenderer(colors=sys.stderr.isatty(), exception_formatter=structlog.dev.plain_traceback)
        ]
    else:
        raise InvalidRequestError(f"log format must be 'json' or 'console', not {fmt!r}", field="log_format")
    numeric = logging.getLevelName(level.upper())
    if not isinstance(numeric, int):
        raise InvalidRequestError(f"unknown log level {level!r}", field="log_level")
    structlog.configure(
        processors=[*shared, structlog.stdlib.ProcessorFormatter.wrap_for_formatter],
        logger_factory=structlog.stdlib.LoggerFactory(),
        # Drops calls below ``level`` before any processor runs (the routing hot path logs at debug).
        wrapper_class=structlog.make_filtering_bound_logger(numeric),
        cache_logger_on_first_use=False,
    )
    formatter = structlog.stdlib.ProcessorFormatter(
        foreign_pre_chain=shared,
        processors=[structlog.stdlib.ProcessorFormatter.remove_processors_meta, *final],
    )
    handler = _StderrHandler()
    handler.set_name(_HANDLER_NAME)
    handler.setFormatter(formatter)
    root = logging.getLogger()
    for old in [h for h in root.handlers if h.get_name() == _HANDLER_NAME]:
        root.removeHandler(old)
    root.addHandler(handler)
    root.setLevel(numeric)


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


def _resolve_url(redis_url: str | None, *, inspecting: bool) -> str:
    """The URL given, else ``memory://`` with a note that it starts empty (for inspection commands)."""
    if redis_url:
        return redis_url
    if inspecting:
        _err().print(
            f"note: no --redis URL given and {ENV_REDIS_URL} is not set, so this reads the embedded "
            f"{DEFAULT_REDIS_URL} store, which is empty in a new process. Point it at your Redis: "
            f"--redis redis://localhost:6379/0 or export {ENV_REDIS_URL}=redis://localhost:6379/0",
            markup=False,
            style="yellow",
        )
    return DEFAULT_REDIS_URL


def _run(
    url: str,
    namespace: str,
    work: Callable[[ResourceRegistry], Awaitable[T]],
    show: Callable[[T], None] | None = None,
) -> None:
    """Run ``work`` with a registry on ``url``, hand its result to ``show``, and turn failures into
    messages and exit codes.

    ``show`` runs inside the event loop on purpose: with the hiredis parser, coverage.py stops
    recording the lines of the frame that called ``asyncio.run`` once it returns, so nothing is left
    to run in that frame after it.
    """

    async def runner() -> None:
        settings = RouterSettings(redis_url=url, namespace=namespace, retry_attempts=2)
        async with ResourceRegistry(url, namespace=namespace, settings=settings) as registry:
            result = await work(registry)
        if show is not None:
            show(result)

    try:
        asyncio.run(runner())
    except RedisUnavailableError as exc:
        _fail(exc.message, EXIT_REDIS_UNAVAILABLE, _redis_hint(url))
    except (RedisError, OSError) as exc:
        _fail(f"Redis is unreachable: {type(exc).__name__}: {exc}", EXIT_REDIS_UNAVAILABLE, _redis_hint(url))
    except InvalidRequestError as exc:
        _fail(exc.message, EXIT_INVALID)
    except ResourceRouterError as exc:
        _fail(exc.message, EXIT_ERROR)


def _redis_hint(url: str) -> str:
    return (
        f"Is Redis running and reachable at {_safe_url(url)}? "
        f"Set --redis URL or {ENV_REDIS_URL} (e.g. redis://localhost:6379/0)."
    )


def _safe_url(url: str) -> str:
    """The URL without a password."""
    if "@" in url and "://" in url:
        scheme, rest = url.split("://", 1)
        return f"{scheme}://***@{rest.split('@', 1)[1]}"
    return url


def _print_json(data: Any) -> None:
    if isinstance(data, BaseModel):
        data = data.model_dump(mode="json")
    elif isinstance(data, list):
        data = [d.model_dump(mode="json") if isinstance(d, BaseModel) else d for d in data]
    print(json.dumps(data, indent=2, sort_keys=True, ensure_ascii=False))


def _ts(value: datetime) -> str:
    return value.astimezone(UTC).strftime("%Y-%m-%d %H:%M:%S.%f")[:-3] + "Z"


def _meta(value: dict[str, Any]) -> str:
    return json.dumps(value, separators=(",", ":"), sort_keys=True, ensure_ascii=False) if value else ""


def _resources_table(title: str, resources: Iterable[Resource]) -> Table:
    table = Table(title=title, title_justify="left")
    for name in ("resource_id", "owner_instance_id", "fencing_token", "registered_at", "metadata"):
        table.add_column(name, overflow="fold", justify="right" if name == "fencing_token" else "left")
    for r in resources:
        table.add_row(r.resource_id, r.owner_instance_id, str(r.fencing_token), _ts(r.registered_at), _meta(r.metadata))
    return table


def _instances_table(title: str, instances: Iterable[InstanceInfo]) -> Table:
    table = Table(title=title, title_justify="left")
    for name in ("instance_id", "resources", "ttl", "last_heartbeat", "registered_at", "metadata"):
        table.add_column(name, overflow="fold", justify="right" if name in ("resources", "ttl") else "left")
    for i in instances:
        count = "" if i.resource_count is None else str(i.resource_count)
        table.add_row(
            i.instance_id, count, f"{i.ttl:g}s", _ts(i.last_heartbeat), _ts(i.registered_at), _meta(i.metadata)
        )
    return table


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
    table = Table(title=title, title_justify="left")
    for name in ("time", "type", "instance_id", "reason", "resources", "trace_id"):
        table.add_column(name, overflow="fold")
    for e in events:
        table.add_row(_event_time(e), e.type, e.instance_id, e.reason or "", ",".join(e.resource_ids), e.trace_id or "")
    return table


# -- option types ----------------------------------------------------------------------------------

if _MISSING_EXTRA is None:  # the aliases need typer; the commands are only built when it is there
    RedisOpt = Annotated[
        str | None,
        typer.Option(
            "--redis",
            envvar=ENV_REDIS_URL,
            help="Redis URL: redis://host:port/db, rediss://, unix:///path, memory://",
            show_default=False,
        ),
    ]
    NamespaceOpt = Annotated[str, typer.Option("--namespace", "-n", envvar=ENV_NAMESPACE, help="key prefix")]
    JsonOpt = Annotated[bool, typer.Option("--json", help="print JSON instead of a table (for scripts)")]


# -- commands --------------------------------------------------------------------------------------


def owner(
    service: Annotated[str, typer.Argument(help="service name")],
    resource_id: Annotated[str, typer.Argument(help="resource id")],
    redis: RedisOpt = None,
    namespace: NamespaceOpt = "rr",
    as_json: JsonOpt = False,
) -> None:
    """Show which instance owns a resource (exit code 1 when nobody does)."""
    url = _resolve_url(redis, inspecting=True)

    async def work(registry: ResourceRegistry) -> Resource | None:
        try:
            return await registry.get_resource_owner(service, resource_id)
        except ResourceNotFoundError:
            return None

    def show(resource: Resource | None) -> None:
        if resource is None:
            if as_json:
                _print_json({"resource_id": resource_id, "service_name": service, "owner_instance_id": None})
            _fail(f"resource {resource_id!r} of service {service!r} has no owner", EXIT_ERROR)
        elif as_json:
            _print_json(resource)
        else:
            _out().print(_resources_table(f"owner of {resource_id} in {service}", [resource]))

    _run(url, namespace, work, show)


def resources(
    service: Annotated[str, typer.Argument(help="service name")],
    instance: Annotated[str | None, typer.Option("--instance", "-i", help="only this instance's resources")] = None,
    redis: RedisOpt = None,
    namespace: NamespaceOpt = "rr",
    as_json: JsonOpt = False,
) -> None:
    """List the resources owned in a service (or by one instance)."""
    url = _resolve_url(redis, inspecting=True)

    def show(found: list[Resource]) -> None:
        if as_json:
            _print_json(found)
        else:
            who = f" owned by {instance}" if instance else ""
            _out().print(_resources_table(f"{len(found)} resource(s) in {service}{who}", found))

    _run(url, namespace, lambda registry: registry.list_resources(service, instance), show)


def instances(
    service: Annotated[str, typer.Argument(help="service name")],
    redis: RedisOpt = None,
    namespace: NamespaceOpt = "rr",
    as_json: JsonOpt = False,
) -> None:
    """List the live instances of a service."""
    url = _resolve_url(redis, inspecting=True)

    def show(found: list[InstanceInfo]) -> None:
        if as_json:
            _print_json(found)
        else:
            _out().print(_instances_table(f"{len(found)} live instance(s) of {service}", found))

    _run(url, namespace, lambda registry: registry.list_instances(service), show)


def events(
    service: Annotated[str, typer.Argument(help="service name")],
    follow: Annotated[bool, typer.Option("--follow", "-f", help="keep printing new events (Ctrl-C stops)")] = False,
    count: Annotated[int, typer.Option("--count", "-c", min=1, max=10_000, help="how many recent events")] = 20,
    since: Annotated[
        str,
        typer.Option(help="with --follow: start after this stream id ('$' = only new events, '0' = replay all)"),
    ] = "$",
    redis: RedisOpt = None,
    namespace: NamespaceOpt = "rr",
    as_json: JsonOpt = False,
) -> None:
    """Show recent ownership events of a service (its audit stream), or follow new ones live."""
    url = _resolve_url(redis, inspecting=True)
    if not follow:

        def show(found: list[OwnershipEvent]) -> None:
            if as_json:
                _print_json(found)
            else:
                _out().print(_events_table(f"last {len(found)} event(s) of {service}", found))

        _run(url, namespace, lambda registry: registry.events.recent(service, count), show)
        return

    if not _STREAM_ID.fullmatch(since):
        _fail(f"--since must be '$', '0' or a stream id like 1700000000000-0, not {since!r}", EXIT_INVALID)

    async def pump(registry: ResourceRegistry) -> None:
        async for event in registry.events.follow(service, since=since):
            if as_json:
                print(json.dumps(event.model_dump(mode="json"), sort_keys=True, ensure_ascii=False), flush=True)
            else:
                print(_event_line(event), flush=True)

    async def tail(registry: ResourceRegistry) -> None:
        registry.keys.service(service)  # validate the name before announcing anything

        def announce() -> None:
            _err().print(f"following ownership events of {service} (Ctrl-C to stop)", markup=False, style="dim")

        await _until_signalled(pump(registry), started=announce)

    try:
        _run(url, namespace, tail)
    except KeyboardInterrupt:  # a second Ctrl-C, or a platform without loop signal handlers
        raise typer.Exit(EXIT_OK) from None


def serve(
    redis: RedisOpt = None,
    namespace: NamespaceOpt = "rr",
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
    """Run a stateless HTTP router replica (FastAPI on uvicorn). Run as many as you like."""
    try:
        from .gateway import GatewaySettings, run
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
            workers=workers,
            max_in_flight=max_in_flight,
            nats_url=nats,
            nats_subject_prefix=nats_prefix,
            nats_queue=nats_queue,
        )
        configure_logging(settings.log_format, settings.log_level)
        run(settings, setup_logging=configure_logging)
    except ValidationError as exc:
        problems = "; ".join(f"{'.'.join(str(p) for p in e['loc'])}: {e['msg']}" for e in exc.errors())
        _fail(f"invalid settings: {problems}", EXIT_INVALID)
    except InvalidRequestError as exc:
        _fail(exc.message, EXIT_INVALID)


def demo(redis: RedisOpt = None) -> None:
    """Run the demo: instances own resources and a client routes calls to them.

    Uses the embedded memory:// store unless --redis (or RESOURCE_ROUTER_REDIS_URL) is given.
    """
    try:
        from .demo import run_demo
    except ImportError as exc:
        _fail(f"the demo is not available in this installation: {exc}", EXIT_ERROR)
    configure_logging("console", "error")  # the demo provokes failures on purpose; its story is its output
    try:
        outcome = run_demo(redis or None, out=print)
        if inspect.isawaitable(outcome):
            asyncio.run(_await(outcome))
    except RedisUnavailableError as exc:
        _fail(exc.message, EXIT_REDIS_UNAVAILABLE, _redis_hint(redis or DEFAULT_REDIS_URL))
    except (RedisError, OSError) as exc:
        _fail(f"Redis is unreachable: {type(exc).__name__}: {exc}", EXIT_REDIS_UNAVAILABLE, _redis_hint(redis or ""))
    except ResourceRouterError as exc:
        _fail(exc.message, EXIT_ERROR)
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
        from . import __version__

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
