"""``PostgresStateStore`` on the machine's real PostgreSQL (ownership in a real Redis): the scenarios
every store passes, the table made on first use, the row's token as the fence, and a clear 503 when
PostgreSQL cannot be reached."""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

import asyncpg
import pytest
from prometheus_client import CollectorRegistry

from resource_router import (
    InvalidRequestError,
    PostgresStateStore,
    ServiceClient,
    ServiceInstance,
    StaleOwnerError,
    StateStoreUnavailableError,
)
from resource_router.state.postgres_state import ddl
from tests.support import state_scenarios as scenarios
from tests.support.redis_server import free_port
from tests.support.state_scenarios import SERVICE, Make


@pytest.fixture
async def store(postgres_dsn: str, pg_table: str) -> AsyncIterator[PostgresStateStore]:
    s = PostgresStateStore(postgres_dsn, table=pg_table)
    try:
        yield s
    finally:
        await s.aclose()


@pytest.fixture
def make(redis_url: str, namespace: str, store: PostgresStateStore) -> Make:
    @asynccontextmanager
    async def factory(instance_id: str, **options: Any) -> AsyncIterator[ServiceInstance]:
        inst = ServiceInstance(
            redis_url,
            SERVICE,
            instance_id,
            ttl=2.0,
            namespace=namespace,
            metrics_registry=CollectorRegistry(),
            state_store=store,
            **options,
        )
        async with inst:
            yield inst

    return factory


async def test_round_trip(make: Make) -> None:
    await scenarios.round_trip(make)


async def test_compare_and_set(make: Make) -> None:
    await scenarios.compare_and_set(make)


async def test_handlers_count_through_request_state(make: Make, real_client: ServiceClient) -> None:
    await scenarios.handlers_count(make, real_client)


async def test_bad_input_stores_nothing(make: Make) -> None:
    await scenarios.bad_input_stores_nothing(make)


async def test_a_former_owner_is_refused(make: Make) -> None:
    await scenarios.not_owner_refused(make)


async def test_state_survives_a_move(make: Make) -> None:
    await scenarios.survives_a_move(make)


async def test_the_table_is_made_on_first_use(store: PostgresStateStore, postgres_dsn: str, pg_table: str) -> None:
    assert store.ddl().startswith(f'CREATE TABLE IF NOT EXISTS "{pg_table}"')
    assert await store.load(SERVICE, "cart-1") is None  # first use: creates it
    conn = await asyncpg.connect(postgres_dsn)
    try:
        columns = await conn.fetch(
            "SELECT column_name FROM information_schema.columns WHERE table_name = $1 ORDER BY ordinal_position",
            pg_table,
        )
    finally:
        await conn.close()
    assert [c[0] for c in columns] == [
        "namespace",
        "service_name",
        "resource_id",
        "value",
        "version",
        "fencing_token",
        "updated_at",
    ]
    assert ddl().startswith('CREATE TABLE IF NOT EXISTS "resource_state"')


async def test_the_rows_token_fences_older_owners(store: PostgresStateStore) -> None:
    """A newer owner's first read records its token on the row: from then on an older owner's
    writes are refused, and a newer owner's save raises the row's token."""
    assert await store.save(SERVICE, "cart-1", b"\x01", instance_id="a", fencing_token=5) == 1
    assert await store.load(SERVICE, "cart-1", fencing_token=9) is not None  # the new owner reads
    with pytest.raises(StaleOwnerError) as caught:
        await store.save(SERVICE, "cart-1", b"\x02", instance_id="a", fencing_token=5)
    assert (caught.value.fencing_token, caught.value.current_token) == (5, 9)
    assert await store.save(SERVICE, "cart-1", b"\x03", instance_id="b", fencing_token=9) == 2
    assert await store.save(SERVICE, "cart-1", b"\x04", instance_id="c", fencing_token=12) == 3
    with pytest.raises(StaleOwnerError):
        await store.save(SERVICE, "cart-1", b"\x05", instance_id="b", fencing_token=9)
    with pytest.raises(StaleOwnerError):
        await store.delete(SERVICE, "cart-1", instance_id="b", fencing_token=9)
    assert await store.delete(SERVICE, "cart-1", instance_id="c", fencing_token=12) is True
    with pytest.raises(StaleOwnerError):  # the deleted row still fences
        await store.save(SERVICE, "cart-1", b"\x06", instance_id="b", fencing_token=9)
    record = await store.load(SERVICE, "cart-1")
    assert record is None


async def test_namespaces_do_not_share_rows(make: Make, store: PostgresStateStore, redis_url: str) -> None:
    async with make("i-1") as inst:
        await inst.register_resource("cart-1")
        await inst.state("cart-1").save("mine")
    async with ServiceInstance(
        redis_url, SERVICE, "i-1", namespace="other" + inst.namespace, state_store=store
    ) as elsewhere:
        await elsewhere.register_resource("cart-1")
        assert await elsewhere.state("cart-1").load() is None


async def test_postgres_unreachable_is_a_clear_503(redis_url: str, namespace: str) -> None:
    store = PostgresStateStore(f"postgresql://postgres@127.0.0.1:{free_port()}/test", timeout=2.0)
    async with ServiceInstance(redis_url, SERVICE, "i-1", namespace=namespace, state_store=store) as inst:
        await inst.register_resource("cart-1")
        for attempt in (inst.state("cart-1").load(), inst.state("cart-1").save({"n": 1})):
            with pytest.raises(StateStoreUnavailableError) as caught:
                await attempt
            assert caught.value.code == 503 and caught.value.store == "postgres"
            assert "PostgreSQL" in caught.value.message
    await store.aclose()


def test_bad_tables_and_pools_are_refused() -> None:
    for table in ("x; DROP TABLE y", "", "a.b.c", "1abc"):
        with pytest.raises(InvalidRequestError) as caught:
            PostgresStateStore("postgresql://localhost/test", table=table)
        assert caught.value.field == "table"
    with pytest.raises(InvalidRequestError):
        PostgresStateStore(42)
