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
from controlplane.storage import CallQuery, PostgresStorage, SQLiteStorage, open_storage
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


async def test_records_come_back_in_order_and_a_torn_last_line_is_set_aside(tmp_path: Path) -> None:
    spool = Spool(tmp_path)
    assert spool.append([call(1), DebugEvent(type="note", payload={"n": 2})]) == 0
    assert spool.append([call(3)]) == 2
    with spool.path.open("a") as raw:
        raw.write('{"kind": "call", "record": {"call_id": "torn')  # died mid-write
    spool.close()
    spool = Spool(tmp_path)  # the next start reads it back
    assert len(spool) == 4
    read = list(spool.unconfirmed())
    assert [seq for seq, _ in read] == [0, 1, 2, 3]
    assert [type(r).__name__ for _, r in read] == ["CallRecord", "DebugEvent", "CallRecord", "NoneType"]
    assert [r.call_id for _, r in read if isinstance(r, CallRecord)] == ["call-0001", "call-0003"]
    assert spool.rejects_path.read_text() == '{"kind": "call", "record": {"call_id": "torn\n'
    assert spool.set_aside == 1  # counted in luthien_recording_rejected_records
    spool.confirm(2)
    assert len(spool) == 2 and [seq for seq, _ in spool.unconfirmed()] == [2, 3]
    spool.confirm(4)
    assert len(spool) == 0 and list(spool.unconfirmed()) == []
    spool.close()
    assert not spool.path.exists()  # all stored: nothing is left behind


async def test_live_processes_get_their_own_files_and_a_dead_ones_spool_is_adopted(tmp_path: Path) -> None:
    first, second = Spool(tmp_path), Spool(tmp_path)
    assert first.path != second.path
    first.append([call(1), call(2)])
    first.close()  # the lock is released, as when a process dies; the records stay on disk
    assert first.path.exists()
    third = Spool(tmp_path)
    assert [r.call_id for _, r in third.unconfirmed() if isinstance(r, CallRecord)] == [
        "call-0001",
        "call-0002",
    ]
    assert list(second.unconfirmed()) == []  # a live process's spool is not taken from it
    second.close()
    third.close()


def interrupted(n: int) -> CallRecord:
    return call(n).model_copy(update={"outcome": CallOutcome.ERROR, "error": "stopped mid-call"})


async def test_a_call_in_flight_when_its_process_died_becomes_a_record_after_the_records(
    tmp_path: Path,
) -> None:
    dead = Spool(tmp_path)
    dead.opened(interrupted(1))  # in flight at the kill: only its stand-in exists
    dead.opened(interrupted(2))
    dead.append([call(2)])  # its own record was journalled...
    dead.closed("call-0002")  # ...and its stand-in struck off
    dead.opened(interrupted(3))
    dead.append([call(3)])  # journalled, killed before the stand-in was struck off
    dead.close()
    assert (tmp_path / "inflight-0.jsonl").exists()
    after = Spool(tmp_path)
    read = [r for _, r in after.unconfirmed() if isinstance(r, CallRecord)]
    # The stand-in of call 3 comes after its own record, which storage keeps (first write wins).
    assert [(r.call_id, r.outcome) for r in read] == [
        ("call-0002", CallOutcome.COMPLETED),
        ("call-0003", CallOutcome.COMPLETED),
        ("call-0001", CallOutcome.ERROR),
        ("call-0003", CallOutcome.ERROR),
    ]
    after.confirm(4)
    after.close()
    assert not list(tmp_path.glob("*.jsonl"))  # nothing pending, nothing in flight: no files


async def test_the_in_flight_file_is_compacted_and_keeps_the_calls_still_open(tmp_path: Path) -> None:
    spool = Spool(tmp_path)
    spool.opened(interrupted(0))  # a long call, open throughout
    for n in range(1, 2000):
        spool.opened(interrupted(n))
        spool.closed(f"call-{n:04d}")
    lines = (tmp_path / "inflight-0.jsonl").read_text().splitlines()
    assert len(lines) < 1100  # rewritten along the way, not 3999 lines
    spool.close()
    again = Spool(tmp_path)
    assert [r.call_id for _, r in again.unconfirmed() if isinstance(r, CallRecord)] == ["call-0000"]
    again.close()


