"""A whole answer as the record keeps it (its text, reasoning, tool calls, finish reason and
token counts), read from the provider's body without LiteLLM.

For a response no policy inspects (the passive path, ``PolicyHandler.inspects_responses``), on
either plane: the body goes to the client untouched and only this is read from it. The reading
is the one the normalised view makes (``formats.codecs``): the same tool calls, the finish
reason in OpenAI's terms, the token counts as LiteLLM reckons them; a body the view could not
read is refused here too. The Chat and Gemini codecs build their view from the views below.
"""

import json
from typing import Any

from controlplane.models import WireFormat
from controlplane.recording.records import Output, ToolCall, Usage
from formats.anthropic_messages_stream import (
    TO_FINISH,
    block_arguments,
    block_id,
    block_name,
    chat_usage,
    is_tool_block,
    unseen_block_fields,
    unseen_call_id,
)
from formats.base import JSON, FormatError
from formats.gemini_stream import (
    call_of,
    candidate_index,
    candidate_parts,
    candidates_of,
    canonical_keys,
    finish_reason_for,
    is_thought,
    part_kind,
    usage_of,
)
from formats.openai_chat_stream import policy_view
from formats.responses_items import (
    call_id,
    finish_reason_of,
    is_tool_item,
    output_items,
    output_text,
    reasoning_text,
    tool_arguments,
    tool_name,
)

#: Finish reasons LiteLLM keeps as they are; it reads any other one of an OpenAI-shaped body as
#: ``stop`` (``map_finish_reason``), and so does the record.
_OPENAI_FINISH = frozenset({"stop", "length", "tool_calls", "function_call", "content_filter"})
_COUNTS = ("prompt_tokens", "completion_tokens", "total_tokens")
_RESPONSES_COUNTS = {
    "prompt_tokens": "input_tokens",
    "completion_tokens": "output_tokens",
    "total_tokens": "total_tokens",
}


def answer_of(wire_format: WireFormat, body: JSON) -> tuple[Output, Usage | None]:
    """The record's ``original_output`` and ``usage`` of a whole response of ``wire_format``.
    Raises ``FormatError`` (or ``ValueError``, ``TypeError``, ``KeyError``) on a body the
    normalised view could not read either."""
    match wire_format:
        case WireFormat.OPENAI_CHAT:
            view = chat_view(body)
            return _view_output(view), _chat_usage(view.get("usage"))
        case WireFormat.GEMINI:
            view = gemini_view(body)
            return _view_output(view), _chat_usage(view.get("usage"))
        case WireFormat.OPENAI_RESPONSES:
            return _responses_answer(body)
        case WireFormat.ANTHROPIC_MESSAGES:
            return _anthropic_answer(body)
    raise FormatError(f"{wire_format} has no whole responses")


def chat_view(body: JSON) -> JSON:
    """A Chat Completions response as policies see it: refusals as text, legacy function calls
    and custom tool calls as tool calls."""
    choices = body.get("choices") or []
    if not isinstance(choices, list) or not all(isinstance(c, dict) for c in choices):
        raise ValueError("`choices` must be a list of objects")
    return {**body, "choices": [_chat_choice(c) for c in choices]}


def _chat_choice(choice: JSON) -> JSON:
    view = dict(choice)
    if isinstance(view.get("message"), dict):
        view["message"] = policy_view(view["message"], streamed=False)
    if view.get("finish_reason") == "function_call":
        view["finish_reason"] = "tool_calls"
    return view


def gemini_view(body: JSON) -> JSON:
    """A generateContent response in Chat Completions' shape (one choice per candidate)."""
    response = canonical_keys(body, "the response")
    choices = []
    for position, candidate in enumerate(candidates_of(response)):
        text: list[str] = []
        thoughts: list[str] = []
        calls: list[JSON] = []
        for part in candidate_parts(candidate):
            kind = part_kind(part)
            if kind == "text":
                (thoughts if is_thought(part) else text).append(part["text"])
            elif kind is not None:
                id_, name, arguments = call_of(part, kind)
                calls.append(
                    {
                        "id": id_ or gemini_call_id(position, len(calls)),
                        "type": "function",
                        "function": {"name": name, "arguments": arguments},
                    }
                )
        message: JSON = {"role": "assistant", "content": "".join(text) or None, "tool_calls": calls or None}
        if thoughts:
            message["reasoning_content"] = "".join(thoughts)
        choices.append(
            {
                "index": candidate_index(candidate, position),
                "message": message,
                "finish_reason": finish_reason_for(candidate.get("finishReason"), bool(calls)) or "stop",
            }
        )
    view: JSON = {"id": response.get("responseId"), "model": response.get("modelVersion"), "choices": choices}
    if usage := usage_of(response.get("usageMetadata")):
        view["usage"] = usage
    return view


