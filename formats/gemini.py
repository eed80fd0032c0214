"""Gemini ``generateContent`` and ``countTokens`` (``/{version}/models/{model}:{action}``), read
into the policies' view by this module rather than LiteLLM's ``GoogleGenAIAdapter``: the adapter
reads only lowerCamel fields and drops the parts it does not know, while Google reads snake_case
too, so a ``system_instruction`` or ``function_call`` would reach the model unseen. Here every
field is read under both spellings, and what the view has no place for is refused (400), never
passed on unseen:

- a part of a kind not listed below, or a field of a content, part or call not listed;
- ``fileData`` (a file stored with Google, which policies cannot read), and ``inlineData`` that
  is not an image (images are shown as data URLs, as in the other formats);
- ``cachedContent`` (a stored prefix of the conversation, never policed).

The model is named by the path, not the body: policies see it as ``model`` (``Policing`` puts
it there), and may not change it. The stream's transcoder is in ``gemini_stream``.
"""

import copy
import json
from typing import Any

from controlplane.llm import ModelResponse
from controlplane.models import NormalizedRequest, WireFormat
from formats.base import JSON, FormatError
from formats.gemini_stream import (
    call_of,
    candidate_index,
    candidate_parts,
    candidates_of,
    canonical_keys,
    field,
    finish_reason_for,
    gemini_finish,
    is_thought,
    part_kind,
    usage_of,
)
from formats.request_patch import patch_request
from formats.request_view import completed

#: Normalised parameters and where Gemini keeps them, in ``generationConfig``.
_PARAMETERS = {
    "temperature": "temperature",
    "top_p": "topP",
    "max_tokens": "maxOutputTokens",
    "stop": "stopSequences",
}
_CONTENT_FIELDS = frozenset({"role", "parts"})
_CALL_FIELDS = frozenset({"id", "name", "args"})
_RESULT_FIELDS = frozenset({"id", "name", "response", "willContinue", "scheduling"})
_CODE_FIELDS = {"executableCode": ("language", "code"), "codeExecutionResult": ("outcome", "output")}
#: Top-level fields the view maps under other names: they are not extra_body.
_CONSUMED = frozenset({"contents", "systemInstruction", "system_instruction", "tools"})


class GeminiCodec:
    wire_format = WireFormat.GEMINI

    def normalize_request(self, body: JSON) -> NormalizedRequest:
        request = canonical_keys(body, "the request")
        if request.get("cachedContent") is not None:
            raise FormatError(
                "Luthien cannot police `cachedContent`, a stored conversation: send the contents"
            )
        messages = _system(request.get("systemInstruction"))
        contents = request.get("contents") or []
        if not isinstance(contents, list) or not all(isinstance(c, dict) for c in contents):
            raise FormatError("`contents` must be a list of objects")
        for content in contents:
            messages += _messages(content)
        normalized: JSON = {"messages": messages}
        if tools := _tools(request.get("tools")):
            normalized["tools"] = tools
        config = request.get("generationConfig")
        if isinstance(config, dict):
            config = canonical_keys(config, "generationConfig")
            for name, key in _PARAMETERS.items():
                if config.get(key) is not None:
                    normalized[name] = config[key]
        return completed(body, normalized, _CONSUMED)

    def render_request(self, original: JSON, before: NormalizedRequest, after: NormalizedRequest) -> JSON:
        if before.get("model") != after.get("model"):
            raise FormatError("a policy changed the model, which a Gemini call names in its path")
        original, after = _with_history_arguments(original, before, after)
        rendered = patch_request(
            original,
            {k: v for k, v in before.items() if k not in _PARAMETERS},
            {k: v for k, v in after.items() if k not in _PARAMETERS},
            {"model": "model"} if "model" in original else {},
        )
        changed = {k for k in _PARAMETERS if before.get(k) != after.get(k)}
        if changed:
            key = "generation_config" if "generation_config" in rendered else "generationConfig"
            config = dict(rendered.get(key) or {})
            for name in changed:
                _set_field(config, _PARAMETERS[name], after.get(name))
            rendered[key] = config
        return rendered

    def parse_response(self, body: JSON) -> ModelResponse:
        response = canonical_keys(body, "the response")
        choices = []
        for position, candidate in enumerate(candidates_of(response)):
            text: list[str] = []
            thoughts: list[str] = []
            calls: list[JSON] = []
            for part in candidate_parts(candidate):
                kind = part_kind(part)
                if kind == "text":
                    (thoughts if is_thought(part) else text).append(part["text"])
                elif kind is not None:
                    call_id, name, arguments = call_of(part, kind)
                    call_id = call_id or _call_id(position, len(calls))
                    calls.append(
                        {
                            "id": call_id,
                            "type": "function",
                            "function": {"name": name, "arguments": arguments},
                        }
                    )
            message: JSON = {
                "role": "assistant",
                "content": "".join(text) or None,
                "tool_calls": calls or None,
            }
            if thoughts:
                message["reasoning_content"] = "".join(thoughts)
            choices.append(
                {
                    "index": candidate_index(candidate, position),
                    "message": message,
                    "finish_reason": finish_reason_for(candidate.get("finishReason"), bool(calls)) or "stop",
                }
            )
        view: JSON = {
            "id": response.get("responseId"),
            "model": response.get("modelVersion"),
            "choices": choices,
        }
        if usage := usage_of(response.get("usageMetadata")):
            view["usage"] = usage
        return ModelResponse(**view)

    def render_response(self, original: JSON, response: ModelResponse) -> JSON:
        originals = original.get("candidates") or []
        rendered = dict(original)
        rendered["candidates"] = [
            _render_candidate(
                originals[position] if position < len(originals) else {},
                position,
                choice.model_dump(),
            )
            for position, choice in enumerate(response.choices)
        ]
        return rendered


