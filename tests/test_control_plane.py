"""The control plane, local and over HTTP: decisions are recorded, and a policy that raises fails
closed."""

import asyncio
import threading
import time
from collections.abc import AsyncIterator

from controlplane.llm import ModelResponseStream
from controlplane.models import (
    ActivityType,
    NormalizedRequest,
    PolicyResult,
    RequestMetadata,
    StreamingContext,
)
from controlplane.policies import PolicyHandler
from controlplane.policies.base import ChunkResult
from controlplane.policies.chunks import chunk_text, text_chunk
from formats.sse import SSEParser
from tests.control_planes import Kind, control_plane_for, delivered, plain, text_of
from tests.test_stream_relay import activity, pieces, provider_stream, relay, run_relay

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


async def test_a_request_policy_that_raises_blocks_the_request(control_plane_kind: Kind) -> None:
    async with control_plane_for(Broken(), control_plane_kind) as control_plane:
        result = await control_plane.apply_request_policies({"model": "m", "messages": []}, METADATA)
        assert not result.allowed
        assert result.reason == "policy error in Broken (request_policy): RuntimeError"
        kinds = [e.type for e in await activity(control_plane)]
    assert kinds == [ActivityType.ERROR, ActivityType.REQUEST_POLICY]


async def test_a_stream_policy_that_raises_ends_the_stream_validly_and_says_why(
    control_plane_kind: Kind,
) -> None:
    data = [provider_stream("/v1/messages", "text")]
    out = await relay("/v1/messages", Broken(), data, kind=control_plane_kind)
    events = [e.json() for e in SSEParser().feed(out)]
    text = "".join(e["delta"].get("text", "") for e in events if e["type"] == "content_block_delta")
    assert text.endswith("[Luthien] Stream ended: policy error in Broken (stream_policy): RuntimeError.")
    assert "lazy dog" not in text  # nothing after the failure reaches the client
    assert [e["type"] for e in events[-3:]] == ["content_block_stop", "message_delta", "message_stop"]
    assert events[-2]["delta"]["stop_reason"] == "end_turn"


async def test_decisions_with_reasons_are_published(control_plane_kind: Kind) -> None:
    class Explains(PolicyHandler):
        async def apply_request_policies(
            self, request: NormalizedRequest, metadata: RequestMetadata
        ) -> PolicyResult[NormalizedRequest]:
            return PolicyResult.allow(request, reason="looked fine", checked=3)

    async with control_plane_for(Explains(), control_plane_kind) as control_plane:
        await control_plane.apply_request_policies({"messages": []}, METADATA)
        (event,) = await activity(control_plane)
    assert event.call_id == "call-1" and event.type == ActivityType.REQUEST_POLICY
    assert event.data == {"allowed": True, "block": None, "reason": "looked fine", "checked": 3}


LIKE = text_chunk(ModelResponseStream(id="chatcmpl-1", created=1, model="m", choices=[]), "")  # type: ignore[arg-type]


class Triples(PolicyHandler):
    """Answers each chunk with three: its text followed by "a", "b" and "c"; then "end"."""

    async def apply_streaming_chunk_policy(
        self, chunk: ModelResponseStream, context: StreamingContext
    ) -> AsyncIterator[ChunkResult]:
        for suffix in "abc":
            yield PolicyResult.allow(text_chunk(chunk, chunk_text(chunk) + suffix))

    async def on_stream_end(self, context: StreamingContext) -> AsyncIterator[ChunkResult]:
        yield PolicyResult.allow(text_chunk(LIKE, "end"))


async def test_results_left_unread_are_not_given_to_the_next_chunk(control_plane_kind: Kind) -> None:
    """The relay stops reading a chunk's results once the policy ends the stream: what it left
    unread belongs to that chunk, never to the next call on the stream."""
    async with control_plane_for(Triples(), control_plane_kind) as control_plane:
        context = await control_plane.create_streaming_context({"messages": []}, METADATA)
        async for result in control_plane.process_streaming_chunks(plain(text_chunk(LIKE, "1")), context):
            assert result.value is not None and text_of(result.value) == "1a"
            break
        second = control_plane.process_streaming_chunks(plain(text_chunk(LIKE, "2")), context)
        assert [text_of(r.value) async for r in second if r.value] == ["2a", "2b", "2c"]
        async for result in control_plane.close_streaming_context(context):
            assert result.value is not None and text_of(result.value) == "end"
            break  # and the stream is closed all the same
        assert [r async for r in control_plane.close_streaming_context(context)] == []


class StallsOneCall(PolicyHandler):
    """Holds the first chunk of call "slow" until ``release`` is set; passes everything else.
    Threading events: over HTTP the policy runs on the service's thread."""

    def __init__(self) -> None:
        super().__init__()
        self.stalled, self.release = threading.Event(), threading.Event()

    async def apply_streaming_chunk_policy(
        self, chunk: ModelResponseStream, context: StreamingContext
    ) -> AsyncIterator[ChunkResult]:
        if context.metadata.call_id == "slow" and not self.stalled.is_set():
            self.stalled.set()
            deadline = time.monotonic() + 10
            while not self.release.is_set():  # an async wait: the loop is free for other streams
                assert time.monotonic() < deadline, "never released"
                await asyncio.sleep(0.005)
        yield PolicyResult.allow(chunk)


async def test_a_slow_policy_on_one_stream_does_not_stall_another(control_plane_kind: Kind) -> None:
    path = "/v1/messages"
    original = provider_stream(path, "text")
    policy = StallsOneCall()

    def call(call_id: str) -> RequestMetadata:
        return RequestMetadata(call_id=call_id, host="h", path=path, stream=True)

    async with control_plane_for(policy, control_plane_kind) as control_plane:
        slow = asyncio.create_task(run_relay(control_plane, path, pieces(original, 1), call("slow")))
        try:
            assert await asyncio.to_thread(policy.stalled.wait, 10)
            fast = await asyncio.wait_for(
                run_relay(control_plane, path, pieces(original, 2), call("fast")), 5
            )
            assert fast == original  # the whole stream, while the other one waits on its policy
            assert not slow.done()
        finally:
            policy.release.set()
        assert await asyncio.wait_for(slow, 10) == original


class EndsAtStop(PolicyHandler):
    """Passes each chunk on; a chunk saying "stop" ends the stream instead."""

    async def apply_streaming_chunk_policy(
        self, chunk: ModelResponseStream, context: StreamingContext
    ) -> AsyncIterator[ChunkResult]:
        if chunk_text(chunk) == "stop":
            yield PolicyResult.block("told to stop")
        else:
            yield PolicyResult.allow(chunk)


async def test_chunks_sent_together_are_policed_in_order_until_the_policy_ends_the_stream(
    control_plane_kind: Kind,
) -> None:
    async with control_plane_for(EndsAtStop(), control_plane_kind) as control_plane:
        context = await control_plane.create_streaming_context({"messages": []}, METADATA)
        batch = plain(*(text_chunk(LIKE, word) for word in ("one", "two", "stop", "never", "sent")))
        results = [r async for r in control_plane.process_streaming_chunks(batch, context)]
        assert [chunk_text(c) for r in results if (c := delivered(r, batch))] == ["one", "two"]
        assert [r.allowed for r in results] == [True, True, False]
        assert results[-1].reason == "told to stop"
        assert [r async for r in control_plane.close_streaming_context(context)] == []
