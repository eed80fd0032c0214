"""Provider profiles: the hosts Luthien polices, and where on each host which API sits.

A profile names a provider's hosts (a pattern for the ones named per customer or region: an Azure
resource, a Vertex AI region), the API its clients speak (whose error format a refusal is in), the
header its credential travels in, and its mounts. A mount says where an API sits on the host: a
request's path is matched against the mounts in order, and the first that matches says which
path of the endpoint table (addon/endpoints.py) it is, looked up among that API's endpoints only:
an OpenAI-compatible host does not serve Anthropic's or Gemini's paths, so theirs are unknown
paths there (``--unknown-endpoints``). The path the provider gets is the host's own, in the
spelling the table looked up. docs/architecture.md shows the table; a test keeps the two in step.

``--provider-host`` takes a profile's name (every host of it), one of its hosts, or
``HOST=FORMAT[/PREFIX]`` for a host no profile names; any other host is refused at start-up.
"""

import functools
import re
from collections.abc import Iterable
from dataclasses import dataclass, replace
from enum import StrEnum

from addon.endpoints import Endpoint, Family, Route, Treatment, UnsafePath, lookup, matches, path_segments


class ApiFormat(StrEnum):
    """The APIs ``--provider-host HOST=FORMAT[/PREFIX]`` names."""

    OPENAI = "openai"
    ANTHROPIC = "anthropic"
    GEMINI = "gemini"


_FAMILIES = {
    ApiFormat.OPENAI: Family.OPENAI,
    ApiFormat.ANTHROPIC: Family.ANTHROPIC,
    ApiFormat.GEMINI: Family.GOOGLE,
}
#: The path of the base URL each API's SDK is given on the provider's own host.
_BASE_PATHS = {ApiFormat.OPENAI: "/v1", ApiFormat.ANTHROPIC: "", ApiFormat.GEMINI: ""}
#: The placeholders of a mount that name the model.
_MODEL_PLACEHOLDERS = ("{model}", "{deployment}")


@dataclass(frozen=True)
class Mount:
    # The host's paths: `{name}` one segment, `{name}:method` one that ends in that method, a
    # trailing `/**` any number of segments. `{model}` and `{deployment}` name the model.
    pattern: str
    # The endpoint-table path they are (a trailing `/**` takes the rest); None: refused.
    target: str | None
    family: Family | None  # whose endpoints the target is looked up among (None: every API's)
    note: str = ""  # why a refused mount is refused

    def match(self, segments: list[str]) -> tuple[list[str], list[str]] | None:
        """The matched segments as the pattern spells them, and the rest (for a `/**` pattern)."""
        pattern = self.pattern.strip("/").split("/")
        spelled = matches(pattern, segments)
        if spelled is None:
            return None
        fixed = len(pattern) - 1 if pattern[-1] == "**" else len(pattern)
        return spelled[:fixed], spelled[fixed:]

    def model(self, spelled: list[str]) -> str | None:
        parts = self.pattern.strip("/").split("/")
        for part, segment in zip(parts, spelled, strict=False):
            if part.startswith(_MODEL_PLACEHOLDERS):
                return segment.rpartition(":")[0] if ":" in part else segment
        return None


