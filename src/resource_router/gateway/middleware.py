"""Pure ASGI middleware: trace ids, access logs and HTTP metrics, load shedding, HEAD as GET without a
body, the body-size limit, and the last line of defence that turns an unexpected exception into the 500 error body.

Pure ASGI (not ``BaseHTTPMiddleware``): the endpoint runs in the request's own task, so context
variables (the structlog binding of ``trace_id``) reach every log line the request produces.
"""

from __future__ import annotations

import time
from typing import Any

import structlog
from prometheus_client import CollectorRegistry
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from resource_router.observability import otel
from resource_router.observability.logs import get_logger

from .error_bodies import PayloadTooLargeError, ReplicaOverloadedError, error_response, internal_error
from .replica_metrics import GatewayMetrics, get_gateway_metrics
from .request_context import TRACE_HEADER, pick_trace_id, scope_trace_id
from .state import InFlight

logger = get_logger(__name__)

__all__ = [
    "BodyLimitMiddleware",
    "HeadMiddleware",
    "InternalErrorMiddleware",
    "LoadShedMiddleware",
    "TraceMiddleware",
    "answer_internal_error",
    "read_body",
    "replay",
]

_TRACE_HEADER_BYTES = TRACE_HEADER.lower().encode("latin-1")
_TRACEPARENT_BYTES = b"traceparent"
#: Probes and scrapes: no log line each, and answered even when the replica sheds load.
_QUIET_PATHS = frozenset({"/healthz", "/readyz", "/metrics"})


def _header(scope: Scope, name: bytes) -> str | None:
    for key, value in scope.get("headers", ()):
        if key == name:  # ASGI header names are lower-case
            return str(value.decode("latin-1"))
    return None


def _route_label(scope: Scope) -> str:
    route = scope.get("route")
    path = getattr(route, "path", None)
    return path if isinstance(path, str) else "unmatched"


class TraceMiddleware:
    """Give every request a trace id (sent back in ``X-Trace-Id``), log one ``http.request`` line when
    ``access_log`` (the replica's log level includes info), count it, and answer 500 with the error
    body (instead of a bare text page) when something unexpected escapes the app."""

    def __init__(
        self, app: ASGIApp, metrics_registry: CollectorRegistry | None = None, *, access_log: bool = True
    ) -> None:
        self.app = app
        self.metrics: GatewayMetrics = get_gateway_metrics(metrics_registry)
        self.access_log = access_log
        self._children: dict[tuple[str, str, int], tuple[Any, Any]] = {}

    def _observe(self, method: str, route: str, status: int, elapsed: float) -> None:
        key = (method, route, status)
        children = self._children.get(key)
        if children is None:
            children = (
                self.metrics.requests.labels(method, route, str(status)),
                self.metrics.duration.labels(route),
            )
            if len(self._children) < 1024:
                self._children[key] = children
        children[0].inc()
        children[1].observe(elapsed)

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        state: dict[str, Any] = scope.setdefault("state", {})
        state["trace_id"] = pick_trace_id(_header(scope, _TRACE_HEADER_BYTES))
        started = False
        status = 500
        start = time.perf_counter()

        caller_tp = _header(scope, _TRACEPARENT_BYTES) if otel.enabled() else None
        span_scope = otel.server_span(scope["method"], scope["path"], caller_tp)
        traceparent: list[bytes] = []

        async def send_wrapper(message: Message) -> None:
            nonlocal started, status
            if message["type"] == "http.response.start":
                started = True
                status = message["status"]
                headers = [*message.get("headers", ()), (_TRACE_HEADER_BYTES, state["trace_id"].encode("latin-1"))]
                if traceparent:  # W3C trace context of the replica's span: the caller's trace goes on
                    headers.append((_TRACEPARENT_BYTES, traceparent[0]))
                message = {**message, "headers": headers}
            await send(message)

        tokens = structlog.contextvars.bind_contextvars(trace_id=state["trace_id"])
        try:
            with span_scope as span:
                value = otel.span_traceparent(span)
                if value is not None:
                    traceparent.append(value.encode("latin-1"))
                await self.app(scope, receive, send_wrapper)
        except Exception as exc:
            if started:
                raise  # the response is half sent: let the server close the connection
            await answer_internal_error(exc, scope, receive, send_wrapper)
        finally:
            elapsed = time.perf_counter() - start
            route = _route_label(scope)
            self._observe(scope["method"], route, status, elapsed)
            if self.access_log and scope["path"] not in _QUIET_PATHS:
                logger.info(
                    "http.request",
                    method=scope["method"],
                    path=scope["path"],
                    status=status,
                    operation="http",
                    duration_ms=round(elapsed * 1000.0, 3),
                )
            structlog.contextvars.reset_contextvars(**tokens)


