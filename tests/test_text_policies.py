"""Text policies: the streaming text rewriter, StringReplacementPolicy, AllCapsPolicy and
SecretRedactionPolicy, in-process over real provider streams (see tests/test_stream_relay.py)."""

import base64
import json
import random
import string
from collections import Counter
from collections.abc import Callable

import pytest
from pydantic import ValidationError

from controlplane.chunk_views import chunk_model
from controlplane.interface import ControlPlaneService
from controlplane.llm import ModelResponse, ModelResponseStream
from controlplane.models import ChunkVerdict, RequestMetadata, StreamingContext
from controlplane.policies.all_caps import AllCapsPolicy
from controlplane.policies.base import ChunkResult, PolicyHandler
from controlplane.policies.chunks import chunk_text, finish_chunk, text_chunk, tool_call_chunk
from controlplane.policies.secret_redaction import DETECTORS, SecretRedactionPolicy
from controlplane.policies.string_replacement import StringReplacementPolicy, match_case
from controlplane.policies.text_stream import PatternSet, Rule, StreamingTextRewriter, compile_pattern
from formats.sse import SSEParser
from tests.codecs import codec_for
from tests.control_planes import (
    Kind,
    control_plane_for,
    delivered,
    plain,
    request_decision,
    response_decision,
)
from tests.fake_provider.scenarios import DEFAULT_TEXT, Plan, Scenario
from tests.fake_provider.wire import Context, IdFactory
from tests.test_stream_relay import RENDERERS, client_text, pieces, provider_stream, relay

PATHS = list(RENDERERS)
METADATA = RequestMetadata(call_id="c", host="h", path="/v1/chat/completions")


# --- helpers -----------------------------------------------------------------------------------


def stream_saying(path: str, text: str) -> bytes:
    """A provider stream whose answer is ``text``, one word (with its trailing space) per event."""
    body = {"model": "m", "stream": True, "max_tokens": 10, "stream_options": {"include_usage": True}}
    plan = Plan(Scenario(), text=text)
    return b"".join(RENDERERS[path](plan, Context(body, IdFactory(seed=1))).chunks)


def assert_closed_validly(path: str, out: bytes) -> None:
    events = SSEParser().feed(out)
    last = events[-1]
    if path == "/v1/chat/completions":
        assert last.data == "[DONE]"
        finishes = [
            c.get("finish_reason")
            for e in events[:-1]
            if isinstance(data := e.json(), dict)
            for c in data.get("choices", [])
        ]
        assert "stop" in finishes
    elif path == "/v1/responses":
        completed = last.json()
        assert completed["type"] == "response.completed"
        texts = [
            part["text"]
            for item in completed["response"]["output"]
            if item["type"] == "message"
            for part in item["content"]
        ]
        assert "".join(texts) == client_text(path, out)
    else:
        assert last.json()["type"] == "message_stop"


def stream_context() -> StreamingContext:
    return StreamingContext(stream_id="s", call_id="c", metadata=METADATA, request_data={"messages": []})


async def run_chunks(
    policy: PolicyHandler, chunks: list[ModelResponseStream]
) -> tuple[list[ModelResponseStream], list[ChunkResult]]:
    """Runs chunks through the policy's stream hooks directly; returns what the client gets."""
    context = stream_context()
    results = []
    for chunk in chunks:
        results += [r async for r in policy.apply_streaming_chunk_policy(chunk, context)]
    results += [r async for r in policy.on_stream_end(context)]
    return [r.value for r in results if r.value is not None], results


async def stream_chunks(
    control_plane: ControlPlaneService, chunks: list[ModelResponseStream]
) -> tuple[list[ModelResponseStream], list[ChunkVerdict]]:
    """Like ``run_chunks``, as one stream through a control plane (see ``control_plane_for``)."""
    context = await control_plane.create_streaming_context({"messages": []}, METADATA)
    results, out = [], []
    for chunk in chunks:
        given = plain(chunk)
        answers = [r async for r in control_plane.process_streaming_chunks(given, context)]
        out += [c for r in answers if (c := delivered(r, given)) is not None]
        results += answers
    closing = [r async for r in control_plane.close_streaming_context(context)]
    return out + [chunk_model(r.value) for r in closing if r.value is not None], results + closing


LIKE = text_chunk(
    ModelResponseStream(id="chatcmpl-1", created=1, model="m", choices=[]),  # type: ignore[arg-type]
    "",
)


def text_chunks(*texts: str) -> list[ModelResponseStream]:
    return [text_chunk(LIKE, text) for text in texts]


def joined(chunks: list[ModelResponseStream]) -> str:
    return "".join(chunk_text(c) for c in chunks)


