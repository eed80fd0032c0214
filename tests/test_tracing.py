"""W3C trace context flows from the proxy to a remote control plane: the spans of both planes
(recorded here by an in-memory exporter) belong to the trace the agent started."""

import json
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import pytest
import pytest_asyncio
from opentelemetry import trace
from opentelemetry.sdk.trace import ReadableSpan, TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter

from addon.embedded import EmbeddedServer
from addon.pipeline import Pipeline, ProxyRequest
from addon.upstream import Upstream
from controlplane.local import ControlPlaneLocal
from controlplane.policies import AllCapsPolicy
from controlplane.recording.spool import Spool
from controlplane.remote.client import ControlPlaneHTTP
from controlplane.remote.server import create_control_plane_app
from controlplane.storage import SQLiteStorage
from formats.policing import Policing
from tests.fake_provider import FakeProvider

TOKEN = "trace-token"
AGENT_TRACE = "4bf92f3577b34da6a3ce929d0e0e4736"
AGENT_PARENT = f"00-{AGENT_TRACE}-00f067aa0ba902b7-01"


@pytest.fixture(scope="module")
def spans() -> Iterator[InMemorySpanExporter]:
    exporter = InMemorySpanExporter()
    provider = TracerProvider()
    provider.add_span_processor(SimpleSpanProcessor(exporter))
    trace.set_tracer_provider(provider)  # once per process: no other test configures tracing
    yield exporter
    provider.shutdown()


@pytest_asyncio.fixture(loop_scope="function")  # the server must run in the test's own loop
async def pipeline(fake: FakeProvider, tmp_path: Path) -> AsyncIterator[Pipeline]:
    storage = SQLiteStorage(tmp_path / "cp.db")
    served = ControlPlaneLocal(AllCapsPolicy())
    app = create_control_plane_app(served, Policing(served), storage, TOKEN)
    server = EmbeddedServer(app, "127.0.0.1", 0)
    await server.start()
    client = ControlPlaneHTTP(f"http://127.0.0.1:{server.port}", TOKEN, Spool(tmp_path / "spool"))
    client.start()
    upstream = Upstream({"api.anthropic.com": fake.url})
    try:
        yield Pipeline(client, upstream)
    finally:
        await client.aclose()
        await upstream.aclose()
        await server.stop()
        await storage.close()


async def call(pipeline: Pipeline, stream: bool) -> bytes:
    body = {
        "model": "claude-sonnet-4-6",
        "max_tokens": 64,
        "stream": stream,
        "messages": [{"role": "user", "content": "hi"}],
    }
    headers = [("content-type", "application/json"), ("traceparent", AGENT_PARENT), ("x-api-key", "sk-ant-x")]
    request = ProxyRequest("POST", "api.anthropic.com", "/v1/messages", headers, json.dumps(body).encode())
    response = await pipeline.handle(request)
    out = b"".join([chunk async for chunk in response.body])
    assert response.status == 200, out
    return out


def by_name(finished: tuple[ReadableSpan, ...]) -> dict[str, ReadableSpan]:
    return {span.name: span for span in finished}


@pytest.mark.parametrize("stream", [True, False])
async def test_proxy_and_control_plane_spans_share_the_agents_trace(
    spans: InMemorySpanExporter, pipeline: Pipeline, stream: bool
) -> None:
    spans.clear()
    out = await call(pipeline, stream)
    assert b"HELLO" in out  # the remote policy (all caps) ran
    named = by_name(spans.get_finished_spans())
    policy = "luthien.stream" if stream else "luthien.response_policy"
    remote = "luthien.controlplane.stream" if stream else "luthien.controlplane.response_policy"
    expected = {"luthien.call", "luthien.request_policy", "luthien.upstream", policy,
                "luthien.controlplane.request_policy", remote}  # fmt: skip
    assert expected <= set(named)
    assert {format(named[name].context.trace_id, "032x") for name in expected} == {AGENT_TRACE}
    call_id = named["luthien.call"].attributes["luthien.call_id"]
    assert all(named[name].attributes["luthien.call_id"] == call_id for name in expected)
    # Each control-plane span is the child of the proxy span that made the remote call.
    local = named["luthien.request_policy"]
    assert named["luthien.controlplane.request_policy"].parent.span_id == local.context.span_id
    assert named[remote].parent.span_id == named[policy].context.span_id
