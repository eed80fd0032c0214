"""A proxy's streams over a network control plane share WebSocket connections, one stream at a
time on each: a finished stream's connection carries the next, and one that died while idle (the
control plane restarted, the network cut it) is replaced without the stream noticing."""

import asyncio
import json
import shutil
import tempfile
import threading
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path

import pytest

from addon.pipeline import Pipeline, ProxyRequest
from addon.upstream import Upstream
from controlplane.llm import ModelResponseStream
from controlplane.local import ControlPlaneLocal
from controlplane.models import PolicyResult, StreamingContext
from controlplane.policies.base import ChunkResult, PolicyHandler
from controlplane.policies.chunks import chunk_text, text_chunk
from controlplane.policies.noop import NoOpPolicy
from controlplane.recording.spool import Spool
from controlplane.remote.client import ControlPlaneHTTP
from controlplane.remote.server import create_control_plane_app
from formats.policing import Policing
from tests.control_planes import TOKEN, delivered, plain, service_host, text_of
from tests.fake_provider import FakeProvider
from tests.fake_provider.scenarios import DEFAULT_TEXT
from tests.policies import PassEveryChunk
from tests.tcp_relay import TcpRelay
from tests.test_control_plane import LIKE, METADATA, Triples


@asynccontextmanager
async def through_relay(
    policy: PolicyHandler | None = None,
) -> AsyncIterator[tuple[ControlPlaneHTTP, ControlPlaneLocal, TcpRelay]]:
    """A control plane reached through a TCP relay that counts connections and can cut them."""
    host = service_host()
    served = ControlPlaneLocal(policy or PassEveryChunk())
    url = host.add(create_control_plane_app(served, Policing(served), host.storage, TOKEN))
    port = int(host.url.rsplit(":", 1)[1])
    spool_dir = Path(tempfile.mkdtemp(prefix="spool-", dir=host.root))
    with TcpRelay("127.0.0.1", port) as relay:
        client = ControlPlaneHTTP(url.replace(str(port), str(relay.port)), TOKEN, Spool(spool_dir))
        try:
            yield client, served, relay
        finally:
            await client.aclose()
            host.remove(url)
            shutil.rmtree(spool_dir, ignore_errors=True)


async def one_stream(client: ControlPlaneHTTP, word: str) -> list[str]:
    context = await client.create_streaming_context({"messages": []}, METADATA)
    assert not context.unpoliced
    given = plain(text_chunk(LIKE, word))
    results = [r async for r in client.process_streaming_chunks(given, context)]
    results += [r async for r in client.close_streaming_context(context)]
    return [chunk_text(c) for r in results if (c := delivered(r, given)) is not None]


async def test_streams_one_after_another_share_one_connection() -> None:
    async with through_relay() as (client, served, relay):
        for word in ("one", "two", "three"):
            assert await one_stream(client, word) == [word]
        assert relay.connections == 1
        assert served.open_streams == 0


async def test_a_stream_no_policy_inspects_is_released_at_its_open() -> None:
    async with through_relay(NoOpPolicy()) as (client, served, relay):
        for _ in range(3):
            context = await client.create_streaming_context({"messages": []}, METADATA)
            assert not context.inspects_chunks and not context.unpoliced
            assert served.open_streams == 0  # nothing held for it, nothing will be sent for it
        assert relay.connections == 1  # each one's connection was free for the next at once


async def test_concurrent_streams_each_get_a_connection_then_reuse_them() -> None:
    async with through_relay() as (client, _, relay):
        contexts = [await client.create_streaming_context({"messages": []}, METADATA) for _ in range(3)]
        for context in contexts:
            assert [r async for r in client.close_streaming_context(context)] == []
        assert relay.connections == 3
        assert await asyncio.gather(*(one_stream(client, w) for w in ("a", "b", "c"))) == [
            ["a"],
            ["b"],
            ["c"],
        ]
        assert relay.connections == 3


async def test_an_idle_connection_that_died_is_replaced_without_failing_the_stream() -> None:
    async with through_relay() as (client, served, relay):
        assert await one_stream(client, "before") == ["before"]
        relay.cut()  # resets the idle connection, as a control-plane restart would
        relay.restore()
        assert await one_stream(client, "after") == ["after"]
        assert relay.connections == 2
        assert served.open_streams == 0


