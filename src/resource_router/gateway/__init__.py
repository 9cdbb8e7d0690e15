"""Floor 5, a face: stateless router replicas, the HTTP (and NATS) gateway behind ``resource-router
serve``, and its HTTP bodies (``ResourceRegistrationRequest``, ``ResourceReleaseRequest``,
``RouteResponse``, ``ErrorResponse``). May import every floor below it, not the CLI.

Needs the ``gateway`` extra (FastAPI, uvicorn, structlog): ``pip install 'resource-router[gateway]'``.
"""

from __future__ import annotations

try:
    import fastapi  # noqa: F401
    import fastapi_offline  # noqa: F401
    import structlog  # noqa: F401
    import uvicorn  # noqa: F401
except ModuleNotFoundError as exc:  # pragma: no cover - exercised in a subprocess test
    raise ImportError(
        f"the resource-router gateway needs the 'gateway' extra ({exc.name} is not installed): "
        "pip install 'resource-router[gateway]'"
    ) from exc

from resource_router.models import ErrorResponse, ResourceRegistrationRequest, ResourceReleaseRequest, RouteResponse

from .error_bodies import PayloadTooLargeError, RegistrationConflictError
from .replica import create_app
from .replica_settings import GatewaySettings
from .server import run

__all__ = [
    "ErrorResponse",
    "GatewaySettings",
    "PayloadTooLargeError",
    "RegistrationConflictError",
    "ResourceRegistrationRequest",
    "ResourceReleaseRequest",
    "RouteResponse",
    "create_app",
    "run",
]
