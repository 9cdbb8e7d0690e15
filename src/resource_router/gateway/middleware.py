"""Pure ASGI middleware: trace ids, access logs and HTTP metrics, the body-size limit, and the last
line of defence that turns an unexpected exception into the 500 error body.

Pure ASGI (not ``BaseHTTPMiddleware``): the endpoint runs in the request's own task, so context
variables (the structlog binding of ``trace_id``) reach every log line the request produces.
"""

from __future__ import annotations

import time
from typing import Any

import structlog
from prometheus_client import CollectorRegistry
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from resource_router.errors import ResourceRouterError
from resource_router.tracing import get_logger

from .context import TRACE_HEADER, pick_trace_id
from .errors import PayloadTooLargeError, error_response
from .metrics import GatewayMetrics, get_gateway_metrics

logger = get_logger(__name__)

__all__ = ["BodyLimitMiddleware", "TraceMiddleware"]

_TRACE_HEADER_BYTES = TRACE_HEADER.lower().encode("latin-1")


def _header(scope: Scope, name: bytes) -> str | None:
    for key, value in scope.get("headers", ()):
        if key.lower() == name:
            try:
                return str(value.decode("latin-1"))
            except UnicodeDecodeError:  # pragma: no cover - latin-1 decodes every byte
                return None
    return None


def _route_label(scope: Scope) -> str:
    route = scope.get("route")
    path = getattr(route, "path", None)
    return path if isinstance(path, str) else "unmatched"


class TraceMiddleware:
    """Give every request a trace id, log one ``http.request`` line, count it, and answer 500 with
    the error body (instead of a bare text page) when something unexpected escapes the app."""

    def __init__(self, app: ASGIApp, metrics_registry: CollectorRegistry | None = None) -> None:
        self.app = app
        self.metrics: GatewayMetrics = get_gateway_metrics(metrics_registry)

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        state: dict[str, Any] = scope.setdefault("state", {})
        state["trace_id"] = pick_trace_id(_header(scope, _TRACE_HEADER_BYTES))
        started = False
        status = 500
        start = time.perf_counter()

        async def send_wrapper(message: Message) -> None:
            nonlocal started, status
            if message["type"] == "http.response.start":
                started = True
                status = int(message["status"])
                headers = [(k, v) for k, v in message.get("headers", ()) if k.lower() != _TRACE_HEADER_BYTES]
                headers.append((_TRACE_HEADER_BYTES, str(state["trace_id"]).encode("latin-1")))
                message = {**message, "headers": headers}
            await send(message)

        with structlog.contextvars.bound_contextvars(trace_id=state["trace_id"]):
            try:
                await self.app(scope, receive, send_wrapper)
            except Exception as exc:
                logger.exception("http.internal_error", path=scope.get("path"), error_type=type(exc).__name__)
                if started:
                    raise  # the response is half sent: let the server close the connection
                err = ResourceRouterError(
                    f"internal error ({type(exc).__name__}); the replica's log has the details "
                    f"under trace_id {state['trace_id']}"
                )
                await error_response(err, str(state["trace_id"]))(scope, receive, send_wrapper)
            finally:
                elapsed = time.perf_counter() - start
                route = _route_label(scope)
                self.metrics.requests.labels(scope.get("method", ""), route, str(status)).inc()
                self.metrics.duration.labels(route).observe(elapsed)
                if route not in _QUIET_ROUTES:
                    logger.info(
                        "http.request",
                        method=scope.get("method"),
                        path=scope.get("path"),
                        status=status,
                        operation="http",
                        duration_ms=round(elapsed * 1000.0, 3),
                    )


#: Probes and scrapes are not worth a log line each.
_QUIET_ROUTES = frozenset({"/healthz", "/readyz", "/metrics"})


class BodyLimitMiddleware:
    """Refuse request bodies larger than ``max_bytes`` with 413 and the error body.

    A ``Content-Length`` above the limit is refused before anything is read; a chunked body is read
    up to the limit (never further) and replayed to the app when it fits.
    """

    def __init__(self, app: ASGIApp, max_bytes: int) -> None:
        self.app = app
        self.max_bytes = max_bytes

    def _too_large(self, scope: Scope, size: int | None) -> Any:
        shown = f"{size} bytes" if size is not None else f"more than {self.max_bytes} bytes"
        err = PayloadTooLargeError(
            f"request body is {shown}; this replica accepts at most {self.max_bytes} bytes "
            "(resource-router serve --max-body-bytes)",
            limit=self.max_bytes,
        )
        trace_id = scope.get("state", {}).get("trace_id")
        return error_response(err, trace_id if isinstance(trace_id, str) else None, headers={"Connection": "close"})

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or scope.get("method") in ("GET", "HEAD", "OPTIONS"):
            await self.app(scope, receive, send)
            return
        declared = _header(scope, b"content-length")
        if declared is not None:
            try:
                length = int(declared)
            except ValueError:
                length = -1
            if length > self.max_bytes:
                await self._too_large(scope, length)(scope, receive, send)
                return
        chunks: list[bytes] = []
        total = 0
        while True:
            message = await receive()
            if message["type"] != "http.request":
                return  # the client went away before sending its whole body: nobody to answer
            body = message.get("body", b"")
            total += len(body)
            if total > self.max_bytes:
                await self._too_large(scope, None)(scope, receive, send)
                return
            chunks.append(body)
            if not message.get("more_body", False):
                break
        replayed = False

        async def replay() -> Message:
            nonlocal replayed
            if not replayed:
                replayed = True
                return {"type": "http.request", "body": b"".join(chunks), "more_body": False}
            return await receive()

        await self.app(scope, replay, send)
