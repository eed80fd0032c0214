"""The Gemini API (``generativelanguage.googleapis.com``): ``generateContent``,
``streamGenerateContent`` (SSE with ``?alt=sse``, else one JSON array written piece by piece),
``countTokens`` and the models list, under every API version (``v1``, ``v1beta``, ``v1alpha``).

The model and the kind of call are in the path (``/v1beta/models/gemini-2.5-flash:generateContent``),
not the body. Streams are data-only SSE events ending in ``\\r\\n\\r\\n``, with no ``[DONE]``; a
function call arrives whole, in one event, with ``finishReason: "STOP"`` and a ``thoughtSignature``
beside it, as the real API sends them.
"""

from __future__ import annotations

import base64
import json
import re
from dataclasses import dataclass, replace
from typing import Any

from .scenarios import MIDSTREAM_WORDS, Plan, words
from .wire import Context, IdFactory, Reply, dumps, json_reply, output_tokens, reasoning_tokens

VERSIONS = ("v1", "v1beta", "v1alpha")
JSON_TYPE = "application/json; charset=UTF-8"
SSE_TYPE = "text/event-stream"
MODELS = ("gemini-2.5-pro", "gemini-2.5-flash", "gemini-2.5-flash-lite")

_CALL = re.compile(r"^/(?P<version>v1(?:beta|alpha)?)/models/(?P<model>[^/:]+):(?P<action>[A-Za-z]+)$")
_MODELS = re.compile(r"^/(?P<version>v1(?:beta|alpha)?)/models(?:/(?P<model>[^/:]+))?$")
_STATUS = {400: "INVALID_ARGUMENT", 404: "NOT_FOUND", 429: "RESOURCE_EXHAUSTED", 500: "INTERNAL"}
_MESSAGES = {
    429: "Resource has been exhausted (e.g. check quota).",
    500: "An internal error has occurred. Please retry or report in https://developers.generativeai.google/guide/troubleshooting",
}


@dataclass(frozen=True)
class Call:
    """A ``POST /{version}/models/{model}:{action}``."""

    version: str
    model: str
    action: str  # generateContent, streamGenerateContent or countTokens
    sse: bool  # a stream asked for with ?alt=sse

    @property
    def stream(self) -> bool:
        return self.action == "streamGenerateContent"


def call_for(method: str, path: str, query: str) -> Call | None:
    match = _CALL.match(path) if method == "POST" else None
    if match is None:
        return None
    return Call(match["version"], match["model"], match["action"], "alt=sse" in query.split("&"))


def models_for(method: str, path: str, query: str, headers: dict[str, str]) -> Reply | None:
    """``GET /{version}/models`` and ``GET /{version}/models/{model}``, asked with Google's
    credential (OpenAI's models list is at ``/v1/models`` too)."""
    match = _MODELS.match(path) if method == "GET" else None
    google = "x-goog-api-key" in headers or any(pair.startswith("key=") for pair in query.split("&"))
    if match is None or not google:
        return None
    if match["model"] is None:
        return json_reply(200, {"models": [_model(name) for name in MODELS]}, _headers())
    if match["model"] not in MODELS:
        return error(404, f"models/{match['model']} is not found for API version {match['version']}")
    return json_reply(200, _model(match["model"]), _headers())


def user_text(body: dict[str, Any]) -> str:
    """The text of the last user turn; none when that turn returns function results, so an agent
    driven by ``tool_call`` gets plain text for its results instead of looping."""
    contents = body.get("contents")
    if not isinstance(contents, list):
        return ""
    for content in reversed(contents):
        if isinstance(content, dict) and content.get("role", "user") == "user":
            parts = content.get("parts")
            parts = parts if isinstance(parts, list) else []
            if any(_field(part, "functionResponse") is not None for part in parts):
                return ""
            return "\n".join(
                part["text"] for part in parts if isinstance(part, dict) and isinstance(part.get("text"), str)
            )
    return ""


