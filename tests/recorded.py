"""Reading what a proxy recorded, as the dashboard would: through the storage interface."""

import asyncio
import time
from pathlib import Path

from controlplane.recording.records import CallRecord
from controlplane.storage import CallQuery, Storage, open_storage


async def wait_for_calls(storage: Storage, search: str, count: int, timeout: float = 15) -> list[CallRecord]:
    """The ``count`` recorded calls whose content contains ``search`` (oldest first), waiting for
    the recorder's batches to land; fails if more or fewer than ``count`` arrive."""
    deadline = time.monotonic() + timeout
    while True:
        page = await storage.list_calls(CallQuery(search=search, limit=500))
        if page.total >= count or time.monotonic() > deadline:
            break
        await asyncio.sleep(0.1)
    assert page.total == count, f"expected {count} recorded calls containing {search!r}, found {page.total}"
    records = [await storage.get_call(summary.call_id) for summary in reversed(page.calls)]
    return [r for r in records if r is not None]


async def recorded(database_url: str, search: str, count: int) -> list[CallRecord]:
    storage = open_storage(database_url, Path("/nonexistent"))
    try:
        return await wait_for_calls(storage, search, count)
    finally:
        await storage.close()
