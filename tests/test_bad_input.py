"""Bad input: SSE framing that must not depend on how bytes arrive, and malformed, oddly encoded or
ambiguous request bodies on a provider host, which must get a provider-format answer and never
reach the provider unpoliced."""

import gzip
import importlib.util
import itertools
import json
import math
import re
import zlib
from typing import Any

import httpx
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from formats.sse import SSEEvent, SSEParser, parse_event, read_json
from tests.conftest import RunningProxy
from tests.fake_provider import FakeProvider
from tests.fake_provider.server import HEADER_LIMIT
from tests.test_resilience import assert_still_serving
from tests.test_wire_fidelity import ENDPOINTS, body, client_for

# --- SSE framing: any split of the same bytes gives the same events -------------------------------


def _feed(pieces: list[bytes]) -> tuple[list[SSEEvent], bytes]:
    parser = SSEParser()
    events = [event for piece in pieces for event in parser.feed(piece)]
    return events, parser.flush()


def _split(data: bytes, cuts: list[int]) -> list[bytes]:
    points = sorted({0, len(data), *(c % (len(data) + 1) for c in cuts)})
    return [data[a:b] for a, b in itertools.pairwise(points)]


# Bytes rich in everything framing cares about: CR, LF, colons, field names, non-ASCII.
_framing_bytes = st.lists(
    st.sampled_from(
        [b"\r", b"\n", b"\r\n", b":", b" ", b"data", b"event", b"id", b"x", b"\xc3\xa9", b"{}", b"\xff"]
    ),
    max_size=60,
).map(b"".join)

# Field values as a provider could send them on one line (no line breaks of any kind).
_value = st.text(
    st.characters(codec="utf-8", exclude_categories=("Cs", "Cc", "Zl", "Zp"), exclude_characters="\x85"),
    max_size=12,
)
_field = st.one_of(
    st.tuples(st.just("data"), _value),
    st.tuples(st.just("event"), _value.filter(lambda v: v != "")),
    st.tuples(st.just(""), _value),  # a comment line
)
_events = st.lists(st.lists(_field, min_size=1, max_size=4), min_size=1, max_size=5)


@settings(max_examples=200, deadline=None)
@given(data=_framing_bytes, cuts=st.lists(st.integers(min_value=0, max_value=10_000), max_size=12))
def test_sse_events_do_not_depend_on_how_the_bytes_are_split(data: bytes, cuts: list[int]) -> None:
    whole, rest = _feed([data])
    pieces = _split(data, cuts)
    assert b"".join(pieces) == data
    split, split_rest = _feed(pieces)
    assert split == whole  # same raw, event and data
    assert split_rest == rest
    assert b"".join(e.raw for e in split) + split_rest == data
    # Byte by byte, the most extreme split.
    assert _feed([data[i : i + 1] for i in range(len(data))]) == (whole, rest)


_BLANK_LINE = re.compile(rb"(?:\r\n|\r(?!\n)|\n)(?:\r\n|\r|\n)")  # two line ends in a row


def _reference_feed(pieces: list[bytes]) -> tuple[list[bytes], bytes]:
    """Events' raw bytes as the grammar cuts them, searching the whole buffer after each piece
    (quadratic, and plainly right): what SSEParser's shortcut for LF-only streams must agree with."""
    buffer, raws = b"", []
    for piece in pieces:
        buffer += piece
        start = 0
        while match := _BLANK_LINE.search(buffer, start):
            if match.end() == len(buffer) and buffer.endswith(b"\r"):
                break  # that CR may be the first half of a CRLF
            raws.append(buffer[start : match.end()])
            start = match.end()
        buffer = buffer[start:]
    return raws, buffer


@settings(max_examples=300, deadline=None)
@given(
    lf_only=_framing_bytes.map(lambda b: b.replace(b"\r", b"")),
    rest=_framing_bytes,
    cuts=st.lists(st.integers(min_value=0, max_value=10_000), max_size=12),
)
def test_sse_events_are_cut_by_the_grammar_before_and_after_a_cr(
    lf_only: bytes, rest: bytes, cuts: list[int]
) -> None:
    """A stream is cut alike whether its lines end in LF alone (as providers write them), or a
    CR turns up at any point."""
    for data in (lf_only, lf_only + rest):
        pieces = _split(data, cuts)
        events, left = _feed(pieces)
        assert ([e.raw for e in events], left) == _reference_feed(pieces)


