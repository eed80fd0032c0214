"""Gemini ``generateContent`` streams (``streamGenerateContent?alt=sse``): the transcoder between
``GenerateContentResponse`` events and normalised chunks, the parts policies see, and the error
object every Google API answers with. Plain data: the data plane imports it without LiteLLM.

Google's JSON parser takes every field under its lowerCamel name and its snake_case proto name
(the Python SDK itself sends ``include_thoughts``), so every field is read under both
(``field``), and a body that spells one field both ways is refused: which one Google reads is
not known. A part is text, a thought, or a tool call to policies: a ``functionCall``, and any
other kind of part (code Google ran, a kind this module does not know), under its own name.
"""

import json
from typing import Any

from controlplane.chunks import ChunkChoice, StreamChunk, ToolCallDelta
from formats.base import JSON, FormatError, MalformedStream, carries_error, count, event_object
from formats.sse import SSEEvent

_STATUS = {
    400: "INVALID_ARGUMENT",
    401: "UNAUTHENTICATED",
    403: "PERMISSION_DENIED",
    404: "NOT_FOUND",
    405: "INVALID_ARGUMENT",
    415: "INVALID_ARGUMENT",
    429: "RESOURCE_EXHAUSTED",
    502: "UNAVAILABLE",
    503: "UNAVAILABLE",
    504: "DEADLINE_EXCEEDED",
}

#: Fields of a part that say how to read it, beside the one field that holds its content.
PART_METADATA = frozenset({"thought", "thoughtSignature", "partMetadata", "videoMetadata", "mediaResolution"})
_FINISH = {"STOP": "stop", "MAX_TOKENS": "length", "SAFETY": "content_filter", "RECITATION": "content_filter"}
_GEMINI_FINISH = {"stop": "STOP", "tool_calls": "STOP", "length": "MAX_TOKENS", "content_filter": "SAFETY"}


def gemini_error_body(status: int, message: str) -> JSON:
    """The error object of Google's APIs, which google-genai raises as ClientError/ServerError."""
    return {"error": {"code": status, "message": message, "status": _STATUS.get(status, "INTERNAL")}}


def camel(name: str) -> str:
    head, *rest = name.split("_")
    return head + "".join(word[:1].upper() + word[1:] for word in rest)


def canonical_keys(obj: JSON, where: str) -> JSON:
    """``obj`` with its own keys (not its values') under their lowerCamel names. Raises
    FormatError when two keys name one field."""
    canonical: JSON = {}
    for key, value in obj.items():
        name = camel(key)
        if name in canonical:
            raise FormatError(f"{where} spells the field {name!r} two ways")
        canonical[name] = value
    return canonical


def field(obj: Any, name: str) -> Any:
    """``obj[name]`` under its lowerCamel or snake_case spelling; None when absent."""
    if not isinstance(obj, dict):
        return None
    return canonical_keys(obj, "an object").get(name)


def part_kind(part: JSON) -> str | None:
    """The one field that holds a (canonical) part's content; None for a part without content
    (a thought signature alone). Raises FormatError for a part with two."""
    kinds = [key for key in part if key not in PART_METADATA]
    if len(kinds) > 1:
        raise FormatError(f"a part holds both {kinds[0]!r} and {kinds[1]!r}")
    return kinds[0] if kinds else None


def call_of(part: JSON, kind: str) -> tuple[str | None, str, str]:
    """A tool-call part's id, name and arguments (JSON text), as policies see it: a
    ``functionCall`` as itself, any other kind of part as a call named after its kind whose
    arguments are its value."""
    value = part[kind]
    if kind != "functionCall":
        return None, kind, json.dumps(value)
    call = canonical_keys(value, "a functionCall") if isinstance(value, dict) else None
    if call is None or not isinstance(call.get("name"), str):
        raise FormatError("a functionCall without a name")
    args = call.get("args") or {}
    if not isinstance(args, dict) or not _optional_str(call.get("id")):
        raise FormatError("a functionCall whose args are not an object")
    return call.get("id"), call["name"], json.dumps(args)


def finish_reason_for(gemini: Any, called: bool) -> str | None:
    """Gemini's ``finishReason`` as policies know it: ``tool_calls`` when the candidate called a
    tool (Gemini says STOP for both)."""
    if gemini is None:
        return None
    if not isinstance(gemini, str):
        raise FormatError("a finishReason that is not text")
    return "tool_calls" if called and gemini == "STOP" else _FINISH.get(gemini, "stop")


def gemini_finish(reason: str | None, original: Any) -> Any:
    """A policy's finish reason in Gemini's words: the original when it says the same."""
    if reason is None:
        return original
    if isinstance(original, str) and finish_reason_for(original, reason == "tool_calls") == reason:
        return original
    return _GEMINI_FINISH.get(reason, "OTHER")


def usage_of(metadata: Any) -> JSON | None:
    if not isinstance(metadata, dict):
        return None
    counts = canonical_keys(metadata, "usageMetadata")
    prompt, total = count(counts, "promptTokenCount"), count(counts, "totalTokenCount")
    completion = count(counts, "candidatesTokenCount") + count(counts, "thoughtsTokenCount")
    usage: JSON = {"prompt_tokens": prompt, "completion_tokens": completion, "total_tokens": total}
    if thoughts := count(counts, "thoughtsTokenCount"):
        usage["completion_tokens_details"] = {"reasoning_tokens": thoughts}
    return usage


