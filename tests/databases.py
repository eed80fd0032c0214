"""Test helpers for real database services: skip (locally) or fail (in CI) when one is missing,
and a fresh PostgreSQL database per use, dropped afterwards."""

import os
import socket
import uuid
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from urllib.parse import urlsplit

import asyncpg
import pytest

#: A superuser with trust authentication on the test machines; ``test`` always exists.
POSTGRES_ADMIN_URL = "postgresql://postgres@127.0.0.1:5432/test"


def require_service(name: str, host: str, port: int) -> None:
    """Skips the test when nothing answers at ``host:port``; in CI, where every service is
    provided, fails it instead so a missing service cannot pass unnoticed."""
    try:
        socket.create_connection((host, port), timeout=2).close()
    except OSError as exc:
        reason = f"{name} is not reachable at {host}:{port} ({exc})"
        if os.environ.get("CI") == "true":
            pytest.fail(reason)
        pytest.skip(reason)


def database_url(url: str, database: str) -> str:
    """``url`` pointing at another database on the same server."""
    return urlsplit(url)._replace(path=f"/{database}").geturl()


@asynccontextmanager
async def fresh_postgres_database(admin_url: str = POSTGRES_ADMIN_URL) -> AsyncIterator[str]:
    """The URL of a new, empty database (``luthien_test_<hex>``), dropped on exit even if
    connections to it are still open."""
    server = urlsplit(admin_url)
    require_service("PostgreSQL", server.hostname or "127.0.0.1", server.port or 5432)
    name = f"luthien_test_{uuid.uuid4().hex[:12]}"
    admin = await asyncpg.connect(admin_url)
    try:
        await admin.execute(f'CREATE DATABASE "{name}"')
        try:
            yield database_url(admin_url, name)
        finally:
            await admin.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
    finally:
        await admin.close()