def render(call: Call, plan: Plan, ctx: Context) -> Reply:
    if call.action == "countTokens":
        return json_reply(200, {"totalTokens": ctx.input_tokens}, _headers())
    if call.action not in ("generateContent", "streamGenerateContent"):
        return error(400, f"unknown method {call.action} for models/{call.model}")
    if plan.http_error is not None:
        return error(plan.http_error, _MESSAGES.get(plan.http_error, "error"))
    if (schema := _json_schema(ctx.body)) is not None:
        plan = replace(plan, text=json.dumps(_instance(schema)), thinking=None, tool_calls=())
    plan = replace(
        plan, tool_calls=tuple(replace(t, name=_shell_tool(ctx.body, t.name)) for t in plan.tool_calls)
    )
    answer = _Answer(call, plan, ctx)
    if not call.stream:
        return json_reply(200, answer.whole(), _headers())
    events = answer.events()
    if call.sse:
        chunks = [b"data: " + dumps(event) + b"\r\n\r\n" for event in events]
        return Reply(200, chunks, SSE_TYPE, _headers(), streaming=True)
    # Without alt=sse: one JSON array, each element pretty-printed, written as it is produced.
    pieces = [json.dumps(event, indent=2, ensure_ascii=False).encode() for event in events]
    chunks = [b"[" + pieces[0], *(b",\r\n" + piece for piece in pieces[1:]), b"]"]
    return Reply(200, chunks, JSON_TYPE, _headers(), streaming=True)


def error(status: int, message: str) -> Reply:
    body = {"error": {"code": status, "message": message, "status": _STATUS.get(status, "UNKNOWN")}}
    return json_reply(status, body, _headers())


def invalid_request(message: str, ctx: Context) -> Reply:
    return error(400, message)


class _Answer:
    def __init__(self, call: Call, plan: Plan, ctx: Context) -> None:
        self.call, self.plan, self.ctx = call, plan, ctx
        self.response_id = ctx.ids.base62("", 22)
        config = _field(ctx.body, "generationConfig")
        thinking = _field(config, "thinkingConfig")
        self.include_thoughts = _field(thinking, "includeThoughts") is True

    def whole(self) -> dict[str, Any]:
        parts: list[dict[str, Any]] = []
        if self.plan.thinking and self.include_thoughts:
            parts.append({"text": self.plan.thinking, "thought": True})
        if self.plan.text:
            parts.append({"text": self.plan.text})
        parts += self._function_calls()
        return self._envelope(parts, finished=True)

    def events(self) -> list[dict[str, Any]]:
        events: list[dict[str, Any]] = []
        if self.plan.thinking and self.include_thoughts:
            events += [self._envelope([{"text": w, "thought": True}]) for w in words(self.plan.thinking)]
        text = words(self.plan.text)
        if self.plan.midstream_error:
            events += [self._envelope([{"text": word}]) for word in text[:MIDSTREAM_WORDS]]
            return [*events, {"error": {"code": 500, "message": _MESSAGES[500], "status": "INTERNAL"}}]
        events += [self._envelope([{"text": word}]) for word in text]
        calls = self._function_calls()
        if calls:
            events.append(self._envelope(calls, finished=True))
        elif events:
            events[-1] = self._envelope(events[-1]["candidates"][0]["content"]["parts"], finished=True)
        else:
            events.append(self._envelope([{"text": ""}], finished=True))
        return events

    def _function_calls(self) -> list[dict[str, Any]]:
        return [
            {
                "functionCall": {"name": call.name, "args": call.arguments},
                "thoughtSignature": _signature(self.ctx.ids),
            }
            for call in self.plan.tool_calls
        ]

    def _envelope(self, parts: list[dict[str, Any]], finished: bool = False) -> dict[str, Any]:
        candidate: dict[str, Any] = {"content": {"parts": parts, "role": "model"}}
        if finished:
            candidate["finishReason"] = "STOP"
        candidate["index"] = 0
        return {
            "candidates": [candidate],
            "usageMetadata": self._usage(finished),
            "modelVersion": self.call.model,
            "responseId": self.response_id,
        }

    def _usage(self, finished: bool) -> dict[str, Any]:
        prompt = self.ctx.input_tokens
        usage: dict[str, Any] = {"promptTokenCount": prompt, "totalTokenCount": prompt}
        if finished:
            thoughts = reasoning_tokens(self.plan)
            candidates = output_tokens(self.plan) - thoughts
            usage = {"promptTokenCount": prompt, "candidatesTokenCount": candidates}
            usage["totalTokenCount"] = prompt + candidates + thoughts
            if thoughts:
                usage["thoughtsTokenCount"] = thoughts
        usage["promptTokensDetails"] = [{"modality": "TEXT", "tokenCount": prompt}]
        return usage


