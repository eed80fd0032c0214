"""The policies' view of a plain stream chunk (``controlplane.chunks``): LiteLLM's
``ModelResponseStream``, built only when a policy is about to see a chunk, and the plain data of
what a policy gives back. The control plane's side of the chunk seam; the data plane never
imports it.

LiteLLM's constructors validate and convert every nested field, about 20 µs a chunk: the largest
cost of an event for a policy that reads every chunk. ``chunk_model`` builds the same objects
directly instead, leaving in each the state its ``__init__`` would (the fields pydantic keeps in
``__dict__``, the extra ones in ``__pydantic_extra__``, which were set, the private attributes),
so that policies read, change, dump and copy them as before. What it does not reproduce exactly
(a legacy ``function_call``, a custom tool call, logprobs, values of a type LiteLLM would convert
or refuse) goes to LiteLLM's constructors, as do token counts with details (to ``Usage`` alone).
"""

import time
from typing import Any, cast

from pydantic import BaseModel

from controlplane.chunks import ChunkChoice, StreamChunk, ToolCallDelta
from controlplane.llm import (
    ChatCompletionDeltaToolCall,
    Delta,
    Function,
    ModelResponseStream,
    StreamingChoices,
    Usage,
    generate_id,
    is_custom_tool_call_dict,
    map_finish_reason,
)


def chunk_model(chunk: StreamChunk) -> ModelResponseStream:
    """The chunk as policies see it: what ``ModelResponseStream(**chunk)`` builds."""
    try:
        return _response(cast(dict[str, Any], chunk))
    except _Unusual:
        return ModelResponseStream(**cast(dict[str, Any], chunk))


class _Unusual(Exception):
    """The chunk holds what the direct build does not reproduce: LiteLLM builds it."""


_set = object.__setattr__


def _model[M: BaseModel](
    cls: type[M],
    fields: dict[str, Any],
    extra: dict[str, Any],
    given: set[str],
    private: dict[str, Any] | None = None,
) -> M:
    """A ``cls`` holding ``fields`` (its declared ones), ``extra`` and ``private``, as set from
    ``given``: what pydantic's ``model_construct`` does, without its bookkeeping (10-20 µs a call
    for these classes, no less than their validation). ``private`` is what pydantic would set the
    private attributes to (their defaults, copied): written out by the callers, whose tests check
    it, since pydantic's way of finding them costs more than the rest of a chunk's build."""
    model = cls.__new__(cls)
    _set(model, "__dict__", fields)
    _set(model, "__pydantic_extra__", extra)
    _set(model, "__pydantic_fields_set__", given)
    _set(model, "__pydantic_private__", private)
    return model


def _optional_str(value: Any) -> str | None:
    if value is None or type(value) is str:
        return value
    raise _Unusual  # pydantic would convert or refuse it


#: ``ModelResponseStream``'s declared fields, which its __init__ sets or validates; any other key
#: of a chunk is an extra field, kept as it is.
_RESPONSE_FIELDS = frozenset(
    {"id", "created", "model", "object", "system_fingerprint", "choices", "provider_specific_fields"}
)
_RESPONSE_SET = frozenset({"id", "created", "object", "choices", "provider_specific_fields"})


def _response(chunk: dict[str, Any]) -> ModelResponseStream:
    choices, given_id, created = chunk.get("choices"), _optional_str(chunk.get("id")), chunk.get("created")
    if type(choices) is not list or chunk.get("provider_specific_fields") is not None:
        raise _Unusual
    if created is not None and type(created) is not int:
        raise _Unusual
    fields = {
        "id": given_id if given_id is not None else generate_id(),
        "created": created if created is not None else int(time.time()),
        "model": _optional_str(chunk.get("model")),
        "object": "chat.completion.chunk",
        "system_fingerprint": _optional_str(chunk.get("system_fingerprint")),
        "choices": [_choice(choice) for choice in choices],
        "provider_specific_fields": None,
    }
    extra = {k: v for k, v in chunk.items() if k not in _RESPONSE_FIELDS}
    if extra.get("usage") is not None:
        extra["usage"] = _usage(extra["usage"])
    return _model(
        ModelResponseStream,
        fields,
        extra,
        {*_RESPONSE_SET, *chunk},
        {"_hidden_params": {}, "_response_headers": None},
    )


