"""Recording: a record is acknowledged once it is on disk, and stored in the background.

``store`` journals the records in the spool (fsynced, one fsync per group of concurrent callers)
and returns: from then on a kill of the process at any moment loses nothing. One background task
takes what was journalled, in order, writes it to the sink in batches and confirms it in the
spool. When the sink is unreachable the writer stops holding records in memory (they are on disk)
and retries with backoff; once the sink answers, the spool is replayed in order before anything
newer. Writes are idempotent, so a replay that repeats what was already stored (after a kill
between the write and its confirmation) never duplicates. A record the sink refuses outright is
set aside in the spool's rejects file rather than retried forever.
"""

import asyncio
import contextlib
import itertools
import logging
import time
from collections.abc import Sequence
from typing import Protocol

from controlplane.recording.records import CallRecord, Record
from controlplane.recording.spool import Spool

log = logging.getLogger(__name__)

#: Journalled records the writer holds in memory to store without reading them back. Past it (a
#: database that hangs rather than fails), the writer falls behind and reads them from the spool.
_HELD_IN_MEMORY = 1000


class StorageUnavailable(Exception):
    """The database cannot be reached or refused the operation; the caller may retry later."""


class StorageRefused(Exception):
    """The database refused the data itself (a value out of range, say): retrying cannot help."""


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
        # Journalled records, with their sequence numbers in the spool, for the writer to store
        # without reading them back. While the writer is behind (the spool holds records that
        # are not here), none is added: the replay reads them from the spool.
        self._queue: asyncio.Queue[tuple[int, Record]] = asyncio.Queue()
        self._task: asyncio.Task[None] | None = None
        self._migrated = False
        self._behind = True  # left by an earlier process, perhaps: replay the spool first
        self._replaying = False
        self.database_ok = True
        self.stored = 0

    @property
    def rejected(self) -> int:
        """Records set aside since start: refused by the database, or unreadable in the spool."""
        return self._spool.set_aside

    @property
    def queued(self) -> int:
        """Journalled records waiting in memory for the writer."""
        return self._queue.qsize()

    @property
    def spooled(self) -> int:
        """Journalled records not yet confirmed stored (on disk, whatever the sink's state)."""
        return len(self._spool)

    def opened(self, stand_in: CallRecord) -> None:
        """A call has started: ``stand_in`` is recorded for it should this process die before
        the call's own record is stored."""
        self._spool.opened(stand_in)

    async def store(self, records: Sequence[Record]) -> None:
        """Returns once ``records`` are on disk; they reach the sink in the background."""
        first = self._spool.append(records)
        if self._queue.qsize() + len(records) > _HELD_IN_MEMORY:
            self._behind = True
        if not self._behind:
            for seq, record in enumerate(records, first):
                self._queue.put_nowait((seq, record))
        await self._spool.sync()
        for record in records:
            if isinstance(record, CallRecord):
                self._spool.closed(record.call_id)

    def start(self) -> None:
        self._task = asyncio.create_task(self._run(), name="record-writer")

    async def flush(self) -> None:
        """Returns once everything journalled so far is stored, or waits in the spool for a sink
        that is down."""
        while True:
            await self._queue.join()
            # A replay to come, or under way (what it stores was not queued):
            if not ((self._behind or self._replaying) and self._spool and self.database_ok):
                return
            await asyncio.sleep(0.01)

    async def close(self, timeout: float = 10.0) -> None:
        """Stores what it can within ``timeout``, then stops; what is left stays in the spool
        for the next start."""
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self.flush(), timeout)
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
        self._spool.close()

    async def _run(self) -> None:
        while True:
            try:
                if self._behind:
                    await self._catch_up()
                else:
                    await self._store_next()
            except Exception:
                # A bug, not an outage: the records are in the spool; try them again later.
                log.exception("recording failed; the records stay in the spool")
                self._behind = True
                self._back_off()

    async def _catch_up(self) -> None:
        """Replays the spool once it is time to try the sink; meanwhile what was queued before
        the writer fell behind is dropped from memory (it is on disk: the replay reads it)."""
        while (wait := self._retry_at - time.monotonic()) > 0:
            for _ in await self._collect(timeout=wait):
                self._queue.task_done()
        try:
            if not self._migrated:
                await self._storage.migrate()
                self._migrated = True
            # Records journalled from now on are queued, behind the replay of those before them:
            # under a steady load the replay ends, rather than chasing the newest record.
            self._behind, self._replaying = False, True
            await self._replay(upto=self._spool.confirmed + len(self._spool))
        except StorageUnavailable as exc:
            self._behind = True
            self._database_down(exc)
            return
        finally:
            self._replaying = False
        self._sink_reachable()

    async def _replay(self, upto: int) -> None:
        """Stores the spool's records before sequence number ``upto``, in order."""
        replayed = 0
        records = itertools.takewhile(lambda item: item[0] < upto, self._spool.unconfirmed())
        while chunk := list(itertools.islice(records, self._batch_size)):
            await self._write([record for _, record in chunk if record is not None])
            self._spool.confirm(chunk[-1][0] + 1)
            replayed += len(chunk)
        if replayed:
            log.info("replayed %d spooled records", replayed)

    async def _store_next(self) -> None:
        items = await self._collect(timeout=None)
        try:
            # A replay may have stored some of them already, from the spool.
            batch = [(seq, record) for seq, record in items if seq >= self._spool.confirmed]
            if batch:
                await self._write([record for _, record in batch])
                self._spool.confirm(batch[-1][0] + 1)
        except StorageUnavailable as exc:
            self._behind = True
            self._database_down(exc)
        finally:
            for _ in items:
                self._queue.task_done()

    async def _collect(self, timeout: float | None) -> list[tuple[int, Record]]:
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

    def _sink_reachable(self) -> None:
        if not self.database_ok:
            log.warning("database reachable again; recording resumed")
        self.database_ok, self._retry_delay = True, self._retry_min

    def _database_down(self, exc: StorageUnavailable) -> None:
        if self.database_ok:
            log.warning("database unavailable (%s); records wait in %s", exc, self._spool.path)
        self.database_ok = False
        self._back_off()

    def _back_off(self) -> None:
        self._retry_at = time.monotonic() + self._retry_delay
        self._retry_delay = min(self._retry_delay * 2, self._retry_max)


class Recorder(Protocol):
    """Where the control plane hands finished records (a ``RecordWriter`` in practice)."""

    def opened(self, stand_in: CallRecord) -> None: ...

    async def store(self, records: Sequence[Record]) -> None: ...
