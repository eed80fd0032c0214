"""Small helpers for reading and building normalised chunks and responses."""

import json
import re
from dataclasses import dataclass, field
from typing import Any

from controlplane.chunk_views import field_of
from controlplane.llm import (
    ChatCompletionDeltaToolCall,
    Delta,
    Function,
    ModelResponseStream,
    StreamingChoices,
    Usage,
)


def chunk_text(chunk: ModelResponseStream) -> str:
    """The assistant text a chunk adds (empty when it carries none)."""
    if not chunk.choices:
        return ""
    return field_of(field_of(chunk.choices[0], "delta"), "content") or ""


def with_text(chunk: ModelResponseStream, text: str) -> ModelResponseStream:
    """A copy of ``chunk`` whose text is ``text``."""
    copy = chunk.model_copy(deep=True)
    copy.choices[0].delta.content = text
    return copy


def tool_call_deltas(chunk: ModelResponseStream) -> list[ChatCompletionDeltaToolCall]:
    """The function-call deltas a chunk carries."""
    if not chunk.choices:
        return []
    calls = chunk.choices[0].delta.tool_calls or []
    return [call for call in calls if isinstance(call, ChatCompletionDeltaToolCall)]


def finish_reason(chunk: ModelResponseStream) -> str | None:
    return field_of(chunk.choices[0], "finish_reason") if chunk.choices else None


def text_chunk(like: ModelResponseStream, text: str) -> ModelResponseStream:
    """A new chunk carrying ``text``, with the id and model of ``like``."""
    return ModelResponseStream(
        id=like.id,
        created=like.created,
        model=like.model,
        choices=[StreamingChoices(index=0, delta=Delta(content=text))],
    )


def finish_chunk(like: ModelResponseStream, reason: str, usage: Usage | None = None) -> ModelResponseStream:
    chunk = ModelResponseStream(
        id=like.id,
        created=like.created,
        model=like.model,
        choices=[StreamingChoices(index=0, delta=Delta(), finish_reason=reason)],
    )
    if usage is not None:
        chunk.usage = usage  # type: ignore[attr-defined]
    return chunk


def tool_call_chunk(
    like: ModelResponseStream, index: int, call_id: str, name: str, arguments: str
) -> ModelResponseStream:
    """A chunk carrying one complete tool call."""
    delta = Delta(
        tool_calls=[
            ChatCompletionDeltaToolCall(
                index=index,
                id=call_id,
                type="function",
                function=Function(name=name, arguments=arguments),
            )
        ]
    )
    return ModelResponseStream(
        id=like.id,
        created=like.created,
        model=like.model,
        choices=[StreamingChoices(index=0, delta=delta)],
    )


@dataclass
class ToolCall:
    """A tool call assembled from stream deltas."""

    index: int
    id: str = ""
    name: str = ""
    arguments: str = ""

    def parsed_arguments(self) -> object:
        """The arguments as JSON when they parse, else the raw string."""
        try:
            return json.loads(self.arguments)
        except ValueError:
            return self.arguments

    def decoded_arguments(self) -> str:
        """The text patterns are matched on: see ``decoded_text``."""
        return decoded_text(self.arguments)


class _Pairs(list[tuple[str, Any]]):
    """A JSON object with every key it gives, a repeated one too (parsers differ on which wins)."""


_ESCAPE = re.compile(r'\\(?:u([0-9a-fA-F]{4})|(["\\/bfnrt]))')
_ESCAPED = {"b": "\b", "f": "\f", "n": "\n", "r": "\r", "t": "\t", '"': '"', "\\": "\\", "/": "/"}


def _unescaped(text: str) -> str:
    """``text`` with JSON escapes undone where they stand (for text that is not one JSON value)."""
    return _ESCAPE.sub(lambda m: chr(int(m[1], 16)) if m[1] else _ESCAPED[m[2]], text)


def decoded_text(arguments: str) -> str:
    """What JSON arguments say, with no JSON escapes left: every key and string value on a line
    of its own (a repeated key's values all), and a list of strings also joined with spaces
    (Codex's ``["rm", "-rf", "/"]``). ``{"command": "rm\\u0020-rf"}`` reads ``command`` and
    ``rm -rf``. Arguments that are not one JSON value (a custom tool's free text, truncated JSON a
    lenient client may still read) are their text, and that text with its escapes undone."""
    try:
        parsed = json.loads(arguments, object_pairs_hook=_Pairs)
    except ValueError:
        unescaped = _unescaped(arguments)
        return arguments if unescaped == arguments else f"{arguments}\n{unescaped}"
    lines: list[str] = []

    def visit(value: object) -> None:
        if isinstance(value, _Pairs):
            for key, item in value:
                lines.append(key)
                visit(item)
        elif isinstance(value, list):
            if value and all(isinstance(item, str) for item in value):
                lines.append(" ".join(value))
            for item in value:
                visit(item)
        elif isinstance(value, str):
            lines.append(value)
        elif value is not None:
            lines.append(json.dumps(value))

    visit(parsed)
    return "\n".join(lines)


@dataclass
class ToolCallAccumulator:
    """Assembles streamed tool-call deltas into whole calls, keyed by their index."""

    calls: dict[int, ToolCall] = field(default_factory=dict)

    def add(self, chunk: ModelResponseStream) -> None:
        for delta in tool_call_deltas(chunk):
            call = self.calls.setdefault(delta.index, ToolCall(index=delta.index))
            call.id = delta.id or call.id
            if delta.function is not None:
                call.name = delta.function.name or call.name
                call.arguments += delta.function.arguments or ""


def without_tool_calls(chunk: ModelResponseStream, blocked: set[int]) -> ModelResponseStream | None:
    """``chunk`` minus the deltas of the ``blocked`` tool calls; None if nothing is left."""
    kept = [d for d in tool_call_deltas(chunk) if d.index not in blocked]
    if len(kept) == len(tool_call_deltas(chunk)):
        return chunk
    copy = chunk.model_copy(deep=True)
    copy.choices[0].delta.tool_calls = kept or None  # type: ignore[assignment]
    if not kept and not chunk_text(copy) and finish_reason(copy) is None:
        reasoning = getattr(copy.choices[0].delta, "reasoning_content", None)
        if not reasoning and getattr(copy, "usage", None) is None:
            return None
    return copy
