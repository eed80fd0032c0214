"""The spool: the write-ahead journal every record goes through before it is acknowledged.

A record is appended to ``spool-N.jsonl`` (one JSON line) and fsynced, in groups, before the
writer says it has it; the writer then stores it and confirms it here, in order. A record on this
file survives a kill of the process at any moment and the loss of the machine's power; once every
line is confirmed stored and the file has grown past _EMPTIED_PAST, it is emptied (and at exit).
While the database is away the file simply grows.

Beside it, ``inflight-N.jsonl`` holds a stand-in record for each call still in progress, written
before the call's request goes upstream and struck off once the call's own record is journalled.
A process that dies mid-call thus leaves a record saying so; the stand-ins are plain writes, not
fsynced: they survive the process, not the machine.

A process holds an exclusive lock on its ``spool-N.jsonl`` for its lifetime; at start it adopts
what dead processes left behind (their records, then their calls still in flight).
"""

import asyncio
import fcntl
import json
import logging
import os
from collections.abc import Iterable, Iterator, Sequence
from pathlib import Path
from typing import IO, Any

from controlplane.recording.records import CallRecord, DebugEvent, Record

log = logging.getLogger(__name__)

_SPOOL = "spool-{}.jsonl"
_IN_FLIGHT = "inflight-{}.jsonl"
#: The in-flight file is rewritten with only the calls still open once it holds this many
#: struck-off lines per open call (and at least _COMPACT_MIN lines).
_COMPACT_RATIO, _COMPACT_MIN = 4, 512
#: The journal is emptied once everything in it is stored and it has grown past this: emptying it
#: after every record would cost the file system a truncation and a new allocation per call. A
#: restart replays what is left, already stored, at no harm (writes are idempotent).
_EMPTIED_PAST = 1 << 20


def _encode(record: Record) -> str:
    # pydantic's own serialiser: several times faster than json.dumps of model_dump on a large body.
    kind = "call" if isinstance(record, CallRecord) else "debug"
    return f'{{"kind": "{kind}", "record": {record.model_dump_json()}}}'


def _decode(line: str) -> Record:
    item: dict[str, Any] = json.loads(line)
    model = CallRecord if item["kind"] == "call" else DebugEvent
    return model.model_validate(item["record"])


def _try_lock(path: Path) -> IO[str] | None:
    handle = path.open("a+", encoding="utf-8")
    try:
        fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
        # Another process may have adopted and unlinked the file between our open and our lock.
        if os.fstat(handle.fileno()).st_ino != os.stat(path).st_ino:
            raise FileNotFoundError(path)
    except (BlockingIOError, FileNotFoundError):
        handle.close()
        return None
    return handle


def _lines(path: Path) -> Iterator[str]:
    if not path.exists():
        return
    with path.open(encoding="utf-8") as reader:
        yield from (line for line in reader if line.strip())


def _still_in_flight(path: Path) -> list[str]:
    """The stand-in records of an in-flight file whose calls were never struck off."""
    open_calls: dict[str, str] = {}
    for line in _lines(path):
        try:
            entry = json.loads(line)
        except ValueError:
            continue  # a torn last line: the process died writing it
        if "closed" in entry:
            open_calls.pop(entry["closed"], None)
        elif "open" in entry:
            open_calls[entry["open"]["call_id"]] = json.dumps({"kind": "call", "record": entry["open"]})
    return list(open_calls.values())


