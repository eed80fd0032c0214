"""What every provider wire format provides to the data plane: errors, and the stream transcoder.
Nothing here needs LiteLLM (``formats.codecs`` holds what normalises)."""

from typing import Any, Protocol

from controlplane.chunks import StreamChunk
from formats.sse import SSEEvent

JSON = dict[str, Any]


def count(counts: JSON, name: str) -> int:
    """A token count a provider reported; 0 when it is missing or not a count."""
    value = counts.get(name)
    return value if isinstance(value, int) and not isinstance(value, bool) else 0


def event_object(event: SSEEvent) -> JSON | None:
    """An event's data as the JSON object a provider sends, or None for an event that carries
    nothing: no data (a keep-alive, comments alone) or ``[DONE]``. Any other data (text, an
    array, a number) has no place in the normalised view, so no policy could see it: raises
    MalformedStream, and the stream ends with an error rather than pass it on."""
    data = event.json()
    if isinstance(data, dict):
        return data
    if not event.data or event.data == "[DONE]":
        return None
    raise MalformedStream("an event whose data is not a JSON object")


def carries_error(event: SSEEvent) -> bool:
    """Whether an event is an error object (``{"error": {...}}``, as OpenAI and Google send one
    mid-stream); ``"error": null`` is none."""
    data = event.json()
    return isinstance(data, dict) and bool(data.get("error"))


#: What reading a body that does not fit its format raises (a codec's, or ``formats.answers``).
UNREADABLE = (ValueError, TypeError, KeyError, AttributeError)


class FormatError(ValueError):
    """A body that does not fit the wire format, or a change that cannot be expressed in it."""


class MalformedStream(FormatError):
    """An upstream stream that cannot be shown to the policy faithfully: it contradicts itself (a
    ``done`` event whose text the deltas did not carry) or breaks its format. The relay ends
    such a stream with an error rather than pass on what the policy did not see."""


class StreamTranscoder(Protocol):
    """Per-stream codec between provider SSE events and normalised chunks: it decodes events
    into plain chunks (``controlplane.chunks``) and encodes the chunks policies give back.

    It tracks what the client has seen (events passed verbatim and events it synthesised) so
    that, once a policy changes the stream, it can continue it validly from that point.
    """

    def decode(self, event: SSEEvent) -> list[StreamChunk]:
        """The content an upstream event carries; [] for purely structural events. Raises
        MalformedStream."""
        ...

    def unsettled(self) -> list[StreamChunk]:
        """The upstream stream ended: the content of items it began but never finished, which the
        client has seen part of, so that the policy judges it too."""
        ...

    def is_error(self, event: SSEEvent) -> bool:
        """An upstream error event: always forwarded as is."""
        ...

    def observe_emitted(self, event: SSEEvent) -> None:
        """The client received this upstream event verbatim."""
        ...

    @property
    def ended(self) -> bool:
        """The client has seen the stream end: the terminal event after which its SDK stops
        reading (``[DONE]``, ``message_stop``, ``response.completed``…), or an error that ends it."""
        ...

    def encode(self, chunk: StreamChunk) -> bytes:
        """Wire events for a chunk, continuing from what the client has seen."""
        ...

    def finish(self) -> bytes:
        """Whatever closing events the client still needs for a valid, complete stream."""
        ...

    def error_event(self, message: str) -> bytes:
        """The events that end the stream with an error the official SDKs raise, continuing from what
        the client has seen. Afterwards the stream is over: ``finish()`` adds nothing, and once the
        client has seen the stream end (or an error) there is nothing left to send."""
        ...
