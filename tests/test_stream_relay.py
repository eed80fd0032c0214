"""The relay in-process: real provider streams (rendered by the fake provider's wire code) run
through real policies, fed in arbitrary byte pieces, with the policy behind either control plane
(``control_plane_kind``: ControlPlaneLocal, or ControlPlaneHTTP and the control-plane service)."""

import json
import random
from collections.abc import AsyncIterator

import pytest

from addon.call_trace import StreamCapture
from addon.stream_relay import relay_for
from controlplane.interface import ControlPlaneService
from controlplane.llm import ModelResponseStream
from controlplane.models import ActivityEvent, PolicyResult, RequestMetadata, StreamingContext
from controlplane.policies import NoOpPolicy, PolicyHandler, ToolCallBlocklistPolicy
from controlplane.policies.base import ChunkResult
from formats import transcoder
from formats.sse import SSEParser
from tests.codecs import codec_for
from tests.control_planes import Kind, control_plane_for, published
from tests.fake_provider import anthropic_messages, openai_chat, openai_responses
from tests.fake_provider.scenarios import find_scenario, plan_for
from tests.fake_provider.wire import Context, IdFactory
from tests.policies import PassEveryChunk

RENDERERS = {
    "/v1/chat/completions": openai_chat.render,
    "/v1/responses": openai_responses.render,
    "/v1/messages": anthropic_messages.render,
}
SCENARIOS = ["text", "tool_call rm -rf /", "two_tools", "thinking", "midstream_error"]


def provider_stream(path: str, scenario: str) -> bytes:
    body = {"model": "m", "stream": True, "max_tokens": 10, "stream_options": {"include_usage": True}}
    plan = plan_for(find_scenario(f"[scenario:{scenario}]"))
    return b"".join(RENDERERS[path](plan, Context(body, IdFactory(seed=1))).chunks)


def pieces(data: bytes, seed: int) -> list[bytes]:
    """The stream cut at random places, as TCP may deliver it."""
    rng = random.Random(seed)
    cuts = sorted(rng.sample(range(1, len(data)), k=min(len(data) - 1, 40)))
    return [data[a:b] for a, b in zip([0, *cuts], [*cuts, len(data)], strict=True)]


async def relay(
    path: str,
    policy: PolicyHandler,
    data: list[bytes],
    metadata: RequestMetadata | None = None,
    *,
    kind: Kind,
) -> bytes:
    """The bytes a client receives when ``data`` streams through ``policy`` on a ``kind`` control plane."""
    async with control_plane_for(policy, kind) as control_plane:
        return await run_relay(control_plane, path, data, metadata)


async def run_relay(
    control_plane: ControlPlaneService, path: str, data: list[bytes], metadata: RequestMetadata | None = None
) -> bytes:
    """The bytes a client receives when ``data`` streams through ``control_plane``'s policy."""
    metadata = metadata or RequestMetadata(call_id="c", host="h", path=path)
    context = await control_plane.create_streaming_context({"messages": []}, metadata)
    codec = codec_for("POST", path)
    assert codec is not None
    stream = relay_for(transcoder(codec.wire_format), control_plane, context)
    out = bytearray()
    for piece in data:
        async for emitted in stream.feed(piece):
            out += emitted
    async for emitted in stream.close():
        out += emitted
    return bytes(out)


class HoldEverythingUntilTheEnd(PolicyHandler):
    """Holds every chunk and releases them all, unchanged, when the stream ends."""

    async def apply_streaming_chunk_policy(
        self, chunk: ModelResponseStream, context: StreamingContext
    ) -> AsyncIterator[ChunkResult]:
        context.policy_state.setdefault("held", []).append(chunk)
        return
        yield

    async def on_stream_end(self, context: StreamingContext) -> AsyncIterator[ChunkResult]:
        for chunk in context.policy_state.get("held", []):
            yield PolicyResult.allow(chunk)


class MutateInPlace(PolicyHandler):
    """Changes the chunk object it was given and passes that same object on."""

    async def apply_streaming_chunk_policy(
        self, chunk: ModelResponseStream, context: StreamingContext
    ) -> AsyncIterator[ChunkResult]:
        if chunk.choices and chunk.choices[0].delta.content:
            chunk.choices[0].delta.content = chunk.choices[0].delta.content.replace("fox", "cat")
        yield PolicyResult.allow(chunk)


@pytest.mark.parametrize("policy", [NoOpPolicy, PassEveryChunk], ids=["passive", "inspected"])
@pytest.mark.parametrize("path", RENDERERS)
@pytest.mark.parametrize("scenario", SCENARIOS)
async def test_noop_relay_is_byte_identical_however_the_bytes_arrive(
    path: str, scenario: str, policy: type[PolicyHandler], control_plane_kind: Kind
) -> None:
    original = provider_stream(path, scenario)
    for seed in range(3):
        assert await relay(path, policy(), pieces(original, seed), kind=control_plane_kind) == original


ROGUE = "rogue-text-no-policy-saw"


