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


def chunk_data(chunk: ModelResponseStream) -> StreamChunk:
    """What a policy's chunk carries, as plain data: what the data plane writes for the client and
    the record keeps."""
    choices: list[ChunkChoice] = []
    for choice in chunk.choices:
        fields = _fields(choice)
        delta = _fields(fields.get("delta"))
        calls: list[ToolCallDelta] = [
            {
                "index": call.index or 0,
                "id": call.id,
                "function": {"name": call.function.name, "arguments": call.function.arguments or ""}
                if call.function is not None
                else {},
            }
            for call in delta.get("tool_calls") or []
        ]
        choices.append(
            {
                "index": fields.get("index", 0),
                "delta": {
                    "role": delta.get("role"),
                    "content": delta.get("content"),
                    "reasoning_content": delta.get("reasoning_content"),
                    "thinking_blocks": _plain_blocks(delta.get("thinking_blocks")),
                    "tool_calls": calls,
                },
                "finish_reason": fields.get("finish_reason"),
            }
        )
    usage = _fields(chunk).get("usage")
    return {"choices": choices, "usage": usage.model_dump() if usage is not None else None}


def _fields(model: Any) -> dict[str, Any]:
    """A LiteLLM object's fields as they are set. Pydantic keeps the declared ones in ``__dict__``
    and LiteLLM most of a delta's in ``__pydantic_extra__``, dropping those that are None: read
    there, an absent field costs no attribute lookup failing through pydantic's ``__getattr__``
    (most of this function's time when it did)."""
    if model is None:
        return {}
    extra = model.__pydantic_extra__
    return {**model.__dict__, **extra} if extra else model.__dict__


def _plain_blocks(blocks: Any) -> list[dict[str, Any]] | None:
    if blocks is None:
        return None
    return [dict(b.model_dump() if hasattr(b, "model_dump") else b) for b in blocks]
