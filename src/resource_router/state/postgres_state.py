"""``PostgresStateStore``: per-resource state in PostgreSQL (the ``postgres`` extra, asyncpg).

One row per (namespace, service, resource) holds the value, its version and the fencing token of
the last owner that read or wrote it. PostgreSQL cannot see the grants in Redis, so the fence is the
row's token: a save is an upsert applied only when the writer's token is at least the row's (and
it raises the row's token to its own), and an owner's first read of a resource records its token
on the row before reading. From a new owner's first read on, every write of an older owner is
refused (``StaleOwnerError``): the new owner never reads a state an older owner changes afterwards.
A delete keeps the row (value NULL, version 0) so that its token still fences older owners.

The table is created on first use (``CREATE TABLE IF NOT EXISTS``, the DDL of ``ddl()``, also in
the README for those who migrate by hand). PostgreSQL unreachable, or failing, is a
``StateStoreUnavailableError`` (503).
"""

from __future__ import annotations

import asyncio
import contextlib
import re
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import TYPE_CHECKING, Any, NoReturn

from resource_router.errors import (
    InvalidRequestError,
    ResourceRouterError,
    StaleOwnerError,
    StateStoreUnavailableError,
    StateVersionConflictError,
)
from resource_router.ids import validate_resource_id, validate_service_name
from resource_router.settings import DEFAULT_NAMESPACE, DEFAULT_STATE_TABLE, DEFAULT_TIMEOUT
from resource_router.state.backend import StateRecord, StateStore

if TYPE_CHECKING:
    from resource_router.ownership.registry import ResourceRegistry

__all__ = ["PostgresStateStore"]

_TABLE = re.compile(r"^[A-Za-z_][A-Za-z0-9_]{0,62}(\.[A-Za-z_][A-Za-z0-9_]{0,62})?$")
_CLAIMED_LIMIT = 100_000


def _asyncpg() -> Any:
    """The asyncpg module, or an ImportError that names the extra to install."""
    try:
        import asyncpg  # imported lazily: only PostgresStateStore needs it
    except ModuleNotFoundError as exc:
        raise ImportError(
            "PostgresStateStore needs the 'postgres' extra (asyncpg is not installed): "
            "pip install 'resource-router[postgres]'",
            name=exc.name,
        ) from exc
    return asyncpg


def ddl(table: str = DEFAULT_STATE_TABLE) -> str:
    """The table's DDL (run on first use; README "State" shows it for hand-made migrations)."""
    return (
        f"CREATE TABLE IF NOT EXISTS {_quoted(table)} (\n"
        "    namespace     text        NOT NULL,\n"
        "    service_name  text        NOT NULL,\n"
        "    resource_id   text        NOT NULL,\n"
        "    value         bytea,\n"
        "    version       bigint      NOT NULL DEFAULT 0,\n"
        "    fencing_token bigint      NOT NULL,\n"
        "    updated_at    timestamptz NOT NULL DEFAULT now(),\n"
        "    PRIMARY KEY (namespace, service_name, resource_id)\n"
        ")"
    )


def _quoted(table: str) -> str:
    return ".".join(f'"{part}"' for part in table.split("."))


class _Shared:
    """What the bound copies of one store share: the pool, and whether the table exists."""

    def __init__(self, dsn_or_pool: Any) -> None:
        self.dsn = dsn_or_pool if isinstance(dsn_or_pool, str) else None
        self.pool: Any = None if isinstance(dsn_or_pool, str) else dsn_or_pool
        self.owns_pool = isinstance(dsn_or_pool, str)
        self.ready = False
        self.lock = asyncio.Lock()
        #: (namespace, service, resource, token) whose token is already on the row
        self.claimed: set[tuple[str, str, str, int]] = set()


