"""The endpoint table: what Luthien does with each path on a provider host.

Every request to a provider host is looked up here after its path is put in canonical form.
A path that carries model input or output is policed, or refused when Luthien cannot police it;
only paths that carry no model content are forwarded as they are. A path the table does not
know is forwarded and recorded as unpoliced, or refused with ``--unknown-endpoints refuse``.

The table is the union of the OpenAI, Anthropic and Gemini APIs (each entry says whose it is):
their paths do not collide, so the providers' own hosts get the whole table. Other hosts serve
one API, somewhere on the host: their profile (addon/provider_profiles.py) says where, and their
paths are looked up among that API's entries only. docs/architecture.md shows the table; a test
keeps the two in step.
"""

import dataclasses
import re
from dataclasses import dataclass
from enum import StrEnum

from controlplane.models import WireFormat


class Treatment(StrEnum):
    POLICED = "policed"  # the request, and the response (whole or streamed), go through policy
    REQUEST_ONLY = "request-only"  # the request goes through policy; the answer holds no model text
    RETRIEVAL = "retrieval"  # a stored output read back: policed like the live response
    REFUSED = "refused"  # carries content Luthien cannot police: answered with a 403
    FORWARDED = "forwarded"  # carries no model content: sent as it is (without a body)


class Family(StrEnum):
    """Whose API an endpoint is; a host's family is whose error format its refusals are in."""

    OPENAI = "openai"
    ANTHROPIC = "anthropic"
    GOOGLE = "google"  # the Gemini API
    BOTH = "both"  # a path both APIs have (files, models): not a host's family


class UnknownEndpoints(StrEnum):
    FORWARD = "forward"
    REFUSE = "refuse"


@dataclass(frozen=True)
class Endpoint:
    method: str
    # `{id}` matches one path segment, `{id}:name` one that ends in that method (`{id}:*`: any
    # method), a trailing `/**` any number of segments.
    template: str
    treatment: Treatment
    family: Family
    note: str
    wire_format: WireFormat | None = None  # the codec for policed, request-only and retrieval paths

    def segments(self) -> list[str]:
        return self.template.strip("/").split("/")


_O, _A, _G, _B = Family.OPENAI, Family.ANTHROPIC, Family.GOOGLE, Family.BOTH
_P, _Q, _R, _X, _F = (
    Treatment.POLICED,
    Treatment.REQUEST_ONLY,
    Treatment.RETRIEVAL,
    Treatment.REFUSED,
    Treatment.FORWARDED,
)
_CHAT, _RESPONSES, _MESSAGES = (
    WireFormat.OPENAI_CHAT,
    WireFormat.OPENAI_RESPONSES,
    WireFormat.ANTHROPIC_MESSAGES,
)
_STORED_INPUT = "returns stored conversation input that may never have passed a policy"
_UNPOLICED_API = "carries model input or output Luthien does not police"


def _gemini(version: str) -> tuple[Endpoint, ...]:
    """The Gemini API under one of its versions (its models list and files at ``/v1`` are
    OpenAI's paths too: listed once, under both)."""
    at = f"/{version}"
    own = (
        Endpoint("GET", f"{at}/models", _F, _G, "lists models"),
        Endpoint("GET", f"{at}/models/{{id}}", _F, _G, "describes a model"),
        Endpoint("*", f"{at}/files/**", _X, _G, "file contents: uploads and downloads"),
        Endpoint("*", f"{at}/batches/**", _X, _G, "batches run stored requests and store their outputs"),
    )
    return (
        Endpoint("POST", f"{at}/models/{{id}}:generateContent", _P, _G, "a model call", WireFormat.GEMINI),
        Endpoint(
            "POST",
            f"{at}/models/{{id}}:streamGenerateContent",
            _P,
            _G,
            "a streamed model call",
            WireFormat.GEMINI,
        ),
        Endpoint(
            "POST",
            f"{at}/models/{{id}}:countTokens",
            _Q,
            _G,
            "counts a request's tokens",
            WireFormat.GEMINI_COUNT_TOKENS,
        ),
        Endpoint(
            "POST", f"{at}/models/{{id}}:*", _X, _G, "embeddings, batches, predictions: " + _UNPOLICED_API
        ),
        Endpoint(
            "*", f"{at}/cachedContents/**", _X, _G, "cached contents: stored conversation that no policy saw"
        ),
        Endpoint("*", f"{at}/tunedModels/**", _X, _G, "tuned models: " + _UNPOLICED_API),
        Endpoint("*", f"{at}/corpora/**", _X, _G, "semantic retrieval corpora and their documents"),
        Endpoint("*", f"{at}/fileSearchStores/**", _X, _G, "file search stores"),
        Endpoint("*", f"{at}/operations/**", _X, _G, "long-running operations and their outputs"),
        *(own if version != "v1" else ()),
    )


