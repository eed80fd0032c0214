"""The HTTP server: routing, recording, pacing and gating around the pre-rendered replies."""

from __future__ import annotations

import asyncio
import contextlib
import functools
import json
import threading
from collections.abc import AsyncIterator, Callable, Iterator
from dataclasses import dataclass, field
from typing import Any, Self

from fastapi import FastAPI, Request, Response
from fastapi.responses import StreamingResponse

from tests.background_server import BackgroundServer

from . import anthropic_messages, gemini, openai_chat, openai_responses
from .hosted import served_path
from .scenarios import (
    Plan,
    UnknownScenarioError,
    anthropic_user_text,
    chat_user_text,
    find_scenario,
    plan_for,
    responses_user_text,
)
from .wire import Context, IdFactory, Reply, json_reply

GATE_TIMEOUT = 30.0
# Cloudflare, in front of both providers, refuses request headers beyond about 32 KB this way.
HEADER_LIMIT = 32 * 1024
_HEADERS_TOO_LARGE = b"<html><body><h1>400 Request Header Or Cookie Too Large</h1></body></html>"
_ALL_METHODS = ["GET", "POST", "PUT", "PATCH", "DELETE", "OPTIONS", "HEAD"]

_MODELS = {
    "object": "list",
    "data": [
        {"id": "gpt-4o", "object": "model", "created": 1715367049, "owned_by": "system"},
        {"id": "gpt-4o-mini", "object": "model", "created": 1721172741, "owned_by": "system"},
        {"id": "gpt-4.1", "object": "model", "created": 1744316542, "owned_by": "system"},
    ],
}


@dataclass(frozen=True)
class _Dialect:
    user_text: Callable[[dict[str, Any]], str]
    render: Callable[[Plan, Context], Reply]
    invalid_request: Callable[[str, Context], Reply]


_DIALECTS = {
    "/v1/chat/completions": _Dialect(chat_user_text, openai_chat.render, openai_chat.invalid_request),
    "/v1/responses": _Dialect(responses_user_text, openai_responses.render, openai_responses.invalid_request),
    "/v1/messages": _Dialect(
        anthropic_user_text, anthropic_messages.render, anthropic_messages.invalid_request
    ),
}


@dataclass
class RecordedRequest:
    method: str
    path: str  # including the query string, e.g. "/v1/messages?beta=true", as it arrived
    headers: dict[str, str]  # lower-case names
    body: bytes
    json: Any  # parsed body, or None if it was not JSON
    scenario: str | None = None  # None for requests outside the three APIs
    status: int | None = None
    raw_headers: list[tuple[bytes, bytes]] = field(default_factory=list, repr=False)  # as sent, in order
    sent: bytearray = field(default_factory=bytearray, repr=False)
    _gate: asyncio.Event = field(default_factory=asyncio.Event, init=False, repr=False, compare=False)


@dataclass(frozen=True)
class ScriptedReply:
    """An answer given byte for byte: the body is written chunk by chunk as given (any framing,
    split anywhere), with ``delay`` seconds between chunks."""

    chunks: tuple[bytes, ...]
    status: int = 200
    content_type: str = "application/json"
    headers: tuple[tuple[str, str], ...] = ()
    delay: float = 0.0

    @classmethod
    def json(cls, value: Any, status: int = 200) -> ScriptedReply:
        return cls((json.dumps(value).encode(),), status)

    @classmethod
    def sse(cls, *chunks: bytes) -> ScriptedReply:
        return cls(tuple(chunks), content_type="text/event-stream")


@dataclass
class _Script:
    reply: ScriptedReply
    match: Callable[[RecordedRequest], bool]


def matching(
    method: str | None = None, path: str | None = None, header: tuple[str, str] | None = None
) -> Callable[[RecordedRequest], bool]:
    """A script's predicate: the method, a prefix of the raw path, and one header's value, each
    checked when given (``fake.script(reply, matching("GET", "/v1/responses/"))``)."""

    def match(record: RecordedRequest) -> bool:
        return (
            (method is None or record.method == method.upper())
            and (path is None or record.path.startswith(path))
            and (header is None or record.headers.get(header[0].lower()) == header[1])
        )

    return match


def _parse_json(body: bytes) -> Any:
    try:
        return json.loads(body) if body else None
    except ValueError:
        return None