class GeminiCountTokensCodec:
    """``countTokens``: its ``contents``, or a whole ``generateContentRequest``, read as a model
    call is (its answer is a number, so only the request is policed)."""

    wire_format = WireFormat.GEMINI_COUNT_TOKENS

    def normalize_request(self, body: JSON) -> NormalizedRequest:
        request = canonical_keys(body, "the request")
        inner = request.get("generateContentRequest")
        if inner is not None:
            if not isinstance(inner, dict) or request.get("contents") is not None:
                raise FormatError("`generateContentRequest` must be an object, sent without `contents`")
            return completed(
                body,
                _CALLS.normalize_request(inner),
                frozenset({"generateContentRequest", "generate_content_request"}),
            )
        return _CALLS.normalize_request(body)

    def render_request(self, original: JSON, before: NormalizedRequest, after: NormalizedRequest) -> JSON:
        inner = next(
            (k for k in ("generateContentRequest", "generate_content_request") if k in original), None
        )
        if inner is None:
            return _CALLS.render_request(original, before, after)
        return {**original, inner: _CALLS.render_request(original[inner], before, after)}


_CALLS = GeminiCodec()


def _with_history_arguments(
    original: JSON, before: NormalizedRequest, after: NormalizedRequest
) -> tuple[JSON, NormalizedRequest]:
    """``original`` with the tool-call arguments a policy changed in the history written into
    their ``functionCall`` parts, and ``after`` with those arguments as they were, so that
    ``patch_request`` finds no other change in them. Gemini's calls need no id: a model turn is
    one assistant message, and its n-th call is its n-th ``functionCall`` part."""
    old_messages, new_messages = before.get("messages") or [], after.get("messages") or []
    patched = copy.deepcopy(original)
    turns = [c for c in field(patched, "contents") or [] if _role(c) == "model"]
    if len(old_messages) != len(new_messages) or len(turns) != sum(_is_turn(m) for m in old_messages):
        return original, after  # a change of structure: patch_request refuses it precisely
    turns_left = iter(turns)
    kept: list[Any] = []
    for old, new in zip(old_messages, new_messages, strict=True):
        if _is_turn(old) and _is_turn(new):
            new = _written_back(old, new, next(turns_left))
        kept.append(new)
    return patched, {**after, "messages": kept}


def _is_turn(message: Any) -> bool:
    return isinstance(message, dict) and message.get("role") == "assistant"


def _role(content: Any) -> str:
    return (canonical_keys(content, "a content").get("role") or "user") if isinstance(content, dict) else ""


def _written_back(old: JSON, new: JSON, turn: JSON) -> JSON:
    """``new``, its calls' changed arguments written into ``turn``'s parts and put back as they were."""
    calls, new_calls = old.get("tool_calls") or [], new.get("tool_calls") or []
    parts = [
        p for p in field(turn, "parts") or [] if part_kind(canonical_keys(p, "a part")) == "functionCall"
    ]
    if len(calls) != len(new_calls) or len(calls) != len(parts):
        return new
    restored = []
    for call, new_call, part in zip(calls, new_calls, parts, strict=True):
        function = new_call.get("function") if isinstance(new_call, dict) else None
        if isinstance(function, dict) and function.get("arguments") != call["function"]["arguments"]:
            _set_args(part, function.get("arguments") or "{}")
            new_call = {**new_call, "function": {**function, "arguments": call["function"]["arguments"]}}
        restored.append(new_call)
    return {**new, "tool_calls": restored}