@pytest.mark.parametrize("policy", [NoOpPolicy, PassEveryChunk], ids=["passive", "inspected"])
@pytest.mark.parametrize("path", RENDERERS)
@pytest.mark.parametrize(
    "data",
    [ROGUE, f'["{ROGUE}"]', f'"{ROGUE}"', f"[DONE] {ROGUE}", "42", "null", "[" * 400 + "]" * 400],
    ids=["text", "array", "string", "after-done", "number", "null", "deep"],
)
async def test_an_event_whose_data_is_not_a_json_object_ends_the_stream_unforwarded(
    path: str, data: str, policy: type[PolicyHandler], control_plane_kind: Kind
) -> None:
    """Data no normalised view has a place for is seen by no policy, so it does not pass: the
    client gets what came before it and an error in the provider's own format."""
    original = provider_stream(path, "text")
    first = original.index(b"\n\n") + 2
    name = b"event: content_block_delta\n" if path == "/v1/messages" else b""
    rogue = name + f"data: {data}\n\n".encode()
    out = await relay(path, policy(), [original[:first] + rogue + original[first:]], kind=control_plane_kind)
    assert out.startswith(original[:first])
    assert ROGUE.encode() not in out and b"[[[" not in out
    assert b"not a JSON object" in out[first:]


@pytest.mark.parametrize("path", RENDERERS)
@pytest.mark.parametrize("scenario", SCENARIOS)
async def test_held_and_released_unchanged_is_still_byte_identical(
    path: str, scenario: str, control_plane_kind: Kind
) -> None:
    original = provider_stream(path, scenario)
    assert await relay(path, HoldEverythingUntilTheEnd(), [original], kind=control_plane_kind) == original


@pytest.mark.parametrize("path", RENDERERS)
async def test_a_chunk_changed_in_place_is_noticed(path: str, control_plane_kind: Kind) -> None:
    out = await relay(path, MutateInPlace(), [provider_stream(path, "text")], kind=control_plane_kind)
    text = client_text(path, out)
    assert text == "Hello from the fake provider. The quick brown cat jumps over the lazy dog."


@pytest.mark.parametrize("path", RENDERERS)
async def test_safe_tool_calls_pass_the_blocklist_byte_identical(path: str, control_plane_kind: Kind) -> None:
    original = provider_stream(path, "tool_call ls -la")
    policy = ToolCallBlocklistPolicy(ToolCallBlocklistPolicy.Config(patterns=[r"rm\s+-rf"]))
    assert await relay(path, policy, pieces(original, 7), kind=control_plane_kind) == original


@pytest.mark.parametrize("path", RENDERERS)
async def test_an_upstream_error_event_survives_a_rewritten_stream(
    path: str, control_plane_kind: Kind
) -> None:
    out = await relay(
        path, MutateInPlace(), [provider_stream(path, "midstream_error")], kind=control_plane_kind
    )
    events = SSEParser().feed(out)
    assert any("error" in (e.event or "") or '"error"' in e.data for e in events)
    assert events[-1].data != "[DONE]"  # nothing made up after the provider's error


async def activity(control_plane: ControlPlaneService) -> list[ActivityEvent]:
    """What the control plane published, oldest first (for ControlPlaneHTTP: the service did)."""
    return await published(control_plane)


def client_text(path: str, out: bytes) -> str:
    """The assistant text a client assembles from the stream's events."""
    texts = []
    for event in SSEParser().feed(out):
        data = event.json()
        if not isinstance(data, dict):
            continue
        if path == "/v1/chat/completions":
            texts += [c["delta"].get("content") or "" for c in data.get("choices", [])]
        elif path == "/v1/responses" and data.get("type") == "response.output_text.delta":
            texts.append(data["delta"])
        elif path == "/v1/messages" and data.get("type") == "content_block_delta":
            texts.append(data["delta"].get("text", ""))
    return "".join(texts)


def test_sse_parser_keeps_exact_bytes_across_any_split() -> None:
    stream = b'event: a\ndata: {"x": 1}\n\n: comment\r\ndata: two\r\ndata: lines\r\n\r\ndata: [DONE]\n\n'
    for seed in range(20):
        parser = SSEParser()
        events = [e for piece in pieces(stream, seed) for e in parser.feed(piece)]
        assert b"".join(e.raw for e in events) == stream
        assert [e.data for e in events] == ['{"x": 1}', "two\nlines", "[DONE]"]
        assert events[0].event == "a" and json.loads(events[0].data) == {"x": 1}


@pytest.mark.parametrize("path", RENDERERS)
@pytest.mark.parametrize("scenario", SCENARIOS)
async def test_the_passive_path_records_what_an_inspecting_policy_would(
    path: str, scenario: str, control_plane_kind: Kind
) -> None:
    """NoOp's streams skip the policy, not the record: both sides' events, outputs and usage are
    what a policy that looks at every chunk and passes it gets recorded."""
    data = pieces(provider_stream(path, scenario), seed=7)
    captures: list[StreamCapture] = []
    for policy in (NoOpPolicy(), PassEveryChunk()):
        async with control_plane_for(policy, control_plane_kind) as control_plane:
            metadata = RequestMetadata(call_id="c", host="h", path=path)
            context = await control_plane.create_streaming_context({"messages": []}, metadata)
            capture = StreamCapture(mirrored=not context.inspects_chunks)
            codec = codec_for("POST", path)
            assert codec is not None
            stream = relay_for(transcoder(codec.wire_format), control_plane, context, capture)
            for piece in data:
                async for _ in stream.feed(piece):
                    pass
            async for _ in stream.close():
                pass
            captures.append(capture)
    passive, inspected = captures
    assert passive.original_events.events() == inspected.original_events.events()
    assert passive.final_events.events() == inspected.final_events.events()
    assert passive.original.output() == inspected.original.output()
    assert passive.final.output() == inspected.final.output()
    assert passive.original.usage == inspected.original.usage
    assert passive.original.output().text or passive.original.output().tool_calls  # something to compare
