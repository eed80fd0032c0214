"""OpenAI Responses (``POST /v1/responses``), normalised with LiteLLM's Responses bridges: requests
and whole responses here, streams in ``openai_responses_stream``."""

import copy
import json
from typing import Any

from controlplane.llm import (
    ChatCompletionDeltaToolCall,
    Choices,
    Function,
    LiteLLMCompletionResponsesConfig,
    Message,
    ModelResponse,
    Usage,
)
from controlplane.models import NormalizedRequest, WireFormat
from formats.base import JSON
from formats.request_patch import patch_request
from formats.request_view import completed
from formats.responses_items import (
    call_id,
    finish_reason_of,
    is_tool_item,
    message_item,
    output_items,
    output_text,
    reasoning_text,
    text_part,
    tool_arguments,
    tool_name,
    with_arguments,
)

_PARAMETERS = {
    "model": "model",
    "max_tokens": "max_output_tokens",
    "temperature": "temperature",
    "top_p": "top_p",
}


def _jsonable(value: Any) -> Any:
    return value.model_dump() if hasattr(value, "model_dump") else str(value)


class OpenAIResponsesCodec:
    wire_format = WireFormat.OPENAI_RESPONSES

    def normalize_request(self, body: JSON) -> NormalizedRequest:
        rest = {k: v for k, v in body.items() if k not in ("model", "input")}
        request = LiteLLMCompletionResponsesConfig.transform_responses_api_request_to_chat_completion_request(
            model=body.get("model", ""),
            input=_as_function_items(body.get("input", [])),
            responses_api_request=copy.deepcopy(rest),  # type: ignore[arg-type]
            stream=body.get("stream"),
        )
        return completed(body, json.loads(json.dumps(request, default=_jsonable)), _CONSUMED)

    def render_request(self, original: JSON, before: NormalizedRequest, after: NormalizedRequest) -> JSON:
        return patch_request(original, before, after, _PARAMETERS)

    def parse_response(self, body: JSON) -> ModelResponse:
        output = output_items(body.get("output"))
        tools = [(position, item) for position, item in enumerate(output) if is_tool_item(item)]
        message = Message(
            role="assistant",
            content=output_text(output) or None,
            tool_calls=[
                ChatCompletionDeltaToolCall(
                    index=index,
                    id=call_id(item, position),
                    type="function",
                    function=Function(name=tool_name(item), arguments=tool_arguments(item)),
                ).model_dump()
                for index, (position, item) in enumerate(tools)
            ]
            or None,
            reasoning_content=reasoning_text(output) or None,
        )
        usage = body.get("usage") or {}
        return ModelResponse(
            id=body.get("id"),
            created=body.get("created_at"),
            model=body.get("model"),
            choices=[
                Choices(
                    index=0,
                    message=message,
                    finish_reason=finish_reason_of(body, bool(tools)),
                )
            ],
            usage=Usage(
                prompt_tokens=usage.get("input_tokens", 0),
                completion_tokens=usage.get("output_tokens", 0),
                total_tokens=usage.get("total_tokens", 0),
            ),
        )

    def render_response(self, original: JSON, response: ModelResponse) -> JSON:
        message = response.choices[0].message  # type: ignore[union-attr]
        text = message.content or ""
        kept = {call.id: _arguments(call) for call in message.tool_calls or []}
        original_output = output_items(original.get("output"))
        output: list[JSON] = []
        text_placed = text == output_text(original_output)
        for position, item in enumerate(original_output):
            kind = item.get("type")
            if kind == "message":
                if text == output_text(original_output):
                    output.append(item)
                elif not text_placed and text:
                    output.append({**item, "content": [text_part(text)]})
                    text_placed = True
            elif is_tool_item(item):
                arguments = kept.get(call_id(item, position))
                if arguments is not None:
                    output.append(with_arguments(item, arguments))
            else:
                output.append(item)
        if not text_placed and text:
            output.append(message_item("msg_luthien", text, "completed"))
        return {**original, "output": output}


#: Top-level fields LiteLLM maps under other names: they are not extra_body.
_CONSUMED = frozenset({"input", "instructions", "max_output_tokens"})


def _as_function_items(items: Any) -> Any:
    """A copy of a request's input for LiteLLM, which knows function calls and their outputs but
    drops other tool items (``local_shell_call``, ``shell_call``, MCP, computer use...): they
    become function calls (named and with arguments as policies see them in answers), and their
    text outputs function call outputs. What stays unconverted reaches policies in
    ``unmapped_text``."""
    if not isinstance(items, list):
        return copy.deepcopy(items)
    converted: list[Any] = []
    for position, item in enumerate(items):
        kind = str(item.get("type", "")) if isinstance(item, dict) else ""
        if kind.endswith("_call") and kind != "function_call" and is_tool_item(item):
            call = {
                "call_id": call_id(item, position),
                "name": tool_name(item),
                "arguments": tool_arguments(item),
            }
            converted.append({"type": "function_call", **call})
        elif (
            kind.endswith("_call_output")
            and kind != "function_call_output"
            and isinstance(item.get("output"), str)
        ):
            output = {
                "type": "function_call_output",
                "call_id": call_id(item, position),
                "output": item["output"],
            }
            converted.append(output)
        else:
            converted.append(copy.deepcopy(item))
    return converted


def _arguments(call: Any) -> str:
    function = getattr(call, "function", None)
    return getattr(function, "arguments", None) or ""