def _set_args(part: JSON, arguments: str) -> None:
    """Writes ``arguments`` into a history part, under the spelling the part uses."""
    try:
        written = _with_arguments(canonical_keys(part, "a part"), "functionCall", arguments)
    except json.JSONDecodeError as exc:
        raise FormatError("a policy gave a function call arguments that are not JSON") from exc
    key = "functionCall" if "functionCall" in part else "function_call"
    part[key] = written["functionCall"]


def _call_id(candidate: int, position: int) -> str:
    """The id policies know a call by when Gemini gave it none (the stream's transcoder names
    them the same way)."""
    return f"call_gemini_{candidate}_{position}"


def _set_field(obj: JSON, name: str, value: Any) -> None:
    """Sets ``name`` under the spelling ``obj`` already uses."""
    snake = "".join(f"_{c.lower()}" if c.isupper() else c for c in name)
    key = snake if snake in obj else name
    if value is None:
        obj.pop(key, None)
    else:
        obj[key] = value


def _system(instruction: Any) -> list[JSON]:
    if instruction is None:
        return []
    if isinstance(instruction, str):
        return [{"role": "system", "content": instruction}]
    if not isinstance(instruction, dict):
        raise FormatError("`systemInstruction` must be a content")
    messages = _messages({**instruction, "role": "user"})
    texts = [m["content"] for m in messages if m["role"] == "user"]
    if len(texts) != len(messages):
        raise FormatError("`systemInstruction` may hold only text")
    return [{"role": "system", "content": content} for content in texts]


def _messages(content: JSON) -> list[JSON]:
    """One content as chat messages: a model turn as an assistant message, a user turn as a user
    message after the tool results it returns."""
    fields = canonical_keys(content, "a content")
    if unknown := set(fields) - _CONTENT_FIELDS:
        raise FormatError(f"Luthien cannot police a content with {sorted(unknown)}")
    role = fields.get("role") or "user"
    parts = fields.get("parts") or []
    if not isinstance(parts, list) or not all(isinstance(p, dict) for p in parts):
        raise FormatError("a content whose parts are not a list of objects")
    if role == "model":
        return [_assistant([canonical_keys(p, "a part") for p in parts])]
    if role not in ("user", "function"):
        raise FormatError(f"Luthien cannot police a content with the role {role!r}")
    results, items = [], []
    for part in (canonical_keys(p, "a part") for p in parts):
        kind = part_kind(part)
        if kind == "functionResponse":
            results.append(_tool_result(part[kind]))
        elif kind is not None:
            items.append(_user_item(part, kind))
    return [*results, *([{"role": "user", "content": items}] if items else [])]


def _assistant(parts: list[JSON]) -> JSON:
    text, thoughts, calls = [], [], []
    for part in parts:
        kind = part_kind(part)
        if kind == "text" and is_thought(part):
            thoughts.append(_text(part))
        elif kind == "functionCall":
            _known(part[kind], _CALL_FIELDS, "functionCall")
            call_id, name, arguments = call_of(part, kind)
            function = {"name": name, "arguments": arguments}
            calls.append({"id": call_id or f"call_gemini_{name}", "type": "function", "function": function})
        elif kind == "inlineData":
            raise FormatError("Luthien cannot police inline data in a model turn")
        elif kind is not None:
            text.append(_user_item(part, kind)["text"])
    message: JSON = {"role": "assistant", "content": "".join(text) or None}
    if thoughts:
        message["reasoning_content"] = "".join(thoughts)
    if calls:
        message["tool_calls"] = calls
    return message


def _user_item(part: JSON, kind: str) -> JSON:
    if kind == "text":
        return {"type": "text", "text": _text(part)}
    if kind in _CODE_FIELDS:
        value = canonical_keys(part[kind], kind) if isinstance(part[kind], dict) else {}
        _known(value, frozenset(_CODE_FIELDS[kind]), kind)
        return {"type": "text", "text": "\n".join(str(value.get(name, "")) for name in _CODE_FIELDS[kind])}
    if kind == "inlineData":
        data = canonical_keys(part[kind], kind) if isinstance(part[kind], dict) else {}
        _known(data, frozenset({"mimeType", "data", "displayName"}), kind)
        mime = data.get("mimeType")
        if (
            not isinstance(mime, str)
            or not mime.startswith("image/")
            or not isinstance(data.get("data"), str)
        ):
            raise FormatError(f"Luthien cannot police inline data of type {mime!r}: only images")
        return {"type": "image_url", "image_url": {"url": f"data:{mime};base64,{data['data']}"}}
    if kind == "fileData":
        raise FormatError(
            "Luthien cannot police `fileData`, a file stored with Google: send its content inline"
        )
    raise FormatError(f"Luthien cannot police a part of kind {kind!r}")


