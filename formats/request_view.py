"""The rest of a request: what the normalised form (LiteLLM's) has no place for still reaches
the policy.

A provider body carries more than messages: top-level fields the normalisation drops (Anthropic
``context_management``, Responses ``prompt`` with its variables, ``client_metadata``, ...), and
inside the conversation, parts it does not map (a document's text, an item type it does not
know). Policies see them in two places of the normalised request:

- ``extra_body``: each top-level field of the original that the normalised form does not hold,
  as it is;
- ``unmapped_text``: every other string of the original (values and keys) that appears nowhere
  in the normalised form.

A policy's change to either maps back onto the original body like any text change
(``request_patch``), so a redaction reaches every part of a request.
"""

import contextlib
import json
from collections.abc import Iterator
from typing import Any

from controlplane.models import EXTRA_BODY, UNMAPPED_TEXT, NormalizedRequest
from formats.base import JSON


def completed(original: JSON, normalized: NormalizedRequest, consumed: frozenset[str]) -> NormalizedRequest:
    """``normalized`` with the rest of ``original``; ``consumed`` names the top-level fields the
    normalisation mapped under other names (``system``, ``input``, ...)."""
    extra = {key: value for key, value in original.items() if key not in normalized and key not in consumed}
    view = {**normalized, EXTRA_BODY: extra} if extra else dict(normalized)
    seen = _seen(view)
    unmapped = list(dict.fromkeys(text for text in _strings(original) if text not in seen))
    if unmapped:
        view[UNMAPPED_TEXT] = unmapped
    return view


def _seen(view: Any) -> set[str]:
    """Every string of the normalised view; a data URL also counts for its payload (an image's
    base64 data is there, behind ``data:image/png;base64,``), and JSON text (a tool call's
    arguments) for the strings in it."""
    seen = set()
    for text in _strings(view):
        seen.add(text)
        if text.startswith("data:") and ";base64," in text:
            media, _, payload = text[5:].partition(";base64,")
            seen.update((media, payload))
        elif text[:1] in ("{", "["):
            with contextlib.suppress(ValueError):
                seen.update(_strings(json.loads(text)))
    return seen


def _strings(node: Any) -> Iterator[str]:
    """The strings of a JSON value: values and keys, but not the ``type`` tags."""
    if isinstance(node, str):
        yield node
    elif isinstance(node, dict):
        for key, value in node.items():
            yield key
            if key != "type" or not isinstance(value, str):
                yield from _strings(value)
    elif isinstance(node, list):
        for item in node:
            yield from _strings(item)
