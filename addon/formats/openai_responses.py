"""OpenAI Responses (``POST /v1/responses``), normalised with LiteLLM's Responses bridges."""

import copy
import json
from typing import Any

from addon.formats.base import JSON
from addon.formats.request_patch import patch_request
from addon.sse import SSEEvent, encode_event
from controlplane.llm import (
    ChatCompletionDeltaToolCall,
    Choices,
    Function,
    LiteLLMCompletionResponsesConfig,
    Message,
    ModelResponse,
    ModelResponseStream,
    OpenAiResponsesToChatCompletionStreamIterator,
    Usage,
)
from controlplane.models import NormalizedRequest, WireFormat

_PARAMETERS = {
    "model": "model",
    "max_tokens": "max_output_tokens",
    "temperature": "temperature",
    "top_p": "top_p",
}
_CONTENT_EVENTS = frozenset(
    {
        "response.output_text.delta",
        "response.function_call_arguments.delta",
        "response.reasoning_summary_text.delta",
        "response.reasoning_text.delta",
        "response.completed",
        "response.incomplete",
    }
)
_FINAL_EVENTS = frozenset({"response.completed", "response.incomplete", "response.failed"})


def _jsonable(value: Any) -> Any:
    return value.model_dump() if hasattr(value, "model_dump") else str(value)


