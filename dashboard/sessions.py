"""A session read as a conversation: each turn's new input, the answer the agent got and what
policy did to it; and the whole session exported as JSON or Markdown.

Each request of an agent carries the conversation so far, so a turn's input is what follows the
last answer in it: the user's new prompt, or the results of the tools the last answer called.
Built here rather than in the browser so that the page and the exports say the same.
"""

import json
import re
from datetime import datetime
from typing import Any, Literal

from pydantic import BaseModel, Field

from controlplane.models import WireFormat
from controlplane.recording.records import BlockKind, CallOutcome, CallRecord, Output, Usage
from controlplane.storage.base import SessionSummary

#: A part longer than this is cut (a tool result holding a whole file): the call page has it all.
MAX_PART_CHARS = 20_000

PartKind = Literal["text", "tool_call", "tool_result", "reasoning", "other"]


class Part(BaseModel):
    kind: PartKind
    text: str
    name: str | None = Field(default=None, description="The tool a tool call calls.")
    omitted_chars: int = Field(default=0, description="Characters cut from the end of a long part.")


class Message(BaseModel):
    role: str = Field(description="user, tool (a tool's result) or assistant.")
    parts: list[Part]


class Action(BaseModel):
    """What policy did in a turn: a decision recorded, or a rewrite."""

    stage: Literal["request", "response", "stream"]
    block: BlockKind | None = Field(description="What it stopped; None when it let the turn go on.")
    rule: str | None = None
    reason: str | None = None


class Turn(BaseModel):
    call_id: str
    started_at: datetime
    duration_ms: float
    host: str
    model: str | None
    wire_format: WireFormat | None
    status: int | None
    outcome: CallOutcome
    block_kind: BlockKind | None
    request_modified: bool
    response_modified: bool
    usage: Usage | None
    input: list[Message] = Field(description="What the agent added to the conversation this turn.")
    output: list[Part] = Field(description="The answer the agent received (after policy).")
    actions: list[Action]


class SessionDetail(BaseModel):
    session: SessionSummary
    turns: list[Turn]
    offset: int
    limit: int


def turn(call: CallRecord) -> Turn:
    return Turn(
        call_id=call.call_id,
        started_at=call.started_at,
        duration_ms=call.duration_ms,
        host=call.host,
        model=call.model,
        wire_format=call.wire_format,
        status=call.status,
        outcome=call.outcome,
        block_kind=call.block_kind,
        request_modified=call.request_modified,
        response_modified=call.response_modified,
        usage=call.usage,
        input=new_input(call.original_request),
        output=output_parts(call.final_output),
        actions=[
            Action(stage=d.stage, block=d.block, rule=_rule(d.metadata), reason=d.reason)
            for d in call.decisions
        ],
    )


def new_input(request: Any) -> list[Message]:
    """The messages after the last assistant message of a Chat, Messages or Responses request;
    system prompts and instructions left out (the call page shows them)."""
    if not isinstance(request, dict):
        return []
    items = request.get("messages", request.get("input"))
    if isinstance(items, str):
        items = [{"role": "user", "content": items}]
    items = [item for item in items if isinstance(item, dict)] if isinstance(items, list) else []
    answered = [n for n, item in enumerate(items) if _from_assistant(item)]
    after = items[answered[-1] + 1 :] if answered else items
    return [message for item in after if (message := _message(item)) is not None]


def output_parts(output: Output | None) -> list[Part]:
    if output is None:
        return []
    parts = [_part("reasoning", output.reasoning)] if output.reasoning else []
    if output.text:
        parts.append(_part("text", output.text))
    parts += [_part("tool_call", call.arguments, name=call.name) for call in output.tool_calls]
    return parts


def _from_assistant(item: dict[str, Any]) -> bool:
    # Responses items of the model's own: function_call, custom_tool_call, reasoning, ...
    kind = item.get("type")
    made_by_model = isinstance(kind, str) and (kind.endswith("_call") or kind == "reasoning")
    return item.get("role") == "assistant" or made_by_model


def _message(item: dict[str, Any]) -> Message | None:
    kind, role = item.get("type"), item.get("role", "user")
    if isinstance(kind, str) and kind.endswith("_call_output"):  # Responses tool results
        return Message(role="tool", parts=[_part("tool_result", _plain(item.get("output")))])
    if role in ("system", "developer"):
        return None
    if role == "tool":  # Chat tool results
        return Message(role="tool", parts=[_part("tool_result", _plain(item.get("content")))])
    parts = _parts(item.get("content"))
    if not parts:
        return None
    # A Messages user turn that only returns tool results is the tools speaking.
    speaker = "tool" if all(part.kind == "tool_result" for part in parts) else str(role)
    return Message(role=speaker, parts=parts)


