"""The policies' view of a plain stream chunk (``controlplane.chunks``): LiteLLM's
``ModelResponseStream``, built only when a policy is about to see a chunk, and the plain data of
what a policy gives back. The control plane's side of the chunk seam; the data plane never
imports it."""

from typing import Any, cast

from controlplane.chunks import ChunkChoice, StreamChunk, ToolCallDelta
from controlplane.llm import ModelResponseStream


def chunk_model(chunk: StreamChunk) -> ModelResponseStream:
    """The chunk as policies see it."""
    return ModelResponseStream(**cast(dict[str, Any], chunk))


def fingerprint(chunk: ModelResponseStream) -> dict[str, Any]:
    """What tells a chunk a policy changed from one it gave back as it was given."""
    return chunk.model_dump(mode="json")


def chunk_data(chunk: ModelResponseStream) -> StreamChunk:
    """What a policy's chunk carries, as plain data: what the data plane writes for the client and
    the record keeps."""
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
                    "role": getattr(delta, "role", None),
                    "content": getattr(delta, "content", None),
                    "reasoning_content": getattr(delta, "reasoning_content", None),
                    "thinking_blocks": _plain_blocks(getattr(delta, "thinking_blocks", None)),
                    "tool_calls": calls,
                },
                "finish_reason": choice.finish_reason,
            }
        )
    usage = getattr(chunk, "usage", None)
    return {"choices": choices, "usage": usage.model_dump() if usage is not None else None}


def _plain_blocks(blocks: Any) -> list[dict[str, Any]] | None:
    if blocks is None:
        return None
    return [dict(b.model_dump() if hasattr(b, "model_dump") else b) for b in blocks]
