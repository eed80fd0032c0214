"""The plain chunks the wire formats decode events into (``controlplane.chunks``).

Every event is decoded by our own code rather than LiteLLM's parsers: the frequent ones for
speed, the rare ones (finish reasons, usage, signatures) so that a sidecar proxy never loads
LiteLLM. What a policy sees of them must be what LiteLLM's parser reads. And since the passive path assembles the
record straight from these chunks, whatever a compromised upstream sends either decodes into
chunks the record can hold or ends the stream as malformed.
"""

import json
from typing import Any

import pytest
from hypothesis import given, note, settings
from hypothesis import strategies as st

from controlplane.chunk_views import chunk_model
from controlplane.llm import AnthropicStreamParser, OpenAiResponsesToChatCompletionStreamIterator
from controlplane.policies.noop import NoOpPolicy
from controlplane.recording.records import OutputAssembler
from formats.sse import SSEEvent, SSEParser, encode_event
from tests.control_planes import Kind
from tests.policies import PassEveryChunk
from tests.test_stream_errors import transcoder_for
from tests.test_stream_relay import RENDERERS, SCENARIOS, provider_stream, relay

CHAT, RESPONSES, MESSAGES = "/v1/chat/completions", "/v1/responses", "/v1/messages"
JSON_VALUES = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text(max_size=8),
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=8), inner, max_size=3),
    max_leaves=6,
)


def sse(data: dict[str, Any], name: str | None = None) -> SSEEvent:
    return SSEParser().feed(encode_event(data, name))[0]


def seen_by_policy(chunk: Any) -> dict[str, Any]:
    """What a policy reads of a chunk's delta."""
    delta = chunk.choices[0].delta
    return {
        "content": delta.content or None,
        "reasoning_content": getattr(delta, "reasoning_content", None),
        "thinking_blocks": getattr(delta, "thinking_blocks", None),
    }


def started_anthropic_stream() -> Any:
    transcoder = transcoder_for(MESSAGES)
    start = {"type": "message_start", "message": {"id": "msg_1", "model": "m", "content": []}}
    transcoder.decode(sse(start, "message_start"))
    return transcoder


@settings(max_examples=60, deadline=None)
@given(kind=st.sampled_from(["text_delta", "thinking_delta"]), text=st.text(max_size=40))
def test_anthropic_text_and_thinking_deltas_are_what_litellms_parser_reads(kind: str, text: str) -> None:
    field = "text" if kind == "text_delta" else "thinking"
    data = {"type": "content_block_delta", "index": 0, "delta": {"type": kind, field: text}}
    ours = [chunk_model(c) for c in started_anthropic_stream().decode(sse(data, data["type"]))]
    litellm = AnthropicStreamParser(streaming_response=None, sync_stream=False).chunk_parser(data)
    if not text:
        assert ours == []  # an empty delta carries nothing, as LiteLLM's chunk says
        assert not any(seen_by_policy(litellm).values())
        return
    assert [seen_by_policy(c) for c in ours] == [seen_by_policy(litellm)]
    assert ours[0].id == "msg_1" and ours[0].model == "m"


@settings(max_examples=40, deadline=None)
@given(text=st.text(max_size=40))
def test_a_responses_reasoning_summary_delta_is_what_litellms_parser_reads(text: str) -> None:
    data = {
        "type": "response.reasoning_summary_text.delta",
        "output_index": 0,
        "summary_index": 0,
        "delta": text,
    }
    ours = [chunk_model(c) for c in transcoder_for(RESPONSES).decode(sse(data))]
    parser = OpenAiResponsesToChatCompletionStreamIterator(streaming_response=None, sync_stream=False)  # type: ignore[arg-type]
    assert [seen_by_policy(c) for c in ours] == [seen_by_policy(parser.chunk_parser(data))]


COUNTS = st.none() | st.integers(min_value=0, max_value=10**6)