class PostgresStateStore(StateStore):
    """State in PostgreSQL (see the module docstring): ``PostgresStateStore(dsn_or_pool, table=...)``
    takes a DSN (``postgresql://user@host:5432/db``; the store opens and closes its pool) or an
    ``asyncpg`` pool (yours to close)."""

    name = "postgres"

    def __init__(self, dsn_or_pool: Any, *, table: str = DEFAULT_STATE_TABLE, timeout: float = DEFAULT_TIMEOUT) -> None:
        _asyncpg()
        if not isinstance(table, str) or not _TABLE.match(table):
            raise InvalidRequestError(
                "table must be a PostgreSQL identifier (letters, digits, _), optionally schema.table", field="table"
            )
        if not isinstance(dsn_or_pool, str) and not hasattr(dsn_or_pool, "acquire"):
            raise InvalidRequestError("dsn_or_pool must be a DSN string or an asyncpg pool", field="dsn_or_pool")
        self.table = table
        self.timeout = timeout
        self.namespace = DEFAULT_NAMESPACE
        self._shared = _Shared(dsn_or_pool)
        q = _quoted(table)
        pk = "namespace = $1 AND service_name = $2 AND resource_id = $3"
        self._sql_upsert = (
            f"INSERT INTO {q} AS s (namespace, service_name, resource_id, value, version, fencing_token) "
            "VALUES ($1, $2, $3, $4, 1, $5) ON CONFLICT (namespace, service_name, resource_id) DO UPDATE "
            "SET value = EXCLUDED.value, version = s.version + 1, fencing_token = EXCLUDED.fencing_token, "
            "updated_at = now() WHERE s.fencing_token <= EXCLUDED.fencing_token AND ($6::bigint IS NULL "
            "OR s.version = $6::bigint) RETURNING version"
        )
        self._sql_update = (
            f"UPDATE {q} SET value = $4, version = version + 1, fencing_token = $5, updated_at = now() "
            f"WHERE {pk} AND fencing_token <= $5 AND version = $6 RETURNING version"
        )
        self._sql_select = f"SELECT value, version, fencing_token FROM {q} WHERE {pk}"
        self._sql_claim = (
            f"WITH claim AS (INSERT INTO {q} AS s (namespace, service_name, resource_id, value, version, "
            "fencing_token) VALUES ($1, $2, $3, NULL, 0, $4) ON CONFLICT (namespace, service_name, resource_id) "
            "DO UPDATE SET fencing_token = EXCLUDED.fencing_token WHERE s.fencing_token < EXCLUDED.fencing_token "
            "RETURNING value, version, fencing_token) SELECT value, version, fencing_token FROM claim UNION ALL "
            f"SELECT value, version, fencing_token FROM {q} WHERE {pk} AND NOT EXISTS (SELECT 1 FROM claim)"
        )
        self._sql_lock = f"SELECT value IS NOT NULL, version, fencing_token FROM {q} WHERE {pk} FOR UPDATE"
        self._sql_tombstone = (
            f"INSERT INTO {q} AS s (namespace, service_name, resource_id, value, version, fencing_token) "
            "VALUES ($1, $2, $3, NULL, 0, $4) ON CONFLICT (namespace, service_name, resource_id) DO UPDATE "
            "SET value = NULL, version = 0, fencing_token = EXCLUDED.fencing_token, updated_at = now()"
        )

    def ddl(self) -> str:
        return ddl(self.table)

    def bind(self, registry: ResourceRegistry) -> StateStore:
        if registry.namespace == self.namespace:
            return self
        bound = object.__new__(PostgresStateStore)
        bound.__dict__.update(self.__dict__)
        bound.namespace = registry.namespace
        return bound

    # -- connections ---------------------------------------------------------------------------------
    @asynccontextmanager
    async def _connection(self, operation: str) -> AsyncIterator[Any]:
        asyncpg = _asyncpg()
        shared = self._shared
        try:
            if not shared.ready:
                await self._prepare()
            async with shared.pool.acquire(timeout=self.timeout) as conn:
                yield conn
        except ResourceRouterError:
            raise
        except (OSError, TimeoutError, asyncpg.PostgresError, asyncpg.InterfaceError) as exc:
            raise StateStoreUnavailableError(
                f"PostgreSQL state store failed during {operation}: {type(exc).__name__}: {exc}",
                operation=operation,
                store=self.name,
            ) from exc

    async def _prepare(self) -> None:
        asyncpg = _asyncpg()
        shared = self._shared
        async with shared.lock:
            if shared.ready:
                return
            if shared.pool is None:
                shared.pool = await asyncio.wait_for(
                    asyncpg.create_pool(shared.dsn, min_size=1, max_size=10, command_timeout=self.timeout),
                    self.timeout,
                )
            async with shared.pool.acquire(timeout=self.timeout) as conn:
                # another process may create it at the same moment
                with contextlib.suppress(asyncpg.UniqueViolationError, asyncpg.DuplicateTableError):
                    await conn.execute(self.ddl())
            shared.ready = True

    async def aclose(self) -> None:
        shared = self._shared
        if shared.owns_pool and shared.pool is not None:
            pool, shared.pool, shared.ready = shared.pool, None, False
            await pool.close()

    # -- the operations ------------------------------------------------------------------------------
    def _key(self, service_name: str, resource_id: str) -> tuple[str, str, str]:
        return self.namespace, validate_service_name(service_name), validate_resource_id(resource_id)

    async def load(
        self, service_name: str, resource_id: str, *, fencing_token: int | None = None
    ) -> StateRecord | None:
        key = self._key(service_name, resource_id)
        claimed = self._shared.claimed
        claim = fencing_token is not None and (*key, fencing_token) not in claimed
        async with self._connection("state.load") as conn:
            if claim:
                row = await conn.fetchrow(self._sql_claim, *key, fencing_token)
                if len(claimed) >= _CLAIMED_LIMIT:
                    claimed.clear()
                claimed.add((*key, fencing_token))  # type: ignore[arg-type]
            else:
                row = await conn.fetchrow(self._sql_select, *key)
        if row is None or row[0] is None:
            return None
        return StateRecord(bytes(row[0]), int(row[1]), int(row[2]))

    async def save(
        self,
        service_name: str,
        resource_id: str,
        data: bytes,
        *,
        instance_id: str,
        fencing_token: int,
        version: int | None = None,
    ) -> int:
        key = self._key(service_name, resource_id)
        async with self._connection("state.save") as conn:
            if version is None or version == 0:
                written = await conn.fetchval(self._sql_upsert, *key, data, fencing_token, version)
            else:
                written = await conn.fetchval(self._sql_update, *key, data, fencing_token, version)
            if written is not None:
                return int(written)
            row = await conn.fetchrow(self._sql_select, *key)
        self._refuse(key, row, instance_id, fencing_token, version)

    async def delete(
        self,
        service_name: str,
        resource_id: str,
        *,
        instance_id: str,
        fencing_token: int,
        version: int | None = None,
    ) -> bool:
        key = self._key(service_name, resource_id)
        async with self._connection("state.delete") as conn, conn.transaction():
            row = await conn.fetchrow(self._sql_lock, *key)
            stored_version = 0 if row is None else int(row[1])
            if (row is not None and int(row[2]) > fencing_token) or (version is not None and version != stored_version):
                refused = row
            else:
                await conn.execute(self._sql_tombstone, *key, fencing_token)
                return bool(row is not None and row[0])
        self._refuse(
            key, None if refused is None else (b"", refused[1], refused[2]), instance_id, fencing_token, version
        )
        raise AssertionError("unreachable")  # pragma: no cover

    def _refuse(
        self, key: tuple[str, str, str], row: Any, instance_id: str, token: int, version: int | None
    ) -> NoReturn:
        """Why a write applied to no row: a newer owner's token on it, or another version."""
        _ns, _service, rid = key
        current = None if row is None else int(row[2])
        if current is not None and current > token:
            raise StaleOwnerError(
                f"{instance_id!r} wrote {rid!r} with fencing token {token}, but the row was written by the "
                f"holder of token {current}: refused, nothing written (a newer owner has it)",
                resource_id=rid,
                fencing_token=token,
                current_token=current,
            )
        actual = 0 if row is None or (row[0] is None) else int(row[1])
        raise StateVersionConflictError(
            f"state of {rid!r} is at version {actual}, not {version}: nothing written",
            resource_id=rid,
            expected=version if version is not None else -1,
            actual=actual,
        )
