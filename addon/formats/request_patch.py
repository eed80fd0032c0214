"""Maps a policy's change to a normalised request back onto the provider's original body.

Rebuilding a provider body from the normalised form would lose what the normalised form has no
place for (Anthropic ``cache_control``, Responses item ids, beta fields). Instead the original
body is patched: changed message texts are replaced where they occur, and changed top-level
parameters are copied under the provider's own key. A change that cannot be expressed this way
raises ``FormatError`` rather than being dropped silently.
"""

import copy
from typing import Any

from addon.formats.base import JSON, FormatError

_TEXT_KEYS = frozenset({"content", "text", "system", "instructions", "input", "output"})


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
    replacements: dict[str, str] = {}
    _collect_text_changes(before.get("messages"), after.get("messages"), replacements, "messages")
    if replacements:
        unapplied = set(replacements) - _replace_texts(patched, replacements)
        if unapplied:
            raise FormatError("a policy changed message text that has no single place in the original body")
    return patched


def _collect_text_changes(before: Any, after: Any, out: dict[str, str], where: str) -> None:
    if isinstance(before, dict) and isinstance(after, dict):
        if before.keys() != after.keys():
            raise FormatError(f"a policy changed the structure of {where}")
        for key in before:
            old, new = before[key], after[key]
            if isinstance(old, str) and isinstance(new, str) and old != new:
                if key not in _TEXT_KEYS:
                    raise FormatError(f"a policy changed {where}.{key}, which is not message text")
                out[old] = new
            else:
                _collect_text_changes(old, new, out, f"{where}.{key}")
    elif isinstance(before, list) and isinstance(after, list):
        if len(before) != len(after):
            raise FormatError(f"a policy added or removed items in {where}")
        for index, (old, new) in enumerate(zip(before, after, strict=True)):
            _collect_text_changes(old, new, out, f"{where}[{index}]")
    elif before != after:
        raise FormatError(f"a policy changed {where}")


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
