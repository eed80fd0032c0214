"""Storage, activity bus and recorder, opened from the configuration and closed in order."""

import contextlib
import logging
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path

from controlplane.activity import ActivityBus, open_bus
from controlplane.policy_nudge import PolicyNudge, open_nudge
from controlplane.recording.spool import Spool
from controlplane.recording.writer import RecordWriter
from controlplane.storage import Storage, StorageUnavailable, open_storage

log = logging.getLogger(__name__)


@dataclass
class Backends:
    storage: Storage
    bus: ActivityBus
    writer: RecordWriter | None  # None: this process only reads (the dashboard)
    nudge: PolicyNudge  # tells the other replicas a policy version was activated


@contextlib.asynccontextmanager
async def open_backends(
    database_url: str | None, redis_url: str | None, data_dir: Path, *, record: bool
) -> AsyncIterator[Backends]:
    """Opens the backends; with ``record``, also the spool and the writer. Neither an unreachable
    database nor an unreachable Redis stops start-up: the writer spools, the bus buffers."""
    storage = open_storage(database_url, data_dir)
    bus = open_bus(redis_url)
    nudge = open_nudge(redis_url)
    writer = RecordWriter(storage, Spool(data_dir / "spool")) if record else None
    try:
        await storage.migrate()
    except StorageUnavailable as exc:
        log.warning("database unavailable at start (%s); will retry", exc)
    if writer is not None:
        writer.start()
    try:
        yield Backends(storage, bus, writer, nudge)
    finally:
        if writer is not None:
            await writer.close()
        await nudge.close()
        await bus.close()
        await storage.close()