def replacement_policy(*replacements: dict, apply_to: str = "responses") -> StringReplacementPolicy:
    config = StringReplacementPolicy.Config.model_validate(
        {"replacements": list(replacements), "apply_to": apply_to}
    )
    return StringReplacementPolicy(config)


def response_saying(text: str) -> ModelResponse:
    return ModelResponse(
        id="r", model="m", choices=[{"index": 0, "message": {"role": "assistant", "content": text}}]
    )


# --- the rewriter ------------------------------------------------------------------------------

QUICK = [{"find": "quick brown", "replace": "slow red"}]


def literal_rewriter(find: str, replace: str) -> StreamingTextRewriter:
    rule = Rule(compile_pattern(find, literal=True), lambda m: (replace, find), fixed=True)
    return PatternSet([rule]).rewriter()


def regex_rewriter(pattern: str, replace: str) -> StreamingTextRewriter:
    rule = Rule(compile_pattern(pattern), lambda m: (m.expand(replace), pattern))
    return PatternSet([rule]).rewriter()


def feed_all(rewriter: StreamingTextRewriter, pieces: list[str]) -> str:
    return "".join(rewriter.feed(piece) for piece in pieces) + rewriter.flush()


@pytest.mark.parametrize(
    "make",
    [
        lambda: literal_rewriter("quick brown", "slow red"),
        lambda: regex_rewriter(r"qu(ick) (br)own", r"sl\1 \2"),
    ],
)
def test_a_match_split_anywhere_is_found(make: Callable[[], StreamingTextRewriter]) -> None:
    text = "The quick brown fox, the quick brown dog."
    expected = make().transform(text)
    assert expected != text
    for a in range(len(text) + 1):
        for b in range(a, len(text) + 1):
            assert feed_all(make(), [text[:a], text[a:b], text[b:]]) == expected, (a, b)


async def test_a_match_split_anywhere_across_chunks_is_found_by_the_policy(control_plane_kind: Kind) -> None:
    text = "Hello. The quick brown fox."
    async with control_plane_for(replacement_policy(*QUICK), control_plane_kind) as control_plane:
        for cut in range(len(text) + 1):
            chunks = [*text_chunks(text[:cut], text[cut:]), finish_chunk(LIKE, "stop")]
            out, _ = await stream_chunks(control_plane, chunks)
            assert joined(out) == "Hello. The slow red fox.", cut
            assert out[-1].choices[0].finish_reason == "stop"


def test_regex_partial_matching_holds_back_only_what_it_must() -> None:
    rewriter = regex_rewriter("xyz", "!")
    assert rewriter.feed("abc") == "abc" and rewriter.held == ""
    assert rewriter.feed("abx") == "ab" and rewriter.held == "x"
    assert rewriter.feed("yz and") == "! and"
    phone = regex_rewriter(r"\d{3}-\d{4}", "[phone]")
    assert phone.feed("call 555-12") == "call " and phone.held == "555-12"
    assert phone.feed("34 now") == "[phone] now"
    literal = literal_rewriter("quick", "slow")
    assert literal.feed("The qu") == "The " and literal.held == "qu"
    assert literal.feed("ack") == "quack"
    assert literal.feed("The quick") == "The slow"  # a whole literal at the end is final


def test_held_text_is_flushed() -> None:
    rewriter = literal_rewriter("quick brown", "slow red")
    assert rewriter.feed("The quick") == "The "
    assert rewriter.flush() == "quick"
    assert rewriter.held == "" and rewriter.flush() == ""


@pytest.mark.parametrize("path", PATHS)
@pytest.mark.parametrize("scenario", ["text", "thinking", "tool_call ls -la", "two_tools", "midstream_error"])
async def test_streams_without_a_match_pass_byte_identical(
    path: str, scenario: str, control_plane_kind: Kind
) -> None:
    original = provider_stream(path, scenario)
    policies: list[PolicyHandler] = [
        # Each of these holds text back on the way ("quick " could start "quick red"; "dog." could
        # start "dog. END"), then releases it unchanged.
        replacement_policy({"find": "quick red", "replace": "x"}, {"find": "dog. END", "replace": "x"}),
        replacement_policy({"find": r"\bfox(es)? jumps? under", "replace": "x", "regex": True}),
        SecretRedactionPolicy(SecretRedactionPolicy.Config(redact_responses=True)),
    ]
    for policy in policies:
        out = await relay(path, policy, pieces(original, 3), kind=control_plane_kind)
        assert out == original, type(policy).__name__