class FakeProvider:
    """A local stand-in for the OpenAI and Anthropic HTTP APIs, for tests.

    Use as ``fake = FakeProvider().start()`` ... ``fake.stop()``, or as a context manager.
    """

    def __init__(self, delay: float = 0.005) -> None:
        self.delay = delay
        self.url = ""
        self.requests: list[RecordedRequest] = []
        self._scripts: list[_Script] = []
        self._changed = threading.Condition()
        self.app = self._make_app()
        self._background = BackgroundServer(self.app, "fake-provider")

    # --- lifecycle -------------------------------------------------------------------

    def start(self, port: int = 0) -> FakeProvider:
        """Serve on 127.0.0.1 from a background thread; port 0 lets the OS pick one."""
        self.url = self._background.start(port)
        return self

    def stop(self) -> None:
        for index in range(len(self.requests)):
            self.release(index)  # so gated streams do not hold up the shutdown
        self._background.stop()

    def __enter__(self) -> Self:
        self.start()
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.stop()

    # --- test-facing helpers ---------------------------------------------------------

    def sent(self, index: int = -1) -> bytes:
        """The exact body bytes written for request `index` so far (all of them once it finished)."""
        return bytes(self.requests[index].sent)

    def release(self, index: int = -1) -> None:
        """Let a `gated` stream continue past its first event."""
        record = self.requests[index]
        self._background.call_soon(record._gate.set)

    def wait_for_requests(self, n: int, timeout: float = 10) -> None:
        with self._changed:
            if not self._changed.wait_for(lambda: len(self.requests) >= n, timeout):
                raise TimeoutError(f"expected {n} requests, got {len(self.requests)} within {timeout} s")

    def script(self, reply: ScriptedReply, match: Callable[[RecordedRequest], bool] = lambda _: True) -> None:
        """The next request ``match`` accepts gets ``reply`` instead of a scenario's answer
        (each script answers once, first queued first)."""
        with self._changed:
            self._scripts.append(_Script(reply, match))

    @contextlib.contextmanager
    def scripted(self) -> Iterator[None]:
        """Scripts queued inside are dropped on exit, used or not: tests sharing the fake
        cannot leave one behind for another."""
        try:
            yield
        finally:
            with self._changed:
                self._scripts.clear()

    def reset(self) -> None:
        for index in range(len(self.requests)):
            self.release(index)
        with self._changed:
            self.requests.clear()

    # --- serving ---------------------------------------------------------------------

    def _make_app(self) -> FastAPI:
        app = FastAPI(docs_url=None, redoc_url=None, openapi_url=None)
        app.add_api_route("/{path:path}", self._handle, methods=_ALL_METHODS)
        return app

    async def _handle(self, request: Request) -> Response:
        if sum(len(name) + len(value) for name, value in request.headers.raw) > HEADER_LIMIT:
            return Response(_HEADERS_TOO_LARGE, 400, media_type="text/html")
        record, index = self._record(request, await request.body())
        if (script := self._scripted(record)) is not None:
            record.status = script.status
            chunks = self._paced(record, list(script.chunks), script.delay, gated=False)
            return StreamingResponse(chunks, script.status, dict(script.headers), script.content_type)
        reply, plan = self._reply(record, index)
        record.status = reply.status
        gated = plan is not None and plan.gated
        if reply.streaming:
            delay = plan.delay if plan is not None and plan.delay is not None else self.delay
            cut_after = plan.cut_after if plan is not None else None
            chunks = self._paced(record, reply.chunks[:cut_after], delay, gated, cut=cut_after is not None)
            return StreamingResponse(chunks, reply.status, reply.headers, reply.content_type)
        if gated:
            await self._wait_gate(record)
        record.sent.extend(reply.chunks[0])
        return Response(reply.chunks[0], reply.status, reply.headers, reply.content_type)

    def _record(self, request: Request, body: bytes) -> tuple[RecordedRequest, int]:
        scope = request.scope
        path = scope.get("raw_path", scope["path"].encode()).decode("latin-1")
        if scope.get("query_string"):
            path += "?" + scope["query_string"].decode("latin-1")
        record = RecordedRequest(
            request.method,
            path,
            dict(request.headers),
            body,
            _parse_json(body),
            raw_headers=list(request.headers.raw),
        )
        with self._changed:
            self.requests.append(record)
            index = len(self.requests) - 1
            self._changed.notify_all()
        return record, index

    def _scripted(self, record: RecordedRequest) -> ScriptedReply | None:
        with self._changed:
            for script in self._scripts:
                if script.match(record):
                    self._scripts.remove(script)
                    return script.reply
        return None

    def _reply(self, record: RecordedRequest, index: int) -> tuple[Reply, Plan | None]:
        path, _, query = record.path.partition("?")
        path = served_path(path)
        if (call := gemini.call_for(record.method, path, query)) is not None:
            dialect = _Dialect(
                gemini.user_text, functools.partial(gemini.render, call), gemini.invalid_request
            )
        elif (models := gemini.models_for(record.method, path, query, record.headers)) is not None:
            return models, None
        elif record.method == "POST" and path in _DIALECTS:
            dialect = _DIALECTS[path]
        else:
            return json_reply(200, _MODELS), None
        body = record.json if isinstance(record.json, dict) else {}
        ctx = Context(body, IdFactory(seed=index))
        scenario = find_scenario(dialect.user_text(body))
        record.scenario = scenario.name
        try:
            plan = plan_for(scenario)
        except UnknownScenarioError as error:
            return dialect.invalid_request(str(error), ctx), None
        return dialect.render(plan, ctx), plan

    async def _paced(
        self, record: RecordedRequest, chunks: list[bytes], delay: float, gated: bool, cut: bool = False
    ) -> AsyncIterator[bytes]:
        for number, chunk in enumerate(chunks):
            if number == 1 and gated:
                await self._wait_gate(record)
            if number:
                await asyncio.sleep(delay)
            # Record before yielding: once a client has seen bytes, sent() has them too.
            record.sent.extend(chunk)
            yield chunk
        if cut:
            # An exception inside the body makes uvicorn drop the connection mid-response,
            # as a provider or network failure would.
            raise ConnectionAbortedError("fake provider: connection cut mid-stream")

    @staticmethod
    async def _wait_gate(record: RecordedRequest) -> None:
        # A forgotten release() should slow a test down, not hang it.
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(record._gate.wait(), GATE_TIMEOUT)
