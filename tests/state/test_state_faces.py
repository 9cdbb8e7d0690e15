"""The read-only faces of state: ``GET /v1/resources/{service}/{id}/state`` on a replica and
``resource-router state SERVICE ID``. Neither can write it."""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator
from typing import Any

import pytest
from prometheus_client import CollectorRegistry
from typer.testing import CliRunner

from resource_router import ServiceInstance
from resource_router.cli import build_app
from resource_router.cli.exit_codes import EXIT_ERROR
from tests.support.gateway import SVC, Gateway, open_gateway


@pytest.fixture
async def gw(redis_url: str, namespace: str) -> AsyncIterator[Gateway]:
    async for g in open_gateway(redis_url, namespace, CollectorRegistry()):
        yield g


async def _write(redis_url: str, namespace: str, values: dict[str, Any]) -> dict[str, int]:
    async with ServiceInstance(redis_url, SVC, "owner-1", namespace=namespace, sweep_interval=0) as inst:
        await inst.register_resource(list(values))
        for rid, value in values.items():
            await inst.state(rid).save(value)
        return inst.fencing_tokens


async def test_a_replica_reads_state(gw: Gateway, redis_url: str, namespace: str) -> None:
    tokens = await _write(redis_url, namespace, {"user-1": {"n": 3, "raw": b"\x00\x01"}, "dir/x": [1, 2]})
    got = await gw.http.get(f"/v1/resources/{SVC}/user-1/state")
    assert got.status_code == 200, got.text
    assert got.json() == {
        "service_name": SVC,
        "resource_id": "user-1",
        "version": 1,
        "fencing_token": tokens["user-1"],
        "size": got.json()["size"],
        "value": {"n": 3, "raw": {"$bytes": "AAE="}},
    }
    slash = await gw.http.get(f"/v1/resources/{SVC}/dir/x/state")  # an id with a slash
    assert slash.status_code == 200 and slash.json()["value"] == [1, 2]
    missing = await gw.http.get(f"/v1/resources/{SVC}/user-2/state")
    assert missing.status_code == 404
    assert missing.json()["error"]["type"] == "ResourceNotFoundError"
    bad = await gw.http.get(f"/v1/resources/{SVC}/bad*id/state")
    assert bad.status_code == 400
    for method in ("put", "post", "delete"):
        refused = await getattr(gw.http, method)(f"/v1/resources/{SVC}/user-1/state")
        assert refused.status_code == 405  # read only
    owner = await gw.http.get(f"/v1/resources/{SVC}/user-1")  # the owner lookup is untouched
    assert owner.status_code == 404  # the instance left (it released user-1; the state stays)
    assert "/v1/resources/{service_name}/{resource_id}/state" in (await gw.http.get("/openapi.json")).json()["paths"]


def test_the_command_line_reads_state(redis_url: str, namespace: str, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("RESOURCE_ROUTER_REDIS_URL", raising=False)
    monkeypatch.setenv("COLUMNS", "200")
    tokens = asyncio.run(_write(redis_url, namespace, {"cart-1": {"items": ["apple"]}}))

    def invoke(*args: str) -> Any:
        return CliRunner().invoke(build_app(), ["state", SVC, *args, "--redis", redis_url, "-n", namespace])

    shown = invoke("cart-1")
    assert shown.exit_code == 0, shown.output
    assert shown.stdout.splitlines()[0].startswith(f"{SVC}/cart-1: version 1, fencing token {tokens['cart-1']}")
    assert json.loads(shown.stdout.split("\n", 1)[1]) == {"items": ["apple"]}
    as_json = invoke("cart-1", "--json")
    assert as_json.exit_code == 0
    assert json.loads(as_json.stdout)["value"] == {"items": ["apple"]}
    none = invoke("cart-2")
    assert none.exit_code == EXIT_ERROR
    assert "has no stored state" in none.stderr
