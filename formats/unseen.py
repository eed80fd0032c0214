"""Content the normalised view has no place for (an Anthropic citation, an event or delta of a
type still to come, a Responses annotation), shown to policies as a tool call of its own: its
name is its type, its arguments its JSON, as for an output item of an unknown type. Policies
that judge tool calls (a blocklist, a judge) thus see it; one that removes it removes it with
its explanation; one that gives it back has it forwarded as it came."""

import json
from typing import Any

from controlplane.chunks import ToolCallDelta
from formats.base import JSON, FormatError


def holds_content(value: Any) -> bool:
    """Whether a field's value carries anything a policy could judge: not None, an empty string,
    or a list or object of only such values (LiteLLM-shaped bodies carry
    ``"provider_specific_fields": {"citations": null}``)."""
    if isinstance(value, dict):
        return any(holds_content(v) for v in value.values())
    if isinstance(value, list):
        return any(holds_content(v) for v in value)
    return value is not None and value != ""


def unseen_call(index: int, name: str, content: JSON) -> ToolCallDelta:
    """The content as a tool call, whole in one chunk."""
    return {
        "index": index,
        "id": f"luthien_unseen_{index}",
        "type": "function",
        "function": {"name": name, "arguments": json.dumps(content)},
    }


def given_back(arguments: str, what: str) -> JSON:
    """The content a policy gave back for unseen ``what``, to write it where it came from."""
    try:
        content = json.loads(arguments or "{}")
    except ValueError as exc:
        raise FormatError(f"a policy gave {what} content that is not JSON") from exc
    if not isinstance(content, dict):
        raise FormatError(f"a policy gave {what} content that is not an object")
    return content