async def test_held_text_is_flushed_before_the_finishing_chunk() -> None:
    policy = replacement_policy({"find": "quick", "replace": "slow"}, {"find": "dog. END", "replace": "x"})
    chunks = [*text_chunks("The quick ", "lazy ", "dog."), finish_chunk(LIKE, "stop")]
    out, _ = await run_chunks(policy, chunks)
    assert joined(out) == "The slow lazy dog."
    assert chunk_text(out[-2]) == "dog." and out[-1].choices[0].finish_reason == "stop"
    # Before a tool call, too: the text comes first.
    call = tool_call_chunk(LIKE, 0, "call_1", "bash", '{"command":"ls"}')
    out, _ = await run_chunks(policy, [*text_chunks("quick dog."), call, finish_chunk(LIKE, "tool_calls")])
    assert [chunk_text(c) for c in out[:2]] == ["slow ", "dog."] and out[2] is call


async def test_held_text_is_flushed_at_the_end_of_the_stream() -> None:
    policy = replacement_policy({"find": "dog. END", "replace": "x"})
    # Nothing rewritten: the held chunk itself is released, unchanged.
    chunks = text_chunks("lazy ", "dog.")
    out, _ = await run_chunks(policy, chunks)
    assert out == chunks and out[1] is chunks[1]
    # After a rewrite: the held text is injected.
    policy = replacement_policy({"find": "lazy", "replace": "busy"}, {"find": "dog. END", "replace": "x"})
    out, _ = await run_chunks(policy, text_chunks("lazy ", "dog."))
    assert [chunk_text(c) for c in out] == ["busy ", "dog."]


async def test_a_chunk_with_nothing_to_hold_passes_as_the_same_object() -> None:
    chunks = text_chunks("Hello ", "world")
    out, _ = await run_chunks(replacement_policy(*QUICK), chunks)
    assert out[0] is chunks[0] and out[1] is chunks[1]


# --- StringReplacementPolicy -------------------------------------------------------------------


def test_literal_regex_ignore_case_and_preserve_case() -> None:
    literal = replacement_policy({"find": "a.b", "replace": r"\1"})
    assert literal.rewrite("a.b axb") == r"\1 axb"  # a literal: no regex, no template
    groups = replacement_policy({"find": r"(\w+)@(\w+)\.com", "replace": r"\2 at \g<1>", "regex": True})
    assert groups.rewrite("mail bob@example.com now") == "mail example at bob now"
    assert replacement_policy({"find": "hello", "replace": "bye"}).rewrite("Hello hello") == "Hello bye"
    ignore = replacement_policy({"find": "hello", "replace": "bye", "ignore_case": True})
    assert ignore.rewrite("HELLO Hello hello") == "bye bye bye"
    preserve = replacement_policy({"find": "hello", "replace": "bye", "preserve_case": True})
    assert preserve.rewrite("HELLO, Hello, hello, hElLo") == "BYE, Bye, bye, bye"
    assert match_case("Quick Brown", "slow red") == "Slow Red"
    regex_preserve = replacement_policy(
        {"find": r"colou?r", "replace": "hue", "regex": True, "preserve_case": True}
    )
    assert regex_preserve.rewrite("Colour COLOR color") == "Hue HUE hue"


def test_replacements_apply_in_one_pass() -> None:
    swap = replacement_policy({"find": "cat", "replace": "dog"}, {"find": "dog", "replace": "cat"})
    assert swap.rewrite("cat chases dog") == "dog chases cat"
    longest = replacement_policy({"find": "foo", "replace": "1"}, {"find": "foobar", "replace": "2"})
    assert longest.rewrite("foobar foo") == "2 1"


async def test_requests_are_rewritten_in_every_message_text() -> None:
    request = {
        "model": "m",
        "messages": [
            {"role": "system", "content": [{"type": "text", "text": "Never say apple."}]},
            {"role": "user", "content": "I like apple pie"},
            {
                "role": "assistant",
                "content": None,
                "tool_calls": [
                    {"id": "c1", "type": "function", "function": {"name": "f", "arguments": '{"q":"apple"}'}}
                ],
            },
            {"role": "tool", "tool_call_id": "c1", "content": "an apple a day"},
            {"role": "user", "content": [{"type": "text", "text": "Apple?"}, {"type": "image_url"}]},
        ],
    }
    snapshot = json.loads(json.dumps(request))
    policy = replacement_policy({"find": "apple", "replace": "pear", "preserve_case": True}, apply_to="both")
    result = await policy.apply_request_policies(request, METADATA)
    assert result.allowed and result.value is not None
    messages = result.value["messages"]
    assert messages[0]["content"][0]["text"] == "Never say pear."
    assert messages[1]["content"] == "I like pear pie"
    assert messages[2]["tool_calls"][0]["function"]["arguments"] == '{"q":"apple"}'  # not message text
    assert messages[3]["content"] == "an pear a day"
    assert messages[4]["content"] == [{"type": "text", "text": "Pear?"}, {"type": "image_url"}]
    assert result.metadata == {"replacements": 4} and result.reason == "replaced 4 occurrences"
    assert request == snapshot  # the input is not changed in place
    untouched = await replacement_policy({"find": "apple", "replace": "pear"}).apply_request_policies(
        request, METADATA
    )
    assert untouched.value is request and untouched.reason is None


