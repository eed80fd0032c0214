"""Provider profiles: OpenAI-compatible hosts, Azure OpenAI and Vertex AI policed like the
providers' own hosts, through the official SDKs (each pointed at the profiled host, as its users
point it) and HTTPS_PROXY, with the fake provider as every host's upstream; the profile table's
routes, the forms ``--provider-host`` takes and refuses, and its copy in docs/architecture.md."""

import asyncio
import contextlib
import re
import ssl
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from addon.endpoints import ENDPOINTS, Family, Treatment, resolve
from addon.pipeline import ProxyRequest, credential_hash
from addon.provider_profiles import KNOWN_HOSTS, PROFILES, Profile, ProviderHosts, provider_host
from controlplane.recording.records import REDACTED, redact_headers
from tests.conftest import POLICIES, ROOT, RunningProxy, luthien, running_proxies
from tests.fake_provider import FakeProvider
from tests.fake_provider.scenarios import DEFAULT_TEXT
from tests.recorded import recorded
from tests.test_endpoints import concrete

OPENROUTER = "https://openrouter.ai/api/v1"
AZURE = "myres.openai.azure.com"
AZURE_VERSION = "2024-10-21"
VERTEX_LOCATION = "us-east5"
VERTEX = f"{VERTEX_LOCATION}-aiplatform.googleapis.com"
VERTEX_PROJECT = {"project": "luthien-test", "location": VERTEX_LOCATION}
VERTEX_PREFIX = f"/v1/projects/luthien-test/locations/{VERTEX_LOCATION}"
CLAUDE = "claude-sonnet-4@20250514"
HOSTS = ("openrouter.ai", "api.groq.com", AZURE, VERTEX)


#: The tool-call blocklist and a request blocker, one after the other.
POLICED = {
    "class": "SerialPolicy",
    "config": {"policies": [POLICIES["blocklist"], POLICIES["block_requests"]]},
}


@pytest.fixture(scope="module")
def hosted(fake: FakeProvider, tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, RunningProxy]]:
    """Proxies that police the profiled hosts (named by profile, by host and by pattern), each
    routed to the fake: ``noop``, and ``policed``, which also refuses unknown paths. They start
    one after the other: two LiteLLM imports at once on a busy machine outlast the start-up wait."""
    args = ["--provider-host", "openrouter", "--provider-host", "api.groq.com", "--provider-host", "azure"]
    args += ["--provider-host", "vertex"]
    for host in HOSTS:
        args += ["--upstream", f"{host}={fake.url}"]
    specs = {"noop": (POLICIES["noop"], args), "policed": (POLICED, [*args, "--unknown-endpoints", "refuse"])}
    root = tmp_path_factory.mktemp("profiles")
    with contextlib.ExitStack() as stack:
        yield {
            name: stack.enter_context(running_proxies({name: spec}, fake, root))[name]
            for name, spec in specs.items()
        }


def raw_client(proxy: RunningProxy, **headers: str) -> httpx.Client:
    context = ssl.create_default_context(cafile=str(proxy.bundle))
    return httpx.Client(proxy=proxy.url, verify=context, headers=headers, timeout=10)


def both(**call: Any) -> list[dict[str, Any]]:
    return [{**call, "stream": stream} for stream in (False, True)]


def chat_body(prompt: str, stream: bool, **extra: Any) -> dict[str, Any]:
    return {"messages": [{"role": "user", "content": prompt}], "stream": stream, **extra}


def sent_since(fake: FakeProvider, before: int) -> list[str]:
    return [r.path for r in fake.requests[before:]]


# --- the acceptance line: a Chat Completions call to OpenRouter is policed as api.openai.com's --


def test_openrouter_chat_is_policed_exactly_like_openai(
    hosted: dict[str, RunningProxy], fake: FakeProvider
) -> None:
    for policy, prompt in (("noop", "Say hello"), ("policed", "[scenario:tool_call rm -rf /tmp/x]")):
        at_openai = hosted[policy].sdk(*both(api="chat", prompt=prompt))
        before = len(fake.requests)
        at_openrouter = hosted[policy].sdk(*both(api="chat", prompt=prompt, base_url=OPENROUTER))
        assert at_openrouter == at_openai and all(r["ok"] for r in at_openrouter), at_openrouter
        assert sent_since(fake, before) == ["/api/v1/chat/completions"] * 2
    assert at_openrouter[0]["tool_calls"] == [] and "Blocked the tool call `bash`" in at_openrouter[0]["text"]


