"""OpenAI Chat Completions streams: the transcoder between ``chat.completion.chunk`` events and
normalised chunks, and the error object every OpenAI API answers with. Plain data: the data plane
imports it without LiteLLM.

Three things the normalised view has no place for are shown to policies as what they are: a
legacy ``function_call`` (requests with ``functions``) and a custom tool call are tool calls, and
a refusal is text. Any other field of a message or a delta that carries something (``audio``
with its transcript, ``annotations``, a field still to come: the SDK keeps them in the message it
accumulates) is a tool call named after the field, whose arguments are its JSON; in a stream,
one call per field and choice, ending with the field's accumulated value, so that a command
split across deltas is judged whole. Each choice of an ``n > 1`` stream is its own chunk, and
the control plane runs the policy once per choice.
"""

import json
from dataclasses import dataclass
from typing import Any, cast

from controlplane.chunks import ChunkChoice, StreamChunk, ToolCallDelta, without_none
from formats.base import JSON, FormatError, MalformedStream, carries_error, event_object
from formats.sse import SSEEvent, encode_event
from formats.unseen import holds_content

#: The id policies know a legacy ``function_call`` by (it has none of its own).
LEGACY_CALL_ID = "call_luthien_function_call"


#: The id policies know an unseen field's call by: this, then the field's name.
UNSEEN_CALL_ID = "call_luthien_field_"
#: What the normalised view holds of a message or a delta.
_VIEWED = frozenset({"role", "content", "refusal", "tool_calls", "function_call", "reasoning_content"})


def unseen_fields(part: JSON) -> JSON:
    """The fields of a message or a delta that carry what the normalised view has no place for."""
    return {k: v for k, v in part.items() if k not in _VIEWED and holds_content(v)}


_OPENAI_ERROR_TYPES = {400: "invalid_request_error", 403: "policy_violation", 405: "invalid_request_error"}


def openai_error_body(status: int, message: str) -> JSON:
    """The error object every OpenAI API answers with."""
    kind = _OPENAI_ERROR_TYPES.get(status, "luthien_error")
    return {"error": {"message": message, "type": kind, "param": None, "code": kind}}


def _as_function(call: Any) -> Any:
    """A custom tool call (or a delta of one) as policies see it: a function whose arguments are
    its free text."""
    if not isinstance(call, dict) or not isinstance(call.get("custom"), dict):
        return call
    custom = call["custom"]
    function = {"name": custom.get("name"), "arguments": custom.get("input")}
    rest = {k: v for k, v in call.items() if k != "custom"}
    return {**rest, "type": "function", "function": {k: v for k, v in function.items() if v is not None}}


def policy_view(part: JSON, *, streamed: bool) -> JSON:
    """A message (or a stream delta) as policies see it: its refusal as text, its legacy
    function call and custom tool calls as tool calls."""
    view = dict(part)
    refusal = view.pop("refusal", None)
    if isinstance(refusal, str) and refusal:
        view["content"] = (view.get("content") or "") + refusal
    calls = view.get("tool_calls")
    if isinstance(calls, list):
        view["tool_calls"] = [_as_function(call) for call in calls]
    legacy = view.pop("function_call", None)
    if isinstance(legacy, dict):
        call: JSON = {"type": "function", "function": legacy}
        if streamed:
            call["index"] = 0
            if legacy.get("name"):
                call["id"] = LEGACY_CALL_ID
        else:
            call["id"] = LEGACY_CALL_ID
        view["tool_calls"] = [*(view.get("tool_calls") or []), call]
    if not streamed:  # a stream's unseen fields are the transcoder's (``_UnseenField``)
        for name, value in unseen_fields(part).items():
            del view[name]
            unseen = {
                "id": UNSEEN_CALL_ID + name,
                "type": "function",
                "function": _unseen_function(name, value),
            }
            view["tool_calls"] = [*(view.get("tool_calls") or []), unseen]
    return view


def _unseen_function(name: str | None, value: Any) -> JSON:
    function: JSON = {"arguments": json.dumps(value)}
    return {"name": name, **function} if name is not None else function


