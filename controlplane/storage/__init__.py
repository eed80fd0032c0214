"""Where calls are stored: SQLite by default, PostgreSQL when ``DATABASE_URL`` names one."""

from pathlib import Path

from controlplane.storage.base import (
    ActivePolicy,
    CallPage,
    CallQuery,
    CallSummary,
    CallTotals,
    Facet,
    PolicyActivation,
    PolicySourceKind,
    PolicyVersion,
    SessionPage,
    SessionPosition,
    SessionQuery,
    SessionSummary,
    Storage,
    StorageRefused,
    StorageUnavailable,
)
from controlplane.storage.postgres import PostgresStorage
from controlplane.storage.sqlite import SQLiteStorage

__all__ = [
    "ActivePolicy",
    "CallPage",
    "CallQuery",
    "CallSummary",
    "CallTotals",
    "Facet",
    "PolicyActivation",
    "PolicySourceKind",
    "PolicyVersion",
    "PostgresStorage",
    "SQLiteStorage",
    "SessionPage",
    "SessionPosition",
    "SessionQuery",
    "SessionSummary",
    "Storage",
    "StorageRefused",
    "StorageUnavailable",
    "open_storage",
]

_SQLITE_PREFIX = "sqlite://"


def open_storage(database_url: str | None, data_dir: Path) -> Storage:
    """The storage a ``DATABASE_URL`` names: unset or empty is ``data_dir/luthien.db``."""
    if not database_url:
        return SQLiteStorage(data_dir / "luthien.db")
    if database_url.startswith(("postgresql://", "postgres://")):
        return PostgresStorage(database_url)
    path = Path(database_url.removeprefix(_SQLITE_PREFIX))
    if database_url.startswith(_SQLITE_PREFIX) and path.is_absolute() and path.name:
        return SQLiteStorage(path)
    # Only the scheme is echoed: the rest of a URL may hold a password.
    scheme = database_url.partition("://")[0] if "://" in database_url else "(no scheme)"
    raise ValueError(
        f"DATABASE_URL (scheme {scheme!r}) must be postgresql://…, postgres://… or "
        "sqlite:///absolute/path.db; leave it unset for SQLite in the data dir"
    )
