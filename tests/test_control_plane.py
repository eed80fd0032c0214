"""ControlPlaneLocal: decisions are recorded, and a policy that raises fails closed."""

from collections.abc import AsyncIterator

from addon.sse import SSEParser
from controlplane.llm import ModelResponseStream
from controlplane.local import ControlPlaneLocal
from controlplane.models import (
    ActivityType,
    ChunkResult,
    NormalizedRequest,
    PolicyResult,
    RequestMetadata,
    StreamingContext,
)
from controlplane.policies import PolicyHandler
from tests.test_stream_relay import activity, provider_stream, relay

METADATA = RequestMetadata(call_id="call-1", host="api.openai.com", path="/v1/chat/completions")


class Broken(PolicyHandler):
    """Raises in the request hook, and on the fifth chunk of a stream."""

    async def apply_request_policies(
        self, request: NormalizedRequest, metadata: RequestMetadata
    ) -> PolicyResult[NormalizedRequest]:
        raise RuntimeError("bug in the policy")

    async def apply_streaming_chunk_policy(
        self, chunk: ModelResponseStream, context: StreamingContext
    ) -> AsyncIterator[ChunkResult]:
        context.policy_state["n"] = context.policy_state.get("n", 0) + 1
        if context.policy_state["n"] == 5:
            raise RuntimeError("bug in the policy")
        yield PolicyResult.allow(chunk)


async def test_a_request_policy_that_raises_blocks_the_request() -> None:
    control_plane = ControlPlaneLocal(Broken())
    result = await control_plane.apply_request_policies({"model": "m", "messages": []}, METADATA)
    assert not result.allowed
    assert result.reason == "policy error in Broken (request_policy): RuntimeError"
    kinds = [e.type for e in await activity(control_plane)]
    assert kinds == [ActivityType.ERROR, ActivityType.REQUEST_POLICY]


async def test_a_stream_policy_that_raises_ends_the_stream_validly_and_says_why() -> None:
    out = await relay("/v1/messages", Broken(), [provider_stream("/v1/messages", "text")])
    events = [e.json() for e in SSEParser().feed(out)]
    text = "".join(e["delta"].get("text", "") for e in events if e["type"] == "content_block_delta")
    assert text.endswith("[Luthien] Stream ended: policy error in Broken (stream_policy): RuntimeError.")
    assert "lazy dog" not in text  # nothing after the failure reaches the client
    assert [e["type"] for e in events[-3:]] == ["content_block_stop", "message_delta", "message_stop"]
    assert events[-2]["delta"]["stop_reason"] == "end_turn"


async def test_decisions_with_reasons_are_published() -> None:
    class Explains(PolicyHandler):
        async def apply_request_policies(
            self, request: NormalizedRequest, metadata: RequestMetadata
        ) -> PolicyResult[NormalizedRequest]:
            return PolicyResult.allow(request, reason="looked fine", checked=3)

    control_plane = ControlPlaneLocal(Explains())
    await control_plane.apply_request_policies({"messages": []}, METADATA)
    (event,) = await activity(control_plane)
    assert event.call_id == "call-1" and event.type == ActivityType.REQUEST_POLICY
    assert event.data == {"allowed": True, "reason": "looked fine", "checked": 3}
