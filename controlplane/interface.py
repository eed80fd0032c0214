"""The doors between the planes.

``ControlPlaneService`` is the policies' side: it takes the normalised view (a request in OpenAI
Chat Completions form, LiteLLM's ``ModelResponse``) and runs the policy on it; ``ControlPlaneLocal``
implements it. ``PolicingService`` is what the data plane asks: to police provider bodies as they
are, in their own format, so that the proxy never normalises (normalising needs LiteLLM, which is
most of a proxy's start-up time and memory). Both share the stream and recording operations,
which carry only plain data (a stream chunk is a dict in the shape of a ``chat.completion.chunk``).

Implementations of ``PolicingService``: ``Policing`` (``formats/policing.py``, normalising over any
``ControlPlaneService`` in the same process) and ``ControlPlaneHTTP``, whose control-plane service
does the same on its side. The data plane cannot tell them apart.
"""

from collections.abc import AsyncIterator, Sequence
from typing import TYPE_CHECKING, Any, Protocol

from pydantic import BaseModel

from controlplane.chunks import StreamChunk
from controlplane.models import (
    ActivityEvent,
    ChunkVerdict,
    Inspection,
    NormalizedRequest,
    PolicyResult,
    RequestMetadata,
    StreamingContext,
    WireFormat,
)
from controlplane.recording.records import CallRecord, Output, Usage

if TYPE_CHECKING:  # only the policies' side builds one; the data plane never loads LiteLLM
    from controlplane.llm import ModelResponse

JSON = dict[str, Any]


class ControlPlaneUnavailable(Exception):
    """The control plane cannot be reached (a network implementation failing closed). The data
    plane answers with a provider-format 503, or ends a stream in flight with an error event."""


class Unpoliceable(BaseModel):
    """A body the control plane could not police, and the error the client gets for it."""

    status: int
    message: str


class RequestVerdict(BaseModel):
    """What became of a request body. ``result`` is the policy's (None: the body could not be
    read, so no policy saw it); its value is the request as the policy let it through, in
    normalised form (a stream's policy is given it). ``body`` is what to send instead of the
    original bytes when the policy changed it."""

    result: PolicyResult[NormalizedRequest] | None = None
    body: JSON | None = None
    unpoliceable: Unpoliceable | None = None
    # False: the policy that took this request does not inspect whole responses; the data plane
    # reads the call's answer for the record itself and sends it on without asking (no round
    # trip for a sidecar).
    inspects_response: bool = True
    # False: nor does it inspect stream chunks; a streamed answer takes the passive path under this
    # decision, with no stream opened on the control plane (no round trip before the first byte).
    inspects_stream: bool = True


class ResponseVerdict(BaseModel):
    """What became of a whole response body: the policy's decision (None: the body could not be
    read; the decision has no value: ``body`` is the response to send when the policy changed it),
    and the answer as the record keeps it."""

    result: PolicyResult[None] | None = None
    body: JSON | None = None
    original_output: Output | None = None
    final_output: Output | None = None
    usage: Usage | None = None
    unpoliceable: Unpoliceable | None = None


class StreamsAndRecords(Protocol):
    """What both doors carry as it is: streams of plain chunks, activity and records."""

    async def create_streaming_context(
        self, request_data: NormalizedRequest, metadata: RequestMetadata
    ) -> StreamingContext:
        """Start policing a stream; the returned context names it in later calls."""
        ...

    def process_streaming_chunks(
        self, chunks: Sequence[StreamChunk], context: StreamingContext
    ) -> AsyncIterator[ChunkVerdict]:
        """Feed upstream chunks (those that arrived together, as the wire formats decode them),
        each in turn; yields the chunks to send to the client now (zero or more per chunk) as the
        policy produces them, as plain data, and stops after a result that ends the stream
        (``allowed`` false). Each result says which chunk it answers (``answers``), and whether it
        gives that chunk back unchanged (``unchanged``; its ``value`` may then be None)."""
        ...

    def close_streaming_context(self, context: StreamingContext) -> AsyncIterator[ChunkVerdict]:
        """The upstream stream ended: yields whatever the policy still holds back, then forgets it."""
        ...

    async def publish_activity(self, event: ActivityEvent) -> None:
        """Publish an activity event for live views."""
        ...

    async def log_debug_event(self, debug_type: str, payload: dict[str, Any]) -> None:
        """Record a debug event."""
        ...

    def record_call_started(self, stand_in: CallRecord) -> None:
        """A call has begun: ``stand_in`` is its record should this process die before the call
        ends. Written to local disk at once; never waits on the database."""
        ...

    async def record_call(self, record: CallRecord) -> None:
        """Store a finished call. Returns once the record is on local disk (journalled, fsynced),
        never waiting on the database: from then on a crash of this process loses nothing."""
        ...


class ControlPlaneService(StreamsAndRecords, Protocol):
    def inspection(self, metadata: RequestMetadata) -> Inspection:
        """What the current policy inspects of this call (read per call: a policy activated
        since the last one may look at more or less)."""
        ...

    async def apply_request_policies(
        self, request_data: NormalizedRequest, metadata: RequestMetadata
    ) -> PolicyResult[NormalizedRequest]:
        """Validate or rewrite a request before it reaches the provider."""
        ...

    async def apply_response_policy(
        self, response: "ModelResponse", metadata: RequestMetadata
    ) -> "PolicyResult[ModelResponse]":
        """Validate or rewrite a complete (non-streaming) response."""
        ...


class PolicingService(StreamsAndRecords, Protocol):
    async def police_request(
        self, wire_format: WireFormat, body: JSON, metadata: RequestMetadata
    ) -> RequestVerdict:
        """Normalise a request body of ``wire_format``, run the request policy on it and map its
        change back onto the body."""
        ...

    async def police_response(
        self, wire_format: WireFormat, body: JSON, metadata: RequestMetadata
    ) -> ResponseVerdict:
        """Normalise a whole response body, run the response policy on it and map its change back."""
        ...