def _tool_result(value: Any) -> JSON:
    result = canonical_keys(value, "a functionResponse") if isinstance(value, dict) else None
    if result is None or not isinstance(result.get("name"), str):
        raise FormatError("a functionResponse without a name")
    _known(result, _RESULT_FIELDS, "functionResponse")
    call_id = result.get("id") or f"call_gemini_{result['name']}"
    return {"role": "tool", "tool_call_id": call_id, "content": json.dumps(result.get("response") or {})}


def _known(value: Any, fields: frozenset[str], where: str) -> None:
    if isinstance(value, dict) and (unknown := set(canonical_keys(value, where)) - fields):
        raise FormatError(f"Luthien cannot police a {where} with {sorted(unknown)}")


def _text(part: JSON) -> str:
    if not isinstance(part["text"], str):
        raise FormatError("a text part whose text is not text")
    return part["text"]


def _tools(tools: Any) -> list[JSON]:
    """Function declarations as the policies' tools (Google's own tools, search or code
    execution, stay in the body, their strings in ``unmapped_text``)."""
    if tools is None:
        return []
    if not isinstance(tools, list) or not all(isinstance(t, dict) for t in tools):
        raise FormatError("`tools` must be a list of objects")
    out = []
    for tool in tools:
        declarations = field(tool, "functionDeclarations") or []
        if not isinstance(declarations, list) or not all(isinstance(d, dict) for d in declarations):
            raise FormatError("`functionDeclarations` must be a list of objects")
        for declaration in map(lambda d: canonical_keys(d, "a function declaration"), declarations):
            function: JSON = {k: declaration[k] for k in ("name", "description") if k in declaration}
            schema = declaration.get("parametersJsonSchema", declaration.get("parameters"))
            if schema is not None:
                function["parameters"] = schema
            out.append({"type": "function", "function": function})
    return out


def _render_candidate(original: JSON, position: int, choice: JSON) -> JSON:
    candidate = canonical_keys(original, "a candidate")
    parts = candidate_parts(candidate)
    message = choice.get("message") or {}
    text, reasoning = message.get("content") or "", message.get("reasoning_content") or ""
    kept = {call["id"]: call for call in message.get("tool_calls") or []}
    rendered_parts = _rendered_parts(parts, position, text, reasoning, kept)
    rendered = dict(original)
    content = canonical_keys(original.get("content") or {"role": "model"}, "a content")
    content.pop("parts", None)
    rendered["content"] = {**content, "parts": rendered_parts}
    finish_key = next((k for k in original if k in ("finishReason", "finish_reason")), "finishReason")
    finish = gemini_finish(choice.get("finish_reason"), candidate.get("finishReason"))
    if finish is not None:
        rendered[finish_key] = finish
    return rendered


def _rendered_parts(
    parts: list[JSON], position: int, text: str, reasoning: str, kept: dict[str, JSON]
) -> list[JSON]:
    """The candidate's parts with the policy's text, thoughts and calls: unchanged parts as they
    were, a changed text in the place of the first text part, removed calls left out."""
    texts = {False: "".join(p["text"] for p in parts if part_kind(p) == "text" and not is_thought(p))}
    texts[True] = "".join(p["text"] for p in parts if part_kind(p) == "text" and is_thought(p))
    wanted = {False: text, True: reasoning}
    placed = {thought: wanted[thought] == texts[thought] for thought in (False, True)}
    out: list[JSON] = []
    calls = 0
    for part in parts:
        kind = part_kind(part)
        if kind == "text":
            thought = is_thought(part)
            if wanted[thought] == texts[thought]:
                out.append(part)
            elif not placed[thought] and wanted[thought]:
                out.append({**part, "text": wanted[thought]})
                placed[thought] = True
        elif kind is None:
            out.append(part)
        else:
            call_id, _, _ = call_of(part, kind)
            call = kept.get(call_id or _call_id(position, calls))
            calls += 1
            if call is not None:
                out.append(_with_arguments(part, kind, call["function"]["arguments"] or "{}"))
    if not placed[True] and reasoning:
        out.insert(0, {"text": reasoning, "thought": True})
    if not placed[False] and text:
        out.append({"text": text})
    return out


def _with_arguments(part: JSON, kind: str, arguments: str) -> JSON:
    if kind != "functionCall":
        value = json.loads(arguments)
        return part if value == part[kind] else {**part, kind: value}
    args = json.loads(arguments)
    if not isinstance(args, dict):
        raise FormatError("a policy gave a function call arguments that are not an object")
    call = canonical_keys(part[kind], "a functionCall")
    return part if call.get("args", {}) == args else {**part, kind: {**call, "args": args}}