async def test_non_streaming_responses_are_rewritten(control_plane_kind: Kind) -> None:
    policy = replacement_policy(*QUICK)
    result = await response_decision(policy, response_saying(DEFAULT_TEXT), METADATA, control_plane_kind)
    assert result.value is not None
    assert result.value.choices[0].message.content == DEFAULT_TEXT.replace("quick brown", "slow red")  # type: ignore[union-attr]
    assert result.metadata == {"replacements": 1}
    requests_only = replacement_policy(*QUICK, apply_to="requests")
    result = await response_decision(
        requests_only, response_saying(DEFAULT_TEXT), METADATA, control_plane_kind
    )
    assert result.value.choices[0].message.content == DEFAULT_TEXT  # type: ignore[union-attr]


@pytest.mark.parametrize("path", PATHS)
@pytest.mark.parametrize("regex", [False, True])
async def test_a_match_split_across_two_events_is_replaced_in_every_format(
    path: str, regex: bool, control_plane_kind: Kind
) -> None:
    original = provider_stream(path, "text")
    assert "quick brown" not in client_text(path, original).split(" quick ")[0]  # arrives as two events
    find = r"quick (b)rown" if regex else "quick brown"
    replace = r"slow \1lack" if regex else "slow black"
    policy = replacement_policy({"find": find, "replace": replace, "regex": regex})
    for seed in range(3):
        out = await relay(path, policy, pieces(original, seed), kind=control_plane_kind)
        assert client_text(path, out) == DEFAULT_TEXT.replace("quick brown", "slow black")
        assert_closed_validly(path, out)


async def test_stream_replacements_are_recorded(control_plane_kind: Kind) -> None:
    async with control_plane_for(replacement_policy(*QUICK), control_plane_kind) as control_plane:
        chunks = [*text_chunks("The quick ", "brown fox"), finish_chunk(LIKE, "stop")]
        _, results = await stream_chunks(control_plane, chunks)
    recorded = [r for r in results if r.reason]
    assert [(r.reason, r.metadata) for r in recorded] == [("replaced 1 occurrence", {"replacements": 1})]


def test_invalid_config_is_rejected_clearly() -> None:
    with pytest.raises(ValidationError, match=r"invalid regular expression '\(unclosed'"):
        replacement_policy({"find": "(unclosed", "replace": "x", "regex": True})
    with pytest.raises(ValidationError, match="invalid replacement"):
        replacement_policy({"find": "(a)", "replace": r"\2", "regex": True})
    with pytest.raises(ValidationError, match="matches the empty string"):
        replacement_policy({"find": "x*", "replace": "y", "regex": True})
    with pytest.raises(ValidationError):
        replacement_policy({"find": "a", "replace": "b"}, apply_to="sometimes")
    with pytest.raises(ValidationError):
        StringReplacementPolicy.Config.model_validate({"replacements": []})
    replacement_policy({"find": "(unclosed", "replace": "x"})  # a literal may be anything


# --- AllCapsPolicy -----------------------------------------------------------------------------


@pytest.mark.parametrize("path", PATHS)
@pytest.mark.parametrize("scenario", ["text", "thinking", "tool_call ls -la"])
async def test_all_caps_in_every_format(path: str, scenario: str, control_plane_kind: Kind) -> None:
    original = provider_stream(path, scenario)
    out = await relay(path, AllCapsPolicy(), pieces(original, 5), kind=control_plane_kind)
    expected = client_text(path, original).upper()
    assert client_text(path, out) == expected and expected.isupper()


async def test_all_caps_non_streaming(control_plane_kind: Kind) -> None:
    result = await response_decision(
        AllCapsPolicy(), response_saying("Hello, World"), METADATA, control_plane_kind
    )
    assert result.value.choices[0].message.content == "HELLO, WORLD"  # type: ignore[union-attr]


# --- SecretRedactionPolicy ---------------------------------------------------------------------

_RNG = random.Random(20240611)
_ALNUM = string.ascii_letters + string.digits


def _random(alphabet: str, n: int) -> str:
    return "".join(_RNG.choice(alphabet) for _ in range(n))


def _b64url(data: dict) -> str:
    return base64.urlsafe_b64encode(json.dumps(data).encode()).decode().rstrip("=")


def _private_key() -> str:
    body = base64.b64encode(random.Random(7).randbytes(600)).decode()
    lines = "\n".join(body[i : i + 64] for i in range(0, len(body), 64))
    return f"-----BEGIN RSA {'PRIVATE'} KEY-----\n{lines}\n-----END RSA {'PRIVATE'} KEY-----"


