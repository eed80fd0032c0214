"""PostgreSQL (``DATABASE_URL=postgresql://…``) through an asyncpg pool.

The pool is created on first use and connects on demand, so a proxy starts while the database is
down. Every failure to reach or use the database is raised as ``StorageUnavailable``, for the
recorder to spool and retry; the pool replaces connections that died in the meantime. Data the
database refuses (class 22 and 23 errors) is ``StorageRefused``: no retry would store it.
"""

import asyncio
import time
from collections.abc import AsyncIterator, Sequence
from contextlib import asynccontextmanager
from datetime import datetime

import asyncpg

from controlplane.recording.records import CallRecord, DebugEvent, Record
from controlplane.storage.base import (
    ActivePolicy,
    CallPage,
    CallQuery,
    PolicyActivation,
    PolicySourceKind,
    PolicyVersion,
    SessionPage,
    SessionPosition,
    SessionQuery,
    SessionSummary,
    ShadowDecision,
    ShadowOutcome,
    ShadowPolicy,
    ShadowSetting,
    StorageRefused,
    StorageUnavailable,
)
from controlplane.storage.migrations import SCHEMA_MIGRATIONS, pending
from controlplane.storage.policy_rows import (
    PolicySql,
    activation_from_row,
    active_from_rows,
    decision_values,
    latest_decisions,
    setting_from_row,
    shadow_from_rows,
    version_from_row,
    version_values,
)
from controlplane.storage.rows import (
    Sql,
    call_from_row,
    calls_from_rows,
    debug_event_from_row,
    epoch,
    numbered,
    page_from_rows,
    position_from_row,
    session_from_row,
    sessions_page_from_rows,
)

CONNECT_TIMEOUT = 5.0
COMMAND_TIMEOUT = 10.0
CLOSE_TIMEOUT = 2.0  # a server that has not acknowledged the goodbye by then is gone
POOL_SIZE = 4
# Any constant that every Luthien process shares: it names the advisory lock migrations hold.
_MIGRATION_LOCK = 0x6C7574686965_6E
#: Held by an activation: one at a time, so activations are numbered without gaps or duplicates.
_ACTIVATION_LOCK = _MIGRATION_LOCK + 1
#: Held by a change of the shadow slot, for the same reason.
_SHADOW_LOCK = _MIGRATION_LOCK + 2

# asyncpg reports a dead socket as OSError or InterfaceError, the server's refusals (and lost
# connections) as PostgresError, and timeouts as TimeoutError.
_UNAVAILABLE = (OSError, TimeoutError, asyncpg.PostgresError, asyncpg.InterfaceError)
_REFUSED = (asyncpg.exceptions.DataError, asyncpg.exceptions.IntegrityConstraintViolationError)

_SQL = Sql(numbered)
_POLICY_SQL = PolicySql(numbered)