async def test_a_store_returns_once_the_records_are_on_disk_not_once_stored(tmp_path: Path) -> None:
    spool = Spool(tmp_path)
    storage = SQLiteStorage(tmp_path / "calls.db")
    writer = RecordWriter(storage, spool)  # not started: nothing is stored yet
    await asyncio.gather(*(writer.store([call(n)]) for n in range(50)))
    on_disk = [json.loads(line)["record"]["call_id"] for line in spool.path.read_text().splitlines()]
    assert sorted(on_disk) == [f"call-{n:04d}" for n in range(50)] and writer.spooled == 50
    writer.start()
    await writer.flush()
    await writer.close()
    page = await storage.list_calls(CallQuery(search="spooled", limit=100))
    await storage.close()
    assert sorted(c.call_id for c in page.calls) == [f"call-{n:04d}" for n in range(50)]
    assert writer.spooled == 0 and not spool.path.exists()


async def test_under_a_steady_load_the_replay_ends_and_new_records_are_queued(tmp_path: Path) -> None:
    """Records journalled while the spool is replayed wait in memory behind the replay: the
    writer does not re-read the spool for each record that arrives meanwhile."""
    spool = Spool(tmp_path)
    storage = SQLiteStorage(tmp_path / "calls.db")
    writer = RecordWriter(storage, spool)
    await asyncio.gather(*(writer.store([call(n)]) for n in range(50)))  # left to replay at start
    writer.start()
    queued = 0
    for n in range(50, 500):  # one after another, from before the replay to after it
        await writer.store([call(n)])
        queued = max(queued, writer.queued)
    await writer.flush()
    await writer.close()
    page = await storage.list_calls(CallQuery(search="spooled", limit=500))
    await storage.close()
    assert queued > 0, "every record of the load was read back from the spool"
    assert sorted(c.call_id for c in page.calls) == [f"call-{n:04d}" for n in range(500)]


@pytest.fixture
async def postgres() -> AsyncIterator[str]:
    async with fresh_postgres_database() as url:
        yield url


@contextlib.asynccontextmanager
async def writing_through_a_relay(
    postgres: str, spool_dir: Path
) -> AsyncIterator[tuple[TcpRelay, PostgresStorage, RecordWriter]]:
    """A started writer into ``postgres`` through a relay the test can cut or hang."""
    parts = urlsplit(postgres)
    with TcpRelay("127.0.0.1", parts.port or 5432) as link:
        storage = PostgresStorage(parts._replace(netloc=f"{parts.username}@127.0.0.1:{link.port}").geturl())
        writer = RecordWriter(storage, Spool(spool_dir), retry_min=0.1, retry_max=0.2)
        writer.start()
        try:
            yield link, storage, writer
        finally:
            await writer.close()
            await storage.close()


async def test_the_writer_spools_through_an_outage_and_replays_each_record_once(
    postgres: str, tmp_path: Path
) -> None:
    async with writing_through_a_relay(postgres, tmp_path) as (link, storage, writer):
        for n in range(10):
            await writer.store([call(n)])
        await writer.flush()
        assert writer.stored == 10 and writer.database_ok
        link.cut()
        for n in range(10, 60):
            await writer.store([call(n)])
        await writer.flush()
        assert writer.spooled == 50 and not writer.database_ok
        link.restore()
        for _ in range(100):
            if writer.spooled == 0:
                break
            await asyncio.sleep(0.1)
        await writer.store([call(60)])
        await writer.flush()
        page = await storage.list_calls(CallQuery(search="spooled", limit=500))
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
            await writer.store([record])
        await writer.flush()
        await writer.store([call(6)])  # a later batch is not held up by the refused ones
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


async def test_a_hung_database_holds_at_most_a_bounded_number_of_records_in_memory(
    postgres: str, tmp_path: Path
) -> None:
    async with writing_through_a_relay(postgres, tmp_path) as (link, storage, writer):
        await writer.store([call(0)])
        await writer.flush()
        link.hang()  # writes wait on a database that never answers
        for n in range(1, 1501):
            await writer.store([call(n)])
        assert writer.spooled == 1500 and writer.queued <= 1000  # the rest is read back from disk
        link.restore()
        await writer.flush()
        page = await storage.list_calls(CallQuery(search="spooled", limit=500))
    assert page.total == 1501  # each once: a replay of what the database had taken stores nothing
    assert writer.spooled == 0
