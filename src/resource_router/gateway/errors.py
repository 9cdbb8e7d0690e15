"""Error bodies: every failure of the gateway answers with the same shape,

    {"error": {"type": ..., "code": ..., "message": ..., **details}, "trace_id": ...}

built from the library exception's ``to_dict()``; the HTTP status is the exception's ``code``.
Validation failures of bodies, paths and queries become ``InvalidRequestError`` (400), oversized
bodies ``PayloadTooLargeError`` (413), unknown paths and methods keep their HTTP status, and anything
unexpected is answered by ``TraceMiddleware`` with a plain 500 that leaks nothing (and logged).
"""

from __future__ import annotations

from typing import Any

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from starlette.exceptions import HTTPException as StarletteHTTPException

from resource_router.errors import InvalidRequestError, ResourceConflictError, ResourceRouterError
from resource_router.models import ResourceRegistrationResponse

from .context import TRACE_HEADER, current_trace_id

__all__ = [
    "HTTPError",
    "PayloadTooLargeError",
    "RegistrationConflictError",
    "error_response",
    "install_error_handlers",
    "validation_error",
]

#: At most this many validation problems are listed in a 400 body.
MAX_LISTED_ERRORS = 20


class PayloadTooLargeError(InvalidRequestError):
    """The request body is larger than the replica accepts (``--max-body-bytes``)."""

    code = 413

    def __init__(self, message: str, *, limit: int) -> None:
        super().__init__(message, field="body")
        self.limit = limit

    def details(self) -> dict[str, Any]:
        return {**super().details(), "limit": self.limit}


class HTTPError(ResourceRouterError):
    """A plain HTTP failure that is not about resources: unknown path (404), wrong method (405)."""

    def __init__(self, message: str, *, status: int) -> None:
        super().__init__(message)
        self.status = status

    def to_dict(self) -> dict[str, Any]:
        return {"type": self.type, "code": self.status, "message": self.message}


def error_response(
    exc: ResourceRouterError, trace_id: str | None, headers: dict[str, str] | None = None
) -> JSONResponse:
    """The JSON response for ``exc``: status ``exc.code`` (or the HTTP status of an ``HTTPError``)."""
    error = exc.to_dict()
    status = int(error["code"])
    body = {"error": error, "trace_id": trace_id}
    out_headers = dict(headers or {})
    if trace_id:
        out_headers[TRACE_HEADER] = trace_id
    return JSONResponse(body, status_code=status, headers=out_headers)


def _loc(loc: tuple[Any, ...]) -> str:
    """``("body", "resource_ids", 0)`` -> ``resource_ids.0``; ``("body",)`` -> ``body``."""
    parts = [str(p) for p in loc]
    if len(parts) > 1 and parts[0] in ("body", "query", "path"):
        parts = parts[1:]
    return ".".join(parts) or "body"


def validation_error(exc: RequestValidationError) -> InvalidRequestError:
    """Turn FastAPI's validation failure into ``InvalidRequestError`` with a readable message.

    The body lists each problem's location, message and type (never the offending input, which may
    be large or sensitive); ``field`` is the first problem's location (``body`` for the whole body).
    """
    problems = []
    for err in exc.errors()[:MAX_LISTED_ERRORS]:
        loc = err.get("loc", ())
        field = "body" if err.get("type") == "json_invalid" else _loc(tuple(loc))
        problems.append({"field": field, "message": str(err.get("msg", "")), "type": str(err.get("type", ""))})
    if not problems:
        problems.append({"field": "body", "message": "invalid request", "type": "invalid"})
    first = problems[0]
    count = len(exc.errors())
    summary = "; ".join(f"{p['field']}: {p['message']}" for p in problems[:3])
    more = "" if count <= 3 else f" (and {count - 3} more)"
    return _ValidationFailed(f"invalid request: {summary}{more}", field=first["field"], errors=problems)


class _ValidationFailed(InvalidRequestError):
    """``InvalidRequestError`` that also lists every problem (type stays ``InvalidRequestError``)."""

    def __init__(self, message: str, *, field: str | None, errors: list[dict[str, str]]) -> None:
        super().__init__(message, field=field)
        self.errors = errors

    def details(self) -> dict[str, Any]:
        return {**super().details(), "errors": self.errors}

    @property
    def type(self) -> str:
        return "InvalidRequestError"


def install_error_handlers(app: FastAPI) -> None:
    """Map every exception the app can raise to the one error body shape."""

    async def on_library_error(request: Request, exc: Exception) -> JSONResponse:
        assert isinstance(exc, ResourceRouterError)
        return error_response(exc, current_trace_id(request))

    async def on_validation_error(request: Request, exc: Exception) -> JSONResponse:
        assert isinstance(exc, RequestValidationError)
        return error_response(validation_error(exc), current_trace_id(request))

    async def on_http_error(request: Request, exc: Exception) -> JSONResponse:
        assert isinstance(exc, StarletteHTTPException)
        if exc.status_code == 400:
            # FastAPI's "There was an error parsing the body" and friends: still a bad request.
            err: ResourceRouterError = InvalidRequestError(str(exc.detail), field="body")
        else:
            err = HTTPError(str(exc.detail), status=exc.status_code)
        return error_response(err, current_trace_id(request), headers=dict(exc.headers or {}))

    app.add_exception_handler(ResourceRouterError, on_library_error)
    app.add_exception_handler(RequestValidationError, on_validation_error)
    app.add_exception_handler(StarletteHTTPException, on_http_error)


class RegistrationConflictError(ResourceConflictError):
    """409 for a registration with conflicts. The library registers the free ids in the same atomic
    step and leaves the conflicting ones untouched, so the body says what *was* registered too."""

    def __init__(self, response: ResourceRegistrationResponse) -> None:
        conflicts = dict(response.conflicts)
        shown = ", ".join(f"{r} (owned by {o})" for r, o in list(conflicts.items())[:10])
        more = "" if len(conflicts) <= 10 else f" and {len(conflicts) - 10} more"
        if response.registered:
            done = (
                f"the other {len(response.registered)} id(s) were registered (listed in 'registered'); "
                "release them if the call must be all-or-nothing"
            )
        else:
            done = "nothing was registered"
        super().__init__(f"{len(conflicts)} resource(s) already owned: {shown}{more}; {done}", conflicts=conflicts)
        self.registered = list(response.registered)
        self.fencing_tokens = dict(response.fencing_tokens)

    def details(self) -> dict[str, Any]:
        return {**super().details(), "registered": self.registered, "fencing_tokens": self.fencing_tokens}

    @property
    def type(self) -> str:
        return "ResourceConflictError"
