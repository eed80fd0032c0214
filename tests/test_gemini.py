"""Gemini through a real proxy: google-genai, unmodified, through HTTPS_PROXY to the fake provider
(whole answers and SSE streams, function calls, countTokens), and the wire itself byte for byte."""

import json
import ssl
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from tests.conftest import POLICIES, RunningProxy, running_proxies
from tests.fake_provider import FakeProvider
from tests.fake_provider.scenarios import DEFAULT_TEXT

HOST = "https://generativelanguage.googleapis.com"
MODEL = "gemini-2.5-flash"
SPECS = ["noop", "blocklist", "block_requests", "rewrite_request", "uppercase"]


@pytest.fixture(scope="module")
def gproxies(
    fake: FakeProvider, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[dict[str, RunningProxy]]:
    root = tmp_path_factory.mktemp("gemini")
    with running_proxies({name: (POLICIES[name], ()) for name in SPECS}, fake, root) as running:
        yield running


def raw_client(proxy: RunningProxy) -> httpx.Client:
    context = ssl.create_default_context(cafile=str(proxy.bundle))
    return httpx.Client(proxy=proxy.url, verify=context, headers={"x-goog-api-key": "AIza-raw"}, timeout=10)


@pytest.fixture
def raw(gproxies: dict[str, RunningProxy]) -> Iterator[httpx.Client]:
    with raw_client(gproxies["noop"]) as client:
        yield client


def calls(prompt: str, **extra: object) -> list[dict[str, object]]:
    return [{"api": "gemini", "stream": stream, "prompt": prompt, **extra} for stream in (False, True)]


def body(prompt: str) -> dict[str, object]:
    tool = {"functionDeclarations": [{"name": "bash", "parameters": {"type": "OBJECT"}}]}
    return {"contents": [{"role": "user", "parts": [{"text": prompt}]}], "tools": [tool]}


@pytest.mark.parametrize("version", ["v1", "v1beta", "v1alpha"])
def test_the_sdk_gets_text_on_every_api_version(gproxies: dict[str, RunningProxy], version: str) -> None:
    for result in gproxies["noop"].sdk(*calls("Say hello", version=version)):
        assert result["ok"], result
        assert result["text"] == DEFAULT_TEXT and result["stop_reason"] == "STOP"


def test_the_sdk_gets_function_calls(gproxies: dict[str, RunningProxy]) -> None:
    for result in gproxies["noop"].sdk(*calls("[scenario:tool_call ls -la]")):
        assert result["ok"], result
        assert result["tool_calls"] == [{"name": "bash", "arguments": json.dumps({"command": "ls -la"})}]


def test_the_blocklist_removes_a_dangerous_call_and_says_so(gproxies: dict[str, RunningProxy]) -> None:
    for result in gproxies["blocklist"].sdk(*calls("[scenario:tool_call rm -rf /tmp/x]")):
        assert result["ok"], result
        assert result["tool_calls"] == []
        assert "Blocked the tool call `bash`" in result["text"], result
        assert result["stop_reason"] == "STOP"


def test_the_blocklist_lets_a_safe_call_through(gproxies: dict[str, RunningProxy]) -> None:
    for result in gproxies["blocklist"].sdk(*calls("[scenario:tool_call ls -la]")):
        assert result["ok"], result
        assert [c["name"] for c in result["tool_calls"]] == ["bash"]


def test_a_blocked_request_is_a_client_error_and_never_sent(
    gproxies: dict[str, RunningProxy], fake: FakeProvider
) -> None:
    fake.reset()
    prompts = [*calls("the forbidden-word"), {"api": "gemini", "count": True, "prompt": "forbidden-word"}]
    for result in gproxies["block_requests"].sdk(*prompts):
        assert not result["ok"] and result["error_type"] == "ClientError" and result["status"] == 403, result
        assert "PERMISSION_DENIED" in result["message"]
    assert not fake.requests


def test_count_tokens_goes_through_request_policy(
    gproxies: dict[str, RunningProxy], fake: FakeProvider
) -> None:
    (result,) = gproxies["rewrite_request"].sdk(
        {"api": "gemini", "count": True, "prompt": "I like apple pie"}
    )
    assert result["ok"] and result["total_tokens"] > 0, result
    sent = fake.requests[-1]
    assert sent.path.endswith(":countTokens")
    assert "orange" in json.dumps(sent.json) and "apple" not in json.dumps(sent.json)


def test_a_request_rewrite_reaches_the_provider(
    gproxies: dict[str, RunningProxy], fake: FakeProvider
) -> None:
    for result in gproxies["rewrite_request"].sdk(*calls("I like apple pie")):
        assert result["ok"], result
        assert fake.requests[-1].json["contents"][0]["parts"][0]["text"] == "I like orange pie"


def test_text_is_rewritten_whole_and_streamed(gproxies: dict[str, RunningProxy]) -> None:
    for result in gproxies["uppercase"].sdk(*calls("Say hello")):
        assert result["ok"], result
        words = result["text"].split(" ")
        assert words[1] == DEFAULT_TEXT.split(" ")[1].upper() and words[0] == DEFAULT_TEXT.split(" ")[0]


METHODS = ["generateContent", "streamGenerateContent?alt=sse", "streamGenerateContent"]
#: Every scenario with every method, but a mid-stream error, which exists only in streams.
NOOP_CASES = [
    (scenario, method)
    for scenario in ["text", "tool_call rm -rf /tmp/x", "thinking", "midstream_error"]
    for method in METHODS
    if scenario != "midstream_error" or method.startswith("stream")
]


@pytest.mark.parametrize(("scenario", "method"), NOOP_CASES)
def test_noop_is_byte_identical(raw: httpx.Client, fake: FakeProvider, scenario: str, method: str) -> None:
    response = raw.post(f"{HOST}/v1beta/models/{MODEL}:{method}", json=body(f"[scenario:{scenario}]"))
    assert response.status_code == 200
    assert response.content == fake.sent(-1)


def test_streams_are_incremental(raw: httpx.Client, fake: FakeProvider) -> None:
    url = f"{HOST}/v1beta/models/{MODEL}:streamGenerateContent?alt=sse"
    with raw.stream("POST", url, json=body("[scenario:gated]")) as response:
        chunks = response.iter_bytes()
        first = next(chunks)
        sent_so_far = bytes(fake.requests[-1].sent)
        fake.release(-1)
        rest = b"".join(chunks)
    assert first + rest == fake.sent(-1)
    assert first and len(sent_so_far) < len(fake.sent(-1))


def test_the_models_list_is_forwarded_and_other_methods_refused(
    raw: httpx.Client, fake: FakeProvider
) -> None:
    listed = raw.get(f"{HOST}/v1beta/models")
    assert listed.status_code == 200 and listed.content == fake.sent(-1)
    assert raw.get(f"{HOST}/v1beta/models/{MODEL}").json()["name"] == f"models/{MODEL}"
    fake.reset()
    for path in (f"/v1beta/models/{MODEL}:embedContent", "/v1beta/cachedContents", "/upload/v1beta/files"):
        refused = raw.post(HOST + path, json=body("hello"))
        assert refused.status_code == 403
        assert refused.json()["error"]["status"] == "PERMISSION_DENIED"
    assert not fake.requests


@pytest.mark.parametrize(
    "request_body",
    [
        {"contents": [{"parts": [{"file_data": {"file_uri": "https://x/f", "mime_type": "text/plain"}}]}]},
        {"contents": [{"parts": [{"mysteryPart": {"text": "rm -rf /"}}]}]},
        {"contents": [{"parts": [{"text": "hi"}]}], "cached_content": "cachedContents/abc"},
        {"contents": [{"parts": [{"text": "a", "TEXT": "b"}]}]},
        {
            "contents": [{"parts": [{"text": "hi"}]}],
            "systemInstruction": {"parts": []},
            "system_instruction": {},
        },
    ],
)
def test_what_a_policy_cannot_see_is_refused(
    gproxies: dict[str, RunningProxy], fake: FakeProvider, request_body: dict
) -> None:
    fake.reset()
    with raw_client(gproxies["rewrite_request"]) as client:  # a policy that reads requests
        response = client.post(f"{HOST}/v1beta/models/{MODEL}:generateContent", json=request_body)
    assert response.status_code == 400, response.text
    assert response.json()["error"]["status"] == "INVALID_ARGUMENT"
    assert not fake.requests


@pytest.mark.parametrize("request_body", [{"contents": [{"parts": [{"mysteryPart": {"text": "rm -rf /"}}]}]}])
def test_a_request_no_policy_reads_is_sent_as_it_came(
    raw: httpx.Client, fake: FakeProvider, request_body: dict
) -> None:
    """NoOp reads no request (docs/writing-policies.md, "What a policy inspects"): nothing is
    refused for want of a place in the view no policy looks at."""
    fake.reset()
    sent = json.dumps(request_body).encode()
    raw.post(f"{HOST}/v1beta/models/{MODEL}:generateContent", content=sent)
    assert fake.requests[-1].body == sent


@pytest.mark.parametrize("sse", [True, False])
def test_a_removed_call_in_a_stream_leaves_a_valid_stream_with_the_explanation(
    gproxies: dict[str, RunningProxy], sse: bool
) -> None:
    url = f"{HOST}/v1beta/models/{MODEL}:streamGenerateContent" + ("?alt=sse" if sse else "")
    with raw_client(gproxies["blocklist"]) as client:
        response = client.post(url, json=body("[scenario:tool_call rm -rf /tmp/x]"))
    assert response.status_code == 200
    events = _events(response.content, sse)
    parts = [p for e in events for c in e["candidates"] for p in c.get("content", {}).get("parts", [])]
    assert not any("functionCall" in part for part in parts)
    assert "Blocked the tool call `bash`" in "".join(p.get("text", "") for p in parts)
    assert events[-1]["candidates"][0]["finishReason"] == "STOP"


@pytest.mark.parametrize("sse", [True, False])
def test_a_kept_call_in_a_rewritten_stream_keeps_its_thought_signature(
    gproxies: dict[str, RunningProxy], fake: FakeProvider, sse: bool
) -> None:
    url = f"{HOST}/v1beta/models/{MODEL}:streamGenerateContent" + ("?alt=sse" if sse else "")
    with raw_client(gproxies["uppercase"]) as client:
        response = client.post(url, json=body("[scenario:tool_call ls -la]"))
    sent = [p for e in _events(fake.sent(-1), sse) for c in e["candidates"] for p in c["content"]["parts"]]
    got = [p for e in _events(response.content, sse) for c in e["candidates"] for p in c["content"]["parts"]]
    assert response.content != fake.sent(-1)  # the text was rewritten: the stream was written anew
    assert [p for p in got if "functionCall" in p] == [p for p in sent if "functionCall" in p]
    assert any("thoughtSignature" in p for p in got if "functionCall" in p)


def _events(data: bytes, sse: bool) -> list[dict[str, Any]]:
    if not sse:
        return json.loads(data)
    lines = data.decode().split("\r\n\r\n")
    assert lines[-1] == "", "an SSE stream ends with a whole event"
    return [json.loads(line.removeprefix("data: ")) for line in lines[:-1]]


def test_a_gemini_credential_is_forwarded_but_never_recorded(
    gproxies: dict[str, RunningProxy], fake: FakeProvider
) -> None:
    proxy = gproxies["noop"]
    context = ssl.create_default_context(cafile=str(proxy.bundle))
    secret, header_secret = "AIzaSyQUERYKEY-do-not-store-0123456789", "AIzaSyHEADERKEY-do-not-store-987654"
    with httpx.Client(proxy=proxy.url, verify=context, timeout=10) as client:
        url = f"{HOST}/v1beta/models/{MODEL}:generateContent?key={secret}"
        assert client.post(url, json=body("hello")).status_code == 200
        url = f"{HOST}/v1beta/models/{MODEL}:streamGenerateContent?alt=sse"
        assert (
            client.post(url, json=body("hello"), headers={"x-goog-api-key": header_secret}).status_code == 200
        )
    assert secret in fake.requests[-2].path and fake.requests[-1].headers["x-goog-api-key"] == header_secret
    db = Path(proxy.database_url.removeprefix("sqlite://"))
    stored = [path.read_bytes() for path in db.parent.glob(db.name + "*")]
    assert stored and b"generateContent?key=" in b"".join(stored)  # the calls are recorded...
    for key in (secret, header_secret):  # ...without their credentials
        assert not any(key.encode() in data for data in stored)
        assert key not in proxy.log()