@dataclass(frozen=True)
class Profile:
    name: str
    hosts: tuple[str, ...]  # names, or patterns: `{label}` is one DNS label (a resource, a region)
    family: Family  # whose error format a refusal is in (its mounts may say otherwise)
    auth: str  # the header its clients send the credential in
    mounts: tuple[Mount, ...]
    # A provider Luthien cannot police: naming it stops start-up, with this reason.
    unsupported: str = ""

    def route(self, method: str, raw_path: str) -> Route:
        """Where ``method raw_path`` (query string included) goes on this host. Raises UnsafePath."""
        path, question, query = raw_path.partition("?")
        # Routes are remembered by path, without the query string (which may hold a credential).
        route = (
            _remembered(self, method, path) if len(path) <= _REMEMBERED_PATH else self._route(method, path)
        )
        return replace(route, path=route.path + question + query) if question else route

    def _route(self, method: str, path: str) -> Route:
        """The route of a path without its query string."""
        canonical, segments = path_segments(path)
        for mount in self.mounts:
            found = mount.match(segments)
            if found is None:
                continue
            spelled, rest = found
            family = mount.family or self.family
            model = mount.model(spelled)
            if mount.target is None:
                refused = Endpoint("*", mount.pattern, Treatment.REFUSED, family, mount.note)
                return Route(
                    "/" + "/".join(spelled + rest), Treatment.REFUSED, refused, family=family, model=model
                )
            target = [s for s in mount.target.split("/") if s]
            fixed = target[:-1] if target and target[-1] == "**" else target
            families = None if mount.family is None else frozenset({mount.family, Family.BOTH})
            route = lookup(method, fixed + rest, families)
            if route is None:
                return Route(canonical, None, family=family)
            table = [s for s in route.path.split("/") if s]
            return replace(
                route, path="/" + "/".join(spelled + table[len(fixed) :]), family=family, model=model
            )
        return Route(canonical, None, family=self.family)


#: Paths up to this long have their routes remembered, the last _REMEMBERED of them: the
#: table is walked once per path (a tenth of a whole call's CPU when it was walked per call),
#: and the memory stays bounded whatever clients send.
_REMEMBERED_PATH, _REMEMBERED = 256, 512


@functools.lru_cache(maxsize=_REMEMBERED)
def _remembered(profile: Profile, method: str, path: str) -> Route:
    return profile._route(method, path)  # a Route is frozen: calls can share one


#: A provider's own host: every API's paths, where the providers keep them.
_WHOLE_TABLE = (Mount("/**", "/**", None),)


def _openai_compatible(*prefixes: str) -> tuple[Mount, ...]:
    """OpenAI's paths under each of ``prefixes`` (the base URL's path, OpenAI's being ``/v1``)."""
    return tuple(Mount(f"{prefix}/**", "/v1/**", Family.OPENAI) for prefix in prefixes)


_AZURE = (
    # The deployment (the model) is in the path; the body may not name one.
    Mount("/openai/deployments/{deployment}/**", "/v1/**", Family.OPENAI),
    Mount("/openai/v1/**", "/v1/**", Family.OPENAI),  # the v1 API, without api-version
    Mount("/openai/**", "/v1/**", Family.OPENAI),  # responses, files, batches, ... under /openai
)
_VERTEX_RESOURCES = (
    "other publishers' models, endpoints, batch prediction, tuning, cached contents, "
    "RAG corpora and agents carry model input or output Luthien does not police"
)


_VERTEX_LOCATION = "/{version}/projects/{project}/locations/{location}"
_CLAUDE_ON_VERTEX = f"{_VERTEX_LOCATION}/publishers/anthropic/models"
#: Vertex AI (API versions v1 and v1beta1): Anthropic's Messages API (the model in the path, the
#: body naming ``anthropic_version`` instead), Gemini, and Vertex's OpenAI-compatible API.
_VERTEX = (
    Mount(f"{_CLAUDE_ON_VERTEX}/count-tokens:rawPredict", "/v1/messages/count_tokens", Family.ANTHROPIC),
    Mount(f"{_CLAUDE_ON_VERTEX}/{{model}}:rawPredict", "/v1/messages", Family.ANTHROPIC),
    Mount(f"{_CLAUDE_ON_VERTEX}/{{model}}:streamRawPredict", "/v1/messages", Family.ANTHROPIC),
    Mount(f"{_VERTEX_LOCATION}/publishers/google/**", "/v1/**", Family.GOOGLE),
    Mount("/{version}/publishers/google/**", "/v1/**", Family.GOOGLE),  # express mode (an API key)
    Mount(f"{_VERTEX_LOCATION}/endpoints/openapi/**", "/v1/**", Family.OPENAI),
    Mount("/{version}/projects/**", None, Family.GOOGLE, _VERTEX_RESOURCES),
)


