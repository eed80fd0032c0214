"""A call lets go of what it holds (its upstream connection, its policy state) and is recorded
however it ends: a response the client never took a byte of, a stream abandoned while the
control plane hangs."""

import asyncio
import json
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest

from addon.embedded import EmbeddedServer
from addon.pipeline import Pipeline, ProxyRequest
from addon.relay_server import TICKET_HEADER, TOKEN_HEADER, RelayApp
from addon.upstream import Upstream
from controlplane.local import ControlPlaneLocal
from controlplane.recording.records import CallOutcome
from controlplane.recording.spool import Spool
from controlplane.recording.writer import RecordWriter
from controlplane.remote.client import ControlPlaneHTTP
from controlplane.remote.server import create_control_plane_app
from controlplane.storage import CallQuery, SQLiteStorage
from tests.fake_provider import FakeProvider
from tests.policies import PassEveryChunk
from tests.tcp_relay import TcpRelay

TOKEN = "release-token"


def messages_body(prompt: str) -> bytes:
    body = {"model": "claude-sonnet-4-6", "max_tokens": 64, "stream": True,
            "messages": [{"role": "user", "content": prompt}]}  # fmt: skip
    return json.dumps(body).encode()


async def test_a_response_whose_client_is_gone_before_its_first_byte_is_released_and_recorded(
    fake: FakeProvider, tmp_path: Path
) -> None:
    storage = SQLiteStorage(tmp_path / "calls.db")
    writer = RecordWriter(storage, Spool(tmp_path / "spool"))
    writer.start()
    control_plane = ControlPlaneLocal(PassEveryChunk(), recorder=writer)
    upstream = Upstream({"api.anthropic.com": fake.url})
    app = RelayApp("relay-token")
    headers = [("content-type", "application/json"), ("x-api-key", "sk-ant-x")]
    body = messages_body("gone before the first byte")
    request = ProxyRequest("POST", "api.anthropic.com", "/v1/messages", headers, body)
    ticket = app.hand_over(await Pipeline(control_plane, upstream).handle(request))
    scope = {
        "type": "http",
        "method": "POST",
        "raw_path": b"/v1/messages",
        "query_string": b"",
        "headers": [(TOKEN_HEADER.encode(), b"relay-token"), (TICKET_HEADER.encode(), ticket.encode())],
    }
    received = False

    async def receive() -> dict[str, Any]:
        nonlocal received
        if not received:
            received = True
            return {"type": "http.request", "body": b"", "more_body": False}
        await asyncio.Event().wait()  # the connection stays open: no disconnect is ever seen
        raise AssertionError("unreachable")

    async def send(message: dict[str, Any]) -> None:
        raise OSError("the connection to the client is gone")  # the response's start cannot be sent

    try:
        with pytest.raises(OSError):
            await app(scope, receive, send)
        assert control_plane.open_streams == 0  # the stream's policy state was released
        await writer.flush()
        page = await storage.list_calls(CallQuery(search="gone before the first byte"))
        (summary,) = page.calls
        assert summary.outcome is CallOutcome.ERROR
    finally:
        await writer.close()
        await upstream.aclose()
        await storage.close()


async def started_stream(pipeline: Pipeline, prompt: str) -> AsyncIterator[bytes]:
    """A stream that has begun: its first events are read, the rest is held by the provider."""
    headers = [("content-type", "application/json"), ("x-api-key", "sk-ant-x")]
    request = ProxyRequest("POST", "api.anthropic.com", "/v1/messages", headers, messages_body(prompt))
    response = await pipeline.handle(request)
    assert response.status == 200
    assert await anext(response.body)
    return response.body


async def test_a_stream_abandoned_while_its_control_plane_hangs_is_released_and_recorded(
    fake: FakeProvider, tmp_path: Path
) -> None:
    server_storage = SQLiteStorage(tmp_path / "cp.db")
    server_cp = ControlPlaneLocal(PassEveryChunk())
    server = EmbeddedServer(create_control_plane_app(server_cp, server_storage, TOKEN), "127.0.0.1", 0)
    await server.start()
    link = TcpRelay("127.0.0.1", server.port)
    client = ControlPlaneHTTP(f"http://127.0.0.1:{link.port}", TOKEN, Spool(tmp_path / "spool"))
    client.start()
    upstream = Upstream({"api.anthropic.com": fake.url})
    pipeline = Pipeline(client, upstream)
    try:
        body = await started_stream(pipeline, "abandoned while hung [scenario:gated]")
        assert server_cp.open_streams == 1
        link.hang()  # the control plane's connections stay open; nothing it says arrives
        async with asyncio.timeout(15):  # a release that waited for the hung peer would not end
            await body.aclose()  # the client left
        assert await pipeline.drained(0)  # recorded: in the sidecar's own spool, for now
        spooled = (tmp_path / "spool" / "spool-0.jsonl").read_text()
        assert "abandoned while hung" in spooled and "the client disconnected" in spooled
    finally:
        link.restore()
        for index in range(len(fake.requests)):
            fake.release(index)
        await client.aclose()
        await upstream.aclose()
        link.close()
        await server.stop()
        await server_storage.close()


async def test_a_streamed_answer_whose_flow_never_comes_is_closed_and_recorded(
    fake: FakeProvider, tmp_path: Path
) -> None:
    storage = SQLiteStorage(tmp_path / "calls.db")
    writer = RecordWriter(storage, Spool(tmp_path / "spool"))
    writer.start()
    control_plane = ControlPlaneLocal(PassEveryChunk(), recorder=writer)
    upstream = Upstream({"api.anthropic.com": fake.url})
    app = RelayApp("relay-token")
    headers = [("content-type", "application/json"), ("x-api-key", "sk-ant-x")]
    body = messages_body("never claimed [scenario:gated]")
    request = ProxyRequest("POST", "api.anthropic.com", "/v1/messages", headers, body)
    try:
        ticket = app.hand_over(await Pipeline(control_plane, upstream).handle(request))
        assert control_plane.open_streams == 1
        await app.abandon(ticket)  # what mitmproxy's error hook, or the claim timeout, does
        assert control_plane.open_streams == 0
        await writer.flush()
        (summary,) = (await storage.list_calls(CallQuery(search="never claimed"))).calls
        assert summary.outcome is CallOutcome.ERROR
        refused: list[dict[str, Any]] = []

        async def send(message: dict[str, Any]) -> None:
            refused.append(message)

        async def receive() -> dict[str, Any]:
            return {"type": "http.request", "body": b"", "more_body": False}

        token = [(TOKEN_HEADER.encode(), b"relay-token"), (TICKET_HEADER.encode(), ticket.encode())]
        await app({"type": "http", "headers": token}, receive, send)
        assert refused[0]["status"] == 502  # a ticket is good once
    finally:
        for index in range(len(fake.requests)):
            fake.release(index)
        await writer.close()
        await upstream.aclose()
        await storage.close()
