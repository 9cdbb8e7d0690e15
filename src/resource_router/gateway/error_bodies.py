"""Error bodies: every failure of the gateway answers with the same shape,

    {"error": {"type": ..., "code": ..., "message": ..., **details}, "trace_id": ...}

built from the library exception's ``to_dict()``; the HTTP status is the exception's ``code``.
Validation failures of bodies, paths and queries become ``InvalidRequestError`` (400), oversized
bodies ``PayloadTooLargeError`` (413), a process above its in-flight limit ``ReplicaOverloadedError``
(503 with ``Retry-After``), unknown paths and methods keep their HTTP status (405 lists every method
the path accepts), and anything unexpected is answered with a plain 500 that leaks nothing (and logged).
The NATS subjects answer with the same body, as msgpack.

Every JSON body of a replica is encoded once, by ``json_bytes``.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from typing import Any

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, Response
from pydantic_core import to_json
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.routing import BaseRoute, Match
from starlette.types import Scope, Send

from resource_router.errors import InvalidRequestError, ResourceConflictError, ResourceRouterError
from resource_router.models import ResourceRegistrationResponse

from .request_context import current_trace_id

__all__ = [
    "RETRY_AFTER_SECONDS",
    "HTTPError",
    "JSONBody",
    "PayloadTooLargeError",
    "RegistrationConflictError",
    "ReplicaOverloadedError",
    "error_body",
    "error_response",
    "install_error_handlers",
    "internal_error",
    "json_bytes",
    "send_json",
    "validation_error",
]

#: At most this many validation problems are listed in a 400 body.
MAX_LISTED_ERRORS = 20
#: What an overloaded replica tells callers to wait before trying again (``Retry-After``, seconds).
RETRY_AFTER_SECONDS = 1


def json_bytes(value: Any) -> bytes:
    """The replica's one JSON encoder (pydantic-core: compact UTF-8; NaN and infinities become null)."""
    return to_json(value, inf_nan_mode="null")


class JSONBody(JSONResponse):
    """``JSONResponse`` rendered by ``json_bytes`` (the app's default response class)."""

    def render(self, content: Any) -> bytes:
        return json_bytes(content)


async def send_json(send: Send, status: int, body: bytes) -> None:
    """Answer with a JSON body straight through ASGI (the fast path's response)."""
    await send(
        {
            "type": "http.response.start",
            "status": status,
            "headers": [
                (b"content-length", str(len(body)).encode("latin-1")),
                (b"content-type", b"application/json"),
            ],
        }
    )
    await send({"type": "http.response.body", "body": body})


class PayloadTooLargeError(InvalidRequestError):
    """The request body is larger than the replica accepts (``--max-body-bytes``)."""

    code = 413

    def __init__(self, message: str, *, limit: int) -> None:
        super().__init__(message, field="body")
        self.limit = limit

    def details(self) -> dict[str, Any]:
        return {**super().details(), "limit": self.limit}

    @classmethod
    def of(cls, size: int | None, limit: int) -> PayloadTooLargeError:
        """For a body of ``size`` bytes (None: a chunked body that passed the limit)."""
        shown = f"{size} bytes" if size is not None else f"more than {limit} bytes"
        return cls(
            f"request body is {shown}; this replica accepts at most {limit} bytes "
            "(resource-router serve --max-body-bytes)",
            limit=limit,
        )


class ReplicaOverloadedError(ResourceRouterError):
    """The process already serves its limit of requests at once (``--max-in-flight``): try again later,
    or another replica."""

    code = 503
    detail_fields = ("limit", "retry_after")

    def __init__(self, limit: int) -> None:
        super().__init__(
            f"this replica process is serving its limit of {limit} requests at once; "
            f"retry in {RETRY_AFTER_SECONDS}s or use another replica"
        )
        self.limit = limit
        self.retry_after = RETRY_AFTER_SECONDS


class HTTPError(ResourceRouterError):
    """A plain HTTP failure that is not about resources: unknown path (404), wrong method (405)."""

    def __init__(self, message: str, *, status: int) -> None:
        super().__init__(message)
        self.status = status

    def to_dict(self) -> dict[str, Any]:
        return {"type": self.type, "code": self.status, "message": self.message}


def error_body(exc: ResourceRouterError, trace_id: str | None) -> tuple[int, dict[str, Any]]:
    """The status and the body for ``exc``: ``exc.code`` (or the HTTP status of an ``HTTPError``)."""
    error = exc.to_dict()
    return int(error["code"]), {"error": error, "trace_id": trace_id}