ENDPOINTS: tuple[Endpoint, ...] = (
    # OpenAI Chat Completions
    Endpoint("POST", "/v1/chat/completions", _P, _O, "a model call", _CHAT),
    Endpoint("GET", "/v1/chat/completions/{id}", _R, _O, "a stored completion", _CHAT),
    Endpoint("GET", "/v1/chat/completions", _X, _O, "lists stored completions, outputs included"),
    Endpoint("POST", "/v1/chat/completions/{id}", _X, _O, "updates a stored completion and returns it"),
    Endpoint("DELETE", "/v1/chat/completions/{id}", _F, _O, "deletes a stored completion"),
    Endpoint("GET", "/v1/chat/completions/{id}/messages", _X, _O, _STORED_INPUT),
    # OpenAI Responses
    Endpoint("POST", "/v1/responses", _P, _O, "a model call", _RESPONSES),
    Endpoint("POST", "/v1/responses/compact", _P, _O, "compacts a conversation (model output)", _RESPONSES),
    Endpoint("POST", "/v1/responses/input_tokens", _Q, _O, "counts a request's tokens", _RESPONSES),
    Endpoint("GET", "/v1/responses/{id}", _R, _O, "a stored response, whole or streamed", _RESPONSES),
    Endpoint("POST", "/v1/responses/{id}/cancel", _R, _O, "cancels a background response", _RESPONSES),
    Endpoint("DELETE", "/v1/responses/{id}", _F, _O, "deletes a stored response"),
    Endpoint("GET", "/v1/responses/{id}/input_items", _X, _O, _STORED_INPUT),
    # OpenAI, other APIs that carry text
    Endpoint("POST", "/v1/embeddings", _Q, _O, "embeds text", WireFormat.OPENAI_EMBEDDINGS),
    Endpoint("POST", "/v1/moderations", _Q, _O, "classifies text", WireFormat.OPENAI_MODERATIONS),
    Endpoint("POST", "/v1/completions", _X, _O, "legacy text completions: " + _UNPOLICED_API),
    Endpoint("*", "/v1/conversations/**", _X, _O, "stored conversations and their items"),
    Endpoint("*", "/v1/threads/**", _X, _O, "Assistants threads, messages and runs"),
    Endpoint("*", "/v1/assistants/**", _X, _O, "Assistants: " + _UNPOLICED_API),
    Endpoint("*", "/v1/batches/**", _X, _O, "batches run stored requests and store their outputs"),
    Endpoint("*", "/v1/uploads/**", _X, _O, "file uploads"),
    Endpoint("*", "/v1/vector_stores/**", _X, _O, "file search stores"),
    Endpoint("*", "/v1/fine_tuning/**", _X, _O, "fine-tuning on stored files"),
    Endpoint("*", "/v1/realtime/**", _X, _O, "the Realtime API: " + _UNPOLICED_API),
    Endpoint("*", "/v1/audio/**", _X, _O, "audio: " + _UNPOLICED_API),
    Endpoint("*", "/v1/images/**", _X, _O, "images: " + _UNPOLICED_API),
    Endpoint("*", "/v1/videos/**", _X, _O, "videos: " + _UNPOLICED_API),
    Endpoint("*", "/v1/containers/**", _X, _O, "code interpreter containers and their files"),
    Endpoint("*", "/v1/evals/**", _X, _O, "evals run stored requests"),
    Endpoint("*", "/v1/chatkit/**", _X, _O, "ChatKit sessions and threads"),
    # Anthropic Messages
    Endpoint("POST", "/v1/messages", _P, _A, "a model call", _MESSAGES),
    Endpoint("POST", "/v1/messages/count_tokens", _Q, _A, "counts a request's tokens", _MESSAGES),
    Endpoint("*", "/v1/messages/batches/**", _X, _A, "batches run stored requests and store their outputs"),
    Endpoint("POST", "/v1/complete", _X, _A, "legacy text completions: " + _UNPOLICED_API),
    Endpoint("*", "/v1/skills/**", _X, _A, "skills upload code and instructions"),
    Endpoint("*", "/api/claude_cli_feedback", _X, _A, "Claude Code's feedback report sends the transcript"),
    # Claude Code's own configuration reads
    Endpoint("GET", "/api/claude_code/settings", _F, _A, "Claude Code's managed settings"),
    Endpoint("GET", "/api/claude_code/policy_limits", _F, _A, "Claude Code's policy limits"),
    Endpoint("GET", "/api/claude_code/organizations/metrics_enabled", _F, _A, "Claude Code's metrics opt-in"),
    Endpoint("GET", "/api/claude_cli/bootstrap", _F, _A, "Claude Code's start-up configuration"),
    Endpoint("GET", "/api/claude_code_penguin_mode", _F, _A, "a Claude Code feature switch"),
    Endpoint("GET", "/api/directory/server-urls", _F, _A, "Claude Code's service addresses"),
    Endpoint("GET", "/api/oauth/**", _F, _A, "Claude Code's sign-in (profile, roles, usage)"),
    # Both
    Endpoint("*", "/v1/files/**", _X, _B, "file contents: uploads and downloads"),
    Endpoint("GET", "/v1/models", _F, _B, "lists models"),
    Endpoint("GET", "/v1/models/{id}", _F, _B, "describes a model"),
    # Gemini
    *_gemini("v1"),
    *_gemini("v1beta"),
    *_gemini("v1alpha"),
    Endpoint("*", "/upload/**", _X, _G, "file uploads"),
    # Gemini through Google's OpenAI-compatible API, on the same host
    Endpoint("POST", "/v1beta/openai/chat/completions", _P, _G, "a model call in OpenAI's format", _CHAT),
    Endpoint(
        "POST",
        "/v1beta/openai/embeddings",
        _Q,
        _G,
        "embeds text, in OpenAI's format",
        WireFormat.OPENAI_EMBEDDINGS,
    ),
    Endpoint("GET", "/v1beta/openai/models", _F, _G, "lists models"),
    Endpoint("GET", "/v1beta/openai/models/{id}", _F, _G, "describes a model"),
    Endpoint("*", "/v1beta/openai/**", _X, _G, "images, audio, files, batches: " + _UNPOLICED_API),
)