_COUNTS = frozenset({"prompt_tokens", "completion_tokens", "total_tokens"})
_COUNT_TYPES = frozenset({int, type(None)})
_USAGE_SET = frozenset({*_COUNTS, "completion_tokens_details", "prompt_tokens_details"})


def _usage(usage: Any) -> Usage:
    if type(usage) is not dict:
        raise _Unusual
    if not usage.keys() <= _COUNTS or not {type(v) for v in usage.values()} <= _COUNT_TYPES:
        return Usage(**usage)  # details, and the other providers' counts Usage maps into them
    fields = {
        "completion_tokens": usage.get("completion_tokens") or 0,
        "prompt_tokens": usage.get("prompt_tokens") or 0,
        "total_tokens": usage.get("total_tokens") or 0,
        "completion_tokens_details": None,
        "prompt_tokens_details": None,
    }  # Usage's __init__ deletes the unset server_tool_use and cost
    return _model(
        Usage, fields, {}, set(_USAGE_SET), {"_cache_creation_input_tokens": 0, "_cache_read_input_tokens": 0}
    )


#: ``StreamingChoices.__init__``'s own arguments; it keeps any other key as an extra field.
_CHOICE_ARGS = frozenset({"finish_reason", "index", "delta", "logprobs", "enhancements", "message"})


def _choice(choice: Any) -> StreamingChoices:
    if type(choice) is not dict:
        raise _Unusual
    reason, delta, logprobs = choice.get("finish_reason"), choice.get("delta"), choice.get("logprobs")
    if (reason and type(reason) is not str) or isinstance(logprobs, dict):
        raise _Unusual
    # StreamingChoices declares no fields: each is an extra one, in the order its __init__ sets them.
    extra = {k: v for k, v in choice.items() if k not in _CHOICE_ARGS}
    extra["finish_reason"] = map_finish_reason(reason) if reason else None
    extra["index"] = choice.get("index", 0)
    extra["delta"] = _delta(delta if delta is not None else {})
    if (enhancements := choice.get("enhancements")) is not None:
        extra["enhancements"] = enhancements
    extra["logprobs"] = logprobs
    return _model(StreamingChoices, {}, extra, set(extra))


#: ``Delta.__init__``'s own arguments; it keeps any other key as an extra field.
_DELTA_ARGS = frozenset(
    {
        "content",
        "role",
        "function_call",
        "tool_calls",
        "audio",
        "images",
        "reasoning_content",
        "thinking_blocks",
        "reasoning_items",
        "annotations",
    }
)
#: The fields ``Delta.__init__`` marks as set whatever it is given.
_DELTA_SET = frozenset({"content", "role", "function_call", "tool_calls", "audio", "images", "annotations"})


def _delta(delta: Any) -> Delta:
    if type(delta) is not dict or "reasoning" in delta or "provider_specific_fields" in delta:
        raise _Unusual
    if delta.get("function_call") is not None:
        raise _Unusual
    images = delta.get("images")
    if images is not None and type(images) is not list:
        raise _Unusual
    extra = {k: v for k, v in delta.items() if k not in _DELTA_ARGS}
    given = {*_DELTA_SET, *extra}
    extra["content"] = delta.get("content")
    extra["role"] = delta.get("role")
    extra["function_call"] = None
    extra["tool_calls"] = _tool_calls(delta.get("tool_calls"))
    extra["audio"] = delta.get("audio")
    if images:
        extra["images"] = images
    if (annotations := delta.get("annotations")) is not None:
        extra["annotations"] = annotations
    # The declared fields: those that are None are deleted (as OpenAI's deltas leave them out).
    fields: dict[str, Any] = {}
    for name in ("reasoning_content", "thinking_blocks", "reasoning_items"):
        if (value := delta.get(name)) is not None:
            fields[name] = value
            given.add(name)
    fields["provider_specific_fields"] = None
    return _model(Delta, fields, extra, given)


