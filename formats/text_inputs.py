"""OpenAI embeddings and moderations: requests whose ``input`` is text, policed as user messages.

Their answers (vectors, category scores) hold no model text, so only the request is policed. An
input given as token ids is refused: no policy can read it.
"""

import copy
from typing import Any

from controlplane.models import NormalizedRequest, WireFormat
from formats.base import JSON, FormatError
from formats.request_patch import patch_request
from formats.request_view import completed


class TextInputsCodec:
    def __init__(self, wire_format: WireFormat) -> None:
        self.wire_format = wire_format

    def normalize_request(self, body: JSON) -> NormalizedRequest:
        messages = [{"role": "user", "content": content} for content in _contents(body.get("input"))]
        return completed(body, {"model": body.get("model"), "messages": messages}, frozenset({"input"}))

    def render_request(self, original: JSON, before: NormalizedRequest, after: NormalizedRequest) -> JSON:
        contents = [m.get("content") for m in after.get("messages") or [] if isinstance(m, dict)]
        if len(contents) != len(before.get("messages") or []):
            raise FormatError("a policy added or removed inputs")
        rest = patch_request(
            original,
            {k: v for k, v in before.items() if k != "messages"},
            {k: v for k, v in after.items() if k != "messages"},
            {"model": "model"},
        )
        rendered = copy.deepcopy(rest)
        value = original.get("input")
        if isinstance(value, str):
            rendered["input"] = contents[0]
        elif value and all(isinstance(item, str) for item in value):
            rendered["input"] = contents
        else:  # content parts, in one message
            rendered["input"] = contents[0]
        return rendered


def _contents(value: Any) -> list[Any]:
    """One message content per input: a string, or (moderations) a list of text and image parts."""
    if isinstance(value, str):
        return [value]
    if not isinstance(value, list) or not value:
        raise FormatError("`input` must be a string or a non-empty list")
    if all(isinstance(item, str) for item in value):
        return list(value)
    if all(isinstance(item, dict) for item in value):
        return [copy.deepcopy(value)]
    raise FormatError("Luthien cannot police an input given as token ids: send the text")
