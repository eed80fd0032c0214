"""``chunk_model`` builds a policy's ``ModelResponseStream`` without LiteLLM's constructors (for
speed): what it builds must be what ``ModelResponseStream(**chunk)`` builds, to the state pydantic
keeps, so that policies read, change, dump and copy it alike."""

import copy
import time
from typing import Any

import pytest
from hypothesis import given, note, settings
from hypothesis import strategies as st
from pydantic import BaseModel, ValidationError

from controlplane.chunk_views import _response, chunk_data, chunk_model
from controlplane.chunks import StreamChunk
from controlplane.llm import ModelResponseStream
from controlplane.policies.chunks import chunk_text, field_of, finish_reason, tool_call_deltas, with_text

TEXT = st.text(max_size=12)
NAMES = st.sampled_from(["service_tier", "obfuscation", "refusal", "extra_field"])
#: Finish reasons as decoders pass them on: OpenAI's, and others' that LiteLLM maps.
REASONS = st.sampled_from(
    [
        "stop",
        "length",
        "tool_calls",
        "content_filter",
        "function_call",
        "end_turn",
        "tool_use",
        "STOP",
        "odd",
        "",
    ]
)


def optional(values: st.SearchStrategy[Any]) -> st.SearchStrategy[Any]:
    return st.none() | values


FUNCTIONS = st.fixed_dictionaries(
    {"arguments": TEXT}, optional={"name": optional(TEXT), "parameters": st.just({"a": 1})}
)
TOOL_CALLS = st.fixed_dictionaries(
    {"index": st.integers(-3, 5), "function": FUNCTIONS},
    optional={"id": optional(TEXT), "type": st.just("function"), "extra_field": TEXT},
)
THINKING_BLOCKS = st.fixed_dictionaries(
    {"type": st.just("thinking"), "thinking": TEXT}, optional={"signature": TEXT}
) | st.fixed_dictionaries({"type": st.just("redacted_thinking"), "data": TEXT})
DELTAS = st.fixed_dictionaries(
    {},
    optional={
        "role": optional(st.just("assistant")),
        "content": optional(TEXT),
        "reasoning_content": optional(TEXT),
        "thinking_blocks": optional(st.lists(THINKING_BLOCKS, max_size=2)),
        "tool_calls": optional(st.lists(TOOL_CALLS, max_size=3)),
        "refusal": st.none(),
        "audio": optional(st.just({"transcript": "t"})),
        "annotations": optional(st.just([])),
        "images": optional(st.lists(st.just({"url": "u"}), max_size=1)),
    },
)
CHOICES = st.fixed_dictionaries(
    {"index": st.integers(0, 3), "delta": DELTAS},
    optional={"finish_reason": optional(REASONS), "logprobs": st.none(), "extra_field": TEXT},
)
COUNTS = st.fixed_dictionaries(
    {},
    optional={
        k: optional(st.integers(0, 10**6)) for k in ("prompt_tokens", "completion_tokens", "total_tokens")
    },
)
#: Token counts with what Usage maps into details: built by Usage itself.
DETAILED_COUNTS = st.fixed_dictionaries(
    {"prompt_tokens": st.integers(0, 100), "completion_tokens": st.integers(0, 100)},
    optional={
        "total_tokens": st.integers(0, 200),
        "prompt_tokens_details": st.fixed_dictionaries({"cached_tokens": st.integers(0, 9)}),
        "completion_tokens_details": st.fixed_dictionaries({"reasoning_tokens": st.integers(0, 9)}),
        "cache_read_input_tokens": st.integers(0, 9),
        "cache_creation_input_tokens": st.integers(0, 9),
    },
)
CHUNKS = st.fixed_dictionaries(
    {"choices": st.lists(CHOICES, max_size=3)},
    optional={
        "id": optional(TEXT),
        "created": optional(st.integers(0, 2**31)),
        "model": optional(TEXT),
        "object": st.just("chat.completion.chunk"),
        "system_fingerprint": optional(TEXT),
        "service_tier": TEXT,
        "usage": optional(COUNTS | DETAILED_COUNTS),
    },
)


def state(value: Any) -> Any:
    """Everything pydantic keeps of a model, in order (which ``model_dump_json`` writes)."""
    if isinstance(value, BaseModel):
        return (
            type(value),
            [(k, state(v)) for k, v in value.__dict__.items()],
            [(k, state(v)) for k, v in (value.__pydantic_extra__ or {}).items()],
            sorted(value.__pydantic_fields_set__),
            value.__pydantic_private__,
        )
    if isinstance(value, list):
        return [state(v) for v in value]
    return value


