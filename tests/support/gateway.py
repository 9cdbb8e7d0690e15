"""A router replica in-process: the gateway app with its lifespan entered, reached with httpx over ASGI."""

from __future__ import annotations

from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import Any

import httpx
from fastapi import FastAPI
from prometheus_client import CollectorRegistry

from resource_router import ResourceRegistry, RouterSettings
from resource_router.gateway import GatewaySettings, create_app

#: The service the gateway tests route to.
SVC = "svc"


@dataclass
class Gateway:
    app: FastAPI
    http: httpx.AsyncClient
    registry: ResourceRegistry
    settings: GatewaySettings


async def open_gateway(
    redis_url: str, namespace: str, metrics_registry: CollectorRegistry, **overrides: Any
) -> AsyncIterator[Gateway]:
    router_fields = {k: overrides.pop(k) for k in list(overrides) if k in RouterSettings.model_fields}
    settings = GatewaySettings(
        router=RouterSettings(redis_url=redis_url, namespace=namespace, **router_fields),
        max_body_bytes=overrides.pop("max_body_bytes", 4096),
        sweep_interval=overrides.pop("sweep_interval", 0),
        **overrides,
    )
    app = create_app(settings, metrics_registry=metrics_registry)
    async with app.router.lifespan_context(app):
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(transport=transport, base_url="http://gateway") as http:
            yield Gateway(app, http, app.state.gateway.registry, settings)


def assert_error(response: httpx.Response, status: int, error: dict[str, Any], trace_id: str | None) -> None:
    """Exact error body, status, and the trace id in both the body and the header."""
    assert response.status_code == status, response.text
    body = response.json()
    assert body == {"error": error, "trace_id": body["trace_id"] if trace_id is None else trace_id}
    assert response.headers["x-trace-id"] == body["trace_id"]
    assert response.headers["content-type"] == "application/json"