def candidate_parts(candidate: JSON) -> list[JSON]:
    """A candidate's parts with canonical keys. Raises FormatError."""
    content = field(candidate, "content")
    if content is None:
        return []
    parts = field(content, "parts")
    if parts is None:
        return []
    if not isinstance(parts, list) or not all(isinstance(p, dict) for p in parts):
        raise FormatError("a candidate whose parts are not a list of objects")
    canonical = [canonical_keys(p, "a part") for p in parts]
    for part in canonical:
        kind = part_kind(part)
        if kind == "text" and not isinstance(part["text"], str):
            raise FormatError("a text part whose text is not text")
    return canonical


def is_thought(part: JSON) -> bool:
    return part.get("thought") is True


def _optional_str(value: Any) -> bool:
    return value is None or isinstance(value, str)


def candidates_of(body: JSON) -> list[JSON]:
    candidates = field(body, "candidates") or []
    if not isinstance(candidates, list) or not all(isinstance(c, dict) for c in candidates):
        raise FormatError("`candidates` must be a list of objects")
    return [canonical_keys(c, "a candidate") for c in candidates]


def candidate_index(candidate: JSON, position: int) -> int:
    index = candidate.get("index", position)
    if not isinstance(index, int) or isinstance(index, bool):
        raise FormatError("a candidate whose index is not a number")
    return index


