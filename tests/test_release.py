"""A call lets go of what it holds (its upstream connection, its policy state) and is recorded
however it ends: a response the client never took a byte of, a stream abandoned while the
control plane hangs."""

import asyncio
import json
from collections.abc import AsyncGenerator, AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass
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
from formats.policing import Policing
from tests.fake_provider import FakeProvider
from tests.policies import PassEveryChunk
from tests.tcp_relay import TcpRelay

TOKEN = "release-token"


def messages_body(prompt: str) -> bytes:
    body = {"model": "claude-sonnet-4-6", "max_tokens": 64, "stream": True,
            "messages": [{"role": "user", "content": prompt}]}  # fmt: skip
    return json.dumps(body).encode()


@dataclass
class Recorded:
    """A pipeline whose calls are recorded to SQLite, policed by a policy that inspects streams."""

    storage: SQLiteStorage
    writer: RecordWriter
    control_plane: ControlPlaneLocal
    pipeline: Pipeline

    async def outcome(self, search: str) -> CallOutcome:
        await self.writer.flush()
        (summary,) = (await self.storage.list_calls(CallQuery(search=search))).calls
        return summary.outcome


@asynccontextmanager
async def recording(fake: FakeProvider, tmp_path: Path) -> AsyncIterator[Recorded]:
    storage = SQLiteStorage(tmp_path / "calls.db")
    writer = RecordWriter(storage, Spool(tmp_path / "spool"))
    writer.start()
    control_plane = ControlPlaneLocal(PassEveryChunk(), recorder=writer)
    upstream = Upstream({"api.anthropic.com": fake.url})
    try:
        yield Recorded(storage, writer, control_plane, Pipeline(Policing(control_plane), upstream))
    finally:
        for index in range(len(fake.requests)):
            fake.release(index)
        await writer.close()
        await upstream.aclose()
        await storage.close()


def messages_request(prompt: str) -> ProxyRequest:
    headers = [("content-type", "application/json"), ("x-api-key", "sk-ant-x")]
    return ProxyRequest("POST", "api.anthropic.com", "/v1/messages", headers, messages_body(prompt))


def relay_scope(ticket: str) -> dict[str, Any]:
    """The relay hop mitmproxy makes for a handed-over answer."""
    headers = [(TOKEN_HEADER.encode(), b"relay-token"), (TICKET_HEADER.encode(), ticket.encode())]
    return {
        "type": "http",
        "method": "POST",
        "raw_path": b"/v1/messages",
        "query_string": b"",
        "headers": headers,
    }


async def test_a_response_whose_client_is_gone_before_its_first_byte_is_released_and_recorded(
    fake: FakeProvider, tmp_path: Path
) -> None:
    async with recording(fake, tmp_path) as recorded:
        app = RelayApp("relay-token")
        ticket = app.hand_over(await recorded.pipeline.handle(messages_request("gone before the first byte")))
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

        with pytest.raises(OSError):
            await app(relay_scope(ticket), receive, send)
        assert recorded.control_plane.open_streams == 0  # the stream's policy state was released
        assert await recorded.outcome("gone before the first byte") is CallOutcome.ERROR


async def started_stream(pipeline: Pipeline, prompt: str) -> AsyncGenerator[bytes]:
    """A stream that has begun: its first events are read, the rest is held by the provider."""
    response = await pipeline.handle(messages_request(prompt))
    assert response.status == 200
    assert await anext(response.body)
    return response.body


async def test_a_stream_abandoned_while_its_control_plane_hangs_is_released_and_recorded(
    fake: FakeProvider, tmp_path: Path
) -> None:
    server_storage = SQLiteStorage(tmp_path / "cp.db")
    server_cp = ControlPlaneLocal(PassEveryChunk())
    server = EmbeddedServer(
        create_control_plane_app(server_cp, Policing(server_cp), server_storage, TOKEN), "127.0.0.1", 0
    )
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
    async with recording(fake, tmp_path) as recorded:
        app = RelayApp("relay-token")
        ticket = app.hand_over(
            await recorded.pipeline.handle(messages_request("never claimed [scenario:gated]"))
        )
        assert recorded.control_plane.open_streams == 1
        await app.abandon(ticket)  # what mitmproxy's error hook, or the claim timeout, does
        assert recorded.control_plane.open_streams == 0
        assert await recorded.outcome("never claimed") is CallOutcome.ERROR
        answered: list[dict[str, Any]] = []

        async def send(message: dict[str, Any]) -> None:
            answered.append(message)

        async def receive() -> dict[str, Any]:
            return {"type": "http.request", "body": b"", "more_body": False}

        await app(relay_scope(ticket), receive, send)
        assert answered[0]["status"] == 502  # a ticket is good once
