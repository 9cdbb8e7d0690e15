"""The two hottest endpoints of a replica served as plain ASGI: ``POST /v1/route`` and the owner lookup
``GET /v1/resources/{service_name}/{resource_id}``.

Profiled under load, FastAPI's request machinery (dependency solving, parsing the body into Python
objects and then into the model, response-model validation, encoding) cost a replica several times
what the routed call itself costs. Here a body goes from JSON straight into ``RouteCall`` in one
pydantic call, the request runs through ``operations`` exactly as the FastAPI route runs it, and the
answer is encoded once.

What the fast path does not take as it is (another content type, a body that does not validate, an
app mounted under a root path) goes on to the FastAPI route with the body replayed: every answer to
bad input is the one FastAPI gives, and the OpenAPI schema stays FastAPI's.
"""

from __future__ import annotations

from collections.abc import Sequence

from pydantic import ValidationError
from starlette.routing import BaseRoute
from starlette.types import ASGIApp, Receive, Scope, Send

from resource_router.errors import ResourceRouterError
from resource_router.models import Resource

from . import operations
from .bodies import RouteCall
from .error_bodies import error_response, json_bytes, send_json
from .middleware import read_body, replay
from .request_context import adopt_trace_id
from .routes import OWNER_PATH, ROUTE_PATH
from .state import GatewayState

__all__ = ["FastPathMiddleware"]

_RESOURCE_JSON = Resource.__pydantic_serializer__.to_json
_CONTENT_TYPE = b"content-type"
_STATE_SUFFIX = "/state"  # routes.STATE_PATH: served by FastAPI


def _is_json(scope: Scope) -> bool:
    for key, value in scope["headers"]:
        if key == _CONTENT_TYPE:
            return bool(value.split(b";", 1)[0].strip().lower() == b"application/json")
    return False


class FastPathMiddleware:
    """Serve ``POST /v1/route`` and the owner lookup; hand everything else to ``app`` (the body limit,
    then FastAPI). The body of a route call is read here under the same limit (``read_body``).

    ``routes`` are the API's routes (``routes.router.routes``): the matched route is set in the scope
    as the router would, so metrics and logs label the request the same way.
    """

    def __init__(self, app: ASGIApp, state: GatewayState, routes: Sequence[BaseRoute]) -> None:
        self.app = app
        self.state = state
        self.max_body_bytes = state.settings.max_body_bytes
        by_path = {getattr(route, "path", None): route for route in routes}
        self.route_route = by_path[ROUTE_PATH]
        self.owner_route = by_path[OWNER_PATH]
        self.owner_match = self.owner_route.path_regex.match  # type: ignore[attr-defined]

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http" and not scope.get("root_path"):
            method = scope["method"]
            if method == "POST":
                if scope["path"] == ROUTE_PATH and _is_json(scope):
                    await self._route(scope, receive, send)
                    return
            elif method == "GET":
                found = self.owner_match(scope["path"])
                if found is not None and not scope["path"].endswith(_STATE_SUFFIX):
                    await self._lookup(scope, receive, send, found["service_name"], found["resource_id"])
                    return
        await self.app(scope, receive, send)

    async def _route(self, scope: Scope, receive: Receive, send: Send) -> None:
        body = await read_body(scope, receive, send, self.max_body_bytes)
        if body is None:
            return  # answered 413, or the client went away
        try:
            call = RouteCall.model_validate_json(body)
        except ValidationError:
            await self.app(scope, replay(body, receive), send)  # FastAPI words the 400
            return
        scope["route"] = self.route_route
        trace_id = adopt_trace_id(scope, call.trace_id)
        try:
            response = await operations.route(self.state, call, trace_id)
        except ResourceRouterError as exc:
            await error_response(exc, trace_id)(scope, receive, send)
            return
        await send_json(send, 200, json_bytes(operations.answer(response)))

    async def _lookup(self, scope: Scope, receive: Receive, send: Send, service_name: str, resource_id: str) -> None:
        scope["route"] = self.owner_route
        trace_id = adopt_trace_id(scope, None)
        try:
            resource = await operations.lookup(self.state, service_name, resource_id)
        except ResourceRouterError as exc:
            await error_response(exc, trace_id)(scope, receive, send)
            return
        await send_json(send, 200, _RESOURCE_JSON(resource))