class _InFlight:
    """The stand-in records of the calls in progress (see the module docstring)."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self._handle = path.open("w", encoding="utf-8")
        os.chmod(path, 0o600)  # stand-ins hold prompts
        self._open: dict[str, str] = {}
        self._lines = 0

    def __len__(self) -> int:
        return len(self._open)

    def opened(self, stand_in: CallRecord) -> None:
        line = f'{{"open": {stand_in.model_dump_json()}}}'
        self._open[stand_in.call_id] = line
        self._write(line)

    def closed(self, call_id: str) -> None:
        if self._open.pop(call_id, None) is None:
            return
        self._write(json.dumps({"closed": call_id}))
        if self._lines > max(_COMPACT_MIN, _COMPACT_RATIO * len(self._open)):
            self._compact()

    def close(self) -> None:
        self._handle.close()
        if not self._open:
            self.path.unlink(missing_ok=True)

    def _write(self, line: str) -> None:
        self._handle.write(line + "\n")
        self._handle.flush()  # in the kernel: it outlives this process
        self._lines += 1

    def _compact(self) -> None:
        """Rewrites the file with the open calls only; the rename keeps one whole file at all times."""
        fresh = self.path.with_suffix(".tmp")
        fresh.write_text("".join(line + "\n" for line in self._open.values()), encoding="utf-8")
        os.chmod(fresh, 0o600)
        os.replace(fresh, self.path)
        self._handle.close()
        self._handle = self.path.open("a", encoding="utf-8")
        self._lines = len(self._open)


class Spool:
    def __init__(self, directory: Path) -> None:
        directory.mkdir(parents=True, exist_ok=True, mode=0o700)
        self._handle, index = self._claim(directory)
        self.path = Path(self._handle.name)
        self.rejects_path = directory / "rejected.jsonl"
        os.chmod(self.path, 0o600)  # records hold prompts
        stand_ins = _still_in_flight(directory / _IN_FLIGHT.format(index))
        stand_ins += self._adopt_orphans(directory)
        self._append_lines(stand_ins)  # after the records: a call's own record wins over its stand-in
        self._in_flight = _InFlight(directory / _IN_FLIGHT.format(index))
        self._sync_now()
        # Sequence numbers of lines, counted since start: the first line now in the file, the
        # line after the last one written, the first not confirmed stored, the first not fsynced.
        self._base = 0
        self._appended = sum(1 for _ in _lines(self.path))
        self._confirmed = 0
        self._synced = self._appended
        self.set_aside = 0  # records (or unreadable lines) put in rejected.jsonl since start

    @staticmethod
    def _claim(directory: Path) -> tuple[IO[str], int]:
        index = 0
        while (handle := _try_lock(directory / _SPOOL.format(index))) is None:
            index += 1
        return handle, index

    def _adopt_orphans(self, directory: Path) -> list[str]:
        """Spool files no live process holds belong to a process that died: take their records
        now, and return the stand-ins of the calls it had in flight."""
        stand_ins: list[str] = []
        indices = {
            int(path.stem.split("-")[1])
            for pattern in (_SPOOL, _IN_FLIGHT)
            for path in directory.glob(pattern.format("*"))
            if path.stem.split("-")[1].isdigit()
        }
        for index in sorted(indices):
            path = directory / _SPOOL.format(index)
            if path == self.path or (orphan := _try_lock(path)) is None:
                continue
            with orphan:
                orphan.seek(0)
                self._append_lines(line.rstrip("\n") for line in orphan if line.strip())
                in_flight = directory / _IN_FLIGHT.format(index)
                stand_ins += _still_in_flight(in_flight)
                self._sync_now()
                in_flight.unlink(missing_ok=True)
                path.unlink()
            log.info("adopted the recording spool %s left by an earlier process", path.name)
        return stand_ins

    def __len__(self) -> int:
        """Records on disk not yet confirmed stored."""
        return self._appended - self._confirmed

    @property
    def confirmed(self) -> int:
        """The sequence number of the first record not confirmed stored."""
        return self._confirmed

    def append(self, records: Sequence[Record]) -> int:
        """Writes records (not yet fsynced: see ``sync``); returns the sequence number of the first."""
        first = self._appended
        self._append_lines(_encode(r) for r in records)
        self._appended += len(records)
        return first

    async def sync(self) -> None:
        """Returns once every line appended so far is fsynced: one fsync covers every record
        appended before it, so callers that appended together share it. The fsync runs on the
        event loop: about 0.3 ms here, where handing it to a thread costs twice the time and
        four times the CPU. The sleep lets the other calls of this loop iteration append first."""
        target = self._appended
        await asyncio.sleep(0)
        if self._synced < target:
            covered = self._appended
            os.fsync(self._handle.fileno())
            self._synced = covered

    def unconfirmed(self) -> Iterator[tuple[int, Record | None]]:
        """The records not yet confirmed stored, in order, with their sequence numbers. A line
        that is not a valid record (a torn last line, as the process died mid-write; a record
        this version cannot read) is set aside with the refused records: None, to be confirmed
        with the records before it."""
        self._handle.flush()
        for seq, line in enumerate(_lines(self.path), self._base):
            if seq < self._confirmed:
                continue
            try:
                yield seq, _decode(line)
            except (ValueError, KeyError) as exc:
                log.warning("line %d of %s is not a record (%s); kept in %s", seq - self._base + 1,
                            self.path.name, exc, self.rejects_path.name)  # fmt: skip
                self._set_aside([line.removesuffix("\n")])
                yield seq, None

    def confirm(self, upto: int) -> None:
        """Every record before sequence number ``upto`` is stored: once all are, the file is emptied."""
        self._confirmed = max(self._confirmed, upto)
        if self._confirmed == self._appended and os.fstat(self._handle.fileno()).st_size > _EMPTIED_PAST:
            self._handle.truncate(0)
            self._base = self._appended

    def reject(self, records: Sequence[Record]) -> None:
        """Sets aside records the database refused (not an outage): kept for a person to look
        at in ``rejected.jsonl``, never replayed, so they cannot hold up the records behind them."""
        self._set_aside([_encode(r) for r in records])

    def opened(self, stand_in: CallRecord) -> None:
        """A call is in progress: ``stand_in`` is its record should this process die first."""
        self._in_flight.opened(stand_in)

    def closed(self, call_id: str) -> None:
        """The call's own record is journalled: its stand-in is no longer needed."""
        self._in_flight.closed(call_id)

    def _set_aside(self, lines: list[str]) -> None:
        with self.rejects_path.open("a", encoding="utf-8") as rejects:
            os.chmod(self.rejects_path, 0o600)
            fcntl.flock(rejects, fcntl.LOCK_EX)  # shared by every process using the directory
            rejects.write("".join(line + "\n" for line in lines))
            rejects.flush()
            os.fsync(rejects.fileno())
        self.set_aside += len(lines)

    def close(self) -> None:
        """Releases the lock; unconfirmed records (and calls still in flight) stay on disk for
        the next start."""
        if not self:
            self._handle.truncate(0)
        self._sync_now()
        self._in_flight.close()
        empty = os.fstat(self._handle.fileno()).st_size == 0
        self._handle.close()
        if empty:
            self.path.unlink(missing_ok=True)

    def _append_lines(self, lines: Iterable[str]) -> None:
        self._handle.write("".join(line + "\n" for line in lines))
        self._handle.flush()  # in the kernel from here: it outlives this process

    def _sync_now(self) -> None:
        self._handle.flush()
        os.fsync(self._handle.fileno())
