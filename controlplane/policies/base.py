"""PolicyHandler: what a policy author implements.

Every hook has a pass-through default, so a policy overrides only what it cares about. Hooks are
async: a policy may await (an LLM judge, a lookup) without stalling any other call.
"""

from collections.abc import AsyncIterator
from typing import ClassVar

from pydantic import BaseModel, ConfigDict

from controlplane.llm import ModelResponse, ModelResponseStream
from controlplane.models import (
    NormalizedRequest,
    PolicyResult,
    RequestMetadata,
    StreamingContext,
)

#: What a policy yields for a stream chunk: the chunk as it saw it (LiteLLM's type).
ChunkResult = PolicyResult[ModelResponseStream]


class NoConfig(BaseModel):
    model_config = ConfigDict(extra="forbid")


class PolicyHandler:
    """Base class for policies.

    Subclasses set ``Config`` (a Pydantic model validated from the policy file) and a one-line
    ``description``, and override any of the hooks below.
    """

    Config: ClassVar[type[BaseModel]] = NoConfig
    description: ClassVar[str] = ""

    def __init__(self, config: BaseModel | None = None) -> None:
        self.config = config if config is not None else self.Config()

    async def apply_request_policies(
        self, request: NormalizedRequest, metadata: RequestMetadata
    ) -> PolicyResult[NormalizedRequest]:
        """Before the call: return the (possibly rewritten) request, or block it."""
        return PolicyResult.allow(request)

    async def apply_response_policy(
        self, response: ModelResponse, metadata: RequestMetadata
    ) -> PolicyResult[ModelResponse]:
        """After a non-streaming call: return the (possibly rewritten) response."""
        return PolicyResult.allow(response)

    async def apply_streaming_chunk_policy(
        self, chunk: ModelResponseStream, context: StreamingContext
    ) -> AsyncIterator[ChunkResult]:
        """For each upstream chunk, yield what the client gets now.

        Yield the chunk to pass it, a changed copy to modify it, nothing to drop or hold it back
        (keep it in ``context.policy_state`` and yield it later), extra chunks to inject, and a
        result with ``allowed=False`` to end the stream.
        """
        yield PolicyResult.allow(chunk)

    async def on_stream_end(self, context: StreamingContext) -> AsyncIterator[ChunkResult]:
        """The upstream stream ended: yield whatever is still held back."""
        return
        yield

    def redact_for_recording(self, text: str) -> str:
        """``text`` as it may be stored. The recorder applies this to every string of a call's
        record (the original request included), so a policy that keeps something from the
        provider can keep it out of the database too."""
        return text

    @property
    def redacts_recordings(self) -> bool:
        """Whether ``redact_for_recording`` may change anything. When it cannot, the recorder
        skips walking every string of every record (a long stream's record holds thousands)."""
        return type(self).redact_for_recording is not PolicyHandler.redact_for_recording

    def inspects_requests(self, metadata: RequestMetadata) -> bool:
        """Whether this call's request reaches the policy. When it cannot (the request hook is
        not overridden) and its stream would not either, the request is sent as it came, without
        being normalised, and no request decision is made or published."""
        return _overrides(self, "apply_request_policies")

    def inspects_responses(self, metadata: RequestMetadata) -> bool:
        """Whether this call's whole (non-streaming) response reaches the policy. When it cannot
        (the response hook is not overridden), the response is sent as it came; the record's
        answer and usage are read from it without normalising it."""
        return _overrides(self, "apply_response_policy")

    def inspects_streams(self, metadata: RequestMetadata) -> bool:
        """Whether this call's stream chunks reach the policy. When they cannot (neither
        streaming hook is overridden), the stream takes the passive path: framed, checked,
        recorded and forwarded as it came, with nothing sent to the policy per event."""
        return _overrides(self, "apply_streaming_chunk_policy") or _overrides(self, "on_stream_end")


def _overrides(policy: PolicyHandler, hook: str) -> bool:
    """A hook overridden anywhere below ``PolicyHandler`` may look at what it is given."""
    return getattr(type(policy), hook) is not getattr(PolicyHandler, hook)