def read_by_policy(chunk: Any) -> dict[str, Any]:
    """What a policy reads of a rare event's chunk: its finish reason, token counts and blocks."""
    usage = getattr(chunk, "usage", None)
    choice = chunk.choices[0] if chunk.choices else None
    return {
        "finish_reason": choice.finish_reason if choice else None,
        "thinking_blocks": getattr(choice.delta, "thinking_blocks", None) if choice else None,
        "usage": {k: getattr(usage, k) for k in ("prompt_tokens", "completion_tokens", "total_tokens")}
        if usage is not None
        else None,
        "cached": usage.prompt_tokens_details.cached_tokens
        if usage is not None and usage.prompt_tokens_details
        else None,
    }


@settings(max_examples=60, deadline=None)
@given(
    stop=st.sampled_from(
        [None, "end_turn", "max_tokens", "tool_use", "stop_sequence", "refusal", "pause_turn"]
    ),
    counts=st.fixed_dictionaries(
        {},
        optional={
            name: COUNTS
            for name in (
                "input_tokens",
                "output_tokens",
                "cache_read_input_tokens",
                "cache_creation_input_tokens",
            )
        },
    ),
)
def test_an_anthropic_message_delta_is_what_litellms_parser_reads(
    stop: str | None, counts: dict[str, Any]
) -> None:
    data = {"type": "message_delta", "delta": {"stop_reason": stop, "stop_sequence": None}, "usage": counts}
    (ours,) = [chunk_model(c) for c in started_anthropic_stream().decode(sse(data, data["type"]))]
    litellm = AnthropicStreamParser(streaming_response=None, sync_stream=False).chunk_parser(data)
    assert read_by_policy(ours) == read_by_policy(litellm)


@pytest.mark.parametrize(
    "data",
    [
        {
            "type": "content_block_delta",
            "index": 0,
            "delta": {"type": "signature_delta", "signature": "c2ln"},
        },
        {
            "type": "content_block_start",
            "index": 0,
            "content_block": {"type": "redacted_thinking", "data": "ZW5j"},
        },
        {"type": "content_block_start", "index": 0, "content_block": {"type": "thinking", "thinking": ""}},
    ],
    ids=["signature", "redacted thinking", "thinking start"],
)
def test_anthropic_blocks_carry_what_litellms_parser_reads(data: dict[str, Any]) -> None:
    """(A citation, which LiteLLM's chunk has no field for, is a tool call to policies:
    tests/test_unseen_events.py.)"""
    ours = [chunk_model(c) for c in started_anthropic_stream().decode(sse(data, data["type"]))]
    litellm = AnthropicStreamParser(streaming_response=None, sync_stream=False).chunk_parser(data)
    if not getattr(litellm.choices[0].delta, "thinking_blocks", None):
        assert ours == []  # nothing a policy reads, as LiteLLM's chunk says
        return
    assert [read_by_policy(c) for c in ours] == [read_by_policy(litellm)]


@settings(max_examples=60, deadline=None)
@given(
    counts=st.none()
    | st.fixed_dictionaries(
        {"input_tokens": st.integers(0, 10**6), "output_tokens": st.integers(0, 10**6)},
        optional={
            "total_tokens": st.integers(0, 10**6),
            "input_tokens_details": st.fixed_dictionaries({"cached_tokens": st.integers(0, 1000)}),
        },
    )
)
def test_a_responses_completed_usage_is_what_litellms_parser_reads(counts: dict[str, Any] | None) -> None:
    response = {"id": "resp_1", "status": "completed", "output": [], "usage": counts}
    data = {"type": "response.completed", "response": response}
    (ours,) = [chunk_model(c) for c in transcoder_for(RESPONSES).decode(sse(data))]
    parser = OpenAiResponsesToChatCompletionStreamIterator(streaming_response=None, sync_stream=False)  # type: ignore[arg-type]
    litellm = parser.chunk_parser(data)
    assert read_by_policy(ours)["usage"] == read_by_policy(litellm)["usage"]
    assert read_by_policy(ours)["cached"] == read_by_policy(litellm)["cached"]