# kind -> (text with the secret planted in it, the secret itself). Built at runtime so that no
# real-looking key sits in the source.
def planted_secrets() -> dict[str, tuple[str, str]]:
    openai = "sk-" + "proj-" + _random(_ALNUM + "_-", 120)
    legacy_openai = "sk-" + _random(_ALNUM, 48)
    anthropic = "sk-" + "ant-api03-" + _random(_ALNUM + "_-", 93) + "AA"
    aws_id = "AK" + "IA" + _random(string.ascii_uppercase + string.digits, 16)
    aws_secret = _random(_ALNUM + "/+", 40)
    github = "gh" + "p_" + _random(_ALNUM, 36)
    github_pat = "github" + "_pat_" + _random(_ALNUM, 22) + "_" + _random(_ALNUM, 59)
    slack = (
        "xo"
        + "xb-"
        + _random(string.digits, 12)
        + "-"
        + _random(string.digits, 13)
        + "-"
        + _random(_ALNUM, 24)
    )
    google = "AI" + "za" + _random(_ALNUM + "_-", 35)
    jwt = ".".join(
        [
            _b64url({"alg": "HS256", "typ": "JWT"}),
            _b64url({"sub": "42", "admin": True}),
            _random(_ALNUM + "_-", 43),
        ]
    )
    private_key = _private_key()
    password = "Tr0ub4dor&3-" + _random(_ALNUM, 8)
    return {
        "openai_api_key": (f"Use the key {openai} for the call.", openai),
        "openai_api_key (legacy)": (f"OPENAI key: {legacy_openai}", legacy_openai),
        "anthropic_api_key": (f'client = Anthropic(api_key="{anthropic}")', anthropic),
        "aws_access_key_id": (f"aws_access_key_id = {aws_id}\n", aws_id),
        "aws_secret_access_key": (f"[default]\naws_secret_access_key = {aws_secret}\nregion = x", aws_secret),
        "github_token": (f"git clone https://{github}@github.com/o/r.git", github),
        "github_token (pat)": (f"token: {github_pat}", github_pat),
        "slack_token": (f"SLACK={slack[:4]} is not it; the bot uses {slack}.", slack),
        "google_api_key": (f"https://maps.googleapis.com/x?key={google}&q=1", google),
        "private_key": (f"Here is the key:\n{private_key}\nDone.", private_key.split("\n")[3]),
        "jwt": (f"Authorization: Bearer {jwt}", jwt),
        "secret_assignment": (f"# .env\nDB_HOST=db\nDB_PASSWORD={password}\nDEBUG=1\n", password),
        "secret_assignment (quoted)": (f'db_password = "{password}"  # fixme', password),
    }


SECRETS = planted_secrets()


@pytest.mark.parametrize("case", SECRETS)
def test_every_detector_finds_its_secret(case: str) -> None:
    kind = case.split(" ")[0]
    text, secret = SECRETS[case]
    counts: Counter[str] = Counter()
    redacted = SecretRedactionPolicy().redact(text, counts)
    assert secret not in redacted
    assert f"[REDACTED:{kind}]" in redacted
    assert counts == {kind: 1}
    # Only the secret goes: what surrounds it stays.
    assert redacted.split(f"[REDACTED:{kind}]")[0] == text[: len(redacted.split(f"[REDACTED:{kind}]")[0])]


def test_the_secret_of_an_assignment_is_recorded_by_its_own_kind() -> None:
    key = SECRETS["openai_api_key"][1]
    counts: Counter[str] = Counter()
    redacted = SecretRedactionPolicy().redact(f"export OPENAI_API_KEY={key}\n", counts)
    assert redacted == "export OPENAI_API_KEY=[REDACTED:openai_api_key]\n" and counts == {"openai_api_key": 1}


def test_what_is_recorded_keeps_secrets_out_and_marks_where_they_were() -> None:
    key = SECRETS["openai_api_key"][1]
    policy = SecretRedactionPolicy()
    assert policy.redact_for_recording(f"use {key} now") == "use [secret not recorded: openai_api_key] now"
    # Tool-call arguments: a secret known only by its JSON key is kept out too.
    arguments = policy.redact_for_recording('{"user": "ada", "password": "hunter2-horse"}')
    assert "hunter2-horse" not in arguments and json.loads(arguments)["user"] == "ada"
    assert policy.redact_for_recording("nothing to hide") == "nothing to hide"