#: Methods that never carry content: forwarded (without a body) on any known path.
_BODILESS = frozenset({"HEAD", "OPTIONS"})
_SEGMENT = re.compile(r"[A-Za-z0-9._~:@!$&'()*+,=-]+")
_HEX = "0123456789ABCDEFabcdef"
_UNRESERVED = frozenset("ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-._~")


class UnsafePath(ValueError):
    """A path whose meaning could differ between Luthien and the provider: refused."""


@dataclass(frozen=True)
class Route:
    """Where a request goes: the path (with the query string) that is looked up and sent
    upstream, and what is done with it (None: the table does not know the path)."""

    path: str
    treatment: Treatment | None
    endpoint: Endpoint | None = None
    wrong_method: bool = False  # a known path, with a method the provider does not serve there
    family: Family | None = None  # whose error format a refusal is in (None: the host's)
    model: str | None = None  # the model the path names (an Azure deployment, a Vertex AI model)


def error_format(family: Family) -> WireFormat:
    """The format of the errors a host of ``family`` answers with (its SDK's)."""
    if family is Family.GOOGLE:
        return WireFormat.GEMINI
    return WireFormat.ANTHROPIC_MESSAGES if family is Family.ANTHROPIC else WireFormat.OPENAI_CHAT


def canonical_path(raw: str) -> str:
    """The path in one spelling: repeated slashes collapsed, dot segments resolved and
    percent-encoded unreserved characters decoded. Raises UnsafePath for spellings that servers
    read differently: an encoded slash, backslash or percent sign, a `;` parameter, a control or
    non-ASCII character, or a `..` above the root."""
    if not raw.startswith("/"):
        raise UnsafePath("the path must start with /")
    if any(not 0x21 <= ord(c) <= 0x7E for c in raw) or any(c in raw for c in "\\;#"):
        raise UnsafePath("the path holds a character that servers read differently")
    segments: list[str] = []
    for segment in _decoded(raw).split("/"):
        if segment in ("", "."):
            continue
        if segment == "..":
            if not segments:
                raise UnsafePath("the path climbs above the root")
            segments.pop()
        else:
            segments.append(segment)
    trailing = "/" if raw.endswith("/") and segments else ""
    return "/" + "/".join(segments) + trailing