BEDROCK_UNSUPPORTED = (
    "Amazon Bedrock is not supported: its streams are framed as binary AWS event-stream messages "
    "(application/vnd.amazon.eventstream, each a length-prefixed, CRC-checked frame whose payload "
    "holds the provider's event, base64-encoded), which Luthien would have to decode, police and "
    "re-frame, and its requests are signed with AWS SigV4 over the body, so a policy's change "
    "would need the agent's AWS credentials to re-sign; see docs/architecture.md"
)

PROFILES: tuple[Profile, ...] = (
    Profile("openai", ("api.openai.com",), Family.OPENAI, "Authorization: Bearer", _WHOLE_TABLE),
    Profile("anthropic", ("api.anthropic.com",), Family.ANTHROPIC, "x-api-key", _WHOLE_TABLE),
    Profile(
        "gemini",
        ("generativelanguage.googleapis.com",),
        Family.GOOGLE,
        "x-goog-api-key",
        _WHOLE_TABLE,
    ),
    Profile(
        "openrouter",
        ("openrouter.ai",),
        Family.OPENAI,
        "Authorization: Bearer",
        _openai_compatible("/api/v1"),
    ),
    Profile(
        "groq", ("api.groq.com",), Family.OPENAI, "Authorization: Bearer", _openai_compatible("/openai/v1")
    ),
    Profile(
        "together", ("api.together.xyz",), Family.OPENAI, "Authorization: Bearer", _openai_compatible("/v1")
    ),
    Profile(
        "mistral", ("api.mistral.ai",), Family.OPENAI, "Authorization: Bearer", _openai_compatible("/v1")
    ),
    Profile(
        "deepseek",
        ("api.deepseek.com",),
        Family.OPENAI,
        "Authorization: Bearer",
        _openai_compatible("/v1", ""),
    ),
    Profile("xai", ("api.x.ai",), Family.OPENAI, "Authorization: Bearer", _openai_compatible("/v1")),
    Profile(
        "azure",
        ("{resource}.openai.azure.com", "{resource}.cognitiveservices.azure.com"),
        Family.OPENAI,
        "api-key (or Authorization: Bearer, Entra ID)",
        _AZURE,
    ),
    Profile(
        "vertex",
        (
            "{region}-aiplatform.googleapis.com",
            "aiplatform.googleapis.com",
            "aiplatform.{region}.rep.googleapis.com",
        ),
        Family.GOOGLE,
        "Authorization: Bearer (Google OAuth), x-goog-api-key in express mode",
        _VERTEX,
    ),
    Profile(
        "bedrock",
        ("bedrock-runtime.{region}.amazonaws.com",),
        Family.OPENAI,
        "Authorization: AWS4-HMAC-SHA256 (SigV4)",
        (),
        unsupported=BEDROCK_UNSUPPORTED,
    ),
)
DEFAULT_PROFILES = ("openai", "anthropic", "gemini")
#: A host no profile names, which only a dry run meets (a recorded call to a host that was added
#: as HOST=FORMAT): the whole table, as on the providers' own hosts, with OpenAI's errors.
ANY_HOST = Profile("any", (), Family.OPENAI, "", _WHOLE_TABLE)

_LABEL = "[a-z0-9](?:[a-z0-9-]*[a-z0-9])?"
_HOST = re.compile(rf"^{_LABEL}(?:\.{_LABEL})*$")


def _host_regex(host: str) -> str:
    """A host name or pattern as a regular expression (a `{label}` is one DNS label)."""
    return re.sub(r"\\\{\w+\\\}", _LABEL, re.escape(host))


@dataclass(frozen=True)
class ProviderHost:
    """One host (or pattern of hosts) Luthien polices, and its profile."""

    host: str
    profile: Profile

    def matches(self, host: str) -> bool:
        return re.fullmatch(_host_regex(self.host), host) is not None