def _json_schema(body: dict[str, Any]) -> Any:
    """The schema a JSON-mode request wants its answer in (Gemini CLI routes each prompt by asking
    for a complexity score so), or None."""
    config = _field(body, "generationConfig")
    if _field(config, "responseMimeType") != "application/json":
        return None
    schema = _field(config, "responseJsonSchema") or _field(config, "responseSchema")
    return schema if isinstance(schema, dict) else {}


def _instance(schema: Any) -> Any:
    """A small value of the schema's type: every property filled, the first of an enum. Types are
    spelled as in JSON Schema (``object``) or in Gemini's OpenAPI subset (``OBJECT``)."""
    if not isinstance(schema, dict):
        return None
    if isinstance(schema.get("enum"), list) and schema["enum"]:
        return schema["enum"][0]
    kind = str(schema.get("type", "object")).lower()
    if kind == "object":
        properties = schema.get("properties")
        properties = properties if isinstance(properties, dict) else {}
        return {name: _instance(value) for name, value in properties.items()}
    if kind == "array":
        return []
    return {"string": "fake", "integer": 1, "number": 1.0, "boolean": False}.get(kind)


#: Agents' shell tools. The model calls the request's own when it declares one, so that an agent
#: test sees whether the command ran; otherwise it calls "bash", as in the other dialects.
_SHELL_TOOLS = ("run_shell_command",)


def _shell_tool(body: dict[str, Any], name: str) -> str:
    if name != "bash":
        return name
    tools = body.get("tools")
    declared = {
        declaration.get("name")
        for tool in (tools if isinstance(tools, list) else [])
        for declaration in (_field(tool, "functionDeclarations") or [])
        if isinstance(declaration, dict)
    }
    return next((shell for shell in _SHELL_TOOLS if shell in declared), name)


def _field(value: Any, name: str) -> Any:
    """A field by its JSON name or its proto name: Google's JSON parser takes both
    (``thinkingConfig`` or ``thinking_config``), and the Python SDK sends some in snake case."""
    if not isinstance(value, dict):
        return None
    snake = re.sub(r"(?<!^)(?=[A-Z])", "_", name).lower()
    return value.get(name, value.get(snake))


def _signature(ids: IdFactory) -> str:
    """Opaque to the client, which must send it back with the call: base64, as the API's are."""
    return base64.b64encode(ids.hex("", 48).encode()).decode()


def _model(name: str) -> dict[str, Any]:
    return {
        "name": f"models/{name}",
        "version": "001",
        "displayName": name.replace("-", " ").title(),
        "inputTokenLimit": 1_048_576,
        "outputTokenLimit": 65_536,
        "supportedGenerationMethods": [
            "generateContent",
            "countTokens",
            "createCachedContent",
            "batchGenerateContent",
        ],
        "temperature": 1,
        "topP": 0.95,
        "topK": 64,
        "maxTemperature": 2,
        "thinking": True,
    }


def _headers() -> dict[str, str]:
    return {"server": "scaffolding on HTTPServer2", "x-content-type-options": "nosniff"}
