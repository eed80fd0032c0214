"""The activity bus on a Redis Stream, shared by proxies and dashboards in separate processes.

Publishing never waits on Redis: events go to a bounded local queue that a background task sends
in batches (one script call each), keeping them through an outage. Subscribers read with XREAD BLOCK and,
after a connection error, reconnect and continue after the last id they yielded.

The same event can be published twice: a batch whose reply was lost is sent again whole, though
Redis may have stored it (Redis 7 has no idempotent XADD), and a sidecar whose POST failed after the
control plane published it sends its events again. So events are added by a script that skips an
event whose ``event_id`` the stream holds already: the stream has no copies, and a subscriber,
live or resuming from any id, sees each event once.
"""

import asyncio
import logging
import re
from collections import deque
from collections.abc import AsyncGenerator
from typing import cast
from urllib.parse import urlsplit

from pydantic import ValidationError
from redis.asyncio import Redis
from redis.backoff import NoBackoff
from redis.exceptions import RedisError
from redis.retry import Retry

from controlplane.activity.bus import FROM_START, BusReach, BusUnavailable, PublishedEvent
from controlplane.models import ActivityEvent

log = logging.getLogger(__name__)

_BATCH = 500
_BLOCK_MS = 1000  # bounds how long a subscriber takes to notice close()
_SOCKET_TIMEOUT = 3.0  # must exceed _BLOCK_MS
_FLUSH_SECONDS = 1.0
_STREAM_ID = re.compile(r"([0-9]{1,20})-([0-9]{1,20})")
_BEFORE_ALL = "0-0"

#: Adds each event (ARGV: the stream's length, then pairs of event id and JSON) to the stream
#: KEYS[1], unless its id is in KEYS[2], the ids of the latest events added, scored by when. In one
#: script, so that a copy racing its original (sent by another control plane) is caught as well.
#: Twice as many ids as entries are kept, since the stream is trimmed only approximately.
_ADD_ONCE = """
local retain = tonumber(ARGV[1])
for i = 2, #ARGV, 2 do
  if not redis.call('ZSCORE', KEYS[2], ARGV[i]) then
    local entry = redis.call('XADD', KEYS[1], 'MAXLEN', '~', retain, '*', 'event', ARGV[i + 1])
    redis.call('ZADD', KEYS[2], tonumber(string.match(entry, '^%d+')), ARGV[i])
  end
end
redis.call('ZREMRANGEBYRANK', KEYS[2], 0, -2 * retain - 1)
"""

#: Entries as redis-py returns them with decode_responses; fields are None for an entry deleted
#: while being read.
_Entries = list[tuple[str, dict[str, str] | None]]


class _Backoff:
    def __init__(self, first: float = 0.1, limit: float = 2.0) -> None:
        self._first = self._delay = first
        self._limit = limit

    def reset(self) -> None:
        self._delay = self._first

    async def sleep(self) -> None:
        await asyncio.sleep(self._delay)
        self._delay = min(self._delay * 2, self._limit)


def _order(stream_id: str) -> tuple[int, int]:
    milliseconds, sequence = stream_id.split("-")
    return int(milliseconds), int(sequence)


def _valid_id(after: str | None) -> str | None:
    """``after`` if Redis would accept it as a stream id, else None (read from the next event)."""
    if after == FROM_START:
        return _BEFORE_ALL
    if after is None or not _STREAM_ID.fullmatch(after):
        return None
    return after if max(_order(after)) < 2**64 else None


