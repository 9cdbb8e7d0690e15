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
from starlette.types import Scope

from resource_router.ids import new_trace_id

__all__ = [
    "TRACE_HEADER",
    "adopt_trace_id",
    "current_trace_id",
    "pick_trace_id",
    "scope_trace_id",
    "set_trace_id",
    "takes_over",
    "usable",
]

TRACE_HEADER = "X-Trace-Id"
_TRACE_RE = re.compile(r"[A-Za-z0-9][A-Za-z0-9._:/+=-]{0,127}")


def usable(candidate: str | None) -> bool:
    """A usable trace id: printable ASCII, no spaces, at most 128 characters."""
    return candidate is not None and _TRACE_RE.fullmatch(candidate) is not None


def pick_trace_id(candidate: str | None) -> str:
    """``candidate`` when it is a usable trace id, else a new one."""
    return candidate if candidate is not None and usable(candidate) else new_trace_id()


def takes_over(current: object, candidate: str | None) -> bool:
    """Whether a body's ``candidate`` trace id replaces ``current`` (given, different and usable); when
    it does, it is bound into the log context here."""
    if candidate and candidate != current and usable(candidate):
        structlog.contextvars.bind_contextvars(trace_id=candidate)
        return True
    return False


def scope_trace_id(scope: Scope) -> str | None:
    """The trace id the trace middleware set on an ASGI scope, if it ran."""
    trace_id = scope.get("state", {}).get("trace_id")
    return trace_id if isinstance(trace_id, str) else None


def current_trace_id(conn: HTTPConnection) -> str:
    """The request's trace id (set by the trace middleware; generated here if it did not run)."""
    return adopt_trace_id(conn.scope, None)


def set_trace_id(conn: HTTPConnection, trace_id: str | None) -> str:
    """Adopt a body's ``trace_id`` (when given and usable) as the request's trace id; return the id in force."""
    return adopt_trace_id(conn.scope, trace_id)


def adopt_trace_id(scope: Scope, trace_id: str | None) -> str:
    """``set_trace_id`` on an ASGI scope: the body's id when usable, else the one in force (or a new one)."""
    state: dict[str, Any] = scope.setdefault("state", {})
    current = state.get("trace_id")
    if takes_over(current, trace_id):
        state["trace_id"] = trace_id
        return str(trace_id)
    if not isinstance(current, str):
        current = state["trace_id"] = new_trace_id()
    return current
