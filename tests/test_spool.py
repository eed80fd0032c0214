"""The spool file and the writer that falls back on it, against a real PostgreSQL whose
connection the test cuts."""

import asyncio
import contextlib
import json
from collections.abc import AsyncIterator
from datetime import UTC, datetime
from pathlib import Path
from urllib.parse import urlsplit

import pytest

from controlplane.recording.records import CallOutcome, CallRecord, DebugEvent
from controlplane.recording.spool import Spool
from controlplane.recording.writer import RecordWriter
from controlplane.storage import CallQuery, PostgresStorage, open_storage
from tests.databases import fresh_postgres_database
from tests.tcp_relay import TcpRelay


def call(n: int) -> CallRecord:
    now = datetime.now(UTC)
    return CallRecord(
        call_id=f"call-{n:04d}",
        started_at=now,
        finished_at=now,
        method="POST",
        host="api.openai.com",
        path="/v1/chat/completions",
        outcome=CallOutcome.COMPLETED,
        original_request={"messages": [{"role": "user", "content": f"spooled {n}"}]},
    )


def test_records_come_back_in_order_and_a_torn_last_line_is_set_aside(tmp_path: Path) -> None:
    spool = Spool(tmp_path)
    spool.append([call(1), DebugEvent(type="note", payload={"n": 2})])
    spool.append([call(3)])
    with spool.path.open("a") as raw:
        raw.write('{"kind": "call", "record": {"call_id": "torn')  # died mid-write
    assert len(spool) == 3
    read = list(spool.read())
    assert [type(r).__name__ for r in read] == ["CallRecord", "DebugEvent", "CallRecord"]
    assert [r.call_id for r in read if isinstance(r, CallRecord)] == ["call-0001", "call-0003"]
    assert spool.rejects_path.read_text() == '{"kind": "call", "record": {"call_id": "torn\n'
    assert spool.set_aside == 1  # counted in luthien_recording_rejected_records
    spool.clear()
    assert len(spool) == 0 and list(spool.read()) == []
    spool.close()
    assert not spool.path.exists()  # an empty spool leaves nothing behind


def test_live_processes_get_their_own_files_and_a_dead_ones_spool_is_adopted(tmp_path: Path) -> None:
    first, second = Spool(tmp_path), Spool(tmp_path)
    assert first.path != second.path
    first.append([call(1), call(2)])
    first.close()  # the lock is released, as when a process dies; the records stay on disk
    assert first.path.exists()
    third = Spool(tmp_path)
    assert [r.call_id for r in third.read() if isinstance(r, CallRecord)] == ["call-0001", "call-0002"]
    assert list(second.read()) == []  # a live process's spool is not taken from it
    second.close()
    third.close()


@pytest.fixture
async def postgres() -> AsyncIterator[str]:
    async with fresh_postgres_database() as url:
        yield url


async def test_the_writer_spools_through_an_outage_and_replays_each_record_once(
    postgres: str, tmp_path: Path
) -> None:
    parts = urlsplit(postgres)
    with TcpRelay("127.0.0.1", parts.port or 5432) as link:
        storage = PostgresStorage(parts._replace(netloc=f"{parts.username}@127.0.0.1:{link.port}").geturl())
        writer = RecordWriter(storage, Spool(tmp_path), retry_min=0.1, retry_max=0.2)
        writer.start()
        for n in range(10):
            writer.submit(call(n))
        await writer.flush()
        assert writer.stored == 10 and writer.database_ok
        link.cut()
        for n in range(10, 60):
            writer.submit(call(n))
        await writer.flush()
        assert writer.spooled == 50 and not writer.database_ok
        link.restore()
        for _ in range(100):
            if writer.spooled == 0:
                break
            await asyncio.sleep(0.1)
        writer.submit(call(60))
        await writer.flush()
        page = await storage.list_calls(CallQuery(search="spooled", limit=500))
        await writer.close()
        await storage.close()
    assert writer.database_ok and writer.spooled == 0
    assert sorted(c.call_id for c in page.calls) == [f"call-{n:04d}" for n in range(61)]


def unstorable(n: int) -> CallRecord:
    """A record no database column can hold, as an older release (or a bug) might have spooled:
    built without validation, since a validated record can no longer carry such a status."""
    return call(n).model_copy(update={"status": 2**63})


@pytest.mark.parametrize("database", ["sqlite", "postgres"])
async def test_a_record_the_database_refuses_is_set_aside_and_blocks_nothing(
    database: str, tmp_path: Path
) -> None:
    async with contextlib.AsyncExitStack() as stack:
        if database == "postgres":
            url = await stack.enter_async_context(fresh_postgres_database())
        else:
            url = f"sqlite:///{tmp_path / 'calls.db'}"
        storage = open_storage(url, tmp_path)
        stack.push_async_callback(storage.close)
        spool = Spool(tmp_path / "spool")
        spool.append([call(0), unstorable(1), call(2)])  # left by an earlier run
        writer = RecordWriter(storage, spool, retry_min=0.05)
        writer.start()
        for record in (call(3), unstorable(4), call(5)):
            writer.submit(record)
        await writer.flush()
        writer.submit(call(6))  # a later batch is not held up by the refused ones
        await writer.flush()
        await writer.close()
        page = await storage.list_calls(CallQuery(search="spooled", limit=50))
    assert sorted(c.call_id for c in page.calls) == [f"call-{n:04d}" for n in (0, 2, 3, 5, 6)]
    # The spooled one no longer reads as a record at all: the spool sets it aside before the writer
    # sees it. Both count as set aside.
    assert writer.rejected == 2 and writer.spooled == 0 and writer.database_ok
    rejected = [json.loads(line)["record"] for line in spool.rejects_path.read_text().splitlines()]
    assert [r["call_id"] for r in rejected] == ["call-0001", "call-0004"]
    assert spool.rejects_path.stat().st_mode & 0o777 == 0o600
