"""Server-sent events framing that keeps every event's exact bytes.

Upstream bytes arrive in arbitrary pieces; ``SSEParser`` cuts them into whole events and keeps
each event's raw bytes, so an event no policy touched is forwarded byte for byte.
"""

import json
import re
from dataclasses import dataclass
from functools import cached_property
from typing import Any

_EVENT_END = re.compile(rb"\r\n\r\n|\n\n|\r\r")
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
            return json.loads(self.data)
        except ValueError:
            return None


def parse_event(raw: bytes) -> SSEEvent:
    event: str | None = None
    data: list[str] = []
    # Only CR and LF end SSE lines; str.splitlines would also break at U+2028, which JSON may carry.
    for line in _LINE_END.split(raw.decode("utf-8", errors="replace")):
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
    """Feeds raw bytes in, returns the complete events found so far."""

    def __init__(self) -> None:
        self._buffer = b""

    def feed(self, data: bytes) -> list[SSEEvent]:
        self._buffer += data
        events = []
        while match := _EVENT_END.search(self._buffer):
            raw, self._buffer = self._buffer[: match.end()], self._buffer[match.end() :]
            events.append(parse_event(raw))
        return events

    def flush(self) -> bytes:
        """Bytes after the last complete event (a stream cut mid-event)."""
        rest, self._buffer = self._buffer, b""
        return rest


def encode_event(data: Any, event: str | None = None) -> bytes:
    """One SSE event in the compact JSON style the providers use."""
    payload = data if isinstance(data, str) else json.dumps(data, separators=(",", ":"), ensure_ascii=False)
    prefix = f"event: {event}\n" if event else ""
    return f"{prefix}data: {payload}\n\n".encode()
