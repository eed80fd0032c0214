"""Recording survives the database going away: calls keep flowing, records are spooled, and
once the database is back every call is stored exactly once, even across an abrupt restart."""

import asyncio
import signal
import threading
import uuid
from collections.abc import AsyncIterator
from pathlib import Path
from urllib.parse import urlsplit

import asyncpg
import pytest

from tests.conftest import RunningProxy, start_proxy, wait_until_listening
from tests.databases import fresh_postgres_database
from tests.fake_provider import FakeProvider
from tests.recorded import recorded
from tests.tcp_relay import TcpRelay

pytestmark = pytest.mark.timeout(300)


@pytest.fixture
async def database() -> AsyncIterator[str]:
    async with fresh_postgres_database() as url:
        yield url


def through(relay: TcpRelay, url: str) -> str:
    """``url`` with its host and port replaced by the relay's."""
    parts = urlsplit(url)
    return parts._replace(netloc=f"{parts.username}@127.0.0.1:{relay.port}").geturl()


async def stored_rows(url: str, word: str) -> list[str]:
    """Every stored call id whose content has ``word``, duplicates included."""
    connection = await asyncpg.connect(url)
    try:
        rows = await connection.fetch("SELECT call_id FROM calls WHERE search_text LIKE $1", f"%{word}%")
    finally:
        await connection.close()
    return [row["call_id"] for row in rows]


class CallsFlowing:
    """Makes calls through the proxy, one after another, from a thread, until stopped."""

    def __init__(self, proxy: RunningProxy, word: str) -> None:
        self._proxy, self._word = proxy, word
        self._stop = threading.Event()
        self.results: list[dict[str, object]] = []
        self._thread = threading.Thread(target=self._run, daemon=True)

    def __enter__(self) -> "CallsFlowing":
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join(60)

    def _run(self) -> None:
        while not self._stop.is_set():
            n = len(self.results)
            api = ("chat", "messages", "responses")[n % 3]
            self.results += self._proxy.sdk({"api": api, "stream": n % 2 == 0, "prompt": f"{self._word} {n}"})


async def results_beyond(flowing: CallsFlowing, count: int) -> None:
    """Waits until more than ``count`` calls have been answered; generous, as the machine may be
    busy: what matters is that calls are answered at all while the database is away."""
    for _ in range(300):
        if len(flowing.results) > count:
            return
        await asyncio.sleep(0.1)
    pytest.fail(f"only {len(flowing.results)} calls answered, waiting for more than {count}")


async def test_a_database_outage_with_calls_flowing_loses_and_duplicates_nothing(
    fake: FakeProvider, database: str, tmp_path: Path
) -> None:
    word = f"outage{uuid.uuid4().hex[:10]}"
    with TcpRelay("127.0.0.1", urlsplit(database).port or 5432) as link:
        proxy = start_proxy("outage", None, fake, tmp_path, tmp_path / "data", through(link, database))
        try:
            wait_until_listening(proxy)
            proxy.start_sdk()
            with CallsFlowing(proxy, word) as flowing:
                await results_beyond(flowing, 0)
                link.cut()  # open connections reset, new ones refused
                await results_beyond(flowing, len(flowing.results) + 3)  # the proxy kept answering
                link.restore()
                await asyncio.sleep(3)
            assert flowing.results and all(r["ok"] for r in flowing.results), flowing.results
            records = await recorded(database, word, len(flowing.results))
        finally:
            proxy.terminate()
            proxy.wait()
    assert sorted(r.original_request is not None for r in records) == [True] * len(records)
    ids = await stored_rows(database, word)
    assert len(ids) == len(set(ids)) == len(flowing.results)
    assert "records wait in" in proxy.log() and "replayed" in proxy.log()


async def test_records_spooled_before_an_abrupt_restart_are_stored_after_it(
    fake: FakeProvider, database: str, tmp_path: Path
) -> None:
    word = f"restart{uuid.uuid4().hex[:10]}"
    data_dir = tmp_path / "data"
    with TcpRelay("127.0.0.1", urlsplit(database).port or 5432) as link:
        first = start_proxy("before", None, fake, tmp_path, data_dir, through(link, database))
        try:
            wait_until_listening(first)
            link.cut()
            calls = [{"api": "chat", "stream": False, "prompt": f"{word} {n}"} for n in range(5)]
            assert all(r["ok"] for r in first.sdk(*calls))
            spool = data_dir / "spool"
            for _ in range(100):  # until the recorder has acknowledged all five to the spool
                lines = [line for f in spool.glob("spool-*.jsonl") for line in f.read_text().splitlines()]
                if sum(word in line for line in lines) == 5:
                    break
                await asyncio.sleep(0.1)
            else:
                pytest.fail(f"the five records never reached the spool:\n{first.log()[-3000:]}")
            first.process.send_signal(signal.SIGKILL)
        finally:
            first.terminate()
            first.wait()
        link.restore()
        second = start_proxy("after", None, fake, tmp_path, data_dir, through(link, database))
        try:
            wait_until_listening(second)
            records = await recorded(database, word, 5)
        finally:
            second.terminate()
            second.wait()
    assert len(records) == 5
    assert len(await stored_rows(database, word)) == 5
    assert not any(f.stat().st_size for f in (data_dir / "spool").glob("spool-*.jsonl"))