class PostgresStorage:
    def __init__(self, url: str) -> None:
        self._url = url
        self._pool: asyncpg.Pool | None = None
        self._pool_lock = asyncio.Lock()

    async def migrate(self) -> None:
        async with self._connection() as connection, connection.transaction():
            # Held until the transaction ends: processes starting together migrate one at a time.
            await connection.execute("SELECT pg_advisory_xact_lock($1)", _MIGRATION_LOCK)
            await connection.execute(SCHEMA_MIGRATIONS)
            applied = {row["version"] for row in await connection.fetch(_SQL.applied_versions)}
            for migration in pending(applied):
                for statement in migration.statements:
                    await connection.execute(statement)
                await connection.execute(
                    _SQL.record_migration, migration.version, migration.name, time.time()
                )

    async def write(self, records: Sequence[Record]) -> None:
        statements = _SQL.inserts(records)
        if not statements:
            return
        async with self._connection() as connection, connection.transaction():
            for sql, rows in statements:
                await connection.executemany(sql, rows)

    async def get_call(self, call_id: str) -> CallRecord | None:
        async with self._connection() as connection:
            row = await connection.fetchrow(_SQL.get_call, call_id)
            if row is None:
                return None
            decisions = await connection.fetch(_SQL.get_decisions, call_id)
        return call_from_row(dict(row), [dict(decision) for decision in decisions])

    async def list_calls(self, query: CallQuery) -> CallPage:
        (totals_sql, totals_params), (page_sql, page_params) = _SQL.list_calls(query)
        # One snapshot, so the totals and the page see the same calls.
        async with self._connection() as connection, connection.transaction(isolation="repeatable_read"):
            totals = dict(await connection.fetchrow(totals_sql, *totals_params))
            rows = await connection.fetch(page_sql, *page_params)
        return page_from_rows(totals, [dict(row) for row in rows], query)

    async def list_sessions(self, query: SessionQuery) -> SessionPage:
        page_sql, page_params = _SQL.list_sessions(query)
        async with self._connection() as connection, connection.transaction(isolation="repeatable_read"):
            rows = await connection.fetch(page_sql, *page_params)
            facets = await connection.fetch(_SQL.session_facets)
        return sessions_page_from_rows([dict(r) for r in rows], [dict(r) for r in facets], query)

    async def get_session(self, session_id: str) -> SessionSummary | None:
        async with self._connection() as connection:
            row = await connection.fetchrow(_SQL.get_session, session_id)
        return None if row is None else session_from_row(dict(row))

    async def session_calls(self, session_id: str, offset: int, limit: int) -> list[CallRecord]:
        async with self._connection() as connection, connection.transaction(isolation="repeatable_read"):
            rows = await connection.fetch(_SQL.session_calls, session_id, limit, offset)
            decisions = await connection.fetch(_SQL.session_decisions, session_id, limit, offset)
        return calls_from_rows([dict(r) for r in rows], [dict(d) for d in decisions])

    async def session_position(self, call_id: str) -> SessionPosition | None:
        async with self._connection() as connection:
            row = await connection.fetchrow(_SQL.session_position, call_id)
        return position_from_row(None if row is None else dict(row))

    async def debug_events(self, call_id: str) -> list[DebugEvent]:
        async with self._connection() as connection:
            rows = await connection.fetch(_SQL.debug_events, call_id)
        return [debug_event_from_row(dict(row)) for row in rows]

    async def activate_policy(
        self, version: PolicyVersion, by: str, source: PolicySourceKind, note: str, *, unless_active: bool
    ) -> PolicyActivation:
        async with self._connection() as connection, connection.transaction():
            await connection.execute("SELECT pg_advisory_xact_lock($1)", _ACTIVATION_LOCK)
            last = await connection.fetchrow(_POLICY_SQL.last_activation)
            if unless_active and last is not None and last["version"] == version.version:
                return activation_from_row(dict(last))
            await connection.execute(_POLICY_SQL.insert_version, *version_values(version))
            await connection.execute(
                _POLICY_SQL.insert_activation, version.version, time.time(), by, source, note
            )
            return activation_from_row(dict(await connection.fetchrow(_POLICY_SQL.last_activation)))

    async def active_policy(self) -> ActivePolicy | None:
        async with self._connection() as connection, connection.transaction(isolation="repeatable_read"):
            last = await connection.fetchrow(_POLICY_SQL.last_activation)
            if last is None:
                return None
            version = await connection.fetchrow(_POLICY_SQL.get_version, last["version"])
        return active_from_rows(dict(last), dict(version))

    async def policy_version(self, version: str) -> PolicyVersion | None:
        async with self._connection() as connection:
            row = await connection.fetchrow(_POLICY_SQL.get_version, version)
        return None if row is None else version_from_row(dict(row))

    async def policy_history(self, limit: int) -> list[PolicyActivation]:
        async with self._connection() as connection:
            rows = await connection.fetch(_POLICY_SQL.history, limit)
        return [activation_from_row(dict(row)) for row in rows]

    async def set_shadow(self, version: PolicyVersion | None, by: str, note: str) -> ShadowSetting:
        async with self._connection() as connection, connection.transaction():
            return await _set_shadow(connection, version, by, note)

    async def shadow_policy(self) -> ShadowPolicy | None:
        async with self._connection() as connection, connection.transaction(isolation="repeatable_read"):
            last = await connection.fetchrow(_POLICY_SQL.last_shadow)
            if last is None:
                return None
            version = None
            if last["version"] is not None:
                version = await connection.fetchrow(_POLICY_SQL.get_version, last["version"])
        return shadow_from_rows(dict(last), None if version is None else dict(version))

    async def promote_shadow(self, by: str, source: PolicySourceKind, note: str) -> PolicyActivation | None:
        async with self._connection() as connection, connection.transaction():
            # Activations first, then shadows: the order every change that takes both keeps.
            await connection.execute("SELECT pg_advisory_xact_lock($1)", _ACTIVATION_LOCK)
            await connection.execute("SELECT pg_advisory_xact_lock($1)", _SHADOW_LOCK)
            last = await connection.fetchrow(_POLICY_SQL.last_shadow)
            if last is None or last["version"] is None:
                return None
            await connection.execute(
                _POLICY_SQL.insert_activation, last["version"], time.time(), by, source, note
            )
            await _set_shadow(connection, None, by, f"promoted {last['version']}")
            return activation_from_row(dict(await connection.fetchrow(_POLICY_SQL.last_activation)))

    async def shadow_history(self, limit: int) -> list[ShadowSetting]:
        async with self._connection() as connection:
            rows = await connection.fetch(_POLICY_SQL.shadow_history, limit)
        return [setting_from_row(dict(row)) for row in rows]

    async def write_shadow_decisions(self, decisions: Sequence[ShadowDecision]) -> None:
        rows = [decision_values(decision) for decision in decisions]
        async with self._connection() as connection, connection.transaction():
            await connection.executemany(_POLICY_SQL.insert_decision, rows)

    async def shadow_decisions(self, call_ids: Sequence[str]) -> dict[str, ShadowDecision]:
        if not call_ids:
            return {}
        async with self._connection() as connection:
            rows = await connection.fetch(_POLICY_SQL.decisions_of(len(call_ids)), *call_ids)
        return latest_decisions([dict(row) for row in rows])

    async def shadow_counts(self, version: str, since: datetime) -> dict[ShadowOutcome, int]:
        async with self._connection() as connection:
            rows = await connection.fetch(_POLICY_SQL.shadow_counts, version, epoch(since))
        return {row["outcome"]: row["calls"] for row in rows}

    async def ping(self) -> None:
        async with self._connection() as connection:
            await connection.fetchval("SELECT 1")

    async def close(self) -> None:
        if self._pool is None:
            return
        pool, self._pool = self._pool, None
        try:
            await asyncio.wait_for(pool.close(), CLOSE_TIMEOUT)
        except _UNAVAILABLE:
            pool.terminate()  # a database that is gone cannot be told goodbye

    @asynccontextmanager
    async def _connection(self) -> AsyncIterator[asyncpg.Connection]:
        """A pooled connection; any failure to reach or use the database, in here or in the
        caller's block, comes out as ``StorageUnavailable``."""
        try:
            pool = await self._get_pool()
            async with pool.acquire(timeout=CONNECT_TIMEOUT + COMMAND_TIMEOUT) as connection:
                yield connection
        except _REFUSED as exc:
            raise StorageRefused(f"PostgreSQL: {type(exc).__name__}: {exc}") from exc
        except _UNAVAILABLE as exc:
            raise StorageUnavailable(f"PostgreSQL: {type(exc).__name__}: {exc}") from exc

    async def _get_pool(self) -> asyncpg.Pool:
        async with self._pool_lock:
            if self._pool is None:
                # min_size=0: the pool connects only when a connection is needed, and reconnects
                # a connection found closed, so an outage never outlives the database's.
                self._pool = await asyncpg.create_pool(
                    self._url,
                    min_size=0,
                    max_size=POOL_SIZE,
                    timeout=CONNECT_TIMEOUT,
                    command_timeout=COMMAND_TIMEOUT,
                )
            return self._pool


async def _set_shadow(
    connection: asyncpg.Connection, version: PolicyVersion | None, by: str, note: str
) -> ShadowSetting:
    """In the caller's transaction."""
    await connection.execute("SELECT pg_advisory_xact_lock($1)", _SHADOW_LOCK)
    if version is not None:
        await connection.execute(_POLICY_SQL.insert_version, *version_values(version))
    await connection.execute(
        _POLICY_SQL.insert_shadow, None if version is None else version.version, time.time(), by, note
    )
    return setting_from_row(dict(await connection.fetchrow(_POLICY_SQL.last_shadow)))