BENIGN = [
    "The quick brown fox jumps over the lazy dog. Tokens, secrets and passwords are discussed here.",
    "max_tokens = 4096\nMAX_TOKENS=4096\nnum_tokens = len(tokens)",
    "password = input('Password: ')\ntoken = get_token()\nif token == expected: pass",
    "api_key = os.environ['OPENAI_API_KEY']\nconst API_KEY = process.env.API_KEY;",
    "SECRET_KEY = settings.SECRET_KEY\nTOKEN_URL = 'https://oauth2.example.com/token'",
    "tokenizer = AutoTokenizer.from_pretrained('gpt2')\nsecretary = 'Jane Doe'",
    "GITHUB_TOKEN=$GITHUB_TOKEN\nTOKEN=${{ secrets.GH_TOKEN }}\nPASSWORD=<your password>\nAPI_KEY=None",
    "Keys look like sk-... or sk-proj-...; scikit-learn is sometimes called sk-learn-compatible-library.",
    "AKIA is the prefix of AWS access key ids; eyJ is base64 for '{\"'; ghp_ and xoxb- are prefixes.",
    'PEM_HEADER = "-----BEGIN RSA ' + 'PRIVATE KEY-----"  # the marker alone',
    "The SHA is 3f786850e387550fdab836ed7e6dc881de23001b and the UUID 123e4567-e89b-12d3-a456-426614174000.",
    "def check(password: str, token_type: str = 'bearer') -> bool: ...",
]


@pytest.mark.parametrize("text", BENIGN)
def test_ordinary_prose_and_code_are_left_alone(text: str) -> None:
    counts: Counter[str] = Counter()
    assert SecretRedactionPolicy().redact(text, counts) == text and not counts


async def test_no_secret_survives_a_request(control_plane_kind: Kind) -> None:
    openai = SECRETS["openai_api_key"][1]
    aws_id = SECRETS["aws_access_key_id"][1]
    github = SECRETS["github_token"][1]
    anthropic = SECRETS["anthropic_api_key"][1]
    password = SECRETS["secret_assignment"][1]
    arguments = json.dumps({"command": f"curl -H 'Authorization: Bearer {github}' https://api.github.com"})
    request = {
        "model": "m",
        "messages": [
            {"role": "system", "content": f"Deploy with AWS key {aws_id}."},
            {"role": "user", "content": [{"type": "text", "text": f"my key is {openai}"}]},
            {
                "role": "assistant",
                "content": "Running it.",
                "tool_calls": [
                    {"id": "c1", "type": "function", "function": {"name": "bash", "arguments": arguments}},
                    {
                        "id": "c2",
                        "type": "function",
                        "function": {
                            "name": "login",
                            "arguments": json.dumps({"user": "me", "password": password}),
                        },
                    },
                    {"id": "c3", "type": "function", "function": {"name": "ls", "arguments": '{"path":"."}'}},
                ],
            },
            {"role": "tool", "tool_call_id": "c1", "content": f"ANTHROPIC_API_KEY={anthropic}\nok"},
            {"role": "tool", "tool_call_id": "c2", "content": "logged in"},
            {"role": "user", "content": "thanks"},
        ],
    }
    result = await request_decision(SecretRedactionPolicy(), request, METADATA, control_plane_kind)
    assert result.allowed and result.value is not None
    dumped = json.dumps(result.value)
    for secret in (openai, aws_id, github, anthropic, password):
        assert secret not in dumped
        assert secret not in str(result.reason) and secret not in repr(result.metadata)
    calls = result.value["messages"][2]["tool_calls"]
    assert json.loads(calls[0]["function"]["arguments"])["command"].startswith(
        "curl -H 'Authorization: Bearer [REDACTED:github_token]'"
    )
    assert json.loads(calls[1]["function"]["arguments"]) == {
        "user": "me",
        "password": "[REDACTED:secret_assignment]",
    }
    assert calls[2]["function"]["arguments"] == '{"path":"."}'  # unchanged: byte for byte
    assert result.value["messages"][3]["content"] == "ANTHROPIC_API_KEY=[REDACTED:anthropic_api_key]\nok"
    assert result.metadata == {
        "redacted": {
            "anthropic_api_key": 1,
            "aws_access_key_id": 1,
            "github_token": 1,
            "openai_api_key": 1,
            "secret_assignment": 1,
        }
    }
    assert result.reason == (
        "redacted 5 secrets (anthropic_api_key, aws_access_key_id, github_token, openai_api_key, "
        "secret_assignment)"
    )
    assert str(request).count(openai) == 1  # the input is not changed in place


async def test_a_secret_in_an_assistants_reasoning_does_not_survive_a_request(
    control_plane_kind: Kind,
) -> None:
    """Reasoning sent back in a conversation (Gemini's thought parts, Anthropic's thinking
    blocks) is text the provider reads: redacted like the message's content, names left alone."""
    openai = SECRETS["openai_api_key"][1]
    github = SECRETS["github_token"][1]
    request = {
        "model": "m",
        "messages": [
            {"role": "user", "content": "hello"},
            {
                "role": "assistant",
                "content": "done",
                "reasoning_content": f"the key is {openai}",
                "thinking_blocks": [{"type": "thinking", "thinking": f"use {github}", "signature": "c2ln"}],
            },
            {"role": "user", "content": "thanks"},
        ],
    }
    result = await request_decision(SecretRedactionPolicy(), request, METADATA, control_plane_kind)
    assert result.allowed and result.value is not None
    assistant = result.value["messages"][1]
    assert assistant["reasoning_content"] == "the key is [REDACTED:openai_api_key]"
    assert assistant["thinking_blocks"] == [
        {"type": "thinking", "thinking": "use [REDACTED:github_token]", "signature": "c2ln"}
    ]
    assert result.metadata == {"redacted": {"github_token": 1, "openai_api_key": 1}}