class RedisStreamBus:
    """Events live in the stream ``stream``, trimmed to about ``retain`` entries, and the ids of
    the latest ones in the sorted set ``stream:published``; at most ``retain`` events wait locally
    while Redis is unreachable, since more would not be retained anyway."""

    def __init__(self, url: str, stream: str = "luthien:activity", retain: int = 10_000) -> None:
        self._redis = Redis.from_url(
            url,
            decode_responses=True,
            socket_connect_timeout=1.0,
            socket_timeout=_SOCKET_TIMEOUT,
            retry=Retry(NoBackoff(), 0),  # the sender and subscribers retry with their own backoff
        )
        parts = urlsplit(url)  # only host and port: the URL may carry a password
        self._where = f"{parts.hostname}:{parts.port or 6379}/{stream}"
        self._stream = stream
        self._published = f"{stream}:published"
        self._add_once = self._redis.register_script(_ADD_ONCE)
        self._retain = retain
        self._queue: deque[tuple[str, str]] = deque()  # (the event's id, its JSON), to send
        self._in_flight: list[tuple[str, str]] = []
        self._queued = asyncio.Event()
        self._sender: asyncio.Task[None] | None = None
        self._closed = False
        self._unreachable = False  # the sender's last write failed
        self._unread = False  # a subscriber's last read failed
        self._warned_of_drops = False
        self._dropped = 0

    @property
    def dropped(self) -> int:
        """Events discarded, oldest first, because the local queue was full."""
        return self._dropped

    async def publish(self, event: ActivityEvent) -> None:
        if self._closed:
            return
        try:
            data = event.model_dump_json()
        except ValueError as exc:  # ``data`` holds something JSON cannot carry
            log.warning("activity event for call %s not published: %s", event.call_id, exc)
            return
        if len(self._queue) >= self._retain:
            self._drop_oldest()
        self._queue.append((event.event_id, data))
        self._queued.set()
        if self._sender is None or self._sender.done():
            self._sender = asyncio.create_task(self._send_forever(), name="activity-bus-sender")

    async def subscribe(self, after: str | None = None) -> AsyncGenerator[PublishedEvent]:
        cursor = _valid_id(after)
        backoff = _Backoff()
        lost = False
        while not self._closed:
            try:
                cursor = await self._resume_point(cursor)
                while not self._closed:
                    reply = cast(
                        list[tuple[str, _Entries]],
                        await self._redis.xread({self._stream: cursor}, count=_BATCH, block=_BLOCK_MS),
                    )
                    if lost:
                        log.info("activity subscription to %s resumed", self._where)
                        lost = False
                    self._unread = False
                    backoff.reset()
                    for _stream, entries in reply:
                        for entry_id, fields in entries:
                            cursor = entry_id
                            if (item := self._decode(entry_id, fields)) is not None:
                                yield item
            except (RedisError, OSError) as exc:
                if self._closed:
                    return
                self._unread = True
                if not lost:
                    log.warning("activity subscription to %s lost (%s); reconnecting", self._where, exc)
                    lost = True
                await backoff.sleep()

    async def recent(self, limit: int) -> list[PublishedEvent]:
        if limit <= 0:
            return []
        try:
            entries = cast(_Entries, await self._redis.xrevrange(self._stream, count=limit))
        except (RedisError, OSError) as exc:
            self._unread = True
            raise BusUnavailable(f"Redis at {self._where} cannot be reached ({type(exc).__name__})") from exc
        self._unread = False
        decoded = (self._decode(entry_id, fields) for entry_id, fields in reversed(entries))
        return [item for item in decoded if item is not None]

    def reach(self) -> BusReach:
        if self._unread or self._unreachable:
            return BusReach(
                shared=True, reachable=False, detail=f"Redis at {self._where} cannot be reached: retrying"
            )
        return BusReach(shared=True, reachable=True, detail=f"Redis at {self._where}")

    async def close(self) -> None:
        self._closed = True
        self._queued.set()
        if self._sender is not None:
            await asyncio.wait({self._sender}, timeout=_FLUSH_SECONDS)
            self._sender.cancel()
            await asyncio.wait({self._sender})
        if unsent := len(self._in_flight) + len(self._queue):
            log.warning("activity bus closed with %d events not sent to %s", unsent, self._where)
        await self._redis.aclose()

    def _drop_oldest(self) -> None:
        self._queue.popleft()
        self._dropped += 1
        if not self._warned_of_drops:
            self._warned_of_drops = True
            log.warning(
                "activity events for %s are backing up; dropping the oldest beyond %d",
                self._where,
                self._retain,
            )

    async def _send_forever(self) -> None:
        while self._queue or not self._closed:
            if not self._queue:
                self._warned_of_drops = False  # caught up: the next backlog deserves its own warning
                self._queued.clear()
                await self._queued.wait()
                continue
            self._in_flight = [self._queue.popleft() for _ in range(min(_BATCH, len(self._queue)))]
            if not await self._send_in_flight():
                return
            self._in_flight = []

    async def _send_in_flight(self) -> bool:
        """Retries the same batch until it is sent, so that events stay in order; gives up only
        when the bus is closing."""
        backoff = _Backoff()
        pairs = [part for event in self._in_flight for part in event]
        while True:
            try:
                await self._add_once(keys=[self._stream, self._published], args=[self._retain, *pairs])
            except (RedisError, OSError) as exc:
                if self._closed:
                    return False
                if not self._unreachable:
                    log.warning("cannot send activity events to %s (%s); keeping them", self._where, exc)
                    self._unreachable = True
                await backoff.sleep()
            else:
                if self._unreachable:
                    log.info("activity events reach %s again", self._where)
                    self._unreachable = False
                return True

    async def _resume_point(self, cursor: str | None) -> str:
        """The id to read after: ``cursor``, unless there is none or it lies beyond the stream's
        last entry (an id from another stream, or from a Redis that has since lost its data); then
        the last entry, so reading starts with the next event."""
        latest = cast(_Entries, await self._redis.xrevrange(self._stream, count=1))
        last = latest[0][0] if latest else _BEFORE_ALL
        return last if cursor is None or _order(cursor) > _order(last) else cursor

    def _decode(self, entry_id: str, fields: dict[str, str] | None) -> PublishedEvent | None:
        """None for an entry this version cannot read, which a subscriber skips rather than dying
        on it forever."""
        try:
            event = ActivityEvent.model_validate_json((fields or {})["event"])
        except (KeyError, ValidationError) as exc:
            log.warning("skipping unreadable activity entry %s in %s: %s", entry_id, self._where, exc)
            return None
        return PublishedEvent(id=entry_id, event=event)
