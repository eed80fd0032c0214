"""The embedded default: one SQLite file in the data dir, through the stdlib ``sqlite3``.

sqlite3 blocks, so every call runs on one worker thread that owns the connection; that thread
also serialises the calls. WAL lets another process (the dashboard) read while the proxy writes.
"""

import asyncio
import sqlite3
import time
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from datetime import datetime
from pathlib import Path

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
    page_from_rows,
    position_from_row,
    qmark,
    session_from_row,
    sessions_page_from_rows,
)

BUSY_TIMEOUT = 5.0  # seconds to wait for another process's write lock before giving up

_SQL = Sql(qmark)
_POLICY_SQL = PolicySql(qmark)


class SQLiteStorage:
    def __init__(self, path: Path) -> None:
        self.path = path
        self._connection: sqlite3.Connection | None = None
        self._executor: ThreadPoolExecutor | None = None

    async def migrate(self) -> None:
        def work(connection: sqlite3.Connection) -> None:
            with _transaction(connection):
                connection.execute(SCHEMA_MIGRATIONS)
                applied = {row["version"] for row in connection.execute(_SQL.applied_versions)}
                for migration in pending(applied):
                    for statement in migration.statements:
                        connection.execute(statement)
                    connection.execute(
                        _SQL.record_migration, (migration.version, migration.name, time.time())
                    )

        await self._run(work)

    async def write(self, records: Sequence[Record]) -> None:
        statements = _SQL.inserts(records)
        if not statements:
            return

        def work(connection: sqlite3.Connection) -> None:
            with _transaction(connection):
                for sql, rows in statements:
                    connection.executemany(sql, rows)

        await self._run(work)

    async def get_call(self, call_id: str) -> CallRecord | None:
        def work(connection: sqlite3.Connection) -> CallRecord | None:
            row = connection.execute(_SQL.get_call, (call_id,)).fetchone()
            if row is None:
                return None
            decisions = connection.execute(_SQL.get_decisions, (call_id,)).fetchall()
            return call_from_row(dict(row), [dict(decision) for decision in decisions])

        return await self._run(work)

    async def list_calls(self, query: CallQuery) -> CallPage:
        (totals_sql, totals_params), (page_sql, page_params) = _SQL.list_calls(query)

        def work(connection: sqlite3.Connection) -> CallPage:
            # One read transaction, so the totals and the page see the same calls.
            with _transaction(connection, "BEGIN"):
                totals = dict(connection.execute(totals_sql, totals_params).fetchone())
                rows = connection.execute(page_sql, page_params).fetchall()
            return page_from_rows(totals, [dict(row) for row in rows], query)

        return await self._run(work)

    async def list_sessions(self, query: SessionQuery) -> SessionPage:
        page_sql, page_params = _SQL.list_sessions(query)

        def work(connection: sqlite3.Connection) -> SessionPage:
            # One read transaction, so the count and the page see the same calls.
            with _transaction(connection, "BEGIN"):
                rows = connection.execute(page_sql, page_params).fetchall()
                facets = connection.execute(_SQL.session_facets).fetchall()
            return sessions_page_from_rows([dict(r) for r in rows], [dict(r) for r in facets], query)

        return await self._run(work)

    async def get_session(self, session_id: str) -> SessionSummary | None:
        def work(connection: sqlite3.Connection) -> SessionSummary | None:
            row = connection.execute(_SQL.get_session, (session_id,)).fetchone()
            return None if row is None else session_from_row(dict(row))

        return await self._run(work)

    async def session_calls(self, session_id: str, offset: int, limit: int) -> list[CallRecord]:
        params = (session_id, limit, offset)

        def work(connection: sqlite3.Connection) -> list[CallRecord]:
            with _transaction(connection, "BEGIN"):
                rows = connection.execute(_SQL.session_calls, params).fetchall()
                decisions = connection.execute(_SQL.session_decisions, params).fetchall()
            return calls_from_rows([dict(r) for r in rows], [dict(d) for d in decisions])

        return await self._run(work)

    async def session_position(self, call_id: str) -> SessionPosition | None:
        def work(connection: sqlite3.Connection) -> SessionPosition | None:
            row = connection.execute(_SQL.session_position, (call_id,)).fetchone()
            return position_from_row(None if row is None else dict(row))

        return await self._run(work)

    async def debug_events(self, call_id: str) -> list[DebugEvent]:
        def work(connection: sqlite3.Connection) -> list[DebugEvent]:
            rows = connection.execute(_SQL.debug_events, (call_id,)).fetchall()
            return [debug_event_from_row(dict(row)) for row in rows]

        return await self._run(work)

    async def activate_policy(
        self, version: PolicyVersion, by: str, source: PolicySourceKind, note: str, *, unless_active: bool
    ) -> PolicyActivation:
        def work(connection: sqlite3.Connection) -> PolicyActivation:
            # BEGIN IMMEDIATE (the write lock first): one activation at a time, across processes.
            with _transaction(connection):
                last = connection.execute(_POLICY_SQL.last_activation).fetchone()
                if unless_active and last is not None and last["version"] == version.version:
                    return activation_from_row(dict(last))
                connection.execute(_POLICY_SQL.insert_version, version_values(version))
                connection.execute(
                    _POLICY_SQL.insert_activation, (version.version, time.time(), by, source, note)
                )
                return activation_from_row(dict(connection.execute(_POLICY_SQL.last_activation).fetchone()))

        return await self._run(work)

    async def active_policy(self) -> ActivePolicy | None:
        def work(connection: sqlite3.Connection) -> ActivePolicy | None:
            with _transaction(connection, "BEGIN"):
                last = connection.execute(_POLICY_SQL.last_activation).fetchone()
                if last is None:
                    return None
                version = connection.execute(_POLICY_SQL.get_version, (last["version"],)).fetchone()
            return active_from_rows(dict(last), dict(version))

        return await self._run(work)

    async def policy_version(self, version: str) -> PolicyVersion | None:
        def work(connection: sqlite3.Connection) -> PolicyVersion | None:
            row = connection.execute(_POLICY_SQL.get_version, (version,)).fetchone()
            return None if row is None else version_from_row(dict(row))

        return await self._run(work)

    async def policy_history(self, limit: int) -> list[PolicyActivation]:
        def work(connection: sqlite3.Connection) -> list[PolicyActivation]:
            rows = connection.execute(_POLICY_SQL.history, (limit,)).fetchall()
            return [activation_from_row(dict(row)) for row in rows]

        return await self._run(work)

    async def set_shadow(self, version: PolicyVersion | None, by: str, note: str) -> ShadowSetting:
        def work(connection: sqlite3.Connection) -> ShadowSetting:
            with _transaction(connection):
                return _set_shadow(connection, version, by, note)

        return await self._run(work)

    async def shadow_policy(self) -> ShadowPolicy | None:
        def work(connection: sqlite3.Connection) -> ShadowPolicy | None:
            with _transaction(connection, "BEGIN"):
                last = connection.execute(_POLICY_SQL.last_shadow).fetchone()
                if last is None:
                    return None
                version = None
                if last["version"] is not None:
                    version = connection.execute(_POLICY_SQL.get_version, (last["version"],)).fetchone()
            return shadow_from_rows(dict(last), None if version is None else dict(version))

        return await self._run(work)

    async def promote_shadow(self, by: str, source: PolicySourceKind, note: str) -> PolicyActivation | None:
        def work(connection: sqlite3.Connection) -> PolicyActivation | None:
            with _transaction(connection):
                last = connection.execute(_POLICY_SQL.last_shadow).fetchone()
                if last is None or last["version"] is None:
                    return None
                connection.execute(
                    _POLICY_SQL.insert_activation, (last["version"], time.time(), by, source, note)
                )
                _set_shadow(connection, None, by, f"promoted {last['version']}")
                return activation_from_row(dict(connection.execute(_POLICY_SQL.last_activation).fetchone()))

        return await self._run(work)

    async def shadow_history(self, limit: int) -> list[ShadowSetting]:
        def work(connection: sqlite3.Connection) -> list[ShadowSetting]:
            rows = connection.execute(_POLICY_SQL.shadow_history, (limit,)).fetchall()
            return [setting_from_row(dict(row)) for row in rows]

        return await self._run(work)

    async def write_shadow_decisions(self, decisions: Sequence[ShadowDecision]) -> None:
        rows = [decision_values(decision) for decision in decisions]

        def work(connection: sqlite3.Connection) -> None:
            with _transaction(connection):
                connection.executemany(_POLICY_SQL.insert_decision, rows)

        await self._run(work)

    async def shadow_decisions(self, call_ids: Sequence[str]) -> dict[str, ShadowDecision]:
        if not call_ids:
            return {}

        def work(connection: sqlite3.Connection) -> dict[str, ShadowDecision]:
            rows = connection.execute(_POLICY_SQL.decisions_of(len(call_ids)), tuple(call_ids)).fetchall()
            return latest_decisions([dict(row) for row in rows])

        return await self._run(work)

    async def shadow_counts(self, version: str, since: datetime) -> dict[ShadowOutcome, int]:
        def work(connection: sqlite3.Connection) -> dict[ShadowOutcome, int]:
            rows = connection.execute(_POLICY_SQL.shadow_counts, (version, epoch(since))).fetchall()
            return {row["outcome"]: row["calls"] for row in rows}

        return await self._run(work)

    async def ping(self) -> None:
        await self._run(lambda connection: connection.execute("SELECT 1").fetchone())

    async def close(self) -> None:
        if self._executor is None:
            return
        executor, self._executor = self._executor, None
        await asyncio.get_running_loop().run_in_executor(executor, self._disconnect)
        executor.shutdown()

    async def _run[T](self, work: Callable[[sqlite3.Connection], T]) -> T:
        if self._executor is None:
            self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="luthien-sqlite")
        return await asyncio.get_running_loop().run_in_executor(self._executor, self._work, work)

    def _work[T](self, work: Callable[[sqlite3.Connection], T]) -> T:
        """Runs on the worker thread."""
        try:
            if self._connection is None:
                self._connection = self._connect()
            return work(self._connection)
        except (sqlite3.OperationalError, OSError) as exc:  # locked, disk full, unwritable
            raise StorageUnavailable(f"SQLite database {self.path}: {exc}") from exc

    def _connect(self) -> sqlite3.Connection:
        self.path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
        self.path.touch(mode=0o600)  # before SQLite creates it: it holds prompts
        # Transactions are explicit (BEGIN in _transaction), so sqlite3 must not open its own.
        connection = sqlite3.connect(self.path, timeout=BUSY_TIMEOUT, autocommit=True)
        try:
            connection.row_factory = sqlite3.Row
            _enable_wal(connection)
            # With WAL, NORMAL may lose the last commits on power loss but never corrupts.
            connection.execute("PRAGMA synchronous=NORMAL")
        except BaseException:
            connection.close()
            raise
        return connection

    def _disconnect(self) -> None:
        if self._connection is not None:
            self._connection.close()
            self._connection = None