def error_response(
    exc: ResourceRouterError, trace_id: str | None, headers: dict[str, str] | None = None
) -> JSONResponse:
    """The JSON response for ``exc`` (with ``Retry-After`` when the replica sheds load). The trace id
    goes in the body here; ``TraceMiddleware`` sends it in the ``X-Trace-Id`` header of every answer."""
    status, body = error_body(exc, trace_id)
    out_headers = dict(headers or {})
    if isinstance(exc, ReplicaOverloadedError):
        out_headers["Retry-After"] = str(exc.retry_after)
    return JSONBody(body, status_code=status, headers=out_headers)


def internal_error(exc: BaseException, trace_id: str | None) -> ResourceRouterError:
    """What callers learn of an unexpected failure: its type and where the details are, nothing more."""
    return ResourceRouterError(
        f"internal error ({type(exc).__name__}); the replica's log has the details under trace_id {trace_id}"
    )


def _loc(loc: tuple[Any, ...]) -> str:
    """``("body", "resource_ids", 0)`` -> ``resource_ids.0``; ``("body",)`` -> ``body``."""
    parts = [str(p) for p in loc]
    if len(parts) > 1 and parts[0] in ("body", "query", "path"):
        parts = parts[1:]
    return ".".join(parts) or "body"


def validation_error(errors: Sequence[Mapping[str, Any]]) -> InvalidRequestError:
    """Turn pydantic's (or FastAPI's) validation problems into ``InvalidRequestError`` with a readable message.

    The body lists each problem's location, message and type (never the offending input, which may
    be large or sensitive); ``field`` is the first problem's location (``body`` for the whole body).
    """
    problems = []
    for err in errors[:MAX_LISTED_ERRORS]:
        loc = err.get("loc", ())
        field = "body" if err.get("type") == "json_invalid" else _loc(tuple(loc))
        problems.append({"field": field, "message": str(err.get("msg", "")), "type": str(err.get("type", ""))})
    if not problems:
        problems.append({"field": "body", "message": "invalid request", "type": "invalid"})
    first = problems[0]
    count = len(errors)
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


def allowed_methods(routes: Iterable[BaseRoute], scope: Scope) -> list[str]:
    """Every method some route accepts for the scope's path (HEAD wherever GET), sorted."""
    methods: set[str] = set()
    for route in routes:
        match, _ = route.matches({**scope, "method": ""})  # no method matches: PARTIAL for every path match
        if match is not Match.NONE:
            methods.update(getattr(route, "methods", None) or ())
    if "GET" in methods:
        methods.add("HEAD")  # HeadMiddleware answers HEAD wherever GET is
    return sorted(methods)


def install_error_handlers(app: FastAPI, routes: Sequence[BaseRoute]) -> None:
    """Map every exception the app can raise to the one error body shape. ``routes`` are the app's
    endpoints (for the ``Allow`` header of a 405)."""

    async def on_library_error(request: Request, exc: Exception) -> JSONResponse:
        assert isinstance(exc, ResourceRouterError)
        return error_response(exc, current_trace_id(request))

    async def on_validation_error(request: Request, exc: Exception) -> JSONResponse:
        assert isinstance(exc, RequestValidationError)
        return error_response(validation_error(exc.errors()), current_trace_id(request))

    async def on_http_error(request: Request, exc: Exception) -> Response:
        assert isinstance(exc, StarletteHTTPException)
        headers = dict(exc.headers or {})
        if exc.status_code == 405:
            # Starlette names the methods of the first route whose path matches; a path can match
            # several (``/v1/resources/register``: POST register, GET the resources of a service).
            allowed = allowed_methods(routes, request.scope) or sorted(
                m.strip() for m in headers.get("Allow", "").split(",") if m.strip()
            )  # paths outside the API (the docs): Starlette's answer
            if request.method == "OPTIONS":
                return Response(status_code=204, headers={"Allow": ", ".join([*allowed, "OPTIONS"])})
            headers["Allow"] = ", ".join(allowed)
        if exc.status_code == 400:
            # FastAPI's "There was an error parsing the body" and friends: still a bad request.
            err: ResourceRouterError = InvalidRequestError(str(exc.detail), field="body")
        else:
            err = HTTPError(str(exc.detail), status=exc.status_code)
        return error_response(err, current_trace_id(request), headers=headers)

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