class OpenAIResponsesCodec:
    wire_format = WireFormat.OPENAI_RESPONSES

    def normalize_request(self, body: JSON) -> NormalizedRequest:
        rest = {k: v for k, v in body.items() if k not in ("model", "input")}
        request = LiteLLMCompletionResponsesConfig.transform_responses_api_request_to_chat_completion_request(
            model=body.get("model", ""),
            input=copy.deepcopy(body.get("input", [])),
            responses_api_request=copy.deepcopy(rest),  # type: ignore[arg-type]
            stream=body.get("stream"),
        )
        return json.loads(json.dumps(request, default=_jsonable))

    def render_request(self, original: JSON, before: NormalizedRequest, after: NormalizedRequest) -> JSON:
        return patch_request(original, before, after, _PARAMETERS)

    def parse_response(self, body: JSON) -> ModelResponse:
        output = body.get("output") or []
        calls = [item for item in output if item.get("type") == "function_call"]
        message = Message(
            role="assistant",
            content=_output_text(output) or None,
            tool_calls=[
                ChatCompletionDeltaToolCall(
                    index=i,
                    id=item["id"],
                    type="function",
                    function=Function(name=item["name"], arguments=item.get("arguments", "")),
                ).model_dump()
                for i, item in enumerate(calls)
            ]
            or None,
            reasoning_content=_reasoning_text(output) or None,
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
                    finish_reason=_finish_reason(body, bool(calls)),
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
        kept = {call.id for call in message.tool_calls or []}
        original_output = original.get("output") or []
        output: list[JSON] = []
        text_placed = text == _output_text(original_output)
        for item in original_output:
            kind = item.get("type")
            if kind == "message":
                if text == _output_text(original_output):
                    output.append(item)
                elif not text_placed and text:
                    output.append({**item, "content": [_text_part(text)]})
                    text_placed = True
            elif kind == "function_call":
                if item.get("id") in kept or item.get("call_id") in kept:
                    output.append(item)
            else:
                output.append(item)
        if not text_placed and text:
            output.append(_message_item("msg_luthien", text, "completed"))
        return {**original, "output": output}

    def error_body(self, status: int, message: str) -> JSON:
        kind = "policy_violation" if status == 403 else "luthien_error"
        return {"error": {"message": message, "type": kind, "param": None, "code": kind}}

    def stream_transcoder(self) -> "OpenAIResponsesTranscoder":
        return OpenAIResponsesTranscoder()


def _output_text(output: list[JSON]) -> str:
    return "".join(
        part.get("text", "")
        for item in output
        if item.get("type") == "message"
        for part in item.get("content") or []
        if part.get("type") == "output_text"
    )


def _reasoning_text(output: list[JSON]) -> str:
    return "".join(
        part.get("text", "")
        for item in output
        if item.get("type") == "reasoning"
        for part in item.get("summary") or []
    )


def _finish_reason(body: JSON, has_calls: bool) -> str:
    if body.get("status") == "incomplete":
        return "length"
    return "tool_calls" if has_calls else "stop"


def _text_part(text: str) -> JSON:
    return {"type": "output_text", "text": text, "annotations": [], "logprobs": []}


def _message_item(item_id: str, text: str, status: str) -> JSON:
    content = [_text_part(text)] if status == "completed" else []
    return {
        "type": "message",
        "id": item_id,
        "status": status,
        "role": "assistant",
        "content": content,
    }


class OpenAIResponsesTranscoder:
    """Tracks the output items the client has seen, so a changed stream ends with a
    ``response.completed`` whose ``output`` matches what was streamed."""

    def __init__(self) -> None:
        # Used only for its chunk_parser, fed one event at a time.
        self._parser = OpenAiResponsesToChatCompletionStreamIterator(
            streaming_response=None,  # type: ignore[arg-type]
            sync_stream=False,
        )
        self._response: JSON = {}
        self._final: JSON | None = None
        self._upstream_calls: dict[str, JSON] = {}
        # What the client has seen:
        self._sequence = -1
        self._created = False
        self._items: list[JSON] = []
        self._open: int | None = None
        self._tool_items: dict[int, int] = {}
        self._completed = False

    # -- upstream ---------------------------------------------------------------------------
    def decode(self, event: SSEEvent) -> list[ModelResponseStream]:
        data = event.json()
        if not isinstance(data, dict):
            return []
        kind = data.get("type", "")
        if kind in ("response.created", "response.in_progress"):
            self._response = data["response"]
        elif kind in _FINAL_EVENTS:
            self._final = data["response"]
        item = data.get("item") or {}
        if kind == "response.output_item.added" and item.get("type") == "function_call":
            self._upstream_calls[item["id"]] = item
        if self.is_error(event):
            return []
        chunk = self._parser.chunk_parser(data)
        starts_call = kind == "response.output_item.added" and item.get("type") == "function_call"
        return [chunk] if chunk is not None and (kind in _CONTENT_EVENTS or starts_call) else []

    def is_error(self, event: SSEEvent) -> bool:
        data = event.json()
        return isinstance(data, dict) and data.get("type") in (
            "error",
            "response.failed",
        )

    # -- the client's view ------------------------------------------------------------------
    def observe_emitted(self, event: SSEEvent) -> None:
        data = event.json()
        if not isinstance(data, dict):
            return
        self._sequence = max(self._sequence, data.get("sequence_number", self._sequence))
        kind = data.get("type", "")
        index: int = data.get("output_index", -1)
        if kind in ("response.created", "response.in_progress"):
            self._created = True
        elif kind == "response.output_item.added":
            self._place_item(index, copy.deepcopy(data["item"]))
            self._open = index
            if data["item"].get("type") == "function_call":
                self._tool_items[len(self._tool_items)] = index
        elif kind == "response.content_part.added":
            self._items[index].setdefault("content", []).append(copy.deepcopy(data["part"]))
        elif kind == "response.output_text.delta":
            self._items[index]["content"][data["content_index"]]["text"] += data["delta"]
        elif kind == "response.function_call_arguments.delta":
            self._items[index]["arguments"] = self._items[index].get("arguments", "") + data["delta"]
        elif kind == "response.output_item.done":
            self._place_item(index, copy.deepcopy(data["item"]))
            self._open = None
        elif kind in _FINAL_EVENTS or kind == "error":
            self._completed = True  # nothing follows a final event or the provider's error

    def _place_item(self, index: int, item: JSON) -> None:
        while len(self._items) <= index:
            self._items.append({})
        self._items[index] = item

    # -- synthesis --------------------------------------------------------------------------
    def encode(self, chunk: ModelResponseStream) -> bytes:
        out = [self._ensure_created()]
        if chunk.choices:
            choice = chunk.choices[0]
            delta = choice.delta
            reasoning = getattr(delta, "reasoning_content", None)
            if reasoning:
                out.append(self._reasoning(reasoning))
            if delta.content:
                out.append(self._text(delta.content))
            for call in delta.tool_calls or []:
                out.append(self._tool_call(call))
            if choice.finish_reason:
                out.append(self._complete(choice.finish_reason))
        return b"".join(out)

    def finish(self) -> bytes:
        if self._completed:
            return b""
        return self._ensure_created() + self._complete("stop")

    def error_event(self, message: str) -> bytes:
        """An ``error`` event with the next sequence number. It carries the fields both flat, as the
        API reference documents them (``ResponseErrorEvent``), and nested under ``error``, as the
        live API sends them: the openai SDK's Stream raises ``openai.APIError`` only on the nested
        form. Nothing follows it: no ``response.failed``, no open item closed."""
        if self._completed:
            return b""
        self._completed = True
        self._open = None
        error = {"type": "server_error", "code": "server_error", "message": message, "param": None}
        return self._emit(
            {"type": "error", "code": "server_error", "message": message, "param": None, "error": error}
        )

    def _emit(self, payload: JSON) -> bytes:
        self._sequence += 1
        payload["sequence_number"] = self._sequence
        return encode_event(payload, payload["type"])

    def _ensure_created(self) -> bytes:
        if self._created:
            return b""
        self._created = True
        response = {**self._response, "status": "in_progress", "output": []}
        return self._emit({"type": "response.created", "response": response}) + self._emit(
            {"type": "response.in_progress", "response": response}
        )

    def _open_item(self, kind: str) -> tuple[int, JSON] | None:
        if self._open is not None and self._items[self._open].get("type") == kind:
            return self._open, self._items[self._open]
        return None

    def _add_item(self, item: JSON) -> bytes:
        out = self._close_open()
        self._items.append(item)
        self._open = len(self._items) - 1
        return out + self._emit(
            {
                "type": "response.output_item.added",
                "output_index": self._open,
                "item": copy.deepcopy(item),
            }
        )

    def _text(self, text: str) -> bytes:
        out = b""
        if (opened := self._open_item("message")) is None:
            out += self._add_item(_message_item(f"msg_luthien_{len(self._items)}", "", "in_progress"))
            opened = self._open_item("message")
        assert opened is not None
        index, item = opened
        if not item.get("content"):
            item["content"] = [{"type": "output_text", "text": "", "annotations": []}]
            out += self._emit(
                {
                    "type": "response.content_part.added",
                    "item_id": item["id"],
                    "output_index": index,
                    "content_index": 0,
                    "part": {"type": "output_text", "text": "", "annotations": []},
                }
            )
        part_index = len(item["content"]) - 1
        item["content"][part_index]["text"] += text
        return out + self._emit(
            {
                "type": "response.output_text.delta",
                "item_id": item["id"],
                "output_index": index,
                "content_index": part_index,
                "delta": text,
                "logprobs": [],
            }
        )

    def _reasoning(self, text: str) -> bytes:
        out = b""
        if (opened := self._open_item("reasoning")) is None:
            out += self._add_item(
                {
                    "type": "reasoning",
                    "id": f"rs_luthien_{len(self._items)}",
                    "summary": [],
                }
            )
            opened = self._open_item("reasoning")
        assert opened is not None
        index, item = opened
        if not item["summary"]:
            item["summary"].append({"type": "summary_text", "text": ""})
            out += self._emit(
                {
                    "type": "response.reasoning_summary_part.added",
                    "item_id": item["id"],
                    "output_index": index,
                    "summary_index": 0,
                    "part": {"type": "summary_text", "text": ""},
                }
            )
        item["summary"][-1]["text"] += text
        return out + self._emit(
            {
                "type": "response.reasoning_summary_text.delta",
                "item_id": item["id"],
                "output_index": index,
                "summary_index": len(item["summary"]) - 1,
                "delta": text,
            }
        )

    def _tool_call(self, call: Any) -> bytes:
        out = b""
        if call.id:
            upstream = self._upstream_calls.get(call.id, {})
            item = {
                "type": "function_call",
                "id": call.id,
                "call_id": upstream.get("call_id", call.id),
                "name": call.function.name,
                "arguments": "",
                "status": "in_progress",
            }
            out += self._add_item(item)
            self._tool_items[call.index] = len(self._items) - 1
        index = self._tool_items.get(call.index)
        arguments = call.function.arguments
        if arguments and index is not None and index == self._open:
            self._items[index]["arguments"] += arguments
            out += self._emit(
                {
                    "type": "response.function_call_arguments.delta",
                    "item_id": self._items[index]["id"],
                    "output_index": index,
                    "delta": arguments,
                }
            )
        return out

    def _close_open(self) -> bytes:
        if self._open is None:
            return b""
        index, self._open = self._open, None
        item = self._items[index]
        out = b""
        kind = item.get("type")
        if kind == "message":
            for part_index, part in enumerate(item.get("content") or []):
                out += self._emit(
                    {
                        "type": "response.output_text.done",
                        "item_id": item["id"],
                        "output_index": index,
                        "content_index": part_index,
                        "text": part["text"],
                        "logprobs": [],
                    }
                )
                out += self._emit(
                    {
                        "type": "response.content_part.done",
                        "item_id": item["id"],
                        "output_index": index,
                        "content_index": part_index,
                        "part": part,
                    }
                )
        elif kind == "function_call":
            out += self._emit(
                {
                    "type": "response.function_call_arguments.done",
                    "item_id": item["id"],
                    "output_index": index,
                    "arguments": item.get("arguments", ""),
                }
            )
        elif kind == "reasoning":
            for summary_index, part in enumerate(item.get("summary") or []):
                out += self._emit(
                    {
                        "type": "response.reasoning_summary_text.done",
                        "item_id": item["id"],
                        "output_index": index,
                        "summary_index": summary_index,
                        "text": part["text"],
                    }
                )
                out += self._emit(
                    {
                        "type": "response.reasoning_summary_part.done",
                        "item_id": item["id"],
                        "output_index": index,
                        "summary_index": summary_index,
                        "part": part,
                    }
                )
        if "status" in item:
            item["status"] = "completed"
        return out + self._emit(
            {
                "type": "response.output_item.done",
                "output_index": index,
                "item": copy.deepcopy(item),
            }
        )

    def _complete(self, finish_reason: str) -> bytes:
        out = self._close_open()
        self._completed = True
        final = self._final or {**self._response, "status": "completed"}
        kind = (
            "response.incomplete"
            if final.get("status") == "incomplete" and finish_reason == "length"
            else "response.completed"
        )
        status = "incomplete" if kind == "response.incomplete" else "completed"
        response = {
            **final,
            "status": status,
            "output": [copy.deepcopy(i) for i in self._items if i],
        }
        return out + self._emit({"type": kind, "response": response})
