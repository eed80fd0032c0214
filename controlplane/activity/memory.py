"""The in-process activity bus: a ring buffer of recent events, for a single process."""

import asyncio
import re
from collections import deque
from collections.abc import AsyncGenerator
from itertools import islice

from controlplane.activity.bus import BusReach, PublishedEvent
from controlplane.models import ActivityEvent


class InMemoryBus:
    """Ids are increasing integers as strings. A subscriber that falls more than ``retain`` events
    behind continues from the oldest retained one."""

    def __init__(self, retain: int = 10_000) -> None:
        self._events: deque[PublishedEvent] = deque(maxlen=retain)
        self._held: set[str] = set()  # the event ids of ``_events``, to know a copy sent again
        self._last_id = 0
        # Replaced on every publish, so each waiting subscriber wakes once per batch of publishes
        # without the publisher waiting on anything.
        self._published = asyncio.Event()
        self._closed = False

    async def publish(self, event: ActivityEvent) -> None:
        if event.event_id in self._held:
            return
        if self._events and len(self._events) == self._events.maxlen:
            self._held.discard(self._events[0].event.event_id)
        self._held.add(event.event_id)
        self._last_id += 1
        self._events.append(PublishedEvent(id=str(self._last_id), event=event))
        self._wake()

    async def subscribe(self, after: str | None = None) -> AsyncGenerator[PublishedEvent]:
        cursor = self._start(after)
        while not self._closed:
            published = self._published
            for item in self._since(cursor):
                cursor = int(item.id)
                yield item
            if cursor == self._last_id:
                await published.wait()

    async def recent(self, limit: int) -> list[PublishedEvent]:
        return list(self._events)[-limit:] if limit > 0 else []

    def reach(self) -> BusReach:
        return BusReach(shared=False, reachable=True, detail="this process's events only (no REDIS_URL)")

    async def close(self) -> None:
        self._closed = True
        self._wake()

    def _wake(self) -> None:
        self._published.set()
        self._published = asyncio.Event()

    def _start(self, after: str | None) -> int:
        """The id to continue after. An id this bus never issued (garbage, one from an earlier
        process or another bus) means "from the next event", not an error."""
        if after is None or not re.fullmatch(r"[0-9]{1,20}", after) or int(after) > self._last_id:
            return self._last_id
        return int(after)

    def _since(self, cursor: int) -> list[PublishedEvent]:
        # From the newest end: a subscriber that keeps up asks for a few events, not a scan of all.
        newer = list(islice(reversed(self._events), self._last_id - cursor))
        newer.reverse()
        return newer
