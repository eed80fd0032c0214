"""OpenAI Chat Completions: the normalised form is this format, so mapping is mostly identity
(the stream's transcoder and the policy view of a message are in ``openai_chat_stream``)."""

import json

from controlplane.llm import ModelResponse
from controlplane.models import NormalizedRequest, WireFormat
from formats.base import JSON
from formats.openai_chat_stream import LEGACY_CALL_ID, UNSEEN_CALL_ID, field_value, policy_view, unseen_fields


class OpenAIChatCodec:
    wire_format = WireFormat.OPENAI_CHAT

    def normalize_request(self, body: JSON) -> NormalizedRequest:
        return json.loads(json.dumps(body))

    def render_request(self, original: JSON, before: NormalizedRequest, after: NormalizedRequest) -> JSON:
        return after

    def parse_response(self, body: JSON) -> ModelResponse:
        choices = body.get("choices") or []
        if not isinstance(choices, list) or not all(isinstance(c, dict) for c in choices):
            raise ValueError("`choices` must be a list of objects")
        return ModelResponse(**{**body, "choices": [_policy_choice(c) for c in choices]})

    def render_response(self, original: JSON, response: ModelResponse) -> JSON:
        rendered = dict(original)
        originals = original.get("choices") or []
        rendered["choices"] = [
            _render_choice(originals[i] if i < len(originals) else {}, choice.model_dump())
            for i, choice in enumerate(response.choices)
        ]
        return rendered


def _policy_choice(choice: JSON) -> JSON:
    view = dict(choice)
    if isinstance(view.get("message"), dict):
        view["message"] = policy_view(view["message"], streamed=False)
    if view.get("finish_reason") == "function_call":
        view["finish_reason"] = "tool_calls"
    return view


def _render_choice(original: JSON, new: JSON) -> JSON:
    choice = {
        **original,
        "index": new["index"],
        "finish_reason": new.get("finish_reason"),
    }
    message = dict(original.get("message") or {"role": "assistant"})
    new_message = new.get("message") or {}
    text = new_message.get("content")
    if text != (message.get("content") or "") + (message.get("refusal") or "") or text is None:
        message["content"] = text
        if message.get("refusal"):  # the text policies saw was the refusal: it is what changed
            message["refusal"] = None
    originals = {c.get("id"): c for c in message.get("tool_calls") or [] if isinstance(c, dict)}
    legacy = message.pop("function_call", None)
    unseen = {UNSEEN_CALL_ID + name: name for name in unseen_fields(message)}
    for name in unseen.values():  # back only if the policy kept its call
        del message[name]
    tool_calls = []
    for call in new_message.get("tool_calls") or []:
        function = {"name": call["function"]["name"], "arguments": call["function"]["arguments"]}
        if call["id"] in unseen:
            message[unseen[call["id"]]] = field_value(unseen[call["id"]], function["arguments"])
        elif call["id"] == LEGACY_CALL_ID and isinstance(legacy, dict):
            message["function_call"] = function
        elif isinstance((originals.get(call["id"]) or {}).get("custom"), dict):
            custom = {"name": function["name"], "input": function["arguments"]}
            tool_calls.append({"id": call["id"], "type": "custom", "custom": custom})
        else:
            tool_calls.append({"id": call["id"], "type": "function", "function": function})
    if tool_calls:
        message["tool_calls"] = tool_calls
    else:
        message.pop("tool_calls", None)
    if "function_call" in message and choice["finish_reason"] == "tool_calls":
        choice["finish_reason"] = "function_call"
    choice["message"] = message
    choice.setdefault("logprobs", None)
    return choice
