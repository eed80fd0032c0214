"""OpenAI Responses (`POST /v1/responses`)."""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from typing import Any

from . import openai_common
from .scenarios import MIDSTREAM_WORDS, Plan, fragments, words
from .wire import Context, Reply, json_reply, output_tokens, reasoning_tokens, sse_event, stream_reply


@dataclass
class _Call:
    id: str
    call_id: str
    name: str
    arguments: str


class _Response:
    """Ids and item shapes for one response, shared by the streamed and the final form."""

    def __init__(self, plan: Plan, ctx: Context) -> None:
        ids = ctx.ids
        self.plan = plan
        self.ctx = ctx
        self.id = ids.hex("resp_", 50)
        self.reasoning_id = ids.hex("rs_", 50)
        self.message_id = ids.hex("msg_", 50)
        self.calls = [
            _Call(
                ids.hex("fc_", 50),
                ids.base62("call_", 24),
                call.name,
                json.dumps(call.arguments, separators=(",", ":")),
            )
            for call in plan.tool_calls
        ]

    def reasoning_item(self, summary: str | None) -> dict[str, Any]:
        parts = [] if summary is None else [_summary_part(summary)]
        return {"id": self.reasoning_id, "type": "reasoning", "summary": parts}

    def message_item(self, text: str | None) -> dict[str, Any]:
        status = "in_progress" if text is None else "completed"
        content = [] if text is None else [_output_text(text)]
        return {
            "id": self.message_id,
            "type": "message",
            "status": status,
            "content": content,
            "role": "assistant",
        }

    @staticmethod
    def call_item(call: _Call, done: bool) -> dict[str, Any]:
        return {
            "id": call.id,
            "type": "function_call",
            "status": "completed" if done else "in_progress",
            "arguments": call.arguments if done else "",
            "call_id": call.call_id,
            "name": call.name,
        }

    def final_output(self) -> list[dict[str, Any]]:
        items = [self.reasoning_item(self.plan.thinking)] if self.plan.thinking else []
        items.append(self.message_item(self.plan.text))
        return items + [self.call_item(call, done=True) for call in self.calls]

    def usage(self) -> dict[str, Any]:
        prompt, completion = self.ctx.input_tokens, output_tokens(self.plan)
        return {
            "input_tokens": prompt,
            "input_tokens_details": {"cached_tokens": 0, "cache_write_tokens": 0},
            "output_tokens": completion,
            "output_tokens_details": {"reasoning_tokens": reasoning_tokens(self.plan)},
            "total_tokens": prompt + completion,
        }

    def body(self, *, completed: bool) -> dict[str, Any]:
        """The response object; the in-progress form has no output and no usage yet."""
        request = self.ctx.body
        return {
            "id": self.id,
            "object": "response",
            "created_at": self.ctx.created,
            "status": "completed" if completed else "in_progress",
            "background": False,
            "completed_at": self.ctx.created + 1 if completed else None,
            "error": None,
            "incomplete_details": None,
            "instructions": request.get("instructions"),
            "max_output_tokens": request.get("max_output_tokens"),
            "max_tool_calls": request.get("max_tool_calls"),
            "model": self.ctx.model,
            "output": self.final_output() if completed else [],
            "parallel_tool_calls": request.get("parallel_tool_calls", True),
            "previous_response_id": request.get("previous_response_id"),
            "prompt_cache_key": request.get("prompt_cache_key"),
            "reasoning": _echo_reasoning(request.get("reasoning")),
            "safety_identifier": request.get("safety_identifier"),
            "service_tier": "default",
            "store": request.get("store", True),
            "temperature": request.get("temperature", 1.0),
            "text": _echo_text(request.get("text")),
            "tool_choice": request.get("tool_choice", "auto"),
            "tools": request.get("tools", []),
            "top_logprobs": request.get("top_logprobs", 0),
            "top_p": request.get("top_p", 1.0),
            "truncation": request.get("truncation", "disabled"),
            "usage": self.usage() if completed else None,
            "user": request.get("user"),
            "metadata": request.get("metadata", {}),
        }


def _summary_part(text: str) -> dict[str, Any]:
    return {"type": "summary_text", "text": text}


def _output_text(text: str) -> dict[str, Any]:
    return {"type": "output_text", "annotations": [], "logprobs": [], "text": text}


