"""What crosses the network between ControlPlaneHTTP and the control-plane service.

All of it is plain data: request and response bodies go as the provider's format has them (the
service normalises them, where the policy runs, and answers with a ``RequestVerdict`` or
``ResponseVerdict``), and stream chunks as the plain dicts the wire formats decode. The proxy's
side builds no LiteLLM object, so a sidecar never loads LiteLLM.
"""

from typing import Any, Literal, cast

from pydantic import BaseModel, Field

from controlplane.chunks import StreamChunk
from controlplane.models import (
    ActivityEvent,
    ChunkVerdict,
    NormalizedRequest,
    RequestMetadata,
    WireFormat,
)
from controlplane.recording.records import CallRecord, DebugEvent

API = "/v1"
STREAMS_PATH = f"{API}/streams"


class PoliceCall(BaseModel):
    """A request body to police, as the provider's format has it."""

    wire_format: WireFormat
    body: dict[str, Any]
    metadata: RequestMetadata


class PoliceResponseCall(PoliceCall):
    """A whole response body to police: of a format with responses."""

    wire_format: Literal[
        WireFormat.OPENAI_CHAT, WireFormat.OPENAI_RESPONSES, WireFormat.ANTHROPIC_MESSAGES, WireFormat.GEMINI
    ]


class WireResult(BaseModel):
    """A stream chunk's ``PolicyResult``, its value a plain chunk."""

    value: dict[str, Any] | None = None
    allowed: bool = True
    reason: str | None = None
    metadata: dict[str, Any] = Field(default_factory=dict)
    policy_version: str | None = None

    @classmethod
    def of(cls, result: ChunkVerdict) -> "WireResult":
        """The result; a chunk given back unchanged travels as a verdict, without its value."""
        return cls.model_construct(  # the control plane's own result, serialised at once
            value=None if result.unchanged else result.value,
            allowed=result.allowed,
            reason=result.reason,
            metadata=result.metadata,
            policy_version=result.policy_version,
        )

    def chunk(self, answers: int | None, unchanged: bool) -> ChunkVerdict:
        return ChunkVerdict(
            value=cast(StreamChunk | None, self.value),
            allowed=self.allowed,
            reason=self.reason,
            metadata=self.metadata,
            policy_version=self.policy_version,
            unpoliced=False,
            answers=answers,
            unchanged=unchanged,
        )


class RecordBatch(BaseModel):
    calls: list[CallRecord] = Field(default_factory=list)
    debug_events: list[DebugEvent] = Field(default_factory=list)


class ActivityBatch(BaseModel):
    events: list[ActivityEvent]


# --- streams over a WebSocket, one at a time per connection: the client speaks first, the server
# answers each message; after ``close`` is done, the connection may carry the client's next stream.


class StreamOpen(BaseModel):
    type: Literal["open"] = "open"
    request_data: NormalizedRequest
    metadata: RequestMetadata
    # The stream's trace context (W3C headers): a connection outlives the call that opened it.
    trace: dict[str, str] = Field(default_factory=dict)


class StreamChunks(BaseModel):
    """Upstream chunks that arrived together: one message and one round trip for all of them."""

    type: Literal["chunks"] = "chunks"
    chunks: list[dict[str, Any]]


class StreamClose(BaseModel):
    type: Literal["close"] = "close"


class StreamOpened(BaseModel):
    """The answer to ``open``: the stream's context (its id and policy version). When no policy
    inspects the stream's chunks, the stream is over for the control plane at once: nothing is
    sent for its events, no ``close`` follows, and the connection is free for the next ``open``."""

    type: Literal["opened"] = "opened"
    stream_id: str
    policy_version: str | None = None
    inspects_chunks: bool = True


class StreamResult(BaseModel):
    """One result the policy yielded for the last ``chunks`` or ``close``.

    A result that passes the chunk it answers unchanged is a verdict: ``passed`` is set and the
    value left out, and the proxy uses the chunk it sent. Echoing whole chunks back, and building
    them again on both sides, was most of the wire's cost per event."""

    result: WireResult
    index: int | None = None  # which of the ``chunks`` it answers; None for ``close``
    passed: bool = False  # the value is the answered chunk, unchanged


class StreamResults(BaseModel):
    """The results the policy yielded since the last message, sent as soon as the control plane's
    loop comes back to them: a policy that awaits nothing answers a whole ``chunks`` in one
    message, one that awaits a judge between two results has those before the wait sent at once.
    One message per result was most of the wire's cost per event under a policy that reads
    every chunk. ``done``: the policy has finished with the last ``chunks`` or ``close``."""

    type: Literal["results"] = "results"
    results: list[StreamResult] = Field(default_factory=list)
    done: bool = False
