"""Live activity from the bus: the latest events as JSON, and a resumable Server-Sent Events stream."""

import asyncio
from collections.abc import AsyncIterator
from typing import Annotated, Literal

from fastapi import APIRouter, Header, Query
from fastapi.responses import StreamingResponse
from pydantic import BaseModel, ConfigDict, Field

from controlplane.activity.bus import ActivityBus, BusReach, PublishedEvent
from controlplane.models import ActivityEvent, ActivityType

#: A comment line this often keeps proxies and browsers from closing an idle stream.
KEEPALIVE_SECONDS = 15.0
#: How often a live stream checks whether its bus can still be reached.
STATUS_SECONDS = 1.0
#: How far back ``/api/activity/recent`` looks for events that pass its filters.
RECENT_WINDOW = 1000


class ActivityFilter(BaseModel):
    """Which events to show; every filter is optional and they combine with AND. Host and model
    match case-insensitive substrings, as the monitor's filter boxes do."""

    # A parameter the filter does not know would otherwise be ignored, letting every event through.
    model_config = ConfigDict(extra="forbid")

    host: str | None = None
    model: str | None = None
    type: list[ActivityType] = []
    # Terminal event types only: a call's outcome is not known before its last event.
    outcome: list[Literal["completed", "blocked", "error"]] = []

    def matches(self, event: ActivityEvent) -> bool:
        return (
            _contains(event.host, self.host)
            and _contains(event.model, self.model)
            and (not self.type or event.type in self.type)
            and (not self.outcome or event.type in self.outcome)
        )


class RecentQuery(ActivityFilter):
    limit: int = Field(default=100, ge=1, le=RECENT_WINDOW)


class StreamQuery(ActivityFilter):
    after: str | None = Field(default=None, description="The id of the last event received.")


def _contains(value: str | None, wanted: str | None) -> bool:
    return not wanted or wanted.lower() in (value or "").lower()


def router(bus: ActivityBus, ending: asyncio.Event) -> APIRouter:
    """``ending``: set when the server stops, which ends every live stream (a browser tab left
    open must not hold the server's shutdown)."""
    api = APIRouter()

    @api.get("/api/activity/recent")
    async def recent(query: Annotated[RecentQuery, Query()]) -> list[PublishedEvent]:
        """Oldest first, like the bus."""
        events = await bus.recent(RECENT_WINDOW)
        return [published for published in events if query.matches(published.event)][-query.limit :]

    @api.get("/api/activity/stream")
    async def stream(
        query: Annotated[StreamQuery, Query()], last_event_id: Annotated[str | None, Header()] = None
    ) -> StreamingResponse:
        # EventSource sends Last-Event-ID when it reconnects; it wins over the ?after= of the URL.
        return StreamingResponse(
            sse_frames(bus, last_event_id or query.after, query, ending),
            media_type="text/event-stream",
            headers={"Cache-Control": "no-cache"},
        )

    return api


async def sse_frames(
    bus: ActivityBus, after: str | None, only: ActivityFilter, ending: asyncio.Event
) -> AsyncIterator[str]:
    """The stream's text, until the subscription ends, the client leaves or the server stops.

    Besides the ``activity`` events, a ``status`` event says whose events these are and whether
    the bus can be reached (``BusReach``): first, and again whenever that changes, so that a
    monitor never shows "Live" over a bus it cannot read.

    When the client disconnects, Starlette cancels this generator; the ``finally`` then cancels
    the read in progress, which ends the subscription and whatever it holds on the bus.
    """
    subscription = bus.subscribe(after)
    next_event = asyncio.ensure_future(anext(subscription))
    stopping = asyncio.ensure_future(ending.wait())
    try:
        # The browser's reconnect delay; as the first frame, it also tells a client the stream is open.
        yield "retry: 2000\n\n"
        reach = bus.reach()
        yield _status(reach)
        quiet, tick = 0.0, min(STATUS_SECONDS, KEEPALIVE_SECONDS)
        while True:
            # asyncio.wait, not wait_for: a timeout must not cancel the read (and so the subscription).
            done, _ = await asyncio.wait({next_event, stopping}, timeout=tick, return_when="FIRST_COMPLETED")
            if stopping in done:
                return
            if (now := bus.reach()) != reach:
                reach = now
                yield _status(reach)
            if not done:
                quiet += tick
                if quiet >= KEEPALIVE_SECONDS:
                    quiet = 0.0
                    yield ": keepalive\n\n"
                continue
            try:
                published = next_event.result()
            except StopAsyncIteration:
                return
            next_event = asyncio.ensure_future(anext(subscription))
            if only.matches(published.event):
                yield f"id: {published.id}\nevent: activity\ndata: {published.event.model_dump_json()}\n\n"
    finally:
        next_event.cancel()
        stopping.cancel()


def _status(reach: BusReach) -> str:
    return f"event: status\ndata: {reach.model_dump_json()}\n\n"