@settings(max_examples=200, deadline=None)
@given(
    events=_events,
    ending=st.sampled_from(["\n", "\r\n", "\r"]),
    tail=_framing_bytes,
    cuts=st.lists(st.integers(min_value=0, max_value=10_000), max_size=12),
)
def test_sse_events_parse_alike_for_every_line_ending_and_split(
    events: list[list[tuple[str, str]]], ending: str, tail: bytes, cuts: list[int]
) -> None:
    expected: list[tuple[str | None, str]] = []
    stream = ""
    for fields in events:
        name: str | None = None
        data: list[str] = []
        for field, value in fields:
            stream += f"{field}: {value}{ending}" if field else f":{value}{ending}"
            if field == "event":
                name = value
            elif field == "data":
                data.append(value)
        stream += ending
        expected.append((name, "\n".join(data)))
    encoded = stream.encode()
    # A cut-off event after the complete ones stays unparsed until flush().
    partial = tail.replace(b"\r", b"").replace(b"\n", b"")
    parsed, rest = _feed(_split(encoded + partial, cuts))
    if ending == "\r" and not partial:
        # A final CR may be the first half of a CRLF: the last event waits for the next byte, or
        # for the end of the stream, where the relay polices what is left as an event.
        assert rest.endswith(b"\r\r")
        parsed, rest = [*parsed, parse_event(rest)], b""
    assert [(e.event, e.data) for e in parsed] == expected
    assert b"".join(e.raw for e in parsed) + rest == encoded + partial
    assert rest == partial


def _whatwg_event(raw: bytes) -> tuple[str | None, str]:
    """An event's type and data by the WHATWG grammar, line by line: what ``parse_event``'s
    shortcut for the usual one-line shapes must agree with."""
    name: str | None = None
    data: list[str] = []
    text = raw.decode("utf-8", errors="replace").removeprefix("\ufeff")
    for line in text.replace("\r\n", "\n").replace("\r", "\n").split("\n"):
        field, _, value = line.partition(":")
        if not line or not field:
            continue
        value = value.removeprefix(" ")
        if field == "event":
            name = value
        elif field == "data":
            data.append(value)
    return name, "\n".join(data)


@settings(max_examples=400, deadline=None)
@given(
    head=st.sampled_from([b"data: ", b"data:", b"event: ", b"event: x\ndata: ", b"\xef\xbb\xbfdata: ", b""]),
    body=_framing_bytes,
    end=st.sampled_from([b"\n\n", b"\r\n\r\n", b"\n", b""]),
)
def test_an_event_reads_alike_whatever_its_shape(head: bytes, body: bytes, end: bytes) -> None:
    raw = head + body + end
    event = parse_event(raw)
    assert (event.event, event.data) == _whatwg_event(raw) and event.raw == raw


def _same_json(a: Any, b: Any) -> bool:
    """Equal and of the same types throughout (1 is not 1.0), NaN equal to NaN."""
    if type(a) is not type(b):
        return False
    if isinstance(a, float):
        return a == b or (math.isnan(a) and math.isnan(b))
    if isinstance(a, list):
        return len(a) == len(b) and all(_same_json(x, y) for x, y in zip(a, b, strict=True))
    if isinstance(a, dict):
        return list(a) == list(b) and all(_same_json(a[k], b[k]) for k in a)
    return bool(a == b)


_json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats() | st.text(),
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=4), inner, max_size=4),
    max_leaves=12,
)
# Texts near JSON: valid documents, then bits of its syntax, numbers and escapes in any order.
_json_texts = st.one_of(
    st.builds(json.dumps, _json_values, ensure_ascii=st.booleans()),
    st.lists(
        st.sampled_from(
            [
                "{",
                "}",
                "[",
                "]",
                ",",
                ":",
                '"',
                "\\",
                "u",
                "d800",
                "00",
                "-",
                "0",
                "1",
                ".",
                "e",
                "E",
                "+",
                "NaN",
                "Infinity",
                "true",
                "nul",
                " ",
                "\t",
                "\n",
                "\x01",
                "\ufeff",
                "\u2028",
                "é",
                '"a"',
            ]
        ),
        max_size=30,
    ).map("".join),
)


@settings(max_examples=600, deadline=None)
@given(text=_json_texts)
def test_an_events_json_is_read_as_json_loads_reads_it(text: str) -> None:
    try:
        expected = json.loads(text)
    except ValueError:
        with pytest.raises(ValueError):
            read_json(text)
        return
    assert _same_json(read_json(text), expected)