def gemini_call_id(candidate: int, position: int) -> str:
    """The id policies know a call by when Gemini gave it none (the stream's transcoder names
    them the same way)."""
    return f"call_gemini_{candidate}_{position}"


def _view_output(view: JSON) -> Output:
    """The first choice of a Chat Completions view, as LiteLLM's ``ModelResponse`` reads it."""
    output = Output(finish_reason="stop")
    for choice in view["choices"][:1]:
        message = choice.get("message") or {}
        output.text = message.get("content") or ""
        output.reasoning = message.get("reasoning_content") or ""
        output.finish_reason = _openai_finish(choice.get("finish_reason"))
        output.tool_calls = [_tool_call(call) for call in message.get("tool_calls") or []]
    if not view["choices"]:
        output.finish_reason = None
    return output


def _tool_call(call: JSON) -> ToolCall:
    function = call.get("function") or {}
    return ToolCall(id=call.get("id"), name=function.get("name"), arguments=function.get("arguments") or "")


def _openai_finish(reason: Any) -> str:
    return reason if reason in _OPENAI_FINISH else "stop"


def _chat_usage(usage: Any) -> Usage | None:
    """Token counts as LiteLLM's ``Usage`` keeps them: a count it is not given is 0."""
    if usage is None:
        return None
    return Usage.from_mapping({name: usage.get(name) or 0 for name in _COUNTS})


def anthropic_tool_calls(content: list[JSON]) -> list[tuple[str, str, str]]:
    """The tool calls of a Messages answer, as ``(id, name, arguments)``: every block that is not
    text or thinking is one to policies, whatever its type; so is what a text block carries
    besides its text (its citations)."""
    calls = []
    for position, block in enumerate(content):
        if is_tool_block(block):
            calls.append((block_id(block, position), block_name(block), block_arguments(block)))
        elif block.get("type") == "text" and (unseen := unseen_block_fields(block)):
            calls.append((unseen_call_id(position), "text", json.dumps(unseen)))
    return calls


def _responses_answer(body: JSON) -> tuple[Output, Usage | None]:
    output = output_items(body.get("output"))
    tools = [(position, item) for position, item in enumerate(output) if is_tool_item(item)]
    usage = body.get("usage") or {}
    answer = Output(
        text=output_text(output),
        reasoning=reasoning_text(output),
        tool_calls=[
            ToolCall(id=call_id(item, position), name=tool_name(item), arguments=tool_arguments(item))
            for position, item in tools
        ],
        finish_reason=finish_reason_of(body, bool(tools)),
    )
    return answer, _chat_usage({name: usage.get(key, 0) for name, key in _RESPONSES_COUNTS.items()})


def _anthropic_answer(body: JSON) -> tuple[Output, Usage | None]:
    content = body["content"] or []
    if not isinstance(content, list) or not all(isinstance(block, dict) for block in content):
        raise FormatError("`content` must be a list of blocks")
    # LiteLLM reads every block's type, and a text block's text: a block without is refused.
    thinking = [block.get("thinking") for block in content if block["type"] == "thinking"]
    answer = Output(
        text="".join(block["text"] for block in content if block["type"] == "text"),
        reasoning="".join(text for text in thinking if text is not None),
        tool_calls=[
            ToolCall(id=id_, name=name, arguments=arguments)
            for id_, name, arguments in anthropic_tool_calls(content)
        ],
        finish_reason=TO_FINISH.get(body["stop_reason"], "stop"),
    )
    if "model" not in body:
        raise FormatError("the response names no model")  # as LiteLLM refuses it
    return answer, _chat_usage(chat_usage(body["usage"]))
