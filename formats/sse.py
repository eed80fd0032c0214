"""Server-sent events framing that keeps every event's exact bytes.

Upstream bytes arrive in arbitrary pieces; ``SSEParser`` cuts them into whole events and keeps
each event's raw bytes, so an event no policy touched is forwarded byte for byte.
"""

import json
import re
from dataclasses import dataclass
from functools import cached_property
from typing import Any, Protocol

from pydantic_core import from_json

# An event ends at a blank line: two line ends in a row, each CRLF, LF or CR (the WHATWG grammar),
# so `\n\r\n` and `\r\n\n` end events too.
_EVENT_END = re.compile(rb"(?:\r\n|\r(?!\n)|\n)(?:\r\n|\r|\n)")
_LINE_END = re.compile(r"\r\n|\r|\n")


@dataclass(frozen=True)
class SSEEvent:
    raw: bytes
    event: str | None
    data: str

    def json(self) -> Any:
        """The data as JSON, or None when it is not JSON (e.g. ``[DONE]``). Do not mutate it:
        it is parsed once and shared by every reader of the event."""
        return self._parsed

    @cached_property
    def _parsed(self) -> Any:
        try:
            return read_json(self.data)
        except ValueError:
            return None


def read_json(text: str) -> Any:
    """``json.loads(text)``, at less than half its cost per event: pydantic-core's parser reads
    what ``json.loads`` reads, to the same values (NaN and big numbers included), and refuses
    what it refuses, but for a few texts (a lone surrogate escape, nesting deeper than its
    limit) that ``json.loads`` then reads as it always did."""
    try:
        return from_json(text, cache_strings="keys")
    except ValueError:
        return json.loads(text)


def parse_event(raw: bytes) -> SSEEvent:
    return _simple_event(raw) or _parsed_event(raw)


def _simple_event(raw: bytes) -> SSEEvent | None:
    """The shape nearly every provider event has, read without splitting it into lines: one
    ``data: `` line, or an ``event: `` line and one, each ending in LF, then the blank line."""
    if not raw.endswith(b"\n\n") or b"\r" in raw:
        return None
    lines = raw.count(b"\n")
    if lines == 2 and raw.startswith(b"data: "):
        return SSEEvent(raw=raw, event=None, data=raw[6:-2].decode("utf-8", errors="replace"))
    if lines == 3 and raw.startswith(b"event: "):
        end = raw.index(b"\n")
        if raw.startswith(b"data: ", end + 1):
            name = raw[7:end].decode("utf-8", errors="replace")
            return SSEEvent(raw=raw, event=name, data=raw[end + 7 : -2].decode("utf-8", errors="replace"))
    return None


def _parsed_event(raw: bytes) -> SSEEvent:
    event: str | None = None
    data: list[str] = []
    # Only CR and LF end SSE lines; str.splitlines would also break at U+2028, which JSON may carry.
    # A client strips a byte-order mark at the start of the stream; stripping it from any event
    # means no event can hide behind one.
    for line in _LINE_END.split(raw.decode("utf-8", errors="replace").removeprefix("\ufeff")):
        if not line or line.startswith(":"):
            continue
        name, _, value = line.partition(":")
        value = value.removeprefix(" ")
        if name == "event":
            event = value
        elif name == "data":
            data.append(value)
    return SSEEvent(raw=raw, event=event, data="\n".join(data))


class SSEParser:
    """Feeds raw bytes in, returns the complete events found so far.

    Linear in the bytes fed, however they are split: an event that arrives in many pieces is
    neither copied nor searched again with each piece.
    """

    #: A blank line is at most 4 bytes (CRLF CRLF): one completed by new bytes begins in the
    #: last 3 bytes already searched.
    _OVERLAP = 3

    def __init__(self) -> None:
        self._buffer = bytearray()
        self._searched = 0  # no event ends before this offset of the buffer
        self._saw_cr = False  # lines may end in CR or CRLF, not only LF, from here on

    def feed(self, data: bytes) -> list[SSEEvent]:
        buffer = self._buffer
        buffer += data
        self._saw_cr = self._saw_cr or b"\r" in data
        if self._saw_cr:
            start, events = self._cut(buffer)
        else:  # lines end in LF alone, as providers write them: an event ends at the first LF LF
            start, events = self._cut_at_lf_lf(buffer)
        del buffer[:start]
        self._searched = max(0, len(buffer) - self._OVERLAP)
        return events

    def _cut(self, buffer: bytearray) -> tuple[int, list[SSEEvent]]:
        events = []
        start = 0
        while match := _EVENT_END.search(buffer, max(start, self._searched)):
            if match.end() == len(buffer) and buffer.endswith(b"\r"):
                break  # that CR may be the first half of a CRLF: the event ends where that says
            events.append(parse_event(bytes(buffer[start : match.end()])))
            start = match.end()
        return start, events

    def _cut_at_lf_lf(self, buffer: bytearray) -> tuple[int, list[SSEEvent]]:
        events = []
        start = 0
        while (end := buffer.find(b"\n\n", max(start, self._searched))) >= 0:
            events.append(parse_event(bytes(buffer[start : end + 2])))
            start = end + 2
        return start, events

    def flush(self) -> bytes:
        """Bytes after the last complete event: the stream ended there, mid-event or not."""
        rest = bytes(self._buffer)
        self._buffer.clear()
        self._searched = 0
        return rest

    #: What the stream ended with, mid-event: read as an event all the same.
    leftover = staticmethod(parse_event)


class EventParser(Protocol):
    """Cuts a stream's bytes into events that keep their exact bytes: ``SSEParser``, or
    ``JSONArrayParser`` for a stream written as one JSON array."""

    def feed(self, data: bytes) -> list[SSEEvent]: ...

    def flush(self) -> bytes: ...

    def leftover(self, raw: bytes) -> SSEEvent: ...


def encode_event(data: Any, event: str | None = None) -> bytes:
    """One SSE event in the compact JSON style the providers use."""
    payload = data if isinstance(data, str) else json.dumps(data, separators=(",", ":"), ensure_ascii=False)
    prefix = f"event: {event}\n" if event else ""
    return f"{prefix}data: {payload}\n\n".encode()
