"""Maps a policy's change to a normalised request back onto the provider's original body.

Rebuilding a provider body from the normalised form would lose what the normalised form has no
place for (Anthropic ``cache_control``, Responses item ids, beta fields). Instead the original
body is patched: changed message texts are replaced where they occur, changed tool-call
arguments are written into the tool call with the same id, and changed top-level parameters are
copied under the provider's own key. A change that cannot be expressed this way
raises ``FormatError`` rather than being dropped silently.
"""

import copy
import json
from dataclasses import dataclass, field
from typing import Any

from addon.formats.base import JSON, FormatError

_TEXT_KEYS = frozenset({"content", "text", "system", "instructions", "input", "output"})


@dataclass
class _Changes:
    texts: dict[str, str] = field(default_factory=dict)  # old text -> new text
    arguments: dict[str, str] = field(default_factory=dict)  # tool call id -> new arguments JSON


def patch_request(original: JSON, before: JSON, after: JSON, parameter_keys: dict[str, str]) -> JSON:
    """``original`` with the differences between ``before`` and ``after`` applied.

    ``parameter_keys`` maps a normalised top-level parameter to the provider's name for it.
    """
    patched = copy.deepcopy(original)
    for key in (before.keys() | after.keys()) - {"messages"}:
        if before.get(key) == after.get(key):
            continue
        if key not in parameter_keys:
            raise FormatError(f"a policy changed '{key}', which this format cannot carry over")
        if key in after:
            patched[parameter_keys[key]] = after[key]
        else:
            patched.pop(parameter_keys[key], None)
    changes = _Changes()
    _collect_changes(before.get("messages"), after.get("messages"), changes, "messages")
    if set(changes.texts) - _replace_texts(patched, changes.texts):
        raise FormatError("a policy changed message text that has no single place in the original body")
    if set(changes.arguments) - _replace_arguments(patched, changes.arguments):
        raise FormatError("a policy changed the arguments of a tool call the original body does not have")
    return patched


def _collect_changes(before: Any, after: Any, out: _Changes, where: str) -> None:
    if isinstance(before, dict) and isinstance(after, dict):
        if before.keys() != after.keys():
            raise FormatError(f"a policy changed the structure of {where}")
        if _is_tool_call(before) and _is_tool_call(after):
            old, new = before["function"].get("arguments"), after["function"].get("arguments")
            if old != new:
                out.arguments[before["id"]] = new
                after = {**after, "function": {**after["function"], "arguments": old}}
        for key in before:
            old, new = before[key], after[key]
            if isinstance(old, str) and isinstance(new, str) and old != new:
                if key not in _TEXT_KEYS:
                    raise FormatError(f"a policy changed {where}.{key}, which is not message text")
                out.texts[old] = new
            else:
                _collect_changes(old, new, out, f"{where}.{key}")
    elif isinstance(before, list) and isinstance(after, list):
        if len(before) != len(after):
            raise FormatError(f"a policy added or removed items in {where}")
        for index, (old, new) in enumerate(zip(before, after, strict=True)):
            _collect_changes(old, new, out, f"{where}[{index}]")
    elif before != after:
        raise FormatError(f"a policy changed {where}")


def _is_tool_call(node: dict[str, Any]) -> bool:
    return isinstance(node.get("function"), dict) and isinstance(node.get("id"), str)


def _replace_texts(node: Any, replacements: dict[str, str]) -> set[str]:
    """Replaces matching text values in place; returns the originals that were found."""
    found: set[str] = set()
    if isinstance(node, dict):
        for key, value in node.items():
            if isinstance(value, str) and key in _TEXT_KEYS and value in replacements:
                node[key] = replacements[value]
                found.add(value)
            else:
                found |= _replace_texts(value, replacements)
    elif isinstance(node, list):
        for item in node:
            found |= _replace_texts(item, replacements)
    return found


def _replace_arguments(node: Any, arguments: dict[str, str]) -> set[str]:
    """Rewrites the tool calls (Anthropic ``tool_use``, Responses ``function_call``) whose ids
    have new arguments; returns the ids that were found."""
    found: set[str] = set()
    if isinstance(node, dict):
        if node.get("type") == "tool_use" and node.get("id") in arguments:
            node["input"] = json.loads(arguments[node["id"]])
            found.add(node["id"])
        elif node.get("type") == "function_call" and node.get("call_id") in arguments:
            node["arguments"] = arguments[node["call_id"]]
            found.add(node["call_id"])
        for value in node.values():
            found |= _replace_arguments(value, arguments)
    elif isinstance(node, list):
        for item in node:
            found |= _replace_arguments(item, arguments)
    return found
