"""Recording off the request path: a queue, a batched writer, and a spool for outages.

``submit`` never waits. One background task takes what is queued in batches and writes it. When
the database is unreachable, batches go to the spool file instead and the writer retries with
backoff; once the database answers, the spool is replayed in order before anything newer, so
nothing is lost, and writes are idempotent, so a replay cut short never duplicates. A record the
database refuses outright is set aside in the spool's rejects file rather than retried forever.
"""

import asyncio
import contextlib
import itertools
import logging
import time
from collections.abc import Sequence
from typing import Protocol

from controlplane.recording.records import Record
from controlplane.recording.spool import Spool
from controlplane.storage.base import StorageUnavailable

log = logging.getLogger(__name__)


class RecordSink(Protocol):
    """Where the writer stores batches: a database (any ``Storage``), or a remote control plane.
    Both raise ``StorageUnavailable`` when they cannot take a batch now."""

    async def migrate(self) -> None: ...

    async def write(self, records: Sequence[Record]) -> None: ...


class RecordWriter:
    def __init__(
        self,
        storage: RecordSink,
        spool: Spool,
        *,
        batch_size: int = 200,
        batch_delay: float = 0.05,
        retry_min: float = 0.5,
        retry_max: float = 5.0,
    ) -> None:
        self._storage = storage
        self._spool = spool
        self._batch_size = batch_size
        self._batch_delay = batch_delay
        self._retry_min, self._retry_max = retry_min, retry_max
        self._retry_delay = retry_min
        self._retry_at = 0.0
        self._queue: asyncio.Queue[Record] = asyncio.Queue()
        self._task: asyncio.Task[None] | None = None
        self._migrated = False
        self.database_ok = True
        self.stored = 0

    @property
    def rejected(self) -> int:
        """Records set aside since start: refused by the database, or unreadable in the spool."""
        return self._spool.set_aside

    @property
    def queued(self) -> int:
        return self._queue.qsize()

    @property
    def spooled(self) -> int:
        return len(self._spool)

    def submit(self, record: Record) -> None:
        self._queue.put_nowait(record)

    def start(self) -> None:
        self._task = asyncio.create_task(self._run(), name="record-writer")

    async def flush(self) -> None:
        """Returns once everything submitted so far is stored or spooled."""
        await self._queue.join()

    async def close(self, timeout: float = 10.0) -> None:
        """Stores or spools what is queued, then stops; a non-empty spool waits for the next start."""
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self.flush(), timeout)
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
        leftover = [self._queue.get_nowait() for _ in range(self._queue.qsize())]
        if leftover:
            self._spool.append(leftover)
        self._spool.close()

    async def _run(self) -> None:
        while True:
            waiting = bool(self._spool) or not self._migrated
            batch = await self._collect(timeout=self._retry_delay if waiting else None)
            try:
                await self._store(batch)
            except Exception:
                # A bug, not an outage: keep the records for a replay rather than lose them.
                log.exception("recording failed; the batch is kept in the spool")
                self._spool.append(batch)
            finally:
                for _ in batch:
                    self._queue.task_done()

    async def _collect(self, timeout: float | None) -> list[Record]:
        """The next batch: waits up to ``timeout`` for a first record (forever when None), then
        takes whatever else arrives within the batch delay."""
        try:
            first = await asyncio.wait_for(self._queue.get(), timeout)
        except TimeoutError:
            return []
        batch = [first]
        deadline = time.monotonic() + self._batch_delay
        while len(batch) < self._batch_size and (left := deadline - time.monotonic()) > 0:
            try:
                batch.append(await asyncio.wait_for(self._queue.get(), left))
            except TimeoutError:
                break
        return batch

    async def _store(self, batch: list[Record]) -> None:
        if not self.database_ok and time.monotonic() < self._retry_at:
            if batch:  # not time to try the database again yet
                self._spool.append(batch)
            return
        try:
            if not self._migrated:
                await self._storage.migrate()
                self._migrated = True
            await self._replay()
            if batch:
                await self._write(batch)
        except StorageUnavailable as exc:
            if batch:
                self._spool.append(batch)
            self._database_down(exc)
            return
        if not self.database_ok:
            log.warning("database reachable again; recording resumed")
        self.database_ok, self._retry_delay = True, self._retry_min

    async def _replay(self) -> None:
        if not self._spool:
            return
        count = len(self._spool)
        records = self._spool.read()
        while chunk := list(itertools.islice(records, self._batch_size)):
            await self._write(chunk)
        self._spool.clear()
        log.info("replayed %d spooled records", count)

    async def _write(self, records: Sequence[Record]) -> None:
        """Stores records. When the database refuses a batch (an error other than being
        unavailable), each record is tried alone and one refused alone is set aside, so a bad
        record never blocks the ones behind it, nor, through the spool, every later one."""
        try:
            await self._storage.write(records)
        except StorageUnavailable:
            raise
        except Exception:
            if len(records) > 1:
                for record in records:
                    await self._write([record])
                return
            log.exception("the database refused a record; it is kept in %s", self._spool.rejects_path)
            self._spool.reject(records)
            return
        self.stored += len(records)

    def _database_down(self, exc: StorageUnavailable) -> None:
        if self.database_ok:
            log.warning("database unavailable (%s); spooling records to %s", exc, self._spool.path)
        self.database_ok = False
        self._retry_at = time.monotonic() + self._retry_delay
        self._retry_delay = min(self._retry_delay * 2, self._retry_max)


class Recorder(Protocol):
    """Where the control plane hands finished records (a ``RecordWriter`` in practice)."""

    def submit(self, record: Record) -> None: ...