def litellms(chunk: StreamChunk, like: ModelResponseStream) -> ModelResponseStream:
    """LiteLLM's build of ``chunk`` (of a copy: it changes the tool calls it is given), with the id and
    creation time it makes up when the chunk has none taken from ``like``."""
    model = ModelResponseStream(**copy.deepcopy(dict(chunk)))
    if chunk.get("id") is None:
        assert model.id.startswith("chatcmpl-") and like.id.startswith("chatcmpl-")
        model.id = like.id
    if chunk.get("created") is None:
        assert abs(model.created - like.created) <= 1 and abs(like.created - time.time()) <= 2
        model.created = like.created
    return model


MISSING = object()


def reads(chunk: ModelResponseStream) -> list[Any]:
    """What a policy reads of a chunk, the ways policies read it."""
    out: list[Any] = [chunk.id, chunk.created, chunk.model, chunk.object, chunk.get("usage", MISSING)]
    out += ["usage" in chunk, chunk["choices"] is chunk.choices, chunk_text(chunk), finish_reason(chunk)]
    usage = getattr(chunk, "usage", None)
    if usage is not None:
        out += [usage.prompt_tokens, usage.completion_tokens, usage.total_tokens, usage.get("cost", MISSING)]
        out += [usage.prompt_tokens_details, usage.completion_tokens_details]
    for choice in chunk.choices:
        delta = choice.delta
        out += [choice.index, choice.finish_reason, choice["finish_reason"], choice.get("logprobs", MISSING)]
        for name in (
            "content",
            "role",
            "reasoning_content",
            "thinking_blocks",
            "tool_calls",
            "function_call",
        ):
            out += [getattr(delta, name, MISSING), delta.get(name, MISSING), name in delta]
        for call in delta.tool_calls or []:
            out += [call.id, call.type, call.index, call["function"].name, call.function.arguments]
            out += [call.get("extra_field", MISSING), call.function.get("name")]
    out += [state(call) for call in tool_call_deltas(chunk)]
    return out


def mutate(chunk: ModelResponseStream) -> None:
    """What policies do to a chunk they change in place."""
    for choice in chunk.choices:
        choice.delta.content = (choice.delta.content or "") + "[changed]"
        for call in choice.delta.tool_calls or []:
            call.function.arguments += "}"
            call["id"] = "call_changed"
        choice["finish_reason"] = choice.finish_reason and "stop"
    if chunk.choices:
        chunk.choices[0].delta["reasoning_content"] = "thought"


def assert_alike(ours: ModelResponseStream, theirs: ModelResponseStream) -> None:
    assert state(ours) == state(theirs)
    assert ours.model_dump() == theirs.model_dump()
    assert ours.model_dump(exclude_none=True) == theirs.model_dump(exclude_none=True)
    assert ours.model_dump_json() == theirs.model_dump_json()
    assert chunk_data(ours) == chunk_data(theirs)
    assert reads(ours) == reads(theirs)


@settings(max_examples=400, deadline=None)
@given(chunk=CHUNKS)
def test_the_direct_build_is_litellms(chunk: StreamChunk) -> None:
    given_chunk = copy.deepcopy(chunk)
    ours = _response(dict(chunk))
    assert chunk == given_chunk  # the chunk is left as it was
    theirs = litellms(chunk, ours)
    note(repr(ours))
    assert_alike(ours, theirs)
    assert state(ours.model_copy(deep=True)) == state(theirs.model_copy(deep=True))
    assert state(copy.deepcopy(ours)) == state(copy.deepcopy(theirs))
    assert state(copy.copy(ours)) == state(copy.copy(theirs))
    if chunk["choices"]:
        assert state(with_text(ours, "x")) == state(with_text(theirs, "x"))
    mutate(ours)
    mutate(theirs)
    assert_alike(ours, theirs)


@pytest.mark.parametrize(
    "chunk",
    [
        {"id": "c", "created": 1, "model": "m", "choices": [{"index": 0, "delta": {"content": "hi"}}]},
        {
            "id": "c",
            "choices": [
                {
                    "index": 0,
                    "delta": {
                        "tool_calls": [
                            {"index": 0, "id": "call_1", "function": {"name": "f", "arguments": ""}}
                        ]
                    },
                }
            ],
        },
        {
            "choices": [
                {"index": 0, "delta": {"tool_calls": [{"index": 0, "function": {"arguments": '{"a'}}]}}
            ]
        },
        {"choices": [{"index": 0, "delta": {}, "finish_reason": "stop"}]},
        {"choices": [], "usage": {"prompt_tokens": 3, "completion_tokens": 5, "total_tokens": 8}},
        {"choices": [{"index": 0, "delta": {}}], "usage": {"prompt_tokens": 3, "prompt_tokens_details": {}}},
    ],
)
def test_the_usual_chunks_are_built_directly(chunk: StreamChunk) -> None:
    """Text, tool-call, finish and usage chunks: the ones a policy reads most."""
    _response(dict(chunk))