def test_json_that_its_fast_parser_refuses_is_still_read() -> None:
    deep = "[" * 300 + "]" * 300
    for text in ['"\\ud800"', '{"a": "x\\udc00y"}', deep]:
        assert _same_json(read_json(text), json.loads(text))


def test_sse_data_may_contain_unicode_line_separators() -> None:
    payload = '{"text":"a\u2028b\x0cc"}'
    (event,) = SSEParser().feed(f"data: {payload}\n\n".encode())
    assert event.data == payload


# --- Bad request bodies through a real proxy ------------------------------------------------------

OPENAI = ENDPOINTS["chat"][0]
ANTHROPIC = ENDPOINTS["messages"][0]


def _provider_error(api: str, response: httpx.Response) -> str:
    """The error message, after checking the body is the provider's own error format."""
    assert response.headers["content-type"].startswith("application/json")
    error = response.json()
    if api == "messages":
        assert error["type"] == "error"
    assert isinstance(error["error"], dict)
    assert isinstance(error["error"]["message"], str)
    return str(error["error"]["message"])


def _post(
    proxy: RunningProxy, api: str, content: bytes, headers: dict[str, str] | None = None
) -> httpx.Response:
    with client_for(proxy) as client:
        return client.post(
            ENDPOINTS[api][0],
            content=content,
            headers={"content-type": "application/json", **(headers or {})},
        )


def _json(api: str, prompt: str) -> bytes:
    return json.dumps(body(api, prompt, False)).encode()


@pytest.mark.parametrize("api", ["chat", "messages"])
@pytest.mark.parametrize(
    "content",
    [
        b'{"model": "gpt-4o", "messages": [',
        b"not json at all",
        b"",
        b"\xff\xfe\x00garbage",
        b"[1, 2]",
        b'"a string"',
        b"42",
        b"null",
    ],
    ids=["truncated", "text", "empty", "binary", "array", "string", "number", "null"],
)
def test_a_body_that_is_not_a_json_object_gets_a_provider_format_400(
    noop: RunningProxy, fake: FakeProvider, api: str, content: bytes
) -> None:
    before = len(fake.requests)
    response = _post(noop, api, content)
    assert response.status_code == 400
    assert "could not read" in _provider_error(api, response)
    assert len(fake.requests) == before, "nothing reaches the provider"


@pytest.mark.parametrize("api", ["chat", "messages"])
def test_a_json_body_sent_as_text_plain_is_policed_as_json(
    proxies: dict[str, RunningProxy], fake: FakeProvider, api: str
) -> None:
    """Decision: the content type is not trusted to decide whether a body is policed. A JSON body
    labelled text/plain is parsed as JSON and policed like any other (the provider decides whether
    it accepts the label)."""
    guarded = proxies["block_requests"]
    before = len(fake.requests)
    blocked = _post(guarded, api, _json(api, "say forbidden-word"), {"content-type": "text/plain"})
    assert blocked.status_code == 403
    assert "forbidden-word" in _provider_error(api, blocked)
    assert len(fake.requests) == before
    content = _json(api, "say hello")
    allowed = _post(guarded, api, content, {"content-type": "text/plain"})
    assert allowed.status_code == 200
    assert fake.requests[-1].body == content


def _brotli(data: bytes) -> bytes:
    import brotli  # type: ignore[import-not-found]

    return bytes(brotli.compress(data))


def _zstd(data: bytes) -> bytes:
    import zstandard  # type: ignore[import-not-found]

    return bytes(zstandard.ZstdCompressor().compress(data))


def _available(module: str) -> pytest.MarkDecorator:
    return pytest.mark.skipif(
        importlib.util.find_spec(module) is None, reason=f"the {module} package is not installed"
    )


ENCODINGS = [
    pytest.param("gzip", gzip.compress, id="gzip"),
    pytest.param("deflate", zlib.compress, id="deflate"),
    pytest.param("br", _brotli, id="br", marks=_available("brotli")),
    pytest.param("zstd", _zstd, id="zstd", marks=_available("zstandard")),
]