def test_a_responses_raw_reasoning_delta_reaches_the_policy_as_reasoning() -> None:
    """LiteLLM's parser makes an empty chunk of it: the policy would not see what the model thought."""
    data = {
        "type": "response.reasoning_text.delta",
        "output_index": 0,
        "content_index": 0,
        "delta": "plan: rm",
    }
    (chunk,) = transcoder_for(RESPONSES).decode(sse(data))
    assert seen_by_policy(chunk_model(chunk))["reasoning_content"] == "plan: rm"
    record = OutputAssembler()
    record.add(chunk)
    assert record.output().reasoning == "plan: rm"


def json_paths(value: Any, path: tuple[Any, ...] = ()) -> list[tuple[Any, ...]]:
    """Every place in a JSON value another value could stand."""
    children: list[tuple[Any, Any]] = []
    if isinstance(value, dict):
        children = list(value.items())
    elif isinstance(value, list):
        children = list(enumerate(value))
    return [path, *(p for key, child in children for p in json_paths(child, (*path, key)))]


def replaced(value: Any, path: tuple[Any, ...], new: Any) -> Any:
    if not path:
        return new
    copy = dict(value) if isinstance(value, dict) else list(value)
    copy[path[0]] = replaced(value[path[0]], path[1:], new)
    return copy


@st.composite
def tampered_streams(draw: st.DrawFn) -> tuple[str, list[SSEEvent]]:
    """A real stream of one of the formats with one value, anywhere in one event, replaced."""
    path = draw(st.sampled_from(list(RENDERERS)))
    events = SSEParser().feed(provider_stream(path, draw(st.sampled_from(SCENARIOS))))
    target = draw(st.sampled_from([i for i, e in enumerate(events) if isinstance(e.json(), dict)]))
    data = events[target].json()
    where = draw(st.sampled_from(json_paths(data)[1:]))
    new = draw(JSON_VALUES)
    note(f"{path}: event {target} at {where} = {new!r}")
    tampered = SSEParser().feed(encode_event(replaced(data, where, new), events[target].event))
    return path, [*events[:target], *tampered, *events[target + 1 :]]


@settings(max_examples=300, deadline=None)
@given(case=tampered_streams())
def test_whatever_an_upstream_sends_decodes_into_chunks_the_record_can_hold_or_is_malformed(
    case: tuple[str, list[SSEEvent]],
) -> None:
    path, events = case
    transcoder, record = transcoder_for(path), OutputAssembler()
    for event in events:
        try:
            chunks = transcoder.decode(event)
        except Exception:  # the relay ends the stream as malformed on any of them
            return
        for chunk in chunks:
            record.add(chunk)
    output = record.output()  # what the record stores: text, never another type
    assert isinstance(output.text, str) and isinstance(output.reasoning, str)
    assert all(isinstance(call.arguments, str) for call in output.tool_calls)
    json.dumps(record.usage)


@pytest.mark.parametrize("policy", [NoOpPolicy(), PassEveryChunk()], ids=["passive", "inspected"])
async def test_a_chat_chunk_whose_text_is_not_text_ends_the_stream_with_an_error(
    policy: Any, control_plane_kind: Kind
) -> None:
    events = SSEParser().feed(provider_stream(CHAT, "text"))
    first = next(i for i, e in enumerate(events) if (e.json() or {}).get("choices"))
    data = replaced(events[first].json(), ("choices", 0, "delta", "content"), 5)
    stream = [*events[:first], *SSEParser().feed(encode_event(data)), *events[first + 1 :]]
    out = await relay(CHAT, policy, [b"".join(e.raw for e in stream)], kind=control_plane_kind)
    last = SSEParser().feed(out)[-1].json()
    assert "could not police the provider's stream" in last["error"]["message"]
    assert b'"content": 5' not in out and b'"content":5' not in out
