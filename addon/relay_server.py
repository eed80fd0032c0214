"""The in-process HTTP server that mitmproxy hands provider flows to.

mitmproxy's stream hook is synchronous, so a policy that awaits (an LLM judge, a remote control
plane) cannot run inside it. Instead the interceptor re-targets each provider flow at this
loopback server, which runs in the same event loop: each call is its own task, any policy may
await, and the response streams back through mitmproxy as it is produced.
"""

import asyncio
import logging
import secrets
import socket
from collections.abc import Awaitable, Callable
from contextlib import AbstractContextManager, nullcontext
from typing import Any

import uvicorn

from addon.pipeline import Pipeline, ProxyRequest

log = logging.getLogger(__name__)

HOST_HEADER = "x-luthien-host"
TOKEN_HEADER = "x-luthien-relay-token"

Scope = dict[str, Any]
Receive = Callable[[], Awaitable[dict[str, Any]]]
Send = Callable[[dict[str, Any]], Awaitable[None]]


class RelayApp:
    """ASGI app: authenticates the hop from mitmproxy and runs the pipeline."""

    def __init__(self, pipeline: Pipeline, token: str) -> None:
        self._pipeline = pipeline
        self._token = token.encode()

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            return
        headers = [(k.decode("latin-1"), v.decode("latin-1")) for k, v in scope["headers"]]
        lookup = {k.lower(): v for k, v in headers}
        if not secrets.compare_digest(lookup.get(TOKEN_HEADER, "").encode(), self._token):
            await _respond(send, 403, b"not a Luthien relay request")
            return
        body = await _read_body(receive)
        path = scope["raw_path"].decode("latin-1")
        if scope.get("query_string"):
            path += "?" + scope["query_string"].decode("latin-1")
        request = ProxyRequest(scope["method"], lookup.get(HOST_HEADER, ""), path, headers, body)
        response = await self._pipeline.handle(request)
        await send(
            {
                "type": "http.response.start",
                "status": response.status,
                "headers": [(k.encode("latin-1"), v.encode("latin-1")) for k, v in response.headers],
            }
        )
        try:
            async for data in response.body:
                await send({"type": "http.response.body", "body": data, "more_body": True})
            await send({"type": "http.response.body", "body": b"", "more_body": False})
        finally:
            await response.body.aclose()  # type: ignore[attr-defined]


async def _read_body(receive: Receive) -> bytes:
    parts = []
    while True:
        message = await receive()
        parts.append(message.get("body", b""))
        if not message.get("more_body"):
            return b"".join(parts)


async def _respond(send: Send, status: int, body: bytes) -> None:
    await send(
        {"type": "http.response.start", "status": status, "headers": [(b"content-type", b"text/plain")]}
    )
    await send({"type": "http.response.body", "body": body})


class _EmbeddedServer(uvicorn.Server):
    """uvicorn inside mitmproxy's loop: signals belong to mitmproxy, not to this server."""

    def capture_signals(self) -> AbstractContextManager[None]:  # type: ignore[override]
        return nullcontext()


class RelayServer:
    def __init__(self, pipeline: Pipeline) -> None:
        self.token = secrets.token_urlsafe(32)
        self._socket = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        self._socket.bind(("127.0.0.1", 0))
        self.port: int = self._socket.getsockname()[1]
        config = uvicorn.Config(
            RelayApp(pipeline, self.token),
            log_level="warning",
            access_log=False,
            lifespan="off",
            timeout_graceful_shutdown=2,
        )
        self._server = _EmbeddedServer(config)
        self._task: asyncio.Task[None] | None = None

    async def start(self) -> None:
        self._task = asyncio.create_task(self._server.serve(sockets=[self._socket]))
        while not self._server.started:
            if self._task.done():
                self._task.result()
            await asyncio.sleep(0.01)

    async def stop(self) -> None:
        self._server.should_exit = True
        if self._task is not None:
            await self._task
