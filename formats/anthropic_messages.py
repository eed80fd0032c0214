"""Anthropic Messages (``POST /v1/messages``), normalised with LiteLLM's Anthropic adapters (the
stream's transcoder is in ``anthropic_messages_stream``)."""

import copy
from typing import Any

import httpx

from controlplane.llm import (
    AnthropicConfig,
    ChatCompletionMessageToolCall,
    Function,
    LiteLLMAnthropicMessagesAdapter,
    ModelResponse,
)
from controlplane.models import NormalizedRequest, WireFormat
from formats.answers import anthropic_tool_calls
from formats.anthropic_messages_stream import (
    block_id,
    is_tool_block,
    stop_reason_for,
    unseen_block_fields,
    unseen_call_id,
    with_block_arguments,
)
from formats.base import JSON, FormatError
from formats.request_patch import patch_request
from formats.request_view import completed

_PARAMETERS = {
    "model": "model",
    "max_tokens": "max_tokens",
    "temperature": "temperature",
    "top_p": "top_p",
    "stop": "stop_sequences",
}


class AnthropicMessagesCodec:
    wire_format = WireFormat.ANTHROPIC_MESSAGES

    def normalize_request(self, body: JSON) -> NormalizedRequest:
        # Vertex AI names the model in the path, not the body; LiteLLM wants one.
        named = body if "model" in body else {"model": "", **body}
        request, _ = LiteLLMAnthropicMessagesAdapter().translate_anthropic_to_openai(
            anthropic_message_request=_with_texts_placed(named)  # type: ignore[arg-type]
        )
        return completed(body, dict(request), _CONSUMED)

    def render_request(self, original: JSON, before: NormalizedRequest, after: NormalizedRequest) -> JSON:
        return patch_request(original, before, after, _PARAMETERS)

    def parse_response(self, body: JSON) -> ModelResponse:
        content = body.get("content") or []
        if not isinstance(content, list) or not all(isinstance(block, dict) for block in content):
            raise FormatError("`content` must be a list of blocks")
        response = AnthropicConfig().transform_parsed_response(
            completion_response=copy.deepcopy(body),
            raw_response=httpx.Response(200, json=body),
            model_response=ModelResponse(),
            json_mode=False,
        )
        message = response.choices[0].message  # type: ignore[union-attr]
        message.tool_calls = [
            ChatCompletionMessageToolCall(
                id=id_, type="function", function=Function(name=name, arguments=arguments)
            )
            for id_, name, arguments in anthropic_tool_calls(content)
        ] or None
        return response

    def render_response(self, original: JSON, response: ModelResponse) -> JSON:
        choice = response.choices[0]
        message = choice.message  # type: ignore[union-attr]
        rendered = dict(original)
        rendered["content"] = _render_content(
            original.get("content") or [],
            message.content or "",
            message.tool_calls or [],
        )
        rendered["stop_reason"] = stop_reason_for(choice.finish_reason, original.get("stop_reason"))
        return rendered


#: Top-level fields LiteLLM maps under other names: they are not extra_body.
_CONSUMED = frozenset({"system", "stop_sequences", "metadata"})


def _with_texts_placed(body: JSON) -> JSON:
    """A copy of ``body`` for LiteLLM, which drops document and search-result blocks: their
    texts become text blocks where they were, so policies read them in the conversation."""
    placed = copy.deepcopy(body)
    for message in placed.get("messages") or []:
        if isinstance(message, dict) and isinstance(message.get("content"), list):
            message["content"] = _placed_blocks(message["content"])
    return placed


def _placed_blocks(blocks: list[Any]) -> list[Any]:
    out: list[Any] = []
    for block in blocks:
        kind = block.get("type") if isinstance(block, dict) else None
        if kind == "tool_result" and isinstance(block.get("content"), list):
            out.append({**block, "content": _placed_blocks(block["content"])})
        elif kind in ("document", "search_result"):
            out += _text_blocks(block)
        else:
            out.append(block)
    return out


def _text_blocks(block: JSON) -> list[JSON]:
    """A document's or search result's texts: its title, context, source text and content."""
    texts = [block.get(key) for key in ("title", "context")]
    source = block.get("source")
    if block.get("type") == "search_result":
        texts.append(source)
    elif isinstance(source, dict) and source.get("type") == "text":
        texts.append(source.get("data"))
    content = source.get("content") if isinstance(source, dict) else block.get("content")
    texts += [part.get("text") for part in content or [] if isinstance(part, dict)]
    placed = [{"type": "text", "text": text} for text in texts if isinstance(text, str) and text]
    if isinstance(source, dict) and source.get("type") in ("base64", "url", "file"):
        placed.append(block)  # the file itself, which LiteLLM maps
    return placed


def _render_content(original: list[JSON], text: str, tool_calls: list[Any]) -> list[JSON]:
    original_text = "".join(b.get("text", "") for b in original if b.get("type") == "text")
    kept_calls = {call.id: call for call in tool_calls}
    content: list[JSON] = []
    text_placed = text == original_text
    for position, block in enumerate(original):
        kind = block.get("type")
        if (
            kind == "text"
            and (unseen := unseen_block_fields(block))
            and unseen_call_id(position) not in kept_calls
        ):
            block = {k: v for k, v in block.items() if k not in unseen}  # the policy removed them
        if kind == "text":
            if text == original_text:
                content.append(block)
            elif not text_placed and text:
                content.append({"type": "text", "text": text})
                text_placed = True
        elif is_tool_block(block):
            call = kept_calls.get(block_id(block, position))
            if call is not None:
                content.append(with_block_arguments(block, call.function.arguments or ""))
        else:
            content.append(block)
    if not text_placed and text:
        content.append({"type": "text", "text": text})
    return content