async def test_a_secret_in_an_image_or_file_url_does_not_survive_a_request(control_plane_kind: Kind) -> None:
    """The provider fetches such a URL: a key in it would leave through the provider. Inline
    data (a base64 data URL) is left byte for byte: the provider decodes it, and its base64 may
    spell a key's shape by chance."""
    key = SECRETS["openai_api_key"][1]
    inline = "data:image/png;base64," + base64.b64encode(f"png {key}".encode()).decode()
    request = {
        "model": "m",
        "messages": [
            {
                "role": "user",
                "content": [
                    {"type": "image_url", "image_url": {"url": f"https://example.com/a.png?k={key}"}},
                    {"type": "file", "file": {"file_id": f"https://example.com/b.pdf?{key}"}},
                    {"type": "image_url", "image_url": {"url": inline}},
                    {"type": "text", "text": "describe them"},
                ],
            }
        ],
    }
    result = await request_decision(SecretRedactionPolicy(), request, METADATA, control_plane_kind)
    assert result.allowed and result.value is not None
    parts = result.value["messages"][0]["content"]
    assert parts[0]["image_url"]["url"] == "https://example.com/a.png?k=[REDACTED:openai_api_key]"
    assert parts[1]["file"]["file_id"] == "https://example.com/b.pdf?[REDACTED:openai_api_key]"
    assert parts[2] == request["messages"][0]["content"][2]  # inline data: as it was
    assert result.metadata == {"redacted": {"openai_api_key": 2}}


async def test_a_request_without_secrets_is_the_same_object() -> None:
    request = {"model": "m", "messages": [{"role": "user", "content": BENIGN[0]}]}
    result = await SecretRedactionPolicy().apply_request_policies(request, METADATA)
    assert result.value is request and result.reason is None and result.metadata == {}


def _provider_bodies(openai: str, github: str) -> dict[str, dict]:
    arguments = {"command": f"export OPENAI_API_KEY={openai}"}
    return {
        "/v1/chat/completions": {
            "model": "m",
            "messages": [
                {"role": "system", "content": f"key {openai}"},
                {"role": "user", "content": "run it"},
                {
                    "role": "assistant",
                    "content": None,
                    "tool_calls": [
                        {
                            "id": "c1",
                            "type": "function",
                            "function": {"name": "bash", "arguments": json.dumps(arguments)},
                        }
                    ],
                },
                {"role": "tool", "tool_call_id": "c1", "content": f"token {github}"},
            ],
        },
        "/v1/responses": {
            "model": "m",
            "instructions": f"key {openai}",
            "input": [
                {"role": "user", "content": "run it"},
                {
                    "type": "function_call",
                    "call_id": "c1",
                    "name": "bash",
                    "arguments": json.dumps(arguments),
                },
                {"type": "function_call_output", "call_id": "c1", "output": f"token {github}"},
            ],
        },
        "/v1/messages": {
            "model": "m",
            "max_tokens": 10,
            "system": [{"type": "text", "text": f"key {openai}", "cache_control": {"type": "ephemeral"}}],
            "messages": [
                {"role": "user", "content": "run it"},
                {
                    "role": "assistant",
                    "content": [{"type": "tool_use", "id": "c1", "name": "bash", "input": arguments}],
                },
                {
                    "role": "user",
                    "content": [{"type": "tool_result", "tool_use_id": "c1", "content": f"token {github}"}],
                },
            ],
        },
    }


@pytest.mark.parametrize("path", PATHS)
async def test_redactions_reach_the_provider_body_in_every_format(
    path: str, control_plane_kind: Kind
) -> None:
    openai, github = SECRETS["openai_api_key"][1], SECRETS["github_token"][1]
    original = _provider_bodies(openai, github)[path]
    codec = codec_for("POST", path)
    assert codec is not None
    before = codec.normalize_request(original)
    request = json.loads(json.dumps(before))
    result = await request_decision(SecretRedactionPolicy(), request, METADATA, control_plane_kind)
    assert result.value is not None
    sent = json.dumps(codec.render_request(original, before, result.value))
    assert openai not in sent and github not in sent
    assert sent.count("[REDACTED:openai_api_key]") == 2 and "[REDACTED:github_token]" in sent
    assert result.metadata == {"redacted": {"github_token": 1, "openai_api_key": 2}}


