"""The activity bus: live events for dashboards, with resumable subscriptions.

Two implementations: in memory (one process: ``luthien up``) and Redis Streams (``REDIS_URL``:
proxies and dashboards in separate processes). Event ids are opaque strings, increasing in
publish order; a subscriber that reconnects passes the last id it saw and misses nothing still
retained.
"""

from collections.abc import AsyncGenerator
from typing import Protocol

from pydantic import BaseModel

from controlplane.models import ActivityEvent


class PublishedEvent(BaseModel):
    id: str
    event: ActivityEvent


class BusReach(BaseModel):
    """What a subscriber is seeing, so that a live view can say so honestly."""

    shared: bool  # the events of every process on this bus, or of this process only
    reachable: bool  # the bus answered its last read or write
    detail: str  # where the bus is, never its credentials


class BusUnavailable(Exception):
    """The bus cannot be reached now (its Redis is down): what ``recent`` raises. The message
    names where the bus is, never its credentials."""


#: ``subscribe(after=FROM_START)``: every event the bus still holds, then new ones. A client that
#: found no recent events subscribes from here, so that none published in between is missed.
FROM_START = "0"


class ActivityBus(Protocol):
    async def publish(self, event: ActivityEvent) -> None:
        """Hands an event to the bus. Never blocks on the network and never raises: it is called
        on the request path, and a slow or dead bus must not slow or break a call. Events
        published while the bus is unreachable are buffered (bounded) and sent when it returns.
        An event whose ``event_id`` the bus holds already (a copy sent again after a lost reply)
        is dropped, so that no subscriber, live or resuming, sees it twice."""
        ...

    def subscribe(self, after: str | None = None) -> AsyncGenerator[PublishedEvent]:
        """Events published after ``after`` (an id this bus gave out, or ``FROM_START``), then new
        ones as they come, until ``close()``. ``after=None`` starts with the next event published
        once iteration has begun. Survives the bus going away and coming back. Release it with
        ``aclose()``."""
        ...

    async def recent(self, limit: int) -> list[PublishedEvent]:
        """The latest ``limit`` retained events, oldest first. Raises ``BusUnavailable`` when
        the bus cannot be reached: unlike a subscription, an answer cannot wait for it."""
        ...

    def reach(self) -> BusReach:
        """Whose events this bus carries, and whether it could be reached just now."""
        ...

    async def close(self) -> None: ...