def test_openrouter_noop_is_byte_identical_whole_and_streamed(
    hosted: dict[str, RunningProxy], fake: FakeProvider
) -> None:
    with raw_client(hosted["noop"], authorization="Bearer sk-or-v1-test") as client:
        for stream in (False, True):
            body = chat_body("[scenario:tool_call ls -la]", stream, model="openai/gpt-4o")
            response = client.post(f"{OPENROUTER}/chat/completions", json=body)
            assert response.status_code == 200, response.text
            assert response.content == fake.sent(-1)
            assert fake.requests[-1].path == "/api/v1/chat/completions"


def test_a_blocked_openrouter_request_is_openais_403_and_never_sent(
    hosted: dict[str, RunningProxy], fake: FakeProvider
) -> None:
    before = len(fake.requests)
    results = hosted["policed"].sdk(*both(api="chat", prompt="a forbidden-word", base_url=OPENROUTER))
    assert [(r["ok"], r.get("error_type"), r.get("status")) for r in results] == [
        (False, "PermissionDeniedError", 403)
    ] * 2
    assert sent_since(fake, before) == []


def test_groq_under_its_openai_prefix(hosted: dict[str, RunningProxy], fake: FakeProvider) -> None:
    for result in hosted["noop"].sdk(
        *both(api="chat", prompt="hi", base_url="https://api.groq.com/openai/v1")
    ):
        assert result["ok"] and result["text"] == DEFAULT_TEXT, result
    assert fake.requests[-1].path == "/openai/v1/chat/completions"


# --- a path outside the profile's API is unknown there ---------------------------------------------


def test_anthropics_path_on_an_openai_compatible_host_is_not_policed_as_messages(
    hosted: dict[str, RunningProxy], fake: FakeProvider
) -> None:
    body = {
        "model": "claude-x",
        "max_tokens": 8,
        "messages": [{"role": "user", "content": "messages on openrouter"}],
    }
    # Unknown: forwarded and recorded unpoliced (no policy saw it as Messages) ...
    with raw_client(hosted["noop"], authorization="Bearer sk-or-v1-test") as client:
        response = client.post(f"{OPENROUTER}/messages", json=body)
    assert response.status_code == 200 and fake.requests[-1].path == "/api/v1/messages"
    (record,) = asyncio.run(recorded(hosted["noop"].database_url, "messages on openrouter", 1))
    assert (record.outcome, record.unpoliced, record.wire_format) == ("passthrough", True, None)
    # ... or refused under --unknown-endpoints refuse, in OpenAI's error format (OpenRouter's SDK's).
    before = len(fake.requests)
    with raw_client(hosted["policed"], authorization="Bearer sk-or-v1-test") as client:
        refused = client.post(f"{OPENROUTER}/messages", json=body)
    assert refused.status_code == 403 and sent_since(fake, before) == []
    assert "not in the endpoint table" in refused.json()["error"]["message"]
    assert refused.json()["error"]["type"]  # OpenAI's shape: {"error": {"message", "type", ...}}


# --- Azure OpenAI ---------------------------------------------------------------------------------------


def azure(**call: Any) -> list[dict[str, Any]]:
    spec = {"endpoint": f"https://{AZURE}", "deployment": "gpt4o-prod", "api_version": AZURE_VERSION}
    return both(api="chat", azure=spec, **call)