def test_detector_selection_extra_patterns_and_replacement() -> None:
    only_aws = SecretRedactionPolicy(SecretRedactionPolicy.Config(detectors=["aws_access_key_id"]))
    openai, aws_id = SECRETS["openai_api_key"][1], SECRETS["aws_access_key_id"][1]
    assert only_aws.redact(f"{openai} {aws_id}") == f"{openai} [REDACTED:aws_access_key_id]"
    config = SecretRedactionPolicy.Config.model_validate(
        {
            "extra_patterns": [
                {"kind": "employee_id", "pattern": r"\bEMP-\d{6}\b"},
                {"kind": "db_url_password", "pattern": r"postgres://\w+:(?P<secret>[^@\s]+)@"},
            ],
            "replacement": "<{kind} removed>",
        }
    )
    policy = SecretRedactionPolicy(config)
    counts: Counter[str] = Counter()
    text = "EMP-123456 uses postgres://app:s3cr3t-pw@db/x"
    assert (
        policy.redact(text, counts)
        == "<employee_id removed> uses postgres://app:<db_url_password removed>@db/x"
    )
    assert counts == {"employee_id": 1, "db_url_password": 1}
    with pytest.raises(ValidationError, match="unknown detector 'nope'; known detectors: anthropic_api_key"):
        SecretRedactionPolicy.Config(detectors=["nope"])
    with pytest.raises(ValidationError, match="invalid regular expression"):
        SecretRedactionPolicy.Config.model_validate({"extra_patterns": [{"kind": "x", "pattern": "(["}]})
    assert set(DETECTORS) == {
        "openai_api_key",
        "anthropic_api_key",
        "aws_access_key_id",
        "aws_secret_access_key",
        "github_token",
        "slack_token",
        "google_api_key",
        "private_key",
        "jwt",
        "secret_assignment",
    }


async def test_responses_are_left_alone_unless_asked(control_plane_kind: Kind) -> None:
    openai = SECRETS["openai_api_key"][1]
    response = response_saying(f"key {openai}")
    result = await response_decision(SecretRedactionPolicy(), response, METADATA, control_plane_kind)
    assert result.value.choices[0].message.content == f"key {openai}"  # type: ignore[union-attr]
    original = stream_saying("/v1/messages", f"key {openai}")
    assert (
        await relay("/v1/messages", SecretRedactionPolicy(), [original], kind=control_plane_kind) == original
    )
    redacting = SecretRedactionPolicy(SecretRedactionPolicy.Config(redact_responses=True))
    result = await response_decision(
        redacting, response_saying(f"key {openai}"), METADATA, control_plane_kind
    )
    assert result.value.choices[0].message.content == "key [REDACTED:openai_api_key]"  # type: ignore[union-attr]
    assert result.metadata == {"redacted": {"openai_api_key": 1}}


@pytest.mark.parametrize("case", ["openai_api_key", "jwt", "secret_assignment", "private_key"])
async def test_response_secrets_are_redacted_however_the_chunks_split_them(case: str) -> None:
    text, secret = SECRETS[case]
    kind = case.split(" ")[0]
    policy = SecretRedactionPolicy(SecretRedactionPolicy.Config(redact_responses=True))
    expected = policy.redact(text)
    step = max(1, len(text) // 60)
    for cut in range(0, len(text) + 1, step):
        for second in (cut, min(len(text), cut + 7)):
            chunks = [*text_chunks(text[:cut], text[cut:second], text[second:]), finish_chunk(LIKE, "stop")]
            out, results = await run_chunks(policy, chunks)
            assert joined(out) == expected and secret not in joined(out), (cut, second)
            recorded = [r.metadata for r in results if r.reason]
            assert recorded == [{"redacted": {kind: 1}}]
            assert all(secret not in str(r) for r in results if r.reason)


@pytest.mark.parametrize("path", PATHS)
async def test_response_secrets_split_across_events_are_redacted_in_every_format(
    path: str, control_plane_kind: Kind
) -> None:
    key = _private_key()  # many events: one per line/word
    password = SECRETS["secret_assignment"][1]
    text = f"Set DB_PASSWORD = {password} and keep\n{key}\nsafe."
    original = stream_saying(path, text)
    policy = SecretRedactionPolicy(SecretRedactionPolicy.Config(redact_responses=True))
    for seed in range(2):
        out = await relay(path, policy, pieces(original, seed), kind=control_plane_kind)
        shown = client_text(path, out)
        assert (
            shown == "Set DB_PASSWORD = [REDACTED:secret_assignment] and keep\n[REDACTED:private_key]\nsafe."
        )
        assert password not in out.decode() and key.split("\n")[2] not in out.decode()
        assert_closed_validly(path, out)
