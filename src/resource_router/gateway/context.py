"""The trace id of the request being served.

A replica takes the trace id from the ``X-Trace-Id`` header (or, for bodies that carry one, the
body's ``trace_id``, which wins), generates one when there is none, binds it into every log line of
the request, returns it in the ``X-Trace-Id`` response header and in every JSON body.
"""

from __future__ import annotations

import re
from typing import Any

import structlog
from starlette.requests import HTTPConnection

from resource_router.tracing import new_trace_id

__all__ = ["TRACE_HEADER", "current_trace_id", "pick_trace_id", "set_trace_id"]

TRACE_HEADER = "X-Trace-Id"
_TRACE_RE = re.compile(r"[A-Za-z0-9][A-Za-z0-9._:/+=-]{0,127}")


def pick_trace_id(candidate: str | None) -> str:
    """``candidate`` when it is a usable trace id (printable, no spaces, at most 128 chars), else a new one."""
    if candidate and _TRACE_RE.fullmatch(candidate):
        return candidate
    return new_trace_id()


def _state(scope: Any) -> dict[str, Any]:
    state: dict[str, Any] = scope.setdefault("state", {})
    return state


def current_trace_id(conn: HTTPConnection) -> str:
    """The request's trace id (set by the trace middleware; generated here if it did not run)."""
    state = _state(conn.scope)
    trace_id = state.get("trace_id")
    if not isinstance(trace_id, str):
        trace_id = new_trace_id()
        state["trace_id"] = trace_id
    return trace_id


def set_trace_id(conn: HTTPConnection, trace_id: str | None) -> str:
    """Adopt a body's ``trace_id`` (when given and usable) as the request's trace id; return the id in force."""
    if trace_id and _TRACE_RE.fullmatch(trace_id):
        _state(conn.scope)["trace_id"] = trace_id
        structlog.contextvars.bind_contextvars(trace_id=trace_id)
        return trace_id
    return current_trace_id(conn)