def test_azure_deployments_through_the_azure_client(
    hosted: dict[str, RunningProxy], fake: FakeProvider
) -> None:
    before = len(fake.requests)
    for result in hosted["noop"].sdk(*azure(prompt="Say hello")):
        assert result["ok"] and result["text"] == DEFAULT_TEXT, result
    path = f"/openai/deployments/gpt4o-prod/chat/completions?api-version={AZURE_VERSION}"
    assert sent_since(fake, before) == [path] * 2
    assert all(r.headers["api-key"] == "sk-test-key" for r in fake.requests[before:])
    for result in hosted["policed"].sdk(*azure(prompt="[scenario:tool_call rm -rf /tmp/x]")):
        assert result["ok"] and result["tool_calls"] == [], result
        assert "Blocked the tool call `bash`" in result["text"]
    for result in hosted["policed"].sdk(*azure(prompt="a forbidden-word")):
        assert (result["ok"], result["status"]) == (False, 403), result


def test_azure_names_the_model_in_the_path_and_its_key_is_never_recorded(
    hosted: dict[str, RunningProxy], fake: FakeProvider
) -> None:
    url = f"https://{AZURE}/openai/deployments/gpt4o-prod/chat/completions?api-version={AZURE_VERSION}"
    secret = "azure-key-0123456789abcdef"
    with raw_client(hosted["noop"], **{"api-key": secret}) as client:
        response = client.post(url, json=chat_body("azure without a model", False))
    assert response.status_code == 200 and response.content == fake.sent(-1)
    assert "model" not in fake.requests[-1].json
    (record,) = asyncio.run(recorded(hosted["noop"].database_url, "azure without a model", 1))
    assert record.model == "gpt4o-prod" and record.host == AZURE and record.outcome == "completed"
    assert ("api-key", REDACTED) in record.request_headers
    assert secret not in record.model_dump_json()


def test_azure_v1_api_responses(hosted: dict[str, RunningProxy], fake: FakeProvider) -> None:
    base = f"https://{AZURE}/openai/v1"
    for result in hosted["noop"].sdk(*both(api="responses", prompt="hi", base_url=base)):
        assert result["ok"] and result["text"] == DEFAULT_TEXT, result
    assert fake.requests[-1].path == "/openai/v1/responses"


def test_azure_paths_that_carry_unpoliced_content_are_refused(
    hosted: dict[str, RunningProxy], fake: FakeProvider
) -> None:
    before = len(fake.requests)
    with raw_client(hosted["noop"], **{"api-key": "k"}) as client:
        for path in (
            "/openai/deployments/d/images/generations",
            "/openai/deployments/d/completions",
            "/openai/files",
        ):
            response = client.post(f"https://{AZURE}{path}?api-version={AZURE_VERSION}", json={"prompt": "x"})
            assert response.status_code == 403, (path, response.text)
            assert "policy cannot see it" in response.json()["error"]["message"]
    assert sent_since(fake, before) == []


# --- Vertex AI --------------------------------------------------------------------------------------------


def test_claude_on_vertex_through_anthropic_vertex(
    hosted: dict[str, RunningProxy], fake: FakeProvider
) -> None:
    call = {"api": "messages", "vertex": VERTEX_PROJECT, "model": CLAUDE}
    before = len(fake.requests)
    for result in hosted["noop"].sdk(*both(prompt="Say hello", **call)):
        assert result["ok"] and result["text"] == DEFAULT_TEXT, result
    models = f"{VERTEX_PREFIX}/publishers/anthropic/models/{CLAUDE}"
    assert sent_since(fake, before) == [f"{models}:rawPredict", f"{models}:streamRawPredict"]
    sent = fake.requests[-1].json
    assert "model" not in sent and "anthropic_version" in sent
    for result in hosted["policed"].sdk(*both(prompt="[scenario:tool_call rm -rf /tmp/x]", **call)):
        assert result["ok"] and result["tool_calls"] == [], result
    for result in hosted["policed"].sdk(*both(prompt="a forbidden-word", **call)):
        assert (result["ok"], result["error_type"]) == (False, "PermissionDeniedError"), result


def test_claude_on_vertex_is_recorded_with_its_model(hosted: dict[str, RunningProxy]) -> None:
    call = {"api": "messages", "vertex": VERTEX_PROJECT, "model": CLAUDE, "stream": True}
    (result,) = hosted["noop"].sdk({**call, "prompt": "vertex claude record"})
    assert result["ok"], result
    (record,) = asyncio.run(recorded(hosted["noop"].database_url, "vertex claude record", 1))
    assert (record.model, record.host, record.outcome) == (CLAUDE, VERTEX, "completed")
    assert ("authorization", REDACTED) in [(k.lower(), v) for k, v in record.request_headers]