def _merged(into: Any, value: Any) -> Any:
    """A field's value as the SDK accumulates its deltas: texts joined, objects merged."""
    if isinstance(into, str) and isinstance(value, str):
        return into + value
    if isinstance(into, dict) and isinstance(value, dict):
        return {**into, **{k: _merged(into[k], v) if k in into else v for k, v in value.items()}}
    if isinstance(into, list) and isinstance(value, list):
        return into + value
    return value


@dataclass
class _UnseenField:
    """A delta field the view has no place for, in one choice: a tool call of its own (at an
    index no upstream call can have), whose pieces are each delta's value as JSON and whose last
    piece, at the choice's finish, is the value the SDK accumulated (a newline first: it is
    written nowhere)."""

    index: int
    value: Any = None
    settled: bool = False


def _checked(data: JSON) -> StreamChunk:
    """The chunk, once it is shown to hold what the normalised view reads in the types it reads
    them (the record is assembled from it; a policy's view is built from it)."""
    usage = data.get("usage")
    if usage is not None and not isinstance(usage, dict):
        raise MalformedStream("a chunk whose usage is not an object")
    for choice in data.get("choices") or []:
        if not isinstance(choice, dict) or not _is_index(choice.get("index", 0)):
            raise MalformedStream("a chunk with a choice that is not an indexed object")
        delta = choice.get("delta") or {}
        if not isinstance(delta, dict) or not _optional_str(choice.get("finish_reason")):
            raise MalformedStream("a chunk with a choice whose delta or finish reason is malformed")
        if not all(_optional_str(delta.get(field)) for field in ("role", "content", "reasoning_content")):
            raise MalformedStream("a chunk whose delta holds a role, content or reasoning that is not text")
        calls = delta.get("tool_calls")
        if calls is not None and not (isinstance(calls, list) and all(map(_is_tool_call_delta, calls))):
            raise MalformedStream("a chunk whose tool calls are malformed")
    return cast(StreamChunk, data)


def _is_tool_call_delta(call: Any) -> bool:
    if not isinstance(call, dict) or not _is_index(call.get("index")) or not _optional_str(call.get("id")):
        return False
    function = call.get("function") or {}
    return isinstance(function, dict) and all(_optional_str(function.get(f)) for f in ("name", "arguments"))


