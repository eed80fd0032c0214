"""The ControlPlaneService Protocol: the only door from the data plane into the control plane.

Implementations: ``ControlPlaneLocal`` (same process). A network client implements the same
Protocol; the data plane cannot tell them apart. Everything crossing it is a Pydantic model.
"""

from collections.abc import AsyncIterator, Sequence
from typing import Any, Protocol

from controlplane.chunks import StreamChunk
from controlplane.llm import ModelResponse, ModelResponseStream
from controlplane.models import (
    ActivityEvent,
    NormalizedRequest,
    PolicyResult,
    RequestMetadata,
    StreamingContext,
)
from controlplane.recording.records import CallRecord


class ControlPlaneUnavailable(Exception):
    """The control plane cannot be reached (a network implementation failing closed). The data
    plane answers with a provider-format 503, or ends a stream in flight with an error event."""


class ControlPlaneService(Protocol):
    async def apply_request_policies(
        self, request_data: NormalizedRequest, metadata: RequestMetadata
    ) -> PolicyResult[NormalizedRequest]:
        """Validate or rewrite a request before it reaches the provider."""
        ...

    async def apply_response_policy(
        self, response: ModelResponse, metadata: RequestMetadata
    ) -> PolicyResult[ModelResponse]:
        """Validate or rewrite a complete (non-streaming) response."""
        ...

    async def create_streaming_context(
        self, request_data: NormalizedRequest, metadata: RequestMetadata
    ) -> StreamingContext:
        """Start policing a stream; the returned context names it in later calls."""
        ...

    def process_streaming_chunks(
        self, chunks: Sequence[StreamChunk], context: StreamingContext
    ) -> AsyncIterator[PolicyResult[ModelResponseStream]]:
        """Feed upstream chunks (those that arrived together, as the wire formats decode them),
        each in turn; yields the chunks to send to the client now (zero or more per chunk) as the
        policy produces them, and stops after a result that ends the stream (``allowed`` false).
        Each result says which chunk it answers (``answers``), and whether it gives that chunk
        back unchanged (``unchanged``; its ``value`` may then be None)."""
        ...

    def close_streaming_context(
        self, context: StreamingContext
    ) -> AsyncIterator[PolicyResult[ModelResponseStream]]:
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