def test_gemini_on_vertex_through_google_genai(hosted: dict[str, RunningProxy], fake: FakeProvider) -> None:
    call = {"api": "gemini", "vertex": VERTEX_PROJECT, "version": "v1beta1", "model": "gemini-2.5-flash"}
    before = len(fake.requests)
    for result in hosted["noop"].sdk(*both(prompt="Say hello", **call)):
        assert result["ok"] and result["text"] == DEFAULT_TEXT, result
    models = "/v1beta1/projects/luthien-test/locations/us-east5/publishers/google/models/gemini-2.5-flash"
    assert sent_since(fake, before) == [
        f"{models}:generateContent",
        f"{models}:streamGenerateContent?alt=sse",
    ]
    for result in hosted["policed"].sdk(*both(prompt="[scenario:tool_call rm -rf /tmp/x]", **call)):
        assert result["ok"] and result["tool_calls"] == [], result
        assert "Blocked the tool call `bash`" in result["text"]


def test_vertex_resources_luthien_does_not_police_are_refused_in_googles_format(
    hosted: dict[str, RunningProxy], fake: FakeProvider
) -> None:
    before = len(fake.requests)
    with raw_client(hosted["noop"], authorization="Bearer ya29.test") as client:
        for path in (
            "/batchPredictionJobs",
            "/cachedContents",
            "/publishers/google/models/gemini-2.5-flash:embedContent",
            f"/publishers/anthropic/models/{CLAUDE}:predict",
        ):
            response = client.post(f"https://{VERTEX}{VERTEX_PREFIX}{path}", json={"contents": []})
            error = response.json()["error"]
            assert (response.status_code, error["code"], error["status"]) == (403, 403, "PERMISSION_DENIED")
    assert sent_since(fake, before) == []


# --- the table's routes -------------------------------------------------------------------------------

ROUTES = [
    # host, method, path, treatment, the table's template, the model the path names
    ("openrouter.ai", "POST", "/api/v1/chat/completions", "policed", "/v1/chat/completions", None),
    ("openrouter.ai", "POST", "/API/V1/Chat/Completions", "policed", "/v1/chat/completions", None),
    ("openrouter.ai", "GET", "/api/v1/models", "forwarded", "/v1/models", None),
    ("openrouter.ai", "POST", "/api/v1/files", "refused", "/v1/files/**", None),
    ("openrouter.ai", "POST", "/api/v1/messages", None, None, None),
    ("openrouter.ai", "POST", "/v1/chat/completions", None, None, None),
    ("api.groq.com", "POST", "/openai/v1/responses", "policed", "/v1/responses", None),
    ("api.together.xyz", "POST", "/v1/embeddings", "request-only", "/v1/embeddings", None),
    ("api.mistral.ai", "POST", "/v1/chat/completions", "policed", "/v1/chat/completions", None),
    ("api.deepseek.com", "POST", "/chat/completions", "policed", "/v1/chat/completions", None),
    ("api.deepseek.com", "POST", "/v1/chat/completions", "policed", "/v1/chat/completions", None),
    ("api.x.ai", "POST", "/v1/chat/completions", "policed", "/v1/chat/completions", None),
    ("api.x.ai", "POST", "/v1beta/models/x:generateContent", None, None, None),
    (
        AZURE,
        "POST",
        "/openai/deployments/dep/chat/completions?api-version=1",
        "policed",
        "/v1/chat/completions",
        "dep",
    ),
    (
        AZURE,
        "POST",
        "/openai/deployments/dep/embeddings?api-version=1",
        "request-only",
        "/v1/embeddings",
        "dep",
    ),
    (AZURE, "POST", "/openai/deployments/dep/audio/speech?api-version=1", "refused", "/v1/audio/**", "dep"),
    (AZURE, "POST", "/openai/responses?api-version=1", "policed", "/v1/responses", None),
    (AZURE, "POST", "/openai/v1/chat/completions", "policed", "/v1/chat/completions", None),
    ("r.cognitiveservices.azure.com", "POST", "/openai/v1/responses", "policed", "/v1/responses", None),
    (
        VERTEX,
        "POST",
        f"{VERTEX_PREFIX}/publishers/anthropic/models/m@1:rawPredict",
        "policed",
        "/v1/messages",
        "m@1",
    ),
    (
        VERTEX,
        "POST",
        f"{VERTEX_PREFIX}/publishers/anthropic/models/count-tokens:rawPredict",
        "request-only",
        "/v1/messages/count_tokens",
        None,
    ),
    (
        VERTEX,
        "POST",
        f"{VERTEX_PREFIX}/publishers/anthropic/models/m:predict",
        "refused",
        "/{version}/projects/**",
        None,
    ),
    (
        "aiplatform.googleapis.com",
        "POST",
        "/v1beta1/projects/p/locations/global/publishers/google/models/g:countTokens",
        "request-only",
        "/v1/models/{id}:countTokens",
        None,
    ),
    (
        "aiplatform.googleapis.com",
        "POST",
        "/v1/publishers/google/models/g:generateContent",
        "policed",
        "/v1/models/{id}:generateContent",
        None,
    ),
    (
        "aiplatform.us.rep.googleapis.com",
        "POST",
        "/v1/projects/p/locations/us/endpoints/openapi/chat/completions",
        "policed",
        "/v1/chat/completions",
        None,
    ),
    (VERTEX, "POST", f"{VERTEX_PREFIX}/tuningJobs", "refused", "/{version}/projects/**", None),
    ("gw.internal", "POST", "/claude/v1/messages", "policed", "/v1/messages", None),
    ("gw.internal", "POST", "/claude/v1/chat/completions", None, None, None),
]
CUSTOM = ProviderHosts([*KNOWN_HOSTS.hosts, *provider_host("gw.internal=anthropic/claude")])