def _enable_wal(connection: sqlite3.Connection) -> None:
    """Switches a new database file to WAL. The switch needs the file to itself and ignores the
    busy timeout, so when several processes open a fresh file at once it is retried."""
    deadline = time.monotonic() + BUSY_TIMEOUT
    while True:
        try:
            connection.execute("PRAGMA journal_mode=WAL")
            return
        except sqlite3.OperationalError as exc:
            if "locked" not in str(exc) or time.monotonic() > deadline:
                raise
            time.sleep(0.05)


def _set_shadow(
    connection: sqlite3.Connection, version: PolicyVersion | None, by: str, note: str
) -> ShadowSetting:
    """In the caller's write transaction."""
    if version is not None:
        connection.execute(_POLICY_SQL.insert_version, version_values(version))
    connection.execute(
        _POLICY_SQL.insert_shadow, (None if version is None else version.version, time.time(), by, note)
    )
    return setting_from_row(dict(connection.execute(_POLICY_SQL.last_shadow).fetchone()))


@contextmanager
def _transaction(connection: sqlite3.Connection, begin: str = "BEGIN IMMEDIATE") -> Iterator[None]:
    """A transaction, committed when the block succeeds. Writers BEGIN IMMEDIATE: taking the write
    lock up front waits out another writer (busy timeout) instead of failing halfway through."""
    connection.execute(begin)
    try:
        yield
    except BaseException:
        if connection.in_transaction:  # some errors (a full disk) have rolled back already
            connection.execute("ROLLBACK")
        raise
    connection.execute("COMMIT")