def _decoded(raw: str) -> str:
    out: list[str] = []
    index = 0
    while index < len(raw):
        char = raw[index]
        if char != "%":
            out.append(char)
            index += 1
            continue
        code = raw[index + 1 : index + 3]
        if len(code) != 2 or any(c not in _HEX for c in code):
            raise UnsafePath("the path holds a malformed percent-encoding")
        decoded = chr(int(code, 16))
        if decoded not in _UNRESERVED:
            raise UnsafePath(f"the path holds an encoded {decoded!r}, which servers read differently")
        out.append(decoded)
        index += 3
    return "".join(out)


def matches(template: list[str], segments: list[str]) -> list[str] | None:
    """The segments as ``template`` spells them (what its ``{name}`` parts match as given), or
    None. A trailing ``**`` takes the rest, which keeps its spelling."""
    spelled: list[str] = []
    for index, part in enumerate(template):
        if part == "**":
            return spelled + segments[index:]
        if index >= len(segments):
            return None
        segment = segments[index]
        name_end = part.find("}:") if part.startswith("{") else -1
        if name_end > 0:
            model, colon, method = segment.rpartition(":")
            wanted = part[name_end + 2 :]
            if not colon or not _SEGMENT.fullmatch(model) or not method:
                return None
            if wanted != "*" and wanted.lower() != method.lower():
                return None
            spelled.append(f"{model}:{method if wanted == '*' else wanted}")
        elif part.startswith("{") and part.endswith("}"):
            if not _SEGMENT.fullmatch(segment):
                return None
            spelled.append(segment)
        elif part.lower() == segment.lower():
            spelled.append(part)
        else:
            return None
    return spelled if len(segments) == len(template) else None


def _rank(template: str) -> int:
    """Which of the templates that match one path says most about it (lowest first)."""
    if template.endswith("/**"):
        return 3
    if template.endswith(":*"):
        return 1
    return 0 if "}:" in template else 2


def path_segments(raw_path: str) -> tuple[str, list[str]]:
    """The canonical path of ``raw_path`` (query string included) and its segments. Raises UnsafePath."""
    canonical = canonical_path(raw_path.partition("?")[0])
    return canonical, [s for s in canonical.split("/") if s]


def resolve(method: str, raw_path: str, families: frozenset[Family] | None = None) -> Route:
    """The route of ``method raw_path`` (query string included), among the endpoints of
    ``families`` (None: the whole table). Raises UnsafePath."""
    _, question, query = raw_path.partition("?")
    canonical, segments = path_segments(raw_path)
    route = lookup(method, segments, families)
    if route is None:
        return Route(canonical + question + query, None)
    return dataclasses.replace(route, path=route.path + question + query)


def lookup(method: str, segments: list[str], families: frozenset[Family] | None = None) -> Route | None:
    """The route of ``method`` on a canonical path's ``segments``, its path without a query
    string; None when the table does not know the path."""
    method = method.upper()
    known: list[tuple[Endpoint, list[str]]] = []
    for endpoint in ENDPOINTS:
        if families is not None and endpoint.family not in families:
            continue
        spelled = matches(endpoint.segments(), segments)
        if spelled is not None:
            known.append((endpoint, spelled))
    # A named method beats any method, and an exact template a `/**` prefix:
    # /v1/messages/batches is not /v1/messages/{id}.
    known.sort(key=lambda pair: _rank(pair[0].template))
    for endpoint, spelled in known:
        if endpoint.method in (method, "*"):
            return Route("/" + "/".join(spelled), endpoint.treatment, endpoint)
    if not known:
        return None
    endpoint, spelled = known[0]
    if method in _BODILESS:
        return Route("/" + "/".join(spelled), Treatment.FORWARDED, endpoint)
    return Route("/" + "/".join(spelled), Treatment.REFUSED, endpoint, wrong_method=True)
