"""Responses API output items: their shapes, and how policies see every tool-like item, in
answers and in the conversation a request carries.

Anything that is not a message or reasoning is a tool call to policies, whatever its type, known
or invented later: a function call, Codex's free-form ``apply_patch`` (``custom_tool_call``),
``local_shell_call``, ``shell_call``, MCP, computer use, code interpreter, web search... Each has
a name and an arguments text, and a policy's change to the arguments maps back onto the item.
"""

import json
from dataclasses import dataclass
from typing import Any

from formats.base import JSON, FormatError

#: Items that are not tool calls: their text is the answer, or the model's reasoning.
NOT_TOOLS = frozenset({"message", "reasoning"})
#: Fields of an item that are its identity and state, not what it asks for.
_IDENTITY = ("id", "type", "status")


@dataclass(frozen=True)
class _View:
    name: str | None  # None: the item's own `name`
    field: str | None  # where the arguments are; None: the whole item
    text: bool = False  # the field holds the arguments as text (else any JSON value)


_VIEWS: dict[str, _View] = {
    "function_call": _View(None, "arguments", text=True),
    "custom_tool_call": _View(None, "input", text=True),
    "mcp_call": _View(None, "arguments", text=True),
    "local_shell_call": _View("local_shell", "action"),
    "shell_call": _View("shell", "action"),
    "apply_patch_call": _View("apply_patch", "operation"),
    "computer_call": _View("computer", "action"),
    "web_search_call": _View("web_search", "action"),
    "code_interpreter_call": _View("code_interpreter", None),
}
#: Stream events that carry a piece of an item's arguments text (in ``delta``).
ARGUMENT_DELTAS = frozenset(
    {
        "response.function_call_arguments.delta",
        "response.custom_tool_call_input.delta",
        "response.mcp_call_arguments.delta",
    }
)


def is_tool_item(item: Any) -> bool:
    return isinstance(item, dict) and item.get("type") not in NOT_TOOLS


def _view(item: JSON) -> _View:
    return _VIEWS.get(str(item.get("type")), _View(None, None))


def tool_name(item: JSON) -> str:
    view = _view(item)
    if view.name is not None:
        return view.name
    name = item.get("name")
    return name if isinstance(name, str) and name else str(item.get("type"))


def tool_arguments(item: JSON) -> str:
    """The item's arguments as policies read them: text, or JSON."""
    view = _view(item)
    if view.field is None:
        return json.dumps({k: v for k, v in item.items() if k not in _IDENTITY}, ensure_ascii=False)
    value = item.get(view.field)
    if view.text and isinstance(value, str):
        return value
    return json.dumps(value, ensure_ascii=False) if value is not None else ""


def streams_arguments(item: JSON) -> bool:
    """Whether the item's arguments text arrives in delta events (else whole, with the item)."""
    return _view(item).text


def append_arguments(item: JSON, delta: str) -> None:
    """Adds a streamed piece of arguments text to ``item`` (as a client assembling it does)."""
    view = _view(item)
    if view.text and view.field is not None:
        item[view.field] = (item.get(view.field) or "") + delta


def with_arguments(item: JSON, arguments: str) -> JSON:
    """``item`` carrying ``arguments`` (a policy's change), in the item's own shape."""
    if arguments == tool_arguments(item):
        return item
    view = _view(item)
    if view.text:
        assert view.field is not None
        return {**item, view.field: arguments}
    try:
        value = json.loads(arguments)
    except ValueError as exc:
        raise FormatError(f"a policy gave a {item.get('type')} item arguments that are not JSON") from exc
    if view.field is not None:
        return {**item, view.field: value}
    if not isinstance(value, dict):
        raise FormatError(f"a policy gave a {item.get('type')} item arguments that are not a JSON object")
    return {**value, **{k: item[k] for k in _IDENTITY if k in item}}


def call_id(item: JSON, position: int) -> str:
    """The id policies know the call by: the ``call_id`` its result will name, else its own."""
    for key in ("call_id", "id"):
        value = item.get(key)
        if isinstance(value, str) and value:
            return value
    return f"item_{position}"


def output_items(output: Any) -> list[JSON]:
    if output is None:
        return []
    if not isinstance(output, list) or not all(isinstance(item, dict) for item in output):
        raise FormatError("`output` must be a list of items")
    return output


def part_text(part: Any) -> str:
    """The text of a message's content part: output text, or a refusal (text the model wrote)."""
    if not isinstance(part, dict):
        return ""
    value = part.get("text") if part.get("type") == "output_text" else part.get("refusal")
    return value if isinstance(value, str) else ""


def text_part(text: str) -> JSON:
    return {"type": "output_text", "text": text, "annotations": [], "logprobs": []}


def message_item(item_id: str, text: str, status: str) -> JSON:
    content = [text_part(text)] if status == "completed" else []
    return {
        "type": "message",
        "id": item_id,
        "status": status,
        "role": "assistant",
        "content": content,
    }


def output_text(output: list[JSON]) -> str:
    return "".join(
        part_text(part)
        for item in output
        if item.get("type") == "message"
        for part in item.get("content") or []
    )


def reasoning_text(output: list[JSON]) -> str:
    return "".join(
        part.get("text", "")
        for item in output
        if item.get("type") == "reasoning"
        for part in item.get("summary") or []
    )


def finish_reason_of(body: JSON, has_calls: bool) -> str:
    if body.get("status") == "incomplete":
        return "length"
    return "tool_calls" if has_calls else "stop"
