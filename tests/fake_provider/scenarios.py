"""Scenario selection and the provider-neutral script of what the fake "model" says.

A test picks a scenario by putting ``[scenario:NAME]`` or ``[scenario:NAME arg]`` in the
text of the last user message. Each wire format (chat, responses, messages) renders the
same :class:`Plan`, so the three APIs say the same thing in their own dialect.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Any

DEFAULT_TEXT = "Hello from the fake provider. The quick brown fox jumps over the lazy dog."
THINKING_TEXT = "The user wants a short greeting. I will answer with the usual sentence."
DEFAULT_COMMAND = "ls -la"
SECOND_COMMAND = "echo ok"
SLOW_DELAY = 0.2
LONG_WORDS = 10_000
# Words streamed before the error event in `midstream_error`.
MIDSTREAM_WORDS = 3
# Events streamed before the connection is dropped in `cut`.
CUT_AFTER_EVENTS = 4

SCENARIOS = frozenset(
    {
        "text",
        "tool_call",
        "two_tools",
        "thinking",
        "error_429",
        "error_500",
        "midstream_error",
        "gated",
        "slow",
        "cut",
        "long",
    }
)

# The argument stops at the closing bracket, so commands containing "]" are not supported.
_MARKER = re.compile(r"\[scenario:(?P<name>[A-Za-z0-9_]+)(?:[ \t]+(?P<arg>[^\]]*?))?[ \t]*\]")


class UnknownScenarioError(ValueError):
    """The marker names a scenario this fake does not implement (most likely a typo)."""


@dataclass(frozen=True)
class Scenario:
    name: str = "text"
    arg: str | None = None


@dataclass(frozen=True)
class ToolCall:
    name: str
    arguments: dict[str, str]


@dataclass(frozen=True)
class Plan:
    """What the fake model answers, independent of the wire format."""

    scenario: Scenario
    text: str = DEFAULT_TEXT
    thinking: str | None = None
    tool_calls: tuple[ToolCall, ...] = ()
    http_error: int | None = None
    midstream_error: bool = False
    gated: bool = False
    delay: float | None = None  # overrides the server's default pacing
    cut_after: int | None = None  # streaming: drop the connection after this many events


def find_scenario(text: str) -> Scenario:
    """The last marker in `text` wins: it is the one closest to what the user typed."""
    matches = list(_MARKER.finditer(text))
    if not matches:
        return Scenario()
    match = matches[-1]
    arg = (match.group("arg") or "").strip() or None
    return Scenario(match.group("name"), arg)


def plan_for(scenario: Scenario) -> Plan:
    name, arg = scenario.name, scenario.arg
    if name not in SCENARIOS:
        raise UnknownScenarioError(f"unknown fake-provider scenario {name!r}")
    if name == "tool_call":
        return Plan(scenario, text="Let me run that.", tool_calls=(_bash(arg or DEFAULT_COMMAND),))
    if name == "two_tools":
        calls = (_bash(arg or DEFAULT_COMMAND), _bash(SECOND_COMMAND))
        return Plan(scenario, text="Let me run both commands.", tool_calls=calls)
    if name == "thinking":
        return Plan(scenario, thinking=THINKING_TEXT)
    if name == "error_429":
        return Plan(scenario, http_error=429)
    if name == "error_500":
        return Plan(scenario, http_error=500)
    if name == "midstream_error":
        return Plan(scenario, midstream_error=True)
    if name == "gated":
        return Plan(scenario, gated=True)
    if name == "cut":
        return Plan(scenario, cut_after=CUT_AFTER_EVENTS)
    if name == "slow":
        return Plan(scenario, delay=_parse_delay(arg))
    if name == "long":  # one streamed event per word: `[scenario:long 10000]`
        return Plan(scenario, text="word " * int(arg or LONG_WORDS), delay=0.0)
    return Plan(scenario)


def _bash(command: str) -> ToolCall:
    return ToolCall("bash", {"command": command})


def _parse_delay(arg: str | None) -> float:
    try:
        return float(arg) if arg else SLOW_DELAY
    except ValueError:
        return SLOW_DELAY


def words(text: str) -> list[str]:
    """One streamed delta per word, each carrying its trailing whitespace."""
    return re.findall(r"\S+\s*", text)


def fragments(text: str, size: int = 7) -> list[str]:
    """Tool-call arguments arrive in small pieces, as real models emit them."""
    return [text[i : i + size] for i in range(0, len(text), size)]


def estimate_tokens(text: str) -> int:
    """Roughly four characters per token; deterministic, which is all tests need."""
    return max(1, (len(text) + 3) // 4)


# --- extracting the last user message's text, per wire format -------------------------


def _join_text_parts(content: Any, part_types: frozenset[str]) -> str:
    if isinstance(content, str):
        return content
    if not isinstance(content, list):
        return ""
    texts = [
        part["text"]
        for part in content
        if isinstance(part, dict) and part.get("type") in part_types and isinstance(part.get("text"), str)
    ]
    return "\n".join(texts)


def _last_item(items: Any) -> dict[str, Any]:
    last = items[-1] if isinstance(items, list) and items else None
    return last if isinstance(last, dict) else {}


def _last_user_content(messages: Any) -> Any:
    if not isinstance(messages, list):
        return None
    for message in reversed(messages):
        if isinstance(message, dict) and message.get("role") == "user":
            return message.get("content")
    return None


# When the conversation ends with tool results, the turn being answered is the tool's, not the
# user's: reply with plain text (the default), or an agent driven by `tool_call` would loop forever.
# Anthropic needs no such rule because its tool results arrive inside a user message.


def chat_user_text(body: dict[str, Any]) -> str:
    messages = body.get("messages")
    if _last_item(messages).get("role") == "tool":
        return ""
    return _join_text_parts(_last_user_content(messages), frozenset({"text"}))


def anthropic_user_text(body: dict[str, Any]) -> str:
    return _join_text_parts(_last_user_content(body.get("messages")), frozenset({"text"}))


def responses_user_text(body: dict[str, Any]) -> str:
    items = body.get("input")
    if isinstance(items, str):
        return items
    if str(_last_item(items).get("type", "")).endswith("_output"):  # function_call_output and kin
        return ""
    # Items without a "type" are shorthand messages; typed ones must be "message".
    messages = (
        [i for i in items if isinstance(i, dict) and i.get("type", "message") == "message"]
        if isinstance(items, list)
        else []
    )
    return _join_text_parts(_last_user_content(messages), frozenset({"input_text", "text"}))