#: What LiteLLM's constructors convert, refuse or build otherwise, mixed into chunks.
ODD_VALUES = st.sampled_from([None, "", "x", 0, 1, True, 1.5, [], [{}], {}, {"a": 1}, ("x",)])
ODD_DELTAS = st.fixed_dictionaries(
    {},
    optional={
        "content": ODD_VALUES,
        "function_call": st.just({"name": "f", "arguments": "{}"}) | ODD_VALUES,
        "reasoning": ODD_VALUES,
        "reasoning_content": optional(TEXT),
        "provider_specific_fields": ODD_VALUES,
        "images": ODD_VALUES,
        "tool_calls": ODD_VALUES
        | st.lists(
            st.fixed_dictionaries(
                {},
                optional={
                    "index": ODD_VALUES,
                    "id": ODD_VALUES,
                    "type": st.sampled_from(["function", "custom", None]),
                    "custom": st.just({"name": "c", "input": "i"}),
                    "function": ODD_VALUES
                    | st.fixed_dictionaries({}, optional={"arguments": ODD_VALUES, "name": ODD_VALUES}),
                },
            ),
            max_size=2,
        ),
    },
)
ODD_CHUNKS = st.fixed_dictionaries(
    {},
    optional={
        "id": ODD_VALUES,
        "created": ODD_VALUES,
        "model": ODD_VALUES,
        "provider_specific_fields": ODD_VALUES,
        "usage": ODD_VALUES | COUNTS,
        "choices": ODD_VALUES
        | st.lists(
            ODD_VALUES
            | st.fixed_dictionaries(
                {},
                optional={
                    "index": ODD_VALUES,
                    "delta": ODD_VALUES | ODD_DELTAS,
                    "finish_reason": ODD_VALUES | REASONS,
                    "logprobs": ODD_VALUES,
                    "enhancements": ODD_VALUES,
                    "message": ODD_VALUES,
                },
            ),
            max_size=2,
        ),
    },
)


def outcome(build: Any) -> Any:
    try:
        return build()
    except (ValidationError, TypeError, AttributeError, KeyError) as error:
        return type(error)


@settings(max_examples=400, deadline=None)
@given(chunk=ODD_CHUNKS)
def test_any_chunk_is_what_litellm_builds(chunk: dict[str, Any]) -> None:
    """Whatever the direct build does not reproduce is LiteLLM's to build (or to refuse)."""
    ours = outcome(lambda: chunk_model(copy.deepcopy(chunk)))  # type: ignore[arg-type]
    theirs = outcome(lambda: ModelResponseStream(**copy.deepcopy(chunk)))
    note(repr((ours, theirs)))
    if isinstance(ours, ModelResponseStream) and isinstance(theirs, ModelResponseStream):
        theirs.id, theirs.created = ours.id, ours.created  # made up when the chunk has none
        assert state(ours) == state(theirs)
    else:
        assert ours == theirs


_FIELDS = (
    "choices", "usage", "id", "model", "delta", "index", "finish_reason", "logprobs", "content",
    "role", "tool_calls", "function_call", "audio", "reasoning_content", "thinking_blocks",
    "function", "arguments", "name", "type", "prompt_tokens", "absent_field",
)  # fmt: skip


@settings(max_examples=200, deadline=None)
@given(chunk=CHUNKS)
def test_a_field_is_read_where_pydantic_keeps_it_as_an_attribute_read_finds_it(chunk: StreamChunk) -> None:
    """``field_of``, the policy helpers' shortcut, reads every field of every object of a chunk
    (built directly or by LiteLLM) as ``getattr`` does, before and after policies change it."""
    for built in (chunk_model(copy.deepcopy(chunk)), ModelResponseStream(**copy.deepcopy(chunk))):
        for _ in range(2):
            objects: list[Any] = [built, built.usage if hasattr(built, "usage") else None]
            for choice in built.choices:
                delta = choice.delta
                objects += [choice, delta]
                for call in getattr(delta, "tool_calls", None) or []:
                    objects += [call, call.function]
            for item in objects:
                for name in _FIELDS:
                    assert field_of(item, name) == getattr(item, name, None), (type(item).__name__, name)
            mutate(built)
