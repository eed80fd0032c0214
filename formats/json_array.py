"""A stream framed as one JSON array written piece by piece (Gemini's ``streamGenerateContent``
without ``?alt=sse``), cut into events as the SSE parser cuts an event stream: each element is an
event whose raw bytes run from the end of the one before (so ``[`` or ``,`` and the whitespace
before it belong to it), and the closing ``]`` is an event with no data. Forwarding every event's
raw bytes gives back the stream byte for byte."""

from formats.sse import SSEEvent

_SPACE = b" \t\r\n"


class JSONArrayParser:
    """Feeds raw bytes in, returns the complete elements found so far. Linear in the bytes fed:
    the scan resumes where it stopped, with its depth and string state."""

    def __init__(self) -> None:
        self._buffer = bytearray()
        self._scanned = 0  # bytes of the buffer already scanned
        self._start: int | None = None  # where the current element begins
        self._depth = 0
        self._in_string = False
        self._escaped = False
        self._opened = False

    def feed(self, data: bytes) -> list[SSEEvent]:
        buffer = self._buffer
        buffer += data
        events: list[SSEEvent] = []
        cut = 0  # the buffer up to here is in events already
        index = self._scanned
        while index < len(buffer):
            byte = buffer[index]
            if self._start is None:
                if (
                    byte in _SPACE
                    or (byte == ord(",") and self._opened)
                    or (byte == ord("[") and not self._opened)
                ):
                    self._opened |= byte == ord("[")
                elif byte == ord("]") and self._opened:
                    events.append(SSEEvent(raw=bytes(buffer[cut : index + 1]), event=None, data=""))
                    cut = index + 1
                else:
                    self._start = index
                    self._depth = 0
            if self._start is not None and self._element_ends(byte):
                element = bytes(buffer[self._start : index + 1])
                events.append(SSEEvent(raw=bytes(buffer[cut : index + 1]), event=None, data=element.decode()))
                cut, self._start = index + 1, None
            index += 1
        del buffer[:cut]
        if self._start is not None:
            self._start -= cut
        self._scanned = len(buffer)
        return events

    def _element_ends(self, byte: int) -> bool:
        """Scans one byte of an element: whether it is the element's last."""
        if self._in_string:
            if self._escaped:
                self._escaped = False
            elif byte == ord("\\"):
                self._escaped = True
            elif byte == ord('"'):
                self._in_string = False
            return False
        if byte == ord('"'):
            self._in_string = True
        elif byte in b"{[":
            self._depth += 1
        elif byte in b"}]":
            self._depth -= 1
            return self._depth == 0
        # A bare value (no object) never ends: the stream ends mid-element, and is malformed.
        return False

    def flush(self) -> bytes:
        """Bytes after the last complete element: the stream ended there."""
        rest = bytes(self._buffer)
        self._buffer.clear()
        self._scanned, self._start = 0, None
        return rest

    @staticmethod
    def leftover(raw: bytes) -> SSEEvent:
        """What the stream ended with, mid-element: an event whose data is no element."""
        return SSEEvent(raw=raw, event=None, data=raw.decode("utf-8", errors="replace"))