def _tool_calls(calls: Any) -> list[ChatCompletionDeltaToolCall] | None:
    if calls is None:
        return None
    if type(calls) is not list:
        raise _Unusual
    built = []
    unindexed = 0  # Delta numbers the calls without an index
    for call in calls:
        if type(call) is not dict or is_custom_tool_call_dict(call):
            raise _Unusual
        index = call.get("index")
        if index is None:
            index, unindexed = unindexed, unindexed + 1
        built.append(_tool_call(call, index))
    return built


_CALL_FIELDS = frozenset({"id", "function", "type", "index"})
_CALL_SET = frozenset({"function", "type", "index"})


def _tool_call(call: dict[str, Any], index: Any) -> ChatCompletionDeltaToolCall:
    kind = _optional_str(call.get("type"))
    if type(index) is not int:
        raise _Unusual
    fields = {
        "id": _optional_str(call.get("id")),
        "function": _function(call.get("function")),
        "type": kind if kind is not None else "function",
        "index": index,
    }
    extra = {k: v for k, v in call.items() if k not in _CALL_FIELDS}
    given = {*_CALL_SET, *extra, *(("id",) if "id" in call else ())}
    return _model(ChatCompletionDeltaToolCall, fields, extra, given)


def _function(function: Any) -> Function:
    if type(function) is not dict:
        raise _Unusual  # a call without a function is refused
    arguments = function.get("arguments")
    if arguments is None:
        if isinstance(function.get("parameters"), dict):
            raise _Unusual  # Function takes them for the arguments
        arguments = ""
    if type(arguments) is not str:
        raise _Unusual
    # Function's __init__ drops any other key.
    fields = {"arguments": arguments, "name": _optional_str(function.get("name"))}
    return _model(Function, fields, {}, {"arguments", "name"})


def chunk_data(chunk: ModelResponseStream) -> StreamChunk:
    """What a policy's chunk carries, as plain data: what the data plane writes for the client and
    the record keeps."""
    choices: list[ChunkChoice] = []
    for choice in chunk.choices:
        delta = field_of(choice, "delta")
        calls: list[ToolCallDelta] = [
            {
                "index": call.index or 0,
                "id": call.id,
                "function": {"name": call.function.name, "arguments": call.function.arguments or ""}
                if call.function is not None
                else {},
            }
            for call in field_of(delta, "tool_calls") or []
        ]
        choices.append(
            {
                "index": field_of(choice, "index") or 0,
                "delta": {
                    "role": field_of(delta, "role"),
                    "content": field_of(delta, "content"),
                    "reasoning_content": field_of(delta, "reasoning_content"),
                    "thinking_blocks": _plain_blocks(field_of(delta, "thinking_blocks")),
                    "tool_calls": calls,
                },
                "finish_reason": field_of(choice, "finish_reason"),
            }
        )
    usage = field_of(chunk, "usage")
    return {"choices": choices, "usage": usage.model_dump() if usage is not None else None}


def field_of(model: Any, name: str) -> Any:
    """A field of a LiteLLM object (None when it is not set), as ``getattr(model, name, None)``
    reads it. Most of a chunk's fields (a choice's ``delta``, a delta's ``content``) are extra
    fields of pydantic's, and those LiteLLM leaves out when None are not set at all: an attribute
    read finds either only after failing through pydantic's ``__getattr__``. Read where pydantic
    keeps them, each is a dict lookup (a policy that reads every chunk does a dozen a chunk)."""
    if not isinstance(model, BaseModel):
        return getattr(model, name, None)
    values = model.__dict__
    if name in values:
        return values[name]
    extra = model.__pydantic_extra__
    return extra.get(name) if extra is not None else None


def _plain_blocks(blocks: Any) -> list[dict[str, Any]] | None:
    if blocks is None:
        return None
    return [dict(b.model_dump() if hasattr(b, "model_dump") else b) for b in blocks]
