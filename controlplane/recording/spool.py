"""The spool: an append-only file of records the database could not take yet.

Each line is one record as JSON, written and fsynced before the writer moves on, so a record
acknowledged to the spool survives an abrupt restart. A process holds an exclusive lock on its
spool file for its lifetime; at start it adopts the spools that dead processes left behind.
"""

import fcntl
import json
import logging
import os
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import IO, Any

from controlplane.recording.records import CallRecord, DebugEvent, Record

log = logging.getLogger(__name__)

_PATTERN = "spool-{}.jsonl"


def _encode(record: Record) -> str:
    kind = "call" if isinstance(record, CallRecord) else "debug"
    return json.dumps({"kind": kind, "record": record.model_dump(mode="json")}, ensure_ascii=False)


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


class Spool:
    def __init__(self, directory: Path) -> None:
        directory.mkdir(parents=True, exist_ok=True, mode=0o700)
        self._handle = self._claim(directory)
        self.path = Path(self._handle.name)
        self.rejects_path = directory / "rejected.jsonl"
        os.chmod(self.path, 0o600)  # records hold prompts
        self._adopt_orphans(directory)
        self._count = sum(1 for _ in self._lines())
        self.set_aside = 0  # records (or unreadable lines) put in rejected.jsonl since start

    @staticmethod
    def _claim(directory: Path) -> IO[str]:
        index = 0
        while (handle := _try_lock(directory / _PATTERN.format(index))) is None:
            index += 1
        return handle

    def _adopt_orphans(self, directory: Path) -> None:
        """Spool files no live process holds belong to a process that died: take their records."""
        for path in sorted(directory.glob(_PATTERN.format("*"))):
            if path == self.path or (orphan := _try_lock(path)) is None:
                continue
            with orphan:
                orphan.seek(0)
                lines = orphan.read()
                self._handle.write(lines if not lines or lines.endswith("\n") else lines + "\n")
                self._sync()
                path.unlink()
            log.info("adopted the recording spool %s left by an earlier process", path.name)

    def __len__(self) -> int:
        return self._count

    def append(self, records: Sequence[Record]) -> None:
        self._handle.write("".join(_encode(r) + "\n" for r in records))
        self._sync()
        self._count += len(records)

    def read(self) -> Iterator[Record]:
        """The spooled records in the order they were appended. A line that is not a valid record
        (a torn last line, as the process died mid-write; a record this version cannot read) is
        set aside with the refused records."""
        for number, line in enumerate(self._lines(), 1):
            try:
                yield _decode(line)
            except (ValueError, KeyError) as exc:
                log.warning("line %d of %s is not a record (%s); kept in %s", number, self.path.name, exc,
                            self.rejects_path.name)  # fmt: skip
                self._set_aside([line.removesuffix("\n")])

    def reject(self, records: Sequence[Record]) -> None:
        """Sets aside records the database refused (not an outage): kept for a person to look
        at in ``rejected.jsonl``, never replayed, so they cannot hold up the records behind them."""
        self._set_aside([_encode(r) for r in records])

    def _set_aside(self, lines: list[str]) -> None:
        with self.rejects_path.open("a", encoding="utf-8") as rejects:
            os.chmod(self.rejects_path, 0o600)
            fcntl.flock(rejects, fcntl.LOCK_EX)  # shared by every process using the directory
            rejects.write("".join(line + "\n" for line in lines))
            rejects.flush()
            os.fsync(rejects.fileno())
        self.set_aside += len(lines)

    def clear(self) -> None:
        self._handle.truncate(0)
        self._sync()
        self._count = 0

    def close(self) -> None:
        """Releases the lock; a non-empty spool stays on disk for the next start."""
        empty = os.fstat(self._handle.fileno()).st_size == 0
        self._handle.close()
        if empty:
            self.path.unlink(missing_ok=True)

    def _lines(self) -> Iterator[str]:
        self._handle.flush()
        with self.path.open(encoding="utf-8") as reader:
            yield from (line for line in reader if line.strip())

    def _sync(self) -> None:
        self._handle.flush()
        os.fsync(self._handle.fileno())