@pytest.mark.parametrize(("host", "method", "path", "treatment", "template", "model"), ROUTES)
def test_a_profiled_hosts_path_is_the_table_path_it_stands_for(
    host: str, method: str, path: str, treatment: str | None, template: str | None, model: str | None
) -> None:
    profile = CUSTOM.profile_for(host)
    assert profile is not None
    route = profile.route(method, path)
    assert route.treatment == (None if treatment is None else Treatment(treatment))
    assert (route.endpoint.template if route.endpoint else None) == template
    assert route.model == model
    assert route.path.lower() == path.lower()  # the host's own path goes upstream


@pytest.mark.parametrize("host", ["api.openai.com", "api.anthropic.com", "generativelanguage.googleapis.com"])
def test_the_providers_own_hosts_route_every_path_as_before(host: str) -> None:
    profile = KNOWN_HOSTS.profile_for(host)
    assert profile is not None
    for endpoint in ENDPOINTS:
        for method in ("POST", "GET", "PUT", "HEAD"):
            path = concrete(endpoint.template) + "?q=1"
            route, before = profile.route(method, path), resolve(method, path)
            assert (route.path, route.treatment, route.endpoint, route.wrong_method) == (
                before.path,
                before.treatment,
                before.endpoint,
                before.wrong_method,
            )
    assert profile.route("POST", "/v1/not_a_known_api").treatment is None


def test_refusals_are_in_the_format_of_the_hosts_sdk() -> None:
    families = {name: KNOWN_HOSTS.family_for(name) for name in ("api.anthropic.com", "openrouter.ai", VERTEX)}
    assert families == {
        "api.anthropic.com": Family.ANTHROPIC,
        "openrouter.ai": Family.OPENAI,
        VERTEX: Family.GOOGLE,
    }
    vertex = KNOWN_HOSTS.profile_for(VERTEX)
    assert vertex is not None
    claude = vertex.route("PUT", f"{VERTEX_PREFIX}/publishers/anthropic/models/m:rawPredict")
    assert (claude.treatment, claude.family) == (Treatment.REFUSED, Family.ANTHROPIC)


# --- --provider-host -------------------------------------------------------------------------------------


