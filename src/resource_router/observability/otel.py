"""OpenTelemetry: spans and W3C trace context, when ``opentelemetry-api`` is installed (extra ``otel``).

Without it nothing is imported and every helper here returns at once (a ``None`` check). With it the
library uses the global tracer provider and propagator the application configured (the SDK and its
exporters are the application's); until the application sets a tracer provider, the helpers return
at once too, so an installed but unused API costs nothing on the hot paths:

* ``call`` (kind PRODUCER), around ``ServiceClient.call``; its W3C ``traceparent`` travels in the
  request envelope (optional field ``tp``, see ``docs/protocol.md``);
* ``handle`` (kind CONSUMER), around the handler on the instance, a child of the caller's ``call``;
* ``resource_router.<operation>`` (kind INTERNAL) around registry operations.

Attributes follow the messaging semantic conventions (``messaging.system``,
``messaging.destination.name``, ``messaging.operation.type``, ``messaging.message.id``), plus
``service_name``, ``resource_id``, ``instance_id`` and ``fencing_token``. Router replicas continue a
``traceparent`` HTTP header and answer with theirs (``gateway``).
"""

from __future__ import annotations

import contextlib
import time
from collections.abc import Iterator, Mapping
from typing import Any

__all__ = [
    "call_span",
    "current_trace_id",
    "enabled",
    "handle_span",
    "operation_span",
    "server_span",
    "span_traceparent",
    "traceparent_context",
]

_trace: Any = None
_propagate: Any = None

try:  # the otel extra; without it, nothing is imported and no span is made
    from opentelemetry import propagate as _propagate
    from opentelemetry import trace as _trace
except ImportError:
    _trace = _propagate = None

_NULL = contextlib.nullcontext(None)
_TRACER_NAME = "resource_router"


_state = {"on": False, "next_check": 0.0}


def enabled() -> bool:
    """True when ``opentelemetry-api`` is installed and the application set a tracer provider. A
    provider is set once for good; until then this looks again at most once a second (looking costs
    about 2 us, too much for every call)."""
    if _trace is None:
        return False
    if _state["on"]:
        return True
    now = time.monotonic()
    if now < _state["next_check"]:
        return False
    _state["next_check"] = now + 1.0
    provider = _trace.get_tracer_provider()
    _state["on"] = not isinstance(provider, _trace.ProxyTracerProvider | _trace.NoOpTracerProvider)
    return bool(_state["on"])


_tracer_cache: list[Any] = []


def _tracer() -> Any:
    """The library's tracer (made once: a proxy that follows the provider the application sets)."""
    if not _tracer_cache:
        from resource_router._version import __version__

        _tracer_cache.append(_trace.get_tracer(_TRACER_NAME, __version__))
    return _tracer_cache[0]


def _attributes(values: Mapping[str, Any]) -> dict[str, Any]:
    return {k: v for k, v in values.items() if v is not None}


@contextlib.contextmanager
def _span(name: str, kind: Any, attributes: dict[str, Any], context: Any = None) -> Iterator[Any]:
    with _tracer().start_as_current_span(
        name, context=context, kind=kind, attributes=attributes, record_exception=True, set_status_on_exception=True
    ) as span:
        yield span


def call_span(service_name: str, method: str, resource_id: str | None) -> contextlib.AbstractContextManager[Any]:
    """The caller's PRODUCER span of one routed call (a no-op context without the extra)."""
    if not enabled():
        return _NULL
    return _span(
        "call",
        _trace.SpanKind.PRODUCER,
        _attributes(
            {
                "messaging.system": "redis",
                "messaging.operation.type": "send",
                "messaging.operation.name": method,
                "service_name": service_name,
                "resource_id": resource_id,
            }
        ),
    )


def span_traceparent(span: Any) -> str | None:
    """The W3C ``traceparent`` of ``span`` (None without the extra, or for an invalid span)."""
    if span is None or _trace is None:
        return None
    ctx = span.get_span_context()
    if not ctx.is_valid:
        return None
    return f"00-{ctx.trace_id:032x}-{ctx.span_id:016x}-{int(ctx.trace_flags):02x}"


def traceparent_context(traceparent: str | None) -> Any:
    """The OpenTelemetry context a ``traceparent`` names (None: no extra, no header, or invalid)."""
    if _propagate is None or not traceparent:
        return None
    return _propagate.extract({"traceparent": traceparent})


def handle_span(
    traceparent: str | None,
    *,
    service_name: str,
    method: str,
    resource_id: str | None,
    instance_id: str,
    channel: str,
    request_id: str,
) -> contextlib.AbstractContextManager[Any]:
    """The instance's CONSUMER span around one handler, a child of the caller's ``call`` span."""
    if not enabled():
        return _NULL
    return _span(
        "handle",
        _trace.SpanKind.CONSUMER,
        _attributes(
            {
                "messaging.system": "redis",
                "messaging.operation.type": "process",
                "messaging.operation.name": method,
                "messaging.destination.name": channel,
                "messaging.message.id": request_id,
                "service_name": service_name,
                "resource_id": resource_id,
                "instance_id": instance_id,
            }
        ),
        context=traceparent_context(traceparent),
    )


def server_span(method: str, path: str, traceparent: str | None) -> contextlib.AbstractContextManager[Any]:
    """A router replica's SERVER span around one HTTP request, continuing the caller's ``traceparent``
    header when there is one (the routed call's ``call`` span is its child)."""
    if not enabled():
        return _NULL
    return _span(
        f"{method} {path}",
        _trace.SpanKind.SERVER,
        {"http.request.method": method, "url.path": path},
        context=traceparent_context(traceparent),
    )


def operation_span(operation: str, **attributes: Any) -> contextlib.AbstractContextManager[Any]:
    """An INTERNAL span around one registry operation."""
    if not enabled():
        return _NULL
    return _span(f"resource_router.{operation}", _trace.SpanKind.INTERNAL, _attributes(attributes))


def current_trace_id() -> str | None:
    """The trace id (32 hex digits) of the span active now, if any (for logs and the call's trace id)."""
    if not enabled():
        return None
    ctx = _trace.get_current_span().get_span_context()
    return f"{ctx.trace_id:032x}" if ctx.is_valid else None
