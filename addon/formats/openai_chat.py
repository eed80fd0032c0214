"""OpenAI Chat Completions: the normalised form is this format, so mapping is mostly identity."""

import json
from typing import Any

from addon.formats.base import JSON
from addon.sse import SSEEvent, encode_event
from controlplane.llm import ModelResponse, ModelResponseStream
from controlplane.models import NormalizedRequest, WireFormat


class OpenAIChatCodec:
    wire_format = WireFormat.OPENAI_CHAT

    def normalize_request(self, body: JSON) -> NormalizedRequest:
        return json.loads(json.dumps(body))

    def render_request(self, original: JSON, before: NormalizedRequest, after: NormalizedRequest) -> JSON:
        return after

    def parse_response(self, body: JSON) -> ModelResponse:
        return ModelResponse(**body)

    def render_response(self, original: JSON, response: ModelResponse) -> JSON:
        rendered = dict(original)
        originals = original.get("choices") or []
        rendered["choices"] = [
            _render_choice(originals[i] if i < len(originals) else {}, choice.model_dump())
            for i, choice in enumerate(response.choices)
        ]
        return rendered

    def error_body(self, status: int, message: str) -> JSON:
        kind = "policy_violation" if status == 403 else "luthien_error"
        return {"error": {"message": message, "type": kind, "param": None, "code": kind}}

    def stream_transcoder(self) -> "OpenAIChatTranscoder":
        return OpenAIChatTranscoder()


def _render_choice(original: JSON, new: JSON) -> JSON:
    choice = {
        **original,
        "index": new["index"],
        "finish_reason": new.get("finish_reason"),
    }
    message = dict(original.get("message") or {"role": "assistant"})
    new_message = new.get("message") or {}
    message["content"] = new_message.get("content")
    tool_calls = new_message.get("tool_calls")
    if tool_calls:
        message["tool_calls"] = [
            {
                "id": c["id"],
                "type": "function",
                "function": {
                    "name": c["function"]["name"],
                    "arguments": c["function"]["arguments"],
                },
            }
            for c in tool_calls
        ]
    else:
        message.pop("tool_calls", None)
    choice["message"] = message
    choice.setdefault("logprobs", None)
    return choice


class OpenAIChatTranscoder:
    def __init__(self) -> None:
        self._template: JSON = {}
        self._tool_indexes: dict[int, int] = {}
        self._finished = False
        self._done = False

    def decode(self, event: SSEEvent) -> list[ModelResponseStream]:
        data = event.json()
        if not isinstance(data, dict) or "error" in data:
            return []
        if not self._template:
            self._template = {
                k: data[k]
                for k in (
                    "id",
                    "object",
                    "created",
                    "model",
                    "system_fingerprint",
                    "service_tier",
                )
                if k in data
            }
        return [ModelResponseStream(**data)]

    def is_error(self, event: SSEEvent) -> bool:
        data = event.json()
        return isinstance(data, dict) and "error" in data

    def observe_emitted(self, event: SSEEvent) -> None:
        if event.data.strip() == "[DONE]":
            self._done = True
            return
        data = event.json()
        if isinstance(data, dict) and "error" in data:
            self._end()  # the provider's stream ends at its error: no finish_reason, no [DONE]
            return
        for choice in (data or {}).get("choices") or []:
            for call in (choice.get("delta") or {}).get("tool_calls") or []:
                self._client_tool_index(call["index"])
            self._finished = self._finished or choice.get("finish_reason") is not None

    def encode(self, chunk: ModelResponseStream) -> bytes:
        payload: JSON = {
            **self._template,
            "choices": [self._render_streaming_choice(c) for c in chunk.choices],
        }
        usage = getattr(chunk, "usage", None)
        if usage is not None:
            payload["usage"] = usage.model_dump(exclude_none=True)
        return encode_event(payload)

    def finish(self) -> bytes:
        out = b""
        if not self._finished:
            out += encode_event(
                {
                    **self._template,
                    "choices": [
                        {
                            "index": 0,
                            "delta": {},
                            "logprobs": None,
                            "finish_reason": "stop",
                        }
                    ],
                }
            )
            self._finished = True
        if not self._done:
            out += encode_event("[DONE]")
            self._done = True
        return out

    def error_event(self, message: str) -> bytes:
        """An ``error`` object where a chunk would be, as OpenAI sends mid-stream; the SDK's Stream
        raises ``openai.APIError`` on it. Nothing follows it, as with the API: no ``[DONE]``."""
        if self._done:
            return b""
        self._end()
        error = {"message": message, "type": "server_error", "param": None, "code": None}
        return encode_event({"error": error})

    def _end(self) -> None:
        self._finished = self._done = True

    def _render_streaming_choice(self, choice: Any) -> JSON:
        delta = choice.delta
        rendered: JSON = {}
        if getattr(delta, "role", None):
            rendered["role"] = delta.role
        if delta.content is not None:
            rendered["content"] = delta.content
        reasoning = getattr(delta, "reasoning_content", None)
        if reasoning:
            rendered["reasoning_content"] = reasoning
        if delta.tool_calls:
            rendered["tool_calls"] = [self._render_tool_call(call) for call in delta.tool_calls]
        self._finished = self._finished or choice.finish_reason is not None
        return {
            "index": choice.index,
            "delta": rendered,
            "logprobs": None,
            "finish_reason": choice.finish_reason,
        }

    def _render_tool_call(self, call: Any) -> JSON:
        rendered: JSON = {"index": self._client_tool_index(call.index)}
        if call.id:
            rendered["id"] = call.id
            rendered["type"] = "function"
        function: JSON = {}
        if call.function.name:
            function["name"] = call.function.name
        function["arguments"] = call.function.arguments or ""
        rendered["function"] = function
        return rendered

    def _client_tool_index(self, upstream_index: int) -> int:
        """Dense client-side indexes: removing a call must not leave a gap."""
        return self._tool_indexes.setdefault(upstream_index, len(self._tool_indexes))
