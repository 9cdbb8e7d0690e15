"""Fixtures of the state tests: the machine's PostgreSQL and a table of the test's own.

``RR_POSTGRES_DSN`` points the tests at another PostgreSQL (default: ``postgresql://postgres@127.0.0.1:5432/test``,
trust auth). The tests that need it are skipped, saying so, when it cannot be reached.
"""

from __future__ import annotations

import os
import uuid
from collections.abc import AsyncIterator

import pytest

POSTGRES_DSN = os.environ.get("RR_POSTGRES_DSN", "postgresql://postgres@127.0.0.1:5432/test")


@pytest.fixture
async def postgres_dsn() -> str:
    asyncpg = pytest.importorskip("asyncpg")
    try:
        conn = await asyncpg.connect(POSTGRES_DSN, timeout=5)
    except (OSError, asyncpg.PostgresError) as exc:
        pytest.skip(f"no PostgreSQL at {POSTGRES_DSN} ({exc}); set RR_POSTGRES_DSN")
    await conn.close()
    return POSTGRES_DSN


@pytest.fixture
async def pg_table(postgres_dsn: str) -> AsyncIterator[str]:
    """A table name of the test's own, dropped afterwards."""
    import asyncpg

    table = "rs_" + uuid.uuid4().hex[:12]
    yield table
    conn = await asyncpg.connect(postgres_dsn, timeout=5)
    try:
        await conn.execute(f'DROP TABLE IF EXISTS "{table}"')
    finally:
        await conn.close()
