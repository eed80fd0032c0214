"""OpenAI Chat Completions (`POST /v1/chat/completions`)."""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from typing import Any

from . import openai_common
from .scenarios import MIDSTREAM_WORDS, Plan, fragments, words
from .wire import Context, Reply, json_reply, output_tokens, reasoning_tokens, sse_data, stream_reply

DONE = b"data: [DONE]\n\n"


@dataclass
class _Call:
    id: str
    name: str
    arguments: str  # OpenAI emits compact JSON arguments


class _Completion:
    """One completion's identity: id, fingerprint and tool-call ids shared by every chunk."""

    def __init__(self, plan: Plan, ctx: Context) -> None:
        self.plan = plan
        self.ctx = ctx
        self.id = ctx.ids.base62("chatcmpl-", 29)
        fingerprint = hashlib.sha256(ctx.model.encode()).hexdigest()[:10]
        self.system_fingerprint = f"fp_{fingerprint}"
        self.calls = [
            _Call(ctx.ids.base62("call_", 24), call.name, json.dumps(call.arguments, separators=(",", ":")))
            for call in plan.tool_calls
        ]

    @property
    def finish_reason(self) -> str:
        return "tool_calls" if self.calls else "stop"

    def envelope(self, obj: str) -> dict[str, Any]:
        return {
            "id": self.id,
            "object": obj,
            "created": self.ctx.created,
            "model": self.ctx.model,
            "service_tier": "default",
            "system_fingerprint": self.system_fingerprint,
        }

    def usage(self) -> dict[str, Any]:
        prompt, completion = self.ctx.input_tokens, output_tokens(self.plan)
        return {
            "prompt_tokens": prompt,
            "completion_tokens": completion,
            "total_tokens": prompt + completion,
            "prompt_tokens_details": {"cached_tokens": 0, "audio_tokens": 0},
            "completion_tokens_details": {
                "reasoning_tokens": reasoning_tokens(self.plan),
                "audio_tokens": 0,
                "accepted_prediction_tokens": 0,
                "rejected_prediction_tokens": 0,
            },
        }


def render(plan: Plan, ctx: Context) -> Reply:
    if plan.http_error is not None:
        return openai_common.http_error(plan.http_error, ctx)
    completion = _Completion(plan, ctx)
    if ctx.stream:
        return stream_reply(_stream(completion), openai_common.headers(ctx))
    return json_reply(200, _complete(completion), openai_common.headers(ctx))


def _complete(c: _Completion) -> dict[str, Any]:
    message: dict[str, Any] = {
        "role": "assistant",
        "content": c.plan.text,
        "refusal": None,
        "annotations": [],
    }
    if c.plan.thinking:
        # Not OpenAI's own field, but what OpenAI-compatible reasoning backends return.
        message["reasoning_content"] = c.plan.thinking
    if c.calls:
        message["tool_calls"] = [
            {"id": call.id, "type": "function", "function": {"name": call.name, "arguments": call.arguments}}
            for call in c.calls
        ]
    choice = {"index": 0, "message": message, "logprobs": None, "finish_reason": c.finish_reason}
    return {**c.envelope("chat.completion"), "choices": [choice], "usage": c.usage()}


def _stream(c: _Completion) -> list[bytes]:
    include_usage = _include_usage(c.ctx.body)

    def chunk(delta: dict[str, Any], finish_reason: str | None = None) -> bytes:
        choice = {"index": 0, "delta": delta, "logprobs": None, "finish_reason": finish_reason}
        payload = {**c.envelope("chat.completion.chunk"), "choices": [choice]}
        if include_usage:
            # With include_usage every chunk carries `usage: null` until the final one.
            payload["usage"] = None
        return sse_data(payload)

    chunks = [chunk({"role": "assistant", "content": "", "refusal": None})]
    chunks += [chunk({"reasoning_content": word}) for word in words(c.plan.thinking or "")]
    text_words = words(c.plan.text)
    if c.plan.midstream_error:
        chunks += [chunk({"content": word}) for word in text_words[:MIDSTREAM_WORDS]]
        # The stream simply ends after the error: no finish_reason, no [DONE].
        return [*chunks, sse_data({"error": openai_common.server_error_object()})]
    chunks += [chunk({"content": word}) for word in text_words]
    for index, call in enumerate(c.calls):
        chunks += [chunk({"tool_calls": [delta]}) for delta in _tool_call_deltas(index, call)]
    chunks.append(chunk({}, c.finish_reason))
    if include_usage:
        chunks.append(sse_data({**c.envelope("chat.completion.chunk"), "choices": [], "usage": c.usage()}))
    return [*chunks, DONE]


def _tool_call_deltas(index: int, call: _Call) -> list[dict[str, Any]]:
    # Only the first delta names the call; later ones carry just index + argument text,
    # because the SDK's accumulator concatenates every string field it sees again.
    first = {
        "index": index,
        "id": call.id,
        "type": "function",
        "function": {"name": call.name, "arguments": ""},
    }
    rest = [{"index": index, "function": {"arguments": piece}} for piece in fragments(call.arguments)]
    return [first, *rest]


def _include_usage(body: dict[str, Any]) -> bool:
    options = body.get("stream_options")
    return isinstance(options, dict) and options.get("include_usage") is True


def invalid_request(message: str, ctx: Context) -> Reply:
    return openai_common.invalid_request(message, ctx)
