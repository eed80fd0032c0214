"""ToolCallGate: the base for policies that judge whole tool calls.

A tool call's arguments arrive in fragments, so it can only be judged once complete. The gate
holds everything from a message's first tool-call delta until the message finishes, judges every
call (concurrently; a judge may await), then releases the held chunks unchanged, or without the
blocked calls plus a note per blocked call explaining why. Text before the first tool call is
never held. If no call remains, a ``tool_calls`` finish becomes ``stop`` so the agent does not
wait for tool results.
"""

import asyncio
import json
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from typing import Any

from controlplane.llm import ChatCompletionMessageToolCall, ModelResponse, ModelResponseStream
from controlplane.models import REMOVED_TOOL, PolicyResult, RequestMetadata, StreamingContext
from controlplane.policies.base import ChunkResult, PolicyHandler
from controlplane.policies.chunks import (
    ToolCall,
    ToolCallAccumulator,
    finish_reason,
    text_chunk,
    tool_call_deltas,
    without_tool_calls,
)

ARGUMENTS_SHOWN = 200


@dataclass(frozen=True)
class Verdict:
    """A judgement of one tool call: blocked (the default), or allowed with a recorded reason."""

    reason: str  # shown to the agent when blocked, recorded either way; never include secrets
    rule_id: str | None = None
    details: dict[str, Any] = field(default_factory=dict)  # recorded with the decision
    allowed: bool = False


@dataclass
class _Held:
    chunks: list[ModelResponseStream] = field(default_factory=list)
    calls: ToolCallAccumulator = field(default_factory=ToolCallAccumulator)


class ToolCallGate(PolicyHandler):
    """Subclasses implement ``judge``; everything else (holding, releasing, rewriting the
    response in every wire format) is done here."""

    async def judge(self, call: ToolCall, metadata: RequestMetadata) -> Verdict | None:
        """A blocking Verdict, an allowing Verdict (to record why), or None to let it through."""
        raise NotImplementedError

    def explanation(self, call: ToolCall, verdict: Verdict) -> str:
        return (
            f"[Luthien] Blocked the tool call `{call.name}` ({call.arguments[:ARGUMENTS_SHOWN]}): "
            f"{verdict.reason}."
        )

    async def apply_response_policy(
        self, response: ModelResponse, metadata: RequestMetadata
    ) -> PolicyResult[ModelResponse]:
        notes: list[str] = []
        removed: list[tuple[ToolCall, Verdict]] = []
        for choice in response.choices:
            message = choice.message  # type: ignore[union-attr]
            # Custom (non-function) tools carry no JSON arguments to judge.
            functions = [c for c in message.tool_calls or [] if isinstance(c, ChatCompletionMessageToolCall)]
            calls = {
                i: ToolCall(i, c.id or "", c.function.name or "", c.function.arguments or "")
                for i, c in enumerate(functions)
            }
            judged_calls = await self._judge_all(calls, metadata)
            notes += [v.reason for v in judged_calls.values() if v.allowed]
            verdicts = {i: v for i, v in judged_calls.items() if not v.allowed}
            if not verdicts:
                continue
            choice_notes = [self.explanation(calls[i], v) for i, v in verdicts.items()]
            notes += choice_notes
            removed += [(calls[i], v) for i, v in verdicts.items()]
            blocked_ids = {calls[i].id for i in verdicts}
            kept = [c for c in message.tool_calls or [] if getattr(c, "id", None) not in blocked_ids]
            message.tool_calls = kept or None
            message.content = "\n\n".join(filter(None, [message.content, *choice_notes]))
            if not kept and choice.finish_reason == "tool_calls":  # type: ignore[union-attr]
                choice.finish_reason = "stop"  # type: ignore[union-attr]
        if not notes:
            return PolicyResult.allow(response)
        if not removed:
            return PolicyResult.allow(response, reason=" ".join(notes))
        # One result for the whole answer: the removed calls and their rules, in order.
        rules = [v.rule_id for _, v in removed if v.rule_id is not None]
        return PolicyResult.allow(
            response,
            reason=" ".join(notes),
            **{REMOVED_TOOL: ", ".join(call.name for call, _ in removed)},
            rule_id=", ".join(rules) or None,
        )

    async def apply_streaming_chunk_policy(
        self, chunk: ModelResponseStream, context: StreamingContext
    ) -> AsyncIterator[ChunkResult]:
        held: _Held = context.policy_state.setdefault(_STATE_KEY, _Held())
        if not held.chunks and not tool_call_deltas(chunk):
            yield PolicyResult.allow(chunk)
            return
        held.chunks.append(chunk)
        held.calls.add(chunk)
        if finish_reason(chunk) is not None:
            async for result in self._release(held, context.metadata):
                yield result

    async def on_stream_end(self, context: StreamingContext) -> AsyncIterator[ChunkResult]:
        held: _Held | None = context.policy_state.get(_STATE_KEY)
        if held is not None and held.chunks:
            async for result in self._release(held, context.metadata):
                yield result

    async def _judge_all(self, calls: dict[int, ToolCall], metadata: RequestMetadata) -> dict[int, Verdict]:
        verdicts = await asyncio.gather(*(self.judge(call, metadata) for call in calls.values()))
        return {index: v for index, v in zip(calls, verdicts, strict=True) if v is not None}

    async def _release(self, held: _Held, metadata: RequestMetadata) -> AsyncIterator[ChunkResult]:
        chunks, calls = held.chunks, held.calls.calls
        held.chunks, held.calls = [], ToolCallAccumulator()
        judged = await self._judge_all(calls, metadata)
        verdicts = {i: v for i, v in judged.items() if not v.allowed}
        for index, verdict in judged.items():
            if verdict.allowed:
                # A decision on record that sends nothing: the chunks themselves stay unchanged.
                yield PolicyResult(
                    value=None,
                    reason=verdict.reason,
                    metadata={"tool": calls[index].name, "rule_id": verdict.rule_id, **verdict.details},
                )
        if not verdicts:
            for chunk in chunks:
                yield PolicyResult.allow(chunk)
            return
        last = chunks[-1]
        final = last if finish_reason(last) is not None else None
        for chunk in chunks if final is None else chunks[:-1]:
            kept = without_tool_calls(chunk, set(verdicts))
            if kept is not None:
                yield PolicyResult.allow(kept)
        for index, verdict in verdicts.items():
            call = calls[index]
            yield PolicyResult.allow(
                text_chunk(last, "\n\n" + self.explanation(call, verdict)),
                reason=verdict.reason,
                **{REMOVED_TOOL: call.name},
                rule_id=verdict.rule_id,
                arguments=json.dumps(call.parsed_arguments())[:ARGUMENTS_SHOWN],
                **verdict.details,
            )
        if final is not None:
            kept_final = without_tool_calls(final, set(verdicts)) or final
            if set(calls) <= set(verdicts) and finish_reason(kept_final) == "tool_calls":
                kept_final = kept_final.model_copy(deep=True)
                kept_final.choices[0].finish_reason = "stop"
            yield PolicyResult.allow(kept_final)


_STATE_KEY = "tool_call_gate"