def _is_index(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _negative(value: Any) -> bool:
    return isinstance(value, int) and value < 0


def _optional_str(value: Any) -> bool:
    return value is None or isinstance(value, str)


def _has_other_forms(part: JSON) -> bool:
    """Whether a message or delta holds what policies see in another form (``_policy_view``)."""
    calls = part.get("tool_calls")
    custom = isinstance(calls, list) and any(isinstance(c, dict) and "custom" in c for c in calls)
    unseen = any(k not in _VIEWED and holds_content(v) for k, v in part.items())
    return custom or "function_call" in part or bool(part.get("refusal")) or unseen


class OpenAIChatTranscoder:
    def __init__(self) -> None:
        self._template: JSON = {}
        # What the upstream sent in forms policies see otherwise, to write them back the same way:
        self._legacy: set[int] = set()  # choices with a legacy function_call
        self._custom: set[tuple[int, int]] = set()  # (choice, tool index) of custom tool calls
        self._unseen: dict[tuple[int, str], _UnseenField] = {}  # by choice and field name
        self._unseen_names: dict[tuple[int, int], str] = {}  # (choice, tool index) -> field name
        # What the client has seen:
        self._tool_indexes: dict[tuple[int, int], int] = {}
        self._choices: set[int] = set()
        self._finished: set[int] = set()
        self._done = False

    def decode(self, event: SSEEvent) -> list[StreamChunk]:
        data = event_object(event)
        if data is None or data.get("error"):
            return []
        if "error" in data:  # `"error": null` is no error
            data = {k: v for k, v in data.items() if k != "error"}
        if not self._template:
            self._template = {
                k: data[k]
                for k in ("id", "object", "created", "model", "system_fingerprint", "service_tier")
                if k in data
            }
        choices = data.get("choices")
        if choices is None or choices == []:
            return [_checked(data)]
        if not isinstance(choices, list):
            raise MalformedStream("a chunk whose choices are not a list")
        views = [self._policy_choice(c) for c in choices]
        if len(views) == 1 and views[0] is choices[0]:
            return [_checked(data)]
        # One chunk per choice: the control plane polices each choice on its own.
        return [_checked({**data, "choices": [view]}) for view in views]

    def _policy_choice(self, choice: Any) -> Any:
        """The choice as policies see it (the same object when that is how it came)."""
        if not isinstance(choice, dict) or not isinstance(choice.get("delta"), dict):
            return choice
        index, delta = choice.get("index", 0), choice["delta"]
        calls = delta.get("tool_calls")
        if isinstance(calls, list) and any(isinstance(c, dict) and _negative(c.get("index")) for c in calls):
            raise MalformedStream("a tool call whose index is negative")  # those are unseen fields' calls
        finishes = choice.get("finish_reason") is not None
        if (
            not _has_other_forms(delta)
            and choice.get("finish_reason") != "function_call"
            and not (finishes and any(c == index for c, _ in self._unseen))
        ):
            return choice
        if isinstance(delta.get("function_call"), dict):
            self._legacy.add(index)
        for call in delta.get("tool_calls") or []:
            if isinstance(call, dict) and isinstance(call.get("custom"), dict):
                self._custom.add((index, call.get("index", 0)))
        view = {**choice, "delta": policy_view(delta, streamed=True)}
        fields = unseen_fields(delta)
        unseen = [self._unseen_piece(index, name, value) for name, value in fields.items()]
        if finishes:
            unseen += self._settled(index)
        if unseen:
            view["delta"] = {k: v for k, v in view["delta"].items() if k not in fields}
            view["delta"]["tool_calls"] = [*(view["delta"].get("tool_calls") or []), *unseen]
        if view.get("finish_reason") == "function_call":
            view["finish_reason"] = "tool_calls"
        return view

    def _unseen_piece(self, choice: int, name: str, value: Any) -> ToolCallDelta:
        field = self._unseen.get((choice, name))
        first = field is None
        if field is None:
            field = self._unseen[(choice, name)] = _UnseenField(
                -1 - sum(c == choice for c, _ in self._unseen)
            )
            self._unseen_names[(choice, field.index)] = name
        field.value = _merged(field.value, value)
        call: ToolCallDelta = {
            "index": field.index,
            "function": cast(Any, _unseen_function(name if first else None, value)),
        }
        if first:
            call.update({"id": UNSEEN_CALL_ID + name, "type": "function"})
        return call

    def _settled(self, choice: int) -> list[ToolCallDelta]:
        """The accumulated value of each unseen field of the choice, as the last piece of its call."""
        calls: list[ToolCallDelta] = []
        for (c, _), field in self._unseen.items():
            if c == choice and not field.settled:
                field.settled = True
                calls.append(
                    {"index": field.index, "function": {"arguments": "\n" + json.dumps(field.value)}}
                )
        return calls

    def unsettled(self) -> list[StreamChunk]:
        choices = sorted({c for (c, _), f in self._unseen.items() if not f.settled})
        chunks = []
        for choice in choices:
            rest: ChunkChoice = {"index": choice, "delta": {"tool_calls": self._settled(choice)}}
            chunks.append(cast(StreamChunk, {**self._template, "choices": [rest]}))
        return chunks

    def is_error(self, event: SSEEvent) -> bool:
        return carries_error(event)

    @property
    def ended(self) -> bool:
        return self._done

    def observe_emitted(self, event: SSEEvent) -> None:
        if event.data.startswith("[DONE]"):  # as the SDK reads it
            self._done = True
            return
        data = event.json()
        if isinstance(data, dict) and data.get("error"):
            self._end()  # the provider's stream ends at its error: no finish_reason, no [DONE]
            return
        for choice in (data or {}).get("choices") or []:
            index = choice.get("index", 0)
            self._choices.add(index)
            delta = choice.get("delta") or {}
            for call in delta.get("tool_calls") or []:
                self._client_tool_index(index, call["index"])
            if delta.get("function_call"):
                self._client_tool_index(index, 0)
            if choice.get("finish_reason") is not None:
                self._finished.add(index)

    def encode(self, chunk: StreamChunk) -> bytes:
        payload: JSON = {
            **self._template,
            "choices": [self._render_streaming_choice(c) for c in chunk.get("choices") or []],
        }
        usage = chunk.get("usage")
        if usage is not None:
            payload["usage"] = without_none(usage)
        return encode_event(payload)

    def finish(self) -> bytes:
        out = b""
        for index in sorted((self._choices or {0}) - self._finished):
            finish = {"index": index, "delta": {}, "logprobs": None, "finish_reason": "stop"}
            out += encode_event({**self._template, "choices": [finish]})
            self._finished.add(index)
        if not self._done:
            out += encode_event("[DONE]")
            self._done = True
        return out

    def error_event(self, message: str) -> bytes:
        """An ``error`` object where a chunk would be, as OpenAI sends mid-stream; the SDK's Stream
        raises ``openai.APIError`` on it. Nothing follows it, as with the API: no ``[DONE]``."""
        if self._done:
            return b""
        self._end()
        error = {"message": message, "type": "server_error", "param": None, "code": None}
        return encode_event({"error": error})

    def _end(self) -> None:
        self._finished |= self._choices | {0}
        self._done = True

    def _render_streaming_choice(self, choice: ChunkChoice) -> JSON:
        delta = choice.get("delta") or {}
        index = choice.get("index", 0)
        self._choices.add(index)
        rendered: JSON = {}
        if delta.get("role"):
            rendered["role"] = delta["role"]
        if delta.get("content") is not None:
            rendered["content"] = delta["content"]
        if reasoning := delta.get("reasoning_content"):
            rendered["reasoning_content"] = reasoning
        calls = []
        for call in delta.get("tool_calls") or []:
            if (name := self._unseen_names.get((index, call["index"]))) is not None:
                rendered.update(_unseen_written(name, call))
            elif index in self._legacy and call["index"] == 0:
                rendered["function_call"] = self._function(call)
            else:
                calls.append(self._render_tool_call(index, call))
        if calls:
            rendered["tool_calls"] = calls
        finish_reason = choice.get("finish_reason")
        if finish_reason == "tool_calls" and index in self._legacy:
            finish_reason = "function_call"
        if finish_reason is not None:
            self._finished.add(index)
        return {"index": index, "delta": rendered, "logprobs": None, "finish_reason": finish_reason}

    @staticmethod
    def _function(call: ToolCallDelta) -> JSON:
        given = call.get("function") or {}
        function: JSON = {}
        if given.get("name"):
            function["name"] = given["name"]
        function["arguments"] = given.get("arguments") or ""
        return function

    def _render_tool_call(self, choice: int, call: ToolCallDelta) -> JSON:
        rendered: JSON = {"index": self._client_tool_index(choice, call["index"])}
        custom = (choice, call["index"]) in self._custom
        if call.get("id"):
            rendered["id"] = call["id"]
            rendered["type"] = "custom" if custom else "function"
        function = self._function(call)
        if custom:
            rendered["custom"] = {
                **({"name": function["name"]} if "name" in function else {}),
                "input": function["arguments"],
            }
        else:
            rendered["function"] = function
        return rendered

    def _client_tool_index(self, choice: int, upstream_index: int) -> int:
        """Dense client-side indexes, per choice: removing a call must not leave a gap."""
        key = (choice, upstream_index)
        used = sum(1 for c, _ in self._tool_indexes if c == choice)
        return self._tool_indexes.setdefault(key, used)


def _unseen_written(name: str, call: ToolCallDelta) -> JSON:
    """An unseen field's piece, as the delta field it came as; the accumulated value, nothing."""
    arguments = (call.get("function") or {}).get("arguments") or ""
    if not arguments or arguments.startswith("\n"):
        return {}
    return {name: field_value(name, arguments)}


def field_value(name: str, arguments: str) -> Any:
    """The value a policy gave back for an unseen field."""
    try:
        return json.loads(arguments)
    except ValueError as exc:
        raise FormatError(f"a policy gave the {name} field a value that is not JSON") from exc