async def test_a_connection_is_lent_only_once_every_answer_on_it_was_read() -> None:
    async with through_relay(Triples()) as (client, _, relay):
        # A chunk's answers left unread are skipped when the stream closes: then it is clean.
        context = await client.create_streaming_context({"messages": []}, METADATA)
        async for _ in client.process_streaming_chunks(plain(text_chunk(LIKE, "x")), context):
            break
        assert [text_of(r.value) async for r in client.close_streaming_context(context) if r.value] == ["end"]
        assert await one_stream(client, "next") == ["nexta", "nextb", "nextc", "end"]
        assert relay.connections == 1
        # The close's own answers left unread: nothing would skip them, so the connection is closed.
        context = await client.create_streaming_context({"messages": []}, METADATA)
        async for _ in client.close_streaming_context(context):
            break
        assert await one_stream(client, "last") == ["lasta", "lastb", "lastc", "end"]
        assert relay.connections == 2


async def test_a_chunk_passed_unchanged_comes_back_as_a_verdict_not_a_copy() -> None:
    async with through_relay() as (client, _, _):
        context = await client.create_streaming_context({"messages": []}, METADATA)
        chunk = plain(text_chunk(LIKE, "same"))
        (result,) = [r async for r in client.process_streaming_chunks(chunk, context)]
        # A verdict: no copy of the chunk came back, only which one passes (the proxy has it).
        assert result.value is None and result.unchanged and result.answers == 0
        assert [r async for r in client.close_streaming_context(context)] == []
    async with through_relay(Triples()) as (client, _, _):
        context = await client.create_streaming_context({"messages": []}, METADATA)
        results = [r async for r in client.process_streaming_chunks(chunk, context)]
        assert [text_of(r.value) for r in results if r.value] == ["samea", "sameb", "samec"]
        assert not any(r.unchanged for r in results)
        assert [text_of(r.value) async for r in client.close_streaming_context(context) if r.value] == ["end"]


@pytest.mark.parametrize(("policy", "connections"), [(NoOpPolicy(), 1), (PassEveryChunk(), 2)])
async def test_a_stream_whose_request_verdict_says_no_chunk_is_inspected_opens_nothing(
    fake: FakeProvider, policy: PolicyHandler, connections: int
) -> None:
    """The request's verdict says whether the policy that took it reads the stream: when not, the
    stream is passive under that decision, and no WebSocket is opened before its first byte (one
    connection: the request's POST)."""
    body = json.dumps({"model": "gpt-4o", "stream": True, "messages": [{"role": "user", "content": "hi"}]})
    headers = [("content-type", "application/json"), ("authorization", "Bearer sk-test")]
    request = ProxyRequest("POST", "api.openai.com", "/v1/chat/completions", headers, body.encode())
    async with through_relay(policy) as (client, served, relay):
        upstream = Upstream({"api.openai.com": fake.url})
        try:
            response = await Pipeline(client, upstream).handle(request)
            streamed = b"".join([piece async for piece in response.body])
        finally:
            await upstream.aclose()
        assert response.status == 200 and DEFAULT_TEXT.split()[0].encode() in streamed
        assert streamed.rstrip().endswith(b"data: [DONE]")
        assert relay.connections == connections and served.open_streams == 0


class WaitsBetweenResults(PolicyHandler):
    """Answers a chunk with "first", then waits (as on a judge) until the test has "first", then
    answers "second"."""

    def __init__(self) -> None:
        super().__init__()
        self.first_arrived = threading.Event()

    async def apply_streaming_chunk_policy(
        self, chunk: ModelResponseStream, context: StreamingContext
    ) -> AsyncIterator[ChunkResult]:
        yield PolicyResult.allow(text_chunk(chunk, "first"))
        assert await asyncio.to_thread(self.first_arrived.wait, 10), "the first result never arrived"
        yield PolicyResult.allow(text_chunk(chunk, "second"))


async def test_a_result_is_sent_before_the_policy_awaits_what_comes_next() -> None:
    """Results travel together only when the policy yields them without waiting in between: one
    yielded before a wait reaches the proxy during it."""
    policy = WaitsBetweenResults()
    async with through_relay(policy) as (client, _, _):
        context = await client.create_streaming_context({"messages": []}, METADATA)
        given = plain(text_chunk(LIKE, "x"))
        texts = []
        async for result in client.process_streaming_chunks(given, context):
            delivered_chunk = delivered(result, given)
            assert delivered_chunk is not None
            texts.append(chunk_text(delivered_chunk))
            policy.first_arrived.set()
        assert texts == ["first", "second"]
        assert [r async for r in client.close_streaming_context(context)] == []