@pytest.mark.parametrize("api", ["chat", "messages"])
@pytest.mark.parametrize(("encoding", "compress"), ENCODINGS)
@pytest.mark.parametrize("proxy_name", ["noop", "block_requests"])
def test_an_encoded_request_body_is_refused_with_a_provider_format_415(
    proxies: dict[str, RunningProxy],
    fake: FakeProvider,
    api: str,
    encoding: str,
    compress: object,
    proxy_name: str,
) -> None:
    """Decision: Luthien does not decompress request bodies (a decompression bomb would be the
    proxy's problem); a body with a content-encoding is refused, whatever it holds."""
    assert callable(compress)
    before = len(fake.requests)
    for prompt in ("say forbidden-word", "say hello"):
        response = _post(
            proxies[proxy_name], api, compress(_json(api, prompt)), {"content-encoding": encoding}
        )
        assert response.status_code == 415
        assert "content-encoding" in _provider_error(api, response)
    assert len(fake.requests) == before


@pytest.mark.parametrize("api", ["chat", "messages"])
def test_a_content_encoding_label_on_plain_json_is_refused_too(
    proxies: dict[str, RunningProxy], fake: FakeProvider, api: str
) -> None:
    """Were such a body policed as plain JSON, a provider that decodes it would see other bytes."""
    before = len(fake.requests)
    response = _post(proxies["block_requests"], api, _json(api, "say hello"), {"content-encoding": "gzip"})
    assert response.status_code == 415
    _provider_error(api, response)
    assert len(fake.requests) == before


@pytest.mark.parametrize("api", ["chat", "messages"])
def test_identity_content_encoding_is_ordinary(
    proxies: dict[str, RunningProxy], fake: FakeProvider, api: str
) -> None:
    response = _post(
        proxies["block_requests"], api, _json(api, "say forbidden-word"), {"content-encoding": "identity"}
    )
    assert response.status_code == 403
    content = _json(api, "say hello")
    assert _post(proxies["noop"], api, content, {"content-encoding": "identity"}).status_code == 200
    assert fake.requests[-1].body == content


DUPLICATES = {
    "chat": b'{"model": "gpt-4o", "messages": [{"role": "user", "content": "say forbidden-word"}], '
    b'"messages": [{"role": "user", "content": "say hello"}]}',
    "messages": b'{"model": "claude-sonnet-4-5", "max_tokens": 256, '
    b'"messages": [{"role": "user", "content": "say forbidden-word"}], '
    b'"messages": [{"role": "user", "content": "say hello"}]}',
    # Nested: the duplicate sits inside a message.
    "nested": b'{"model": "gpt-4o", "messages": [{"role": "user", "content": "say forbidden-word", '
    b'"content": "say hello"}]}',
}


@pytest.mark.parametrize("case", DUPLICATES)
@pytest.mark.parametrize("proxy_name", ["noop", "block_requests"])
def test_duplicate_keys_are_refused_because_parsers_disagree_on_them(
    proxies: dict[str, RunningProxy], fake: FakeProvider, case: str, proxy_name: str
) -> None:
    """Python keeps the last duplicate; a provider's parser may keep the first. The policy must see
    what the provider sees, so such a body is refused."""
    api = "chat" if case == "nested" else case
    before = len(fake.requests)
    response = _post(proxies[proxy_name], api, DUPLICATES[case])
    assert response.status_code == 400
    assert "duplicate" in _provider_error(api, response)
    assert len(fake.requests) == before
    assert all(b"forbidden-word" not in r.body for r in fake.requests[before:])


def test_a_header_the_provider_refuses_reaches_the_client_and_the_proxy_keeps_serving(
    noop: RunningProxy, fake: FakeProvider
) -> None:
    """Luthien sets no header limit of its own: the call is policed and sent on, and the provider's
    refusal (Cloudflare's 400 page, which the fake provider copies) reaches the client unchanged."""
    before = len(fake.requests)
    with client_for(noop) as client:
        response = client.post(OPENAI, json=body("chat", "hi", False), headers={"x-padding": "a" * 100_000})
    assert response.status_code == 400
    assert b"Request Header Or Cookie Too Large" in response.content
    assert len(fake.requests) == before, "the provider refused it before reading the body"
    assert_still_serving(noop)
    assert "Traceback" not in noop.log()


def test_a_large_header_within_the_provider_limit_is_forwarded(
    noop: RunningProxy, fake: FakeProvider
) -> None:
    padding = "a" * (HEADER_LIMIT - 4096)
    with client_for(noop) as client:
        response = client.post(OPENAI, json=body("chat", "hi", False), headers={"x-padding": padding})
    assert response.status_code == 200
    assert fake.requests[-1].headers["x-padding"] == padding