def _parts(content: Any) -> list[Part]:
    if isinstance(content, str):
        return [_part("text", content)] if content else []
    parts: list[Part] = []
    for block in content if isinstance(content, list) else []:
        if isinstance(block, str):
            parts.append(_part("text", block))
        elif isinstance(block, dict):
            parts.append(_block(block))
    return parts


def _block(block: dict[str, Any]) -> Part:
    kind = block.get("type")
    if kind == "tool_result":
        return _part("tool_result", _plain(block.get("content")))
    if isinstance(block.get("text"), str):
        return _part("text", block["text"])
    if kind == "tool_use":
        return _part("tool_call", json.dumps(block.get("input"), ensure_ascii=False), name=block.get("name"))
    return _part("other", f"[{kind or 'part'}]")


def _plain(content: Any) -> str:
    """A tool result's text: a string, or the text of its blocks."""
    if isinstance(content, str):
        return content
    if isinstance(content, list):
        return "\n".join(part.text for part in _parts(content))
    return "" if content is None else json.dumps(content, ensure_ascii=False)


def _part(kind: PartKind, text: str, name: str | None = None) -> Part:
    omitted = max(0, len(text) - MAX_PART_CHARS)
    return Part(kind=kind, text=text[:MAX_PART_CHARS], name=name, omitted_chars=omitted)


def _rule(metadata: dict[str, Any]) -> str | None:
    rule = metadata.get("rule_id")
    return rule if isinstance(rule, str) else None


# --- Markdown --------------------------------------------------------------------------------

_BACKTICKS = re.compile(r"`+")
_ROLE_TITLES = {"user": "User", "tool": "Tool result", "assistant": "Assistant"}
_BLOCK_LABELS = {
    BlockKind.REQUEST: "request blocked",
    BlockKind.RESPONSE: "response blocked",
    BlockKind.TOOL_CALL: "tool call removed",
    BlockKind.STREAM: "stream ended",
}


def markdown(session: SessionSummary, turns: list[Turn]) -> str:
    """The session as a Markdown document: its facts, then each turn in order."""
    tokens = f"{session.total_tokens:,} tokens"
    cost = f" · ${session.cost_usd:.4f} estimated" if session.cost_usd is not None else ""
    lines = [
        f"# Session {session.session_id}",
        "",
        f"- Agent: {session.agent or 'unknown'}",
        f"- User: {session.user_id or 'none'}",
        f"- Credential hash: {session.api_key_hash or 'none'}",
        f"- From {session.first_call_at.isoformat()} to {session.last_call_at.isoformat()} "
        f"({session.duration_ms / 1000:.1f} s)",
        f"- {session.turns} turns · {session.blocks} blocked · {session.modified} changed by policy · "
        f"{tokens}{cost}",
    ]
    for number, item in enumerate(turns, 1):
        lines += ["", *_turn_markdown(number, item)]
    return "\n".join(lines) + "\n"


def _turn_markdown(number: int, item: Turn) -> list[str]:
    outcome = _BLOCK_LABELS[item.block_kind] if item.block_kind else item.outcome.value
    lines = [
        f"## Turn {number} · {item.started_at.isoformat()} · {item.model or item.host} · {outcome}",
        "",
        f"Call `{item.call_id}`, {item.duration_ms:.0f} ms.",
    ]
    for message in item.input:
        lines += ["", f"**{_ROLE_TITLES.get(message.role, message.role)}**", ""]
        lines += [line for part in message.parts for line in _part_markdown(part)]
    if item.output:
        lines += ["", "**Assistant**", ""]
        lines += [line for part in item.output for line in _part_markdown(part)]
    lines += [line for action in item.actions for line in ["", _action_markdown(action)]]
    if item.request_modified:
        lines += ["", "> Policy changed the request before the provider saw it."]
    if item.response_modified:
        lines += ["", "> Policy changed the answer: the one above is what the agent received."]
    return lines


def _part_markdown(part: Part) -> list[str]:
    cut = [f"*… {part.omitted_chars} more characters*", ""] if part.omitted_chars else []
    if part.kind == "text":
        return [part.text, "", *cut]
    label = {"tool_call": f"Tool call `{part.name}`", "reasoning": "Reasoning"}.get(part.kind)
    return [*([label, ""] if label else []), *code_block(part.text), "", *cut]


def code_block(text: str) -> list[str]:
    """A code block whose fence no run of backticks in ``text`` can close."""
    longest = max((len(run) for run in _BACKTICKS.findall(text)), default=0)
    fence = "`" * max(3, longest + 1)
    return [fence, text, fence]


def _action_markdown(action: Action) -> str:
    verdict = _BLOCK_LABELS[action.block] if action.block else "allowed"
    rule = f" by rule `{action.rule}`" if action.rule else ""
    reason = f": {action.reason}" if action.reason else ""
    return f"> Policy ({action.stage}): {verdict}{rule}{reason}"
