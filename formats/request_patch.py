"""Maps a policy's change to a normalised request back onto the provider's original body.

Rebuilding a provider body from the normalised form would lose what the normalised form has no
place for (Anthropic ``cache_control``, Responses item ids, beta fields). Instead the original
body is patched: changed texts (in messages, tools, ``extra_body``, ``unmapped_text``: anywhere)
are replaced where they occur, changed tool-call arguments are written into the tool call with
the same id, and changed top-level parameters are copied under the provider's own key. A change
that cannot be expressed this way raises ``FormatError`` rather than being dropped silently.
"""

import copy
import json
from dataclasses import dataclass, field
from typing import Any

from formats.base import JSON, FormatError
from formats.responses_items import with_arguments

#: Strings under these keys name things; a policy may not change them (nor are they replaced).
_NAMES = frozenset({"type", "role", "id", "call_id", "tool_use_id", "tool_call_id"})


@dataclass
class _Changes:
    texts: dict[str, str] = field(default_factory=dict)  # old text -> new text
    arguments: dict[str, str] = field(default_factory=dict)  # tool call id -> new arguments JSON


def patch_request(original: JSON, before: JSON, after: JSON, parameter_keys: dict[str, str]) -> JSON:
    """``original`` with the differences between ``before`` and ``after`` applied.

    ``parameter_keys`` maps a normalised top-level parameter to the provider's name for it.
    """
    patched = copy.deepcopy(original)
    changes = _Changes()
    for key in before.keys() | after.keys():
        if before.get(key) == after.get(key):
            continue
        if key in parameter_keys:
            if key in after:
                patched[parameter_keys[key]] = after[key]
            else:
                patched.pop(parameter_keys[key], None)
        elif key in before and key in after:
            _collect_changes(before[key], after[key], changes, key)
        else:
            raise FormatError(f"a policy added or removed '{key}', which this format cannot carry over")
    if missing := set(changes.texts) - _replace_texts(patched, changes.texts):
        # A text the normalisation wrote as JSON (LiteLLM serialises a structured tool output):
        # the change is made to the strings inside it, which the original body holds.
        inner = _Changes()
        for old in missing:
            _collect_json_changes(old, changes.texts[old], inner)
        if set(inner.texts) - _replace_texts(patched, inner.texts):
            raise FormatError("a policy changed text that has no place in the original body")
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
            if key in _NAMES and before[key] != after[key]:
                raise FormatError(f"a policy changed {where}.{key}, which is a name, not text")
            _collect_changes(before[key], after[key], out, f"{where}.{key}")
    elif isinstance(before, list) and isinstance(after, list):
        if len(before) != len(after):
            raise FormatError(f"a policy added or removed items in {where}")
        for index, (old, new) in enumerate(zip(before, after, strict=True)):
            _collect_changes(old, new, out, f"{where}[{index}]")
    elif isinstance(before, str) and isinstance(after, str):
        if before != after:
            out.texts[before] = after
    elif before != after:
        raise FormatError(f"a policy changed {where}")


def _collect_json_changes(old: str, new: str, out: _Changes) -> None:
    try:
        before, after = json.loads(old), json.loads(new)
    except ValueError as exc:
        raise FormatError("a policy changed text that has no place in the original body") from exc
    if not isinstance(before, dict | list):
        raise FormatError("a policy changed text that has no place in the original body")
    _collect_changes(before, after, out, "a serialised part")


def _is_tool_call(node: dict[str, Any]) -> bool:
    return isinstance(node.get("function"), dict) and isinstance(node.get("id"), str)


def _replace_texts(node: Any, replacements: dict[str, str]) -> set[str]:
    """Replaces matching text values in place; returns the originals that were found."""
    found: set[str] = set()
    if isinstance(node, dict):
        for key, value in node.items():
            if isinstance(value, str) and key not in _NAMES and value in replacements:
                node[key] = replacements[value]
                found.add(value)
            else:
                found |= _replace_texts(value, replacements)
    elif isinstance(node, list):
        for index, item in enumerate(node):
            if isinstance(item, str) and item in replacements:
                node[index] = replacements[item]
                found.add(item)
            else:
                found |= _replace_texts(item, replacements)
    return found


def _replace_arguments(node: Any, arguments: dict[str, str]) -> set[str]:
    """Rewrites the tool calls whose ids have new arguments (Anthropic tool blocks, by ``id``;
    Responses tool items, by ``call_id``); returns the ids that were found."""
    found: set[str] = set()
    if isinstance(node, dict):
        kind = str(node.get("type", ""))
        if "input" in node and kind.endswith("tool_use") and node.get("id") in arguments:
            node["input"] = json.loads(arguments[node["id"]])
            found.add(node["id"])
        elif kind.endswith("_call") and node.get("call_id") in arguments:
            replaced = with_arguments(node, arguments[node["call_id"]])
            node.clear()
            node.update(replaced)
            found.add(node["call_id"])
        for value in node.values():
            found |= _replace_arguments(value, arguments)
    elif isinstance(node, list):
        for item in node:
            found |= _replace_arguments(item, arguments)
    return found
