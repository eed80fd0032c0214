"""What the client receives, byte for byte: no-op invisibility, incremental streams, errors."""

import asyncio
import json
import ssl
import threading
import time
from collections.abc import Iterator

import httpx
import pytest

from tests.conftest import RunningProxy
from tests.fake_provider import FakeProvider

ENDPOINTS = {
    "chat": ("https://api.openai.com/v1/chat/completions", {"model": "gpt-4o"}),
    "responses": ("https://api.openai.com/v1/responses", {"model": "gpt-5"}),
    "messages": (
        "https://api.anthropic.com/v1/messages?beta=true",
        {"model": "claude-sonnet-4-5", "max_tokens": 256},
    ),
}


def body(api: str, prompt: str, stream: bool) -> dict[str, object]:
    _, base = ENDPOINTS[api]
    if api == "responses":
        return {**base, "input": prompt, "stream": stream}
    return {**base, "messages": [{"role": "user", "content": prompt}], "stream": stream}


def client_for(proxy: RunningProxy) -> httpx.Client:
    context = ssl.create_default_context(cafile=str(proxy.bundle))
    headers = {
        "authorization": "Bearer sk-test",
        "x-api-key": "sk-ant-test",
        "anthropic-version": "2023-06-01",
    }
    return httpx.Client(proxy=proxy.url, verify=context, headers=headers, timeout=10)


@pytest.fixture
def client(noop: RunningProxy) -> Iterator[httpx.Client]:
    with client_for(noop) as c:
        yield c


SCENARIOS = ["text", "tool_call rm -rf /tmp/x", "two_tools", "thinking", "midstream_error"]


CASES = [
    (scenario, stream)
    for scenario in SCENARIOS
    for stream in (False, True)
    if stream or scenario != "midstream_error"  # a mid-stream error exists only in streams
]


@pytest.mark.parametrize("api", ENDPOINTS)
@pytest.mark.parametrize(("scenario", "stream"), CASES)
def test_noop_policy_is_byte_identical(
    client: httpx.Client, fake: FakeProvider, api: str, stream: bool, scenario: str
) -> None:
    response = client.post(ENDPOINTS[api][0], json=body(api, f"[scenario:{scenario}]", stream))
    assert response.status_code == 200
    assert response.content == fake.sent(-1)
    assert response.headers["x-luthien-call-id"]
    # Headers pass through once: nothing on the way adds a second Server or Date.
    assert len(response.headers.get_list("server")) == 1
    assert len(response.headers.get_list("date")) == 1


@pytest.mark.parametrize("api", ENDPOINTS)
@pytest.mark.parametrize("scenario", ["error_429", "error_500"])
def test_upstream_errors_are_byte_identical(
    client: httpx.Client, fake: FakeProvider, api: str, scenario: str
) -> None:
    for stream in (False, True):
        response = client.post(ENDPOINTS[api][0], json=body(api, f"[scenario:{scenario}]", stream))
        assert response.status_code == int(scenario[-3:])
        assert response.content == fake.sent(-1)
        assert "retry-after" in response.headers or scenario == "error_500"


@pytest.mark.parametrize("api", ENDPOINTS)
def test_streams_are_incremental(client: httpx.Client, fake: FakeProvider, api: str) -> None:
    """The fake sends one event and waits: the client must see it before the rest is sent."""
    with client.stream("POST", ENDPOINTS[api][0], json=body(api, "[scenario:gated]", True)) as response:
        chunks = response.iter_bytes()
        first = next(chunks)  # a buffering proxy times out here: the gate holds for 30 s
        sent_so_far = bytes(fake.requests[-1].sent)
        fake.release(-1)
        rest = b"".join(chunks)
    assert first + rest == fake.sent(-1)
    assert first and len(sent_so_far) < len(fake.sent(-1)), "the first event came only after the whole stream"


def test_passthrough_paths_are_forwarded_unchanged(client: httpx.Client, fake: FakeProvider) -> None:
    response = client.get("https://api.openai.com/v1/models?limit=2")
    assert response.status_code == 200
    assert response.content == fake.sent(-1)
    assert fake.requests[-1].path == "/v1/models?limit=2"


def test_malformed_request_bodies_get_a_provider_format_error(
    client: httpx.Client, fake: FakeProvider
) -> None:
    before = len(fake.requests)
    response = client.post(
        ENDPOINTS["messages"][0], content=b"{not json", headers={"content-type": "application/json"}
    )
    assert response.status_code == 400
    assert response.json()["type"] == "error"
    assert "could not read this request" in response.json()["error"]["message"]
    response = client.post(ENDPOINTS["chat"][0], content=b"[1, 2]")
    assert response.status_code == 400
    assert "could not read this request" in response.json()["error"]["message"]
    assert len(fake.requests) == before


def test_a_slow_async_chunk_policy_does_not_stall_other_streams(proxies: dict[str, RunningProxy]) -> None:
    """One stream's policy awaits 2 s on its first chunk; a concurrent stream must finish first."""
    proxy = proxies["slow_chunks"]
    context = ssl.create_default_context(cafile=str(proxy.bundle))
    events: list[tuple[str, str]] = []

    async def stream(name: str, prompt: str) -> None:
        async with httpx.AsyncClient(proxy=proxy.url, verify=context, timeout=30) as client:
            payload = body("chat", prompt, True)
            async with client.stream("POST", ENDPOINTS["chat"][0], json=payload) as response:
                async for _ in response.aiter_bytes():
                    events.append((name, "chunk"))
        events.append((name, "done"))

    async def both() -> None:
        slow = asyncio.create_task(stream("slow", "[slow-policy] Say hello"))
        await asyncio.sleep(0.2)  # the slow stream is now inside its policy's await
        await stream("fast", "Say hello")
        await slow

    asyncio.run(both())
    first_slow_chunk = events.index(("slow", "chunk"))
    assert events.index(("fast", "done")) < first_slow_chunk, events


def test_concurrent_streams_through_one_proxy_stay_separate(noop: RunningProxy, fake: FakeProvider) -> None:
    results: dict[int, bytes] = {}

    def one(i: int) -> None:
        with client_for(noop) as c:
            results[i] = c.post(
                ENDPOINTS["messages"][0], json=body("messages", f"Say hello {i}", True)
            ).content

    threads = [threading.Thread(target=one, args=(i,)) for i in range(8)]
    started = time.monotonic()
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=60)
    assert len(results) == 8, f"only {len(results)} finished after {time.monotonic() - started:.1f}s"
    for content in results.values():
        text = "".join(
            json.loads(line[6:])["delta"].get("text", "")
            for line in content.decode().splitlines()
            if line.startswith("data: ") and "content_block_delta" in line
        )
        assert text == "Hello from the fake provider. The quick brown fox jumps over the lazy dog."