async def answer_internal_error(exc: Exception, scope: Scope, receive: Receive, send: Send) -> None:
    """Log an unexpected exception with its traceback and answer the 500 error body that leaks nothing."""
    logger.exception("http.internal_error", path=scope.get("path"), error_type=type(exc).__name__)
    trace_id = scope_trace_id(scope)
    await error_response(internal_error(exc, trace_id), trace_id)(scope, receive, send)


class InternalErrorMiddleware:
    """Inside FastAPI: answer an unexpected exception of an endpoint with the JSON 500 (Starlette's
    outermost middleware would send a plain-text page first)."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        started = False

        async def send_wrapper(message: Message) -> None:
            nonlocal started
            started = started or message["type"] == "http.response.start"
            await send(message)

        try:
            await self.app(scope, receive, send_wrapper)
        except Exception as exc:
            if started:
                raise
            await answer_internal_error(exc, scope, receive, send)


class LoadShedMiddleware:
    """At most ``in_flight.limit`` requests at once in this process; above it, 503 with ``Retry-After``
    at once (nothing read, nothing started), so that an overloaded replica stays responsive and
    callers or the load balancer move on. Probes and ``/metrics`` are always served."""

    def __init__(self, app: ASGIApp, in_flight: InFlight, metrics_registry: CollectorRegistry | None = None) -> None:
        self.app = app
        self.in_flight = in_flight
        self.shed = get_gateway_metrics(metrics_registry).shed.labels("http")

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or scope["path"] in _QUIET_PATHS:
            await self.app(scope, receive, send)
            return
        if not self.in_flight.try_enter():
            self.shed.inc()
            err = ReplicaOverloadedError(self.in_flight.limit)
            await error_response(err, scope_trace_id(scope))(scope, receive, send)
            return
        try:
            await self.app(scope, receive, send)
        finally:
            self.in_flight.leave()


class HeadMiddleware:
    """Answer ``HEAD`` as the same ``GET`` without its body (RFC 9110 9.3.2): FastAPI's GET routes do
    not take HEAD by themselves. Status and headers (``Content-Length`` included) are the GET's; the
    layers outside this one (metrics, logs) still see ``HEAD``."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or scope["method"] != "HEAD":
            await self.app(scope, receive, send)
            return

        async def send_no_body(message: Message) -> None:
            if message["type"] == "http.response.body":
                if message.get("more_body", False):
                    return
                message = {"type": "http.response.body", "body": b"", "more_body": False}
            await send(message)

        await self.app({**scope, "method": "GET"}, receive, send_no_body)


class BodyLimitMiddleware:
    """Refuse request bodies larger than ``max_bytes`` with 413 and the error body (``read_body``);
    a body that fits is replayed to the app in one message."""

    def __init__(self, app: ASGIApp, max_bytes: int) -> None:
        self.app = app
        self.max_bytes = max_bytes

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or scope["method"] in ("GET", "HEAD", "OPTIONS"):
            await self.app(scope, receive, send)
            return
        body = await read_body(scope, receive, send, self.max_bytes)
        if body is not None:
            await self.app(scope, replay(body, receive), send)


async def read_body(scope: Scope, receive: Receive, send: Send, max_bytes: int) -> bytes | None:
    """The whole request body, or None when it was not read: larger than ``max_bytes`` (answered 413
    here: a ``Content-Length`` above the limit before anything is read, a chunked body once the limit
    is passed, never reading further) or the client went away before sending all of it."""
    declared = _header(scope, b"content-length")
    if declared is not None:
        try:
            length = int(declared)
        except ValueError:
            length = -1
        if length > max_bytes:
            await _too_large(scope, receive, send, max_bytes, length)
            return None
    chunks: list[bytes] = []
    total = 0
    while True:
        message = await receive()
        if message["type"] != "http.request":
            return None  # the client went away before sending its whole body: nobody to answer
        chunk = message.get("body", b"")
        total += len(chunk)
        if total > max_bytes:
            await _too_large(scope, receive, send, max_bytes, None)
            return None
        chunks.append(chunk)
        if not message.get("more_body", False):
            return chunks[0] if len(chunks) == 1 else b"".join(chunks)


async def _too_large(scope: Scope, receive: Receive, send: Send, max_bytes: int, size: int | None) -> None:
    err = PayloadTooLargeError.of(size, max_bytes)
    response = error_response(err, scope_trace_id(scope), headers={"Connection": "close"})
    await response(scope, receive, send)


def replay(body: bytes, receive: Receive) -> Receive:
    """A ``receive`` that gives ``body`` (read already) as one message, then what the server sends."""
    replayed = False

    async def receive_again() -> Message:
        nonlocal replayed
        if not replayed:
            replayed = True
            return {"type": "http.request", "body": body, "more_body": False}
        return await receive()

    return receive_again
