import json
import re
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass, field
from typing import Any

from pydantic import BaseModel, ConfigDict, Field, field_validator

from controlplane.llm import ModelResponse, ModelResponseStream
from controlplane.models import (
    ChunkResult,
    PolicyResult,
    RequestMetadata,
    StreamingContext,
)
from controlplane.policies.base import PolicyHandler
from controlplane.policies.chunks import (
    ToolCall,
    ToolCallAccumulator,
    finish_reason,
    text_chunk,
    tool_call_deltas,
    without_tool_calls,
)

_ARGUMENTS_SHOWN = 200


@dataclass
class _HeldToolCalls:
    """Per-stream state: everything from the first tool-call delta on is held until judged."""

    chunks: list[ModelResponseStream] = field(default_factory=list)
    calls: ToolCallAccumulator = field(default_factory=ToolCallAccumulator)


class ToolCallBlocklistPolicy(PolicyHandler):
    """Removes tool calls whose name or arguments match a blocklist pattern."""

    class Config(BaseModel):
        model_config = ConfigDict(extra="forbid")
        patterns: list[str] = Field(
            min_length=1,
            description="Regular expressions searched in each tool call's name and arguments.",
        )
        ignore_case: bool = True

        @field_validator("patterns")
        @classmethod
        def _compiles(cls, patterns: list[str]) -> list[str]:
            for pattern in patterns:
                try:
                    re.compile(pattern)
                except re.error as exc:
                    raise ValueError(f"invalid regular expression {pattern!r}: {exc}") from exc
            return patterns

    config: Config
    description = "Removes tool calls whose name or arguments match a regex; explains why."

    def __init__(self, config: BaseModel | None = None) -> None:
        super().__init__(config)
        flags = re.IGNORECASE if self.config.ignore_case else 0
        self._patterns = [re.compile(p, flags) for p in self.config.patterns]

    def matching_pattern(self, name: str, arguments: str) -> str | None:
        for pattern in self._patterns:
            if pattern.search(name) or pattern.search(arguments):
                return pattern.pattern
        return None

    def explanation(self, call: ToolCall, pattern: str) -> str:
        arguments = call.arguments[:_ARGUMENTS_SHOWN]
        return (
            f"[Luthien] Blocked the tool call `{call.name}` ({arguments}): "
            f"it matches the blocklist pattern `{pattern}`."
        )

    async def apply_response_policy(
        self, response: ModelResponse, metadata: RequestMetadata
    ) -> PolicyResult[ModelResponse]:
        reasons = []
        for choice in response.choices:
            message = choice.message  # type: ignore[union-attr]
            kept: list[Any] = []
            notes: list[str] = []
            for tool_call in message.tool_calls or []:
                if not hasattr(tool_call, "function"):  # custom (non-function) tools are not judged
                    kept.append(tool_call)
                    continue
                call = ToolCall(
                    index=len(kept),
                    id=tool_call.id or "",
                    name=tool_call.function.name or "",
                    arguments=tool_call.function.arguments or "",
                )
                pattern = self.matching_pattern(call.name, call.arguments)
                if pattern is None:
                    kept.append(tool_call)
                else:
                    notes.append(self.explanation(call, pattern))
            if not notes:
                continue
            reasons.extend(notes)
            message.tool_calls = kept or None
            message.content = "\n\n".join(filter(None, [message.content, *notes]))
            if not kept and choice.finish_reason == "tool_calls":  # type: ignore[union-attr]
                choice.finish_reason = "stop"  # type: ignore[union-attr]
        if not reasons:
            return PolicyResult.allow(response)
        return PolicyResult.allow(response, reason=" ".join(reasons), blocked_tool_calls=len(reasons))

    async def apply_streaming_chunk_policy(
        self, chunk: ModelResponseStream, context: StreamingContext
    ) -> AsyncIterator[ChunkResult]:
        held: _HeldToolCalls = context.policy_state.setdefault("blocklist", _HeldToolCalls())
        if not held.chunks and not tool_call_deltas(chunk):
            yield PolicyResult.allow(chunk)
            return
        held.chunks.append(chunk)
        held.calls.add(chunk)
        # Arguments arrive in fragments: judge once the message is complete.
        if finish_reason(chunk) is not None:
            for result in self._release(held):
                yield result

    async def on_stream_end(self, context: StreamingContext) -> AsyncIterator[ChunkResult]:
        held: _HeldToolCalls | None = context.policy_state.get("blocklist")
        if held is not None and held.chunks:
            for result in self._release(held):
                yield result

    def _release(self, held: _HeldToolCalls) -> Iterator[ChunkResult]:
        chunks, calls = held.chunks, held.calls.calls
        held.chunks, held.calls = [], ToolCallAccumulator()
        verdicts = {
            index: pattern
            for index, call in calls.items()
            if (pattern := self.matching_pattern(call.name, call.arguments)) is not None
        }
        if not verdicts:
            yield from (PolicyResult.allow(c) for c in chunks)
            return
        last = chunks[-1]
        final = last if finish_reason(last) is not None else None
        for chunk in chunks if final is None else chunks[:-1]:
            kept = without_tool_calls(chunk, set(verdicts))
            if kept is not None:
                yield PolicyResult.allow(kept)
        for index, pattern in verdicts.items():
            note = self.explanation(calls[index], pattern)
            yield PolicyResult.allow(
                text_chunk(last, "\n\n" + note),
                reason=note,
                blocked_tool=calls[index].name,
                pattern=pattern,
                arguments=json.dumps(calls[index].parsed_arguments())[:_ARGUMENTS_SHOWN],
            )
        if final is not None:
            yield PolicyResult.allow(self._finish_without(final, verdicts, calls))

    @staticmethod
    def _finish_without(
        final: ModelResponseStream, blocked: dict[int, str], calls: dict[int, ToolCall]
    ) -> ModelResponseStream:
        kept = without_tool_calls(final, set(blocked)) or final
        if set(calls) <= set(blocked) and finish_reason(kept) == "tool_calls":
            kept = kept.model_copy(deep=True)
            kept.choices[0].finish_reason = "stop"
        return kept
