"""What crosses the network between ControlPlaneHTTP and the control-plane service.

Policy results carry their value as JSON; each side knows which type a value is (a request is a
dict, a response a ``ModelResponse``, a chunk a ``ModelResponseStream``) and rebuilds it.
"""

from typing import Any, Literal

from pydantic import BaseModel, Field

from controlplane.llm import ModelResponse, ModelResponseStream
from controlplane.models import ActivityEvent, NormalizedRequest, PolicyResult, RequestMetadata
from controlplane.recording.records import CallRecord, DebugEvent

API = "/v1"
STREAMS_PATH = f"{API}/streams"


class RequestPolicyCall(BaseModel):
    request_data: NormalizedRequest
    metadata: RequestMetadata


class ResponsePolicyCall(BaseModel):
    response: dict[str, Any]
    metadata: RequestMetadata


class WireResult(BaseModel):
    """A ``PolicyResult`` with its value as JSON."""

    value: Any = None
    allowed: bool = True
    reason: str | None = None
    metadata: dict[str, Any] = Field(default_factory=dict)
    policy_version: str | None = None

    @classmethod
    def of(cls, result: PolicyResult[Any]) -> "WireResult":
        """The result; a chunk given back unchanged travels as a verdict, without its value."""
        value = None if result.unchanged else result.value
        if isinstance(value, ModelResponse | ModelResponseStream):
            value = value.model_dump(mode="json")
        return cls(
            value=value,
            allowed=result.allowed,
            reason=result.reason,
            metadata=result.metadata,
            policy_version=result.policy_version,
        )

    def request(self) -> PolicyResult[NormalizedRequest]:
        return PolicyResult[NormalizedRequest](value=self.value, **self._rest())

    def response(self) -> PolicyResult[ModelResponse]:
        value = ModelResponse(**self.value) if self.value is not None else None
        return PolicyResult[ModelResponse](value=value, **self._rest())

    def chunk(self) -> PolicyResult[ModelResponseStream]:
        value = ModelResponseStream(**self.value) if self.value is not None else None
        return PolicyResult[ModelResponseStream](value=value, **self._rest())

    def _rest(self) -> dict[str, Any]:
        return self.model_dump(exclude={"value"})


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
    """One result the policy yielded for the last ``chunks`` or ``close``, sent as soon as it is
    yielded (a policy may yield, then await a judge, then yield again).

    A result that passes the chunk it answers unchanged is a verdict: ``passed`` is set and the
    value left out, and the proxy uses the chunk it sent. Echoing whole chunks back, and building
    them again on both sides, was most of the wire's cost per event."""

    type: Literal["result"] = "result"
    result: WireResult
    index: int | None = None  # which of the ``chunks`` it answers; None for ``close``
    passed: bool = False  # the value is the answered chunk, unchanged


class StreamDone(BaseModel):
    """The policy has finished with the last ``chunks`` or ``close``."""

    type: Literal["done"] = "done"