def _echo_reasoning(requested: Any) -> dict[str, Any]:
    requested = requested if isinstance(requested, dict) else {}
    return {"effort": requested.get("effort"), "summary": requested.get("summary")}


def _echo_text(requested: Any) -> dict[str, Any]:
    requested = requested if isinstance(requested, dict) else {}
    return {"format": {"type": "text"}, "verbosity": "medium", **requested}


def render(plan: Plan, ctx: Context) -> Reply:
    if plan.http_error is not None:
        return openai_common.http_error(plan.http_error, ctx)
    response = _Response(plan, ctx)
    if ctx.stream:
        return stream_reply(_Stream(response).render(), openai_common.headers(ctx))
    return json_reply(200, response.body(completed=True), openai_common.headers(ctx))


@dataclass
class _Stream:
    """Builds the event sequence, numbering events as the real API does (from 0, no gaps)."""

    response: _Response
    frames: list[bytes] = field(default_factory=list)
    sequence: int = 0

    def emit(self, type_: str, **fields: Any) -> None:
        payload = {"type": type_, "sequence_number": self.sequence, **fields}
        self.sequence += 1
        self.frames.append(sse_event(type_, payload))

    def render(self) -> list[bytes]:
        plan = self.response.plan
        self.emit("response.created", response=self.response.body(completed=False))
        self.emit("response.in_progress", response=self.response.body(completed=False))
        output_index = 0
        if plan.thinking:
            self._reasoning(output_index, plan.thinking)
            output_index += 1
        if not self._message(output_index, plan.text):
            return self.frames  # the stream ends at the error event
        for call in self.response.calls:
            output_index += 1
            self._function_call(output_index, call)
        self.emit("response.completed", response=self.response.body(completed=True))
        return self.frames

    def _reasoning(self, output_index: int, summary: str) -> None:
        item_id = self.response.reasoning_id
        where = {"item_id": item_id, "output_index": output_index, "summary_index": 0}
        self.emit(
            "response.output_item.added", output_index=output_index, item=self.response.reasoning_item(None)
        )
        self.emit("response.reasoning_summary_part.added", **where, part=_summary_part(""))
        for word in words(summary):
            self.emit("response.reasoning_summary_text.delta", **where, delta=word)
        self.emit("response.reasoning_summary_text.done", **where, text=summary)
        self.emit("response.reasoning_summary_part.done", **where, part=_summary_part(summary))
        self.emit(
            "response.output_item.done", output_index=output_index, item=self.response.reasoning_item(summary)
        )

    def _message(self, output_index: int, text: str) -> bool:
        """Emit the message item; False if a mid-stream error cut it short."""
        where = {"item_id": self.response.message_id, "output_index": output_index, "content_index": 0}
        self.emit(
            "response.output_item.added", output_index=output_index, item=self.response.message_item(None)
        )
        self.emit("response.content_part.added", **where, part=_output_text(""))
        for count, word in enumerate(words(text)):
            if self.response.plan.midstream_error and count == MIDSTREAM_WORDS:
                self._error()
                return False
            self.emit("response.output_text.delta", **where, delta=word, logprobs=[])
        self.emit("response.output_text.done", **where, text=text, logprobs=[])
        self.emit("response.content_part.done", **where, part=_output_text(text))
        self.emit(
            "response.output_item.done", output_index=output_index, item=self.response.message_item(text)
        )
        return True

    def _function_call(self, output_index: int, call: _Call) -> None:
        where = {"item_id": call.id, "output_index": output_index}
        self.emit(
            "response.output_item.added",
            output_index=output_index,
            item=_Response.call_item(call, done=False),
        )
        for piece in fragments(call.arguments):
            self.emit("response.function_call_arguments.delta", **where, delta=piece)
        self.emit("response.function_call_arguments.done", **where, name=call.name, arguments=call.arguments)
        self.emit(
            "response.output_item.done", output_index=output_index, item=_Response.call_item(call, done=True)
        )

    def _error(self) -> None:
        error = openai_common.server_error_object()
        self.emit("error", code="server_error", message=error["message"], param=None)


def invalid_request(message: str, ctx: Context) -> Reply:
    return openai_common.invalid_request(message, ctx)