def test_a_profile_name_a_profiled_host_and_a_described_host_are_taken() -> None:
    hosts = ProviderHosts.parse(
        ["azure", "OpenRouter.ai.", "llm.internal=openai/api/v2", "gw.internal=gemini"]
    )
    assert hosts.names() == sorted(
        [
            "{resource}.openai.azure.com",
            "{resource}.cognitiveservices.azure.com",
            "openrouter.ai",
            "llm.internal",
            "gw.internal",
        ]
    )
    pattern = re.compile(hosts.allow_pattern(), re.IGNORECASE)
    assert pattern.match("team-a.openai.azure.com:443") and pattern.match("LLM.internal.:443")
    assert not pattern.match("evil.com/.openai.azure.com:443") and not pattern.match("openai.azure.com:443")
    internal = hosts.profile_for("llm.internal")
    assert (
        internal is not None
        and internal.route("POST", "/api/v2/chat/completions").treatment is Treatment.POLICED
    )
    assert internal.route("POST", "/v1/chat/completions").treatment is None


@pytest.mark.parametrize(
    ("spec", "says"),
    [
        ("llm.example.com", "no profile names this host"),
        ("llm.example.com=cohere", "'cohere' is not a format"),
        ("not a host", "not a host name"),
        ("llm.example.com=openai/%2F", "not a plain path"),
        ("bedrock", "binary AWS event-stream"),
        ("bedrock-runtime.us-east-1.amazonaws.com", "SigV4"),
    ],
)
def test_a_host_without_an_api_is_refused_naming_the_forms(spec: str, says: str) -> None:
    with pytest.raises(ValueError, match=re.escape(says)) as refused:
        provider_host(spec)
    if "Bedrock" not in str(refused.value):
        assert "HOST=FORMAT[/PREFIX]" in str(refused.value) and "openrouter" in str(refused.value)


@pytest.mark.parametrize(
    ("args", "env"),
    [
        (["--provider-host", "api.openai.com", "--provider-host", "llm.example.com"], {}),
        ([], {"LUTHIEN_PROVIDER_HOSTS": "openai,bedrock"}),
    ],
)
def test_luthien_refuses_to_start_with_a_host_it_cannot_police(
    args: list[str], env: dict[str, str], tmp_path: Path
) -> None:
    result = luthien("proxy", "--data-dir", str(tmp_path), "--port", "0", *args, env=env)
    assert result.returncode == 2, result.stdout + result.stderr
    assert "--provider-host" in result.stderr
    assert "listening" not in result.stdout and not (tmp_path / "ca").exists()  # nothing was made


def test_azures_key_header_is_a_credential() -> None:
    assert redact_headers([("api-key", "k1"), ("API-Key", "k2")]) == [
        ("api-key", REDACTED),
        ("API-Key", REDACTED),
    ]
    request = ProxyRequest("POST", AZURE, "/openai/v1/responses", [("api-key", "k1")], b"")
    assert credential_hash(request) and credential_hash(request) != credential_hash(
        ProxyRequest("POST", AZURE, "/openai/v1/responses", [("api-key", "k2")], b"")
    )


# --- the docs --------------------------------------------------------------------------------------------


def mounts_cell(profile: Profile) -> str:
    if profile.unsupported:
        return "not supported (see below)"
    return "<br>".join(
        f"`{m.pattern}` refused"
        if m.target is None
        else f"`{m.pattern}` → {m.family.value if m.family else 'all'} `{m.target}`"
        for m in profile.mounts
    )


def test_the_architecture_doc_shows_the_profile_table_as_the_code_has_it() -> None:
    doc = (ROOT / "docs" / "architecture.md").read_text()
    section = doc.partition("\n## Provider profiles\n")[2].partition("\n## ")[0]
    rows = re.findall(r"^\| `(\w+)` \| (.+?) \| (.+?) \| (\w+) \| (.+?) \|$", section, re.MULTILINE)
    assert rows == [
        (p.name, ", ".join(f"`{h}`" for h in p.hosts), mounts_cell(p), p.family.value, p.auth)
        for p in PROFILES
    ]