class ProviderHosts:
    """The hosts Luthien decrypts and polices, each with its profile."""

    def __init__(self, hosts: Iterable[ProviderHost]) -> None:
        self.hosts = tuple(hosts)
        self._exact = {h.host: h.profile for h in self.hosts if "{" not in h.host}
        self._patterns = [(re.compile(_host_regex(h.host)), h.profile) for h in self.hosts if "{" in h.host]

    @classmethod
    def parse(cls, specs: Iterable[str]) -> "ProviderHosts":
        """From ``--provider-host`` values. Raises ValueError, with the forms it accepts."""
        return cls(host for spec in specs for host in provider_host(spec))

    def profile_for(self, host: str) -> Profile | None:
        """The profile of a canonical host name, None when Luthien does not police it."""
        if (profile := self._exact.get(host)) is not None:
            return profile
        return next((profile for pattern, profile in self._patterns if pattern.fullmatch(host)), None)

    def family_for(self, host: str) -> Family:
        profile = self.profile_for(host)
        return profile.family if profile is not None else Family.OPENAI

    def allow_pattern(self) -> str:
        """mitmproxy's ``allow_hosts``: only these hosts are decrypted; every other connection
        is tunnelled untouched. Any case and a trailing dot match too: the interceptor then
        refuses a flow whose names disagree."""
        names = sorted({_host_regex(h.host) for h in self.hosts})
        return "^(" + "|".join(names) + r")\.?:\d+$"

    def names(self) -> list[str]:
        return sorted({h.host for h in self.hosts})


_PROFILES_BY_NAME = {profile.name: profile for profile in PROFILES}
#: Every host of every profile Luthien supports: what a dry run finds a recorded call's host in.
KNOWN_HOSTS = ProviderHosts(
    ProviderHost(host, profile) for profile in PROFILES if not profile.unsupported for host in profile.hosts
)


def _usage(spec: str, why: str) -> ValueError:
    names = ", ".join(p.name for p in PROFILES if not p.unsupported)
    return ValueError(
        f"--provider-host {spec!r}: {why}. Give a profile ({names}), a host of one "
        "(openrouter.ai, myresource.openai.azure.com, ...), or HOST=FORMAT[/PREFIX] with FORMAT "
        "openai, anthropic or gemini and PREFIX the path of the base URL its SDK is given "
        "(e.g. llm.internal=openai/api/v1)"
    )


def provider_host(spec: str) -> tuple[ProviderHost, ...]:
    """One ``--provider-host`` value: a profile's name, one of its hosts, or
    ``HOST=FORMAT[/PREFIX]``. Raises ValueError."""
    spec = spec.strip()
    name, equals, described = spec.partition("=")
    name = name.strip().lower().rstrip(".")
    if equals:
        return (_described(spec, name, described.strip()),)
    if (profile := _PROFILES_BY_NAME.get(name)) is not None:
        if profile.unsupported:
            raise ValueError(f"--provider-host {spec!r}: {profile.unsupported}")
        return tuple(ProviderHost(host, profile) for host in profile.hosts)
    if not _HOST.match(name):
        raise _usage(spec, "not a host name")
    for profile in PROFILES:
        if any(ProviderHost(host, profile).matches(name) for host in profile.hosts):
            if profile.unsupported:
                raise ValueError(f"--provider-host {spec!r}: {profile.unsupported}")
            return (ProviderHost(name, profile),)
    raise _usage(spec, "no profile names this host, so Luthien cannot know which API it serves")


def _described(spec: str, host: str, described: str) -> ProviderHost:
    """``HOST=FORMAT[/PREFIX]``: the FORMAT's paths under PREFIX (default: where its provider keeps them)."""
    api, slash, prefix = described.partition("/")
    if not _HOST.match(host):
        raise _usage(spec, "not a host name")
    try:
        api_format = ApiFormat(api.lower())
    except ValueError:
        raise _usage(spec, f"{api!r} is not a format") from None
    if slash:
        try:
            _, segments = path_segments("/" + prefix)
        except UnsafePath as exc:
            raise _usage(spec, f"the prefix is not a plain path ({exc})") from None
        if any("{" in s or "*" in s for s in segments):
            raise _usage(spec, "the prefix is a path, without patterns")
        base = "".join(f"/{s}" for s in segments)
    else:
        base = _BASE_PATHS[api_format]
    family = _FAMILIES[api_format]
    mount = Mount(f"{base}/**", f"{_BASE_PATHS[api_format]}/**", family)
    profile = Profile(host, (host,), family, "as the format's API", (mount,))
    return ProviderHost(host, profile)
