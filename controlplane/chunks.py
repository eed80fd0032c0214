"""The data plane's form of a stream chunk: plain data in the shape of an OpenAI
``chat.completion.chunk``.

Policies see LiteLLM's ``ModelResponseStream``, but building one costs a good part of what the
proxy does with an event (LiteLLM's constructors more than all the rest of it), and most streams
go to no policy that reads chunks (the passive path). So the wire formats decode events into
these dicts, which the record is assembled from, the control plane is given and gives back; it
builds a ``ModelResponseStream`` from one only when a policy is about to see it
(``controlplane.chunk_views``). Nothing here imports LiteLLM: a sidecar proxy never loads it.
"""

from typing import Any, NotRequired, TypedDict


class FunctionDelta(TypedDict, total=False):
    name: str | None
    arguments: str


class ToolCallDelta(TypedDict):
    index: int
    id: NotRequired[str | None]
    type: NotRequired[str]
    function: FunctionDelta


class ChunkDelta(TypedDict, total=False):
    role: str | None
    content: str | None
    reasoning_content: str | None
    thinking_blocks: list[dict[str, Any]] | None
    tool_calls: list[ToolCallDelta] | None


class ChunkChoice(TypedDict):
    index: int
    delta: ChunkDelta
    finish_reason: NotRequired[str | None]


class StreamChunk(TypedDict, total=False):
    id: str | None
    created: int | None
    model: str | None
    choices: list[ChunkChoice]
    usage: dict[str, Any] | None


def without_none(value: Any) -> Any:
    """``value`` without the None fields of its objects, at any depth (as a provider writes them)."""
    if isinstance(value, dict):
        return {k: without_none(v) for k, v in value.items() if v is not None}
    if isinstance(value, list):
        return [without_none(v) for v in value]
    return value


def same_content(a: StreamChunk, b: StreamChunk) -> bool:
    """Whether two chunks say the same to a client: what a policy can change of a chunk (texts, tool
    calls, finish reasons, token counts), whichever form each came in (decoded from the wire, or
    given back by a policy through the control plane)."""
    return _content(a) == _content(b)


def _content(chunk: StreamChunk) -> tuple[Any, ...]:
    choices = []
    for choice in chunk.get("choices") or []:
        delta = choice.get("delta") or {}
        calls = [
            (call.get("index") or 0, call.get("id"), *_function(call.get("function") or {}))
            for call in delta.get("tool_calls") or []
        ]
        blocks = [
            tuple(block.get(k) for k in ("type", "thinking", "signature", "data"))
            for block in delta.get("thinking_blocks") or []
        ]
        choices.append(
            (
                choice.get("index", 0),
                delta.get("content") or "",
                delta.get("reasoning_content") or "",
                blocks,
                calls,
                choice.get("finish_reason"),
            )
        )
    usage = chunk.get("usage") or {}
    counts = tuple(usage.get(k) for k in ("prompt_tokens", "completion_tokens", "total_tokens"))
    return (choices, counts if any(c is not None for c in counts) else None)


def _function(function: FunctionDelta) -> tuple[str | None, str]:
    return function.get("name"), function.get("arguments") or ""
