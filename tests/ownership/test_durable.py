"""Durable grants: with ``min_replicas``, every write of ownership waits for that many replicas
(``WAIT``) and is reported done only then (a real master and replica)."""

from __future__ import annotations

import time
from collections.abc import Iterator

import pytest

from resource_router import (
    InvalidRequestError,
    RedisUnavailableError,
    ResourceRegistry,
    RouterSettings,
    ServiceInstance,
)
from resource_router.errors import DurabilityError
from tests.support.replicas import ReplicaSet

pytestmark = pytest.mark.real_redis

SVC = "durable"


@pytest.fixture(scope="module")
def replicated() -> Iterator[ReplicaSet]:
    replicas = ReplicaSet(replicas=1).start()
    try:
        replicas.wait()
        yield replicas
    finally:
        replicas.stop()


def test_the_embedded_store_has_no_replicas_to_wait_for() -> None:
    with pytest.raises(InvalidRequestError) as caught:
        ResourceRegistry("memory://", settings=RouterSettings(min_replicas=1))
    assert caught.value.field == "min_replicas"


async def test_writes_are_reported_once_a_replica_has_them(replicated: ReplicaSet, namespace: str) -> None:
    settings = RouterSettings(min_replicas=1, replica_timeout=2.0)
    async with (
        ResourceRegistry(replicated.master.url, namespace=namespace, settings=settings) as registry,
        ResourceRegistry(replicated.replicas[0].url, namespace=namespace) as replica,
    ):
        await registry.register_instance(SVC, "a", ttl=30)
        granted = await registry.register_resource(SVC, "a", [f"r{i}" for i in range(50)])
        assert granted.success and len(granted.registered) == 50
        # Acknowledged means on the replica: read there at once, no waiting.
        owners = await replica.get_owner_ids(SVC, granted.registered)
        assert set(owners.values()) == {"a"}
        assert (await registry.heartbeat(SVC, "a", ttl=30)).owned_count == 50
        released = await registry.release_resource(SVC, "a", ["r0"])
        assert released.released == ["r0"]
        assert (await replica.get_owner_ids(SVC, ["r0"]))["r0"] is None


async def test_too_few_replicas_is_a_503_and_nothing_is_reported_granted(
    replicated: ReplicaSet, namespace: str
) -> None:
    """Two replicas required, one exists: the grant is applied on the master but not reported; an
    instance does not serve it."""
    settings = RouterSettings(min_replicas=2, replica_timeout=0.2)
    async with ResourceRegistry(replicated.master.url, namespace=namespace) as plain:
        await plain.register_instance(SVC, "b", ttl=30)
        async with ResourceRegistry(replicated.master.url, namespace=namespace, settings=settings) as registry:
            started = time.monotonic()
            with pytest.raises(DurabilityError) as caught:
                await registry.register_resource(SVC, "b", ["x"])
            assert time.monotonic() - started < 2.0  # the replica_timeout, not a hang
            error = caught.value
            assert isinstance(error, RedisUnavailableError) and error.code == 503
            assert (error.acknowledged, error.required) == (1, 2)
            assert error.to_dict()["type"] == "DurabilityError"
    inst = ServiceInstance(replicated.master.url, SVC, "c", namespace=namespace, ttl=30, settings=settings)
    with pytest.raises(DurabilityError):
        await inst.start()  # its lease cannot be made durable: it does not start serving
    assert inst.owned_resources == frozenset()