class GeminiTranscoder:
    """Decodes each event into one chunk per candidate; once a policy changed the stream, writes
    events of its own (function calls whole, as Gemini sends them, with their thought signatures).
    ``json_array``: the stream is one JSON array (``formats.json_array`` frames it), not SSE."""

    def __init__(self, *, json_array: bool = False) -> None:
        self._json_array = json_array
        self._opened = False  # the client has the array's `[`
        self._closed = False  # ... and its `]`
        self._template: JSON = {}
        self._usage_metadata: Any = None
        self._signatures: dict[str, str] = {}  # tool call id -> its thoughtSignature
        self._calls: dict[int, int] = {}  # candidate -> tool calls decoded so far
        # What the client has seen:
        self._candidates: set[int] = set()
        self._finished: set[int] = set()
        self._open_calls: dict[tuple[int, int], JSON] = {}  # calls begun in chunks, not yet written
        self._done = False

    def decode(self, event: SSEEvent) -> list[StreamChunk]:
        data = event_object(event)  # None for the array's `]`, or a keep-alive
        if data is None or data.get("error"):
            return []
        try:
            return self._decoded(data)
        except FormatError as exc:
            raise MalformedStream(str(exc)) from exc

    def _decoded(self, data: JSON) -> list[StreamChunk]:
        body = canonical_keys(data, "a response")
        if not self._template:
            self._template = {k: body[k] for k in ("modelVersion", "responseId") if k in body}
        if "usageMetadata" in body:
            self._usage_metadata = body["usageMetadata"]
        chunks: list[StreamChunk] = []
        for position, candidate in enumerate(candidates_of(body)):
            index = candidate_index(candidate, position)
            choice = self._choice(index, candidate)
            chunk: StreamChunk = {"choices": [choice]}
            if choice.get("finish_reason") is not None and (usage := usage_of(body.get("usageMetadata"))):
                chunk["usage"] = usage
            chunks.append(chunk)
        return chunks

    def _choice(self, index: int, candidate: JSON) -> ChunkChoice:
        text: list[str] = []
        thoughts: list[str] = []
        calls: list[ToolCallDelta] = []
        for part in candidate_parts(candidate):
            kind = part_kind(part)
            if kind is None:
                continue
            if kind == "text":
                (thoughts if is_thought(part) else text).append(part["text"])
                continue
            call_id, name, arguments = call_of(part, kind)
            position = self._calls.get(index, 0)
            self._calls[index] = position + 1
            call_id = call_id or f"call_gemini_{index}_{position}"
            if isinstance(part.get("thoughtSignature"), str):
                self._signatures[call_id] = part["thoughtSignature"]
            calls.append(
                ToolCallDelta(
                    index=position,
                    id=call_id,
                    type="function",
                    function={"name": name, "arguments": arguments},
                )
            )
        delta: JSON = {"role": "assistant"}
        if text:
            delta["content"] = "".join(text)
        if thoughts:
            delta["reasoning_content"] = "".join(thoughts)
        if calls:
            delta["tool_calls"] = calls
        finish = finish_reason_for(candidate.get("finishReason"), bool(self._calls.get(index)))
        return {"index": index, "delta": delta, "finish_reason": finish}  # type: ignore[typeddict-item]

    def unsettled(self) -> list[StreamChunk]:
        return []

    def is_error(self, event: SSEEvent) -> bool:
        return carries_error(event)

    @property
    def ended(self) -> bool:
        # An SSE stream has no terminal event (the SDK reads to the end of the body); an array
        # ends at its `]`.
        return self._closed if self._json_array else self._done

    def observe_emitted(self, event: SSEEvent) -> None:
        self._opened = True
        if self._json_array and not event.data:
            self._done = self._closed = True
            return
        data = event.json()
        if not isinstance(data, dict):
            return
        if data.get("error"):
            self._done = True
            return
        for position, candidate in enumerate(candidates_of(canonical_keys(data, "a response"))):
            index = candidate_index(candidate, position)
            self._candidates.add(index)
            if candidate.get("finishReason") is not None:
                self._finished.add(index)

    def encode(self, chunk: StreamChunk) -> bytes:
        candidates = [c for c in map(self._candidate, chunk.get("choices") or []) if c]
        payload: JSON = {"candidates": candidates} if candidates else {}
        if chunk.get("usage") is not None:
            payload["usageMetadata"] = self._usage_metadata or _usage_metadata(chunk["usage"] or {})
        return self._event(payload) if payload else b""

    def _event(self, payload: JSON) -> bytes:
        return self._framed({**payload, **self._template})

    def _framed(self, payload: JSON) -> bytes:
        if not self._json_array:
            return _sse(payload)
        separator = b",\r\n" if self._opened else b"["
        self._opened = True
        return separator + json.dumps(payload, ensure_ascii=False).encode()

    def _close_array(self) -> bytes:
        if not self._json_array or self._closed:
            return b""
        self._closed = True
        return b"]" if self._opened else b"[]"

    def _candidate(self, choice: ChunkChoice) -> JSON:
        index = choice.get("index", 0)
        delta = choice.get("delta") or {}
        parts: list[JSON] = []
        if reasoning := delta.get("reasoning_content"):
            parts.append({"text": reasoning, "thought": True})
        if text := delta.get("content"):
            parts.append({"text": text})
        for call in delta.get("tool_calls") or []:
            function = call.get("function") or {}
            key = (index, call.get("index", 0))
            begun = self._open_calls.setdefault(key, {"id": call.get("id"), "name": None, "arguments": ""})
            begun["id"] = begun["id"] or call.get("id")
            begun["name"] = begun["name"] or function.get("name")
            begun["arguments"] += function.get("arguments") or ""
        parts += self._whole_calls(index, final=choice.get("finish_reason") is not None)
        candidate: JSON = {}
        if parts:
            candidate["content"] = {"parts": parts, "role": "model"}
        if choice.get("finish_reason") is not None:
            candidate["finishReason"] = gemini_finish(choice.get("finish_reason"), None)
            self._finished.add(index)
        if candidate:
            self._candidates.add(index)
            candidate["index"] = index
        return candidate

    def _whole_calls(self, index: int, *, final: bool) -> list[JSON]:
        """The calls of a candidate whose arguments are complete, as parts; at its end, all of them
        (a call whose arguments never became JSON cannot be written: FormatError)."""
        parts = []
        for key in sorted(k for k in self._open_calls if k[0] == index):
            call = self._open_calls[key]
            try:
                args = json.loads(call["arguments"] or "{}")
            except ValueError:
                if final:
                    raise FormatError("a tool call whose arguments are not JSON") from None
                continue
            if not isinstance(args, dict) or not call["name"]:
                raise FormatError("a tool call whose arguments are not an object, or without a name")
            del self._open_calls[key]
            function: JSON = {"name": call["name"], "args": args}
            if call["id"] and not call["id"].startswith("call_gemini_"):
                function = {"id": call["id"], **function}
            part: JSON = {"functionCall": function}
            if signature := self._signatures.get(call["id"] or ""):
                part["thoughtSignature"] = signature
            parts.append(part)
        return parts

    def finish(self) -> bytes:
        if self._done:
            return self._close_array()
        candidates = []
        for index in sorted(({k[0] for k in self._open_calls} | self._candidates or {0}) - self._finished):
            parts = self._whole_calls(index, final=True)
            candidate: JSON = {"content": {"parts": parts or [{"text": ""}], "role": "model"}}
            candidates.append({**candidate, "finishReason": "STOP", "index": index})
            self._finished.add(index)
        self._done = True
        closing = self._event({"candidates": candidates}) if candidates else b""
        return closing + self._close_array()

    def error_event(self, message: str) -> bytes:
        if self.ended or self._done:
            return b""
        self._done = True
        return self._framed(gemini_error_body(500, message)) + self._close_array()


def _sse(payload: JSON) -> bytes:
    """An event as Gemini frames it: data only, ended by CRLF CRLF."""
    return b"data: " + json.dumps(payload, separators=(",", ":"), ensure_ascii=False).encode() + b"\r\n\r\n"


def _usage_metadata(usage: JSON) -> JSON:
    return {
        "promptTokenCount": count(usage, "prompt_tokens"),
        "candidatesTokenCount": count(usage, "completion_tokens"),
        "totalTokenCount": count(usage, "total_tokens"),
    }


def model_call(path: str) -> tuple[str, str]:
    """The model and the method of a ``/{version}/models/{model}:{method}`` path (its query
    string included)."""
    model, _, method = path.partition("?")[0].rsplit("/", 1)[-1].rpartition(":")
    return model, method
