"""Fixtures of the gateway tests: a replica in-process (``gw``) and an instance it routes to (``instance``).

A module that needs a replica with other settings defines a ``gw`` of its own over ``open_gateway``.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from typing import Any

import pytest
from prometheus_client import CollectorRegistry

from resource_router import RouteRequest
from resource_router.routing.instance import ServiceInstance
from tests.support.gateway import SVC, Gateway, open_gateway


@pytest.fixture
async def gw(redis_url: str, namespace: str, metrics_registry: CollectorRegistry) -> AsyncIterator[Gateway]:
    """A replica with the default settings, on the real Redis."""
    async for g in open_gateway(redis_url, namespace, metrics_registry):
        yield g


@pytest.fixture
async def instance(
    redis_url: str, namespace: str, metrics_registry: CollectorRegistry
) -> AsyncIterator[ServiceInstance]:
    """An instance of ``SVC`` owning ``user-1``, with the methods echo, sleep and fail."""
    inst = ServiceInstance(
        redis_url, SVC, "echo-1", ttl=5, namespace=namespace, metrics_registry=metrics_registry, sweep_interval=0
    )

    @inst.handler("echo")
    async def echo(request: RouteRequest) -> dict[str, Any]:
        return {"params": request.params, "resource_id": request.resource_id, "token": request.fencing_token}

    @inst.handler("sleep")
    async def sleep(request: RouteRequest) -> str:
        await asyncio.sleep(float(request.params["seconds"]))
        return "slept"

    @inst.handler("fail")
    async def fail(request: RouteRequest) -> None:
        raise ValueError("no good")

    async with inst:
        await inst.register_resource(["user-1"])
        yield inst
