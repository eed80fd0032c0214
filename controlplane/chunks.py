"""The data plane's form of a stream chunk: plain data in the shape of an OpenAI
``chat.completion.chunk``.

Policies see LiteLLM's ``ModelResponseStream``, but building one costs more than everything else
the proxy does with an event, and most streams go to no policy that reads chunks (the passive
path). So the wire formats decode events into these dicts, which the record is assembled from,
and a ``ModelResponseStream`` is built from one only when a policy is about to see it.
"""

from typing import Any, NotRequired, TypedDict, cast

from controlplane.llm import ModelResponseStream


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


def chunk_model(chunk: StreamChunk) -> ModelResponseStream:
    """The chunk as policies see it."""
    return ModelResponseStream(**cast(dict[str, Any], chunk))


def fingerprint(chunk: ModelResponseStream) -> dict[str, Any]:
    """What tells a chunk a policy changed from one it gave back as it was given."""
    return chunk.model_dump(mode="json")


def chunk_data(chunk: ModelResponseStream) -> StreamChunk:
    """What a policy's chunk carries, as plain data (for the record)."""
    choices: list[ChunkChoice] = []
    for choice in chunk.choices:
        delta = choice.delta
        calls: list[ToolCallDelta] = [
            {
                "index": call.index or 0,
                "id": call.id,
                "function": {"name": call.function.name, "arguments": call.function.arguments or ""}
                if call.function is not None
                else {},
            }
            for call in getattr(delta, "tool_calls", None) or []
        ]
        choices.append(
            {
                "index": choice.index,
                "delta": {
                    "content": getattr(delta, "content", None),
                    "reasoning_content": getattr(delta, "reasoning_content", None),
                    "thinking_blocks": getattr(delta, "thinking_blocks", None),
                    "tool_calls": calls,
                },
                "finish_reason": choice.finish_reason,
            }
        )
    usage = getattr(chunk, "usage", None)
    return {"choices": choices, "usage": usage.model_dump() if usage is not None else None}
