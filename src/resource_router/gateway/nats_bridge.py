"""The seed's NATS subjects on a replica (``resource-router serve --nats URL``).

Every replica process subscribes in one queue group (``nats_queue``), so each request is answered by
exactly one replica. Bodies and replies are msgpack maps of the same models as the HTTP API:

=================================  ==================================  ================================
subject (prefix ``ipc``)           request                             reply
=================================  ==================================  ================================
``ipc.resource.register``          ``ResourceRegistrationRequest``     ``ResourceRegistrationResponse``
``ipc.resource.release``           ``ResourceReleaseRequest``          ``ResourceReleaseResponse``
``ipc.resource.query``             ``{service_name, resource_id}``     ``Resource``
``ipc.route``                      ``RouteRequest`` (caller's fields)  ``RouteResponse``
=================================  ==================================  ================================

A failure is answered with the HTTP error body, ``{"error": {"type", "code", "message", ...},
"trace_id"}``, ``code`` being the HTTP status. The trace id comes from the body's ``trace_id``, else
the ``X-Trace-Id`` header, else a new one. Requests share the process's in-flight limit with HTTP.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable
from typing import TYPE_CHECKING, Any, TypeVar

import msgpack
import structlog
from prometheus_client import CollectorRegistry
from pydantic import BaseModel, ValidationError

from resource_router.errors import InvalidRequestError, ResourceRouterError
from resource_router.models import ResourceRegistrationRequest, ResourceReleaseRequest
from resource_router.observability.logs import get_logger

from . import operations
from .bodies import ResourceQuery, RouteCall
from .error_bodies import PayloadTooLargeError, ReplicaOverloadedError, error_body, internal_error, validation_error
from .replica_metrics import get_gateway_metrics
from .request_context import TRACE_HEADER, pick_trace_id, takes_over
from .state import GatewayState

if TYPE_CHECKING:
    from nats.aio.client import Client
    from nats.aio.msg import Msg
    from nats.aio.subscription import Subscription

__all__ = ["NatsBridge"]

logger = get_logger(__name__)
#: Seconds between attempts while the NATS server cannot be reached.
RECONNECT_WAIT = 2.0
#: Seconds a replica's start waits for NATS before it starts without (and keeps connecting).
STARTUP_WAIT = 2.5


class _Request:
    """One request on its way: the trace id in force (the body's, once it is read)."""

    __slots__ = ("trace_id",)

    def __init__(self, trace_id: str) -> None:
        self.trace_id = trace_id

    def adopt(self, candidate: str | None) -> str:
        if takes_over(self.trace_id, candidate):
            self.trace_id = str(candidate)
        return self.trace_id


Handler = Callable[[Any, _Request], Awaitable[Any]]
M = TypeVar("M", bound=BaseModel)


class NatsBridge:
    """Answers the NATS subjects for one replica process while it runs (``start``/``stop`` in the
    app's lifespan). A NATS server that cannot be reached at start is retried in the background
    (the HTTP API serves meanwhile); nats-py reconnects and resubscribes after later outages."""

    def __init__(self, state: GatewayState, *, metrics_registry: CollectorRegistry | None = None) -> None:
        settings = state.settings
        if not settings.nats_url:
            raise ValueError("NatsBridge needs settings.nats_url")
        self.state = state
        self.url = settings.nats_url
        self.queue = settings.nats_queue
        self.prefix = settings.nats_subject_prefix
        self.max_body_bytes = settings.max_body_bytes
        handlers: dict[str, Handler] = {
            "resource.register": self._register,
            "resource.release": self._release,
            "resource.query": self._query,
            "route": self._route,
        }
        self.handlers = {f"{self.prefix}.{name}": (name, fn) for name, fn in handlers.items()}
        metrics = get_gateway_metrics(metrics_registry)
        self._requests = metrics.nats_requests
        self._shed = metrics.shed.labels("nats")
        self._nc: Client | None = None
        self._connecting: asyncio.Task[None] | None = None
        self._subs: list[Subscription] = []
        self._tasks: set[asyncio.Task[None]] = set()
        self._shutdown_timeout = settings.shutdown_timeout
        self._failing = False

    async def start(self) -> None:
        """Connect and subscribe. When the NATS server cannot be reached within ``STARTUP_WAIT``
        seconds, the replica starts anyway and the connection is made in the background."""
        try:
            import nats  # noqa: F401
        except ModuleNotFoundError as exc:
            raise ImportError(
                f"--nats needs nats-py ({exc.name} is not installed): pip install 'resource-router[nats]'"
            ) from exc
        self._connecting = asyncio.create_task(self._connect())
        done, _ = await asyncio.wait({self._connecting}, timeout=STARTUP_WAIT)
        if done:
            self._connecting.result()  # a bad URL or option fails the start
        else:
            logger.warning(
                "gateway.nats_unavailable",
                url=self.url,
                message=f"still connecting (every {RECONNECT_WAIT:g}s) in the background; the HTTP API serves",
            )

    async def _connect(self) -> None:
        import nats

        # With reconnects allowed, nats-py keeps trying the first connection too (and resubscribes
        # after later disconnects).
        nc = await nats.connect(
            self.url,
            name="resource-router replica",
            allow_reconnect=True,
            max_reconnect_attempts=-1,
            connect_timeout=2,
            reconnect_time_wait=RECONNECT_WAIT,
            error_cb=self._on_error,
            disconnected_cb=self._on_disconnected,
            reconnected_cb=self._on_connected,
        )
        self._subs = [await nc.subscribe(s, queue=self.queue, cb=self._on_message) for s in self.handlers]
        await nc.flush()
        self._nc = nc
        await self._on_connected()

    async def _on_connected(self) -> None:
        self._failing = False
        logger.info("gateway.nats_connected", url=self.url, subjects=sorted(self.handlers), queue=self.queue)

    async def _on_disconnected(self) -> None:
        logger.warning("gateway.nats_disconnected", url=self.url)

    async def _on_error(self, exc: Exception) -> None:
        # one warning per outage, not one per reconnect attempt
        log = logger.debug if self._failing else logger.warning
        self._failing = True
        log("gateway.nats_error", url=self.url, error=f"{type(exc).__name__}: {exc}")

    async def stop(self) -> None:
        """Stop taking requests, let the ones in flight answer (up to the shutdown timeout), disconnect."""
        if self._connecting is not None:
            self._connecting.cancel()
            await asyncio.gather(self._connecting, return_exceptions=True)
        nc, self._nc = self._nc, None
        if nc is None:
            return
        from nats.errors import Error as NatsError

        try:
            for sub in self._subs:
                await sub.unsubscribe()  # no new requests (a request already queued is dropped, unanswered)
            if self._tasks:  # requests being served answer before the connection closes
                await asyncio.wait(set(self._tasks), timeout=self._shutdown_timeout)
        except NatsError as exc:  # NATS went away: nobody to tell
            logger.warning("gateway.nats_close_failed", url=self.url, error=f"{type(exc).__name__}: {exc}")
        finally:
            await nc.close()  # sends what is still buffered (the last replies)

    # -- requests --------------------------------------------------------------------------------
    async def _on_message(self, msg: Msg) -> None:
        """nats-py awaits this per subscription in order: serve each request in its own task."""
        if not self.state.in_flight.try_enter():
            self._shed.inc()
            trace_id = pick_trace_id(_header(msg))
            await self._answer(msg, *error_body(ReplicaOverloadedError(self.state.in_flight.limit), trace_id))
            return
        task = asyncio.create_task(self._serve(msg))
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def _serve(self, msg: Msg) -> None:
        start = time.perf_counter()
        name, handler = self.handlers[msg.subject]
        request = _Request(pick_trace_id(_header(msg)))
        tokens = structlog.contextvars.bind_contextvars(trace_id=request.trace_id)
        status = 200
        try:
            try:
                payload = await handler(self._decode(msg.data), request)
            except ResourceRouterError as exc:
                status, payload = error_body(exc, request.trace_id)
            except Exception as exc:
                logger.exception("nats.internal_error", subject=msg.subject, error_type=type(exc).__name__)
                status, payload = error_body(internal_error(exc, request.trace_id), request.trace_id)
            finally:
                self.state.in_flight.leave()
            await self._answer(msg, status, payload)
            elapsed = time.perf_counter() - start
            self._requests.labels(name, str(status)).inc()
            logger.info(  # a no-op call unless the log level includes info
                "nats.request",
                subject=msg.subject,
                status=status,
                operation="nats",
                duration_ms=round(elapsed * 1000.0, 3),
            )
        finally:
            structlog.contextvars.reset_contextvars(**tokens)

    async def _answer(self, msg: Msg, status: int, payload: Any) -> None:
        if not msg.reply:
            return  # a publish, not a request: nobody waits for the answer
        try:
            data = msgpack.packb(payload)
        except (TypeError, ValueError, OverflowError) as exc:  # a result msgpack cannot carry
            logger.exception("nats.internal_error", subject=msg.subject, error_type=type(exc).__name__)
            trace_id = payload.get("trace_id") if isinstance(payload, dict) else None
            data = msgpack.packb(error_body(internal_error(exc, trace_id), trace_id)[1])
        nc = self._nc
        if nc is not None and not nc.is_closed:
            await nc.publish(msg.reply, data)

    def _decode(self, data: bytes) -> Any:
        if len(data) > self.max_body_bytes:
            raise PayloadTooLargeError.of(len(data), self.max_body_bytes)
        try:
            return msgpack.unpackb(data)
        except (ValueError, TypeError, msgpack.UnpackException) as exc:
            raise InvalidRequestError(f"the body is not msgpack: {type(exc).__name__}: {exc}", field="body") from None

    async def _register(self, data: Any, request: _Request) -> Any:
        body = _validate(ResourceRegistrationRequest, data)
        response = await operations.register(self.state, body, request.adopt(body.trace_id))
        return response.model_dump(mode="json")

    async def _release(self, data: Any, request: _Request) -> Any:
        body = _validate(ResourceReleaseRequest, data)
        response = await operations.release(self.state, body, request.adopt(body.trace_id))
        return response.model_dump(mode="json")

    async def _query(self, data: Any, request: _Request) -> Any:
        body = _validate(ResourceQuery, data)
        resource = await operations.lookup(self.state, body.service_name, body.resource_id)
        return resource.model_dump(mode="json")

    async def _route(self, data: Any, request: _Request) -> Any:
        call = _validate(RouteCall, data)
        return operations.answer(await operations.route(self.state, call, request.adopt(call.trace_id)))


def _header(msg: Msg) -> str | None:
    headers = msg.headers
    return headers.get(TRACE_HEADER) if headers else None


def _validate(model: type[M], data: Any) -> M:
    if not isinstance(data, dict):
        raise InvalidRequestError(
            f"the body must be a msgpack map of {model.__name__} fields, got {type(data).__name__}", field="body"
        )
    try:
        return model.model_validate(data)
    except ValidationError as exc:
        raise validation_error(exc.errors()) from None
