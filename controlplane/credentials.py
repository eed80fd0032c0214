"""Credentials kept out of what Luthien stores, shows and publishes, whatever the policy.

Three scrubs, each used by the models themselves (``RequestMetadata``, ``CallRecord``,
``Decision``, ``ActivityEvent``, ``CallSummary``), so no code path can forget them:

- ``redact_query``: a path's credential query parameters (Gemini's ``?key=AIza…``,
  ``api_key``, ``access_token``, ``sig``, ``code``, ``client_secret``, …) keep their name and
  lose their value.
- ``scrub_credentials``: key-shaped strings in free text (``sk-…``, ``sk-ant-…``, ``AIza…``,
  ``Bearer …``, AWS, GitHub and Slack tokens, JWTs, private keys, credential query parameters
  inside URLs, ``API_KEY=…`` assignments). It is greedy on purpose: it runs on Luthien's own
  words (decision reasons and metadata, activity events, errors), where a false positive costs a
  ``[redacted]`` in a monitor line, never a changed request.
- ``scrub_body``: a JSON body Luthien forwards without policing (``passthrough``), where
  sign-in endpoints answer with tokens: values under credential keys (``access_token``,
  ``raw_key``, ``client_secret``, …) and key-shaped strings anywhere.

Prompts and answers of policed calls are not scrubbed here: they are recorded as sent unless the
policy redacts them (``SecretRedactionPolicy``, whose precise detectors decide what the provider
gets; these patterns only decide what Luthien keeps). This module imports nothing of Luthien's,
so the plain-data models can use it.
"""

import re
from collections.abc import Callable
from typing import Any
from urllib.parse import unquote_plus

REDACTED = "[redacted]"

#: Query-parameter names (lower case, without ``-`` and ``_``) whose value is a credential.
_CREDENTIAL_PARAMS = frozenset(
    {
        *("key", "apikey", "xgoogapikey", "token", "accesstoken", "idtoken", "refreshtoken"),
        *("authtoken", "sessiontoken", "bearer", "auth", "authorization", "code", "clientsecret"),
        *("secret", "password", "passwd", "pwd", "sig", "signature", "xamzsignature"),
        *("xamzsecuritytoken", "xamzcredential", "xgoogsignature", "xgoogcredential"),
    }
)
#: Any parameter whose name ends so is one too (``page_token``? harmless to hide).
_CREDENTIAL_ENDINGS = ("token", "secret", "password", "signature", "apikey")


def credential_name(name: str) -> bool:
    """``key``, ``api_key``, ``API-Key``, ``access_token``, ``X-Amz-Signature``, ``client_secret``."""
    normal = unquote_plus(name).lower().replace("-", "").replace("_", "")
    return normal in _CREDENTIAL_PARAMS or normal.endswith(_CREDENTIAL_ENDINGS)


def redact_query(path: str) -> str:
    """``path`` with the value of every credential query parameter replaced by ``[redacted]``;
    the parameter names, their order and every other parameter stay as they were."""
    base, mark, query = path.partition("?")
    if not mark:
        return path
    query, hash_mark, fragment = query.partition("#")
    parts = []
    for part in re.split(r"([&;])", query):
        name, equals, value = part.partition("=")
        if equals and value and value != REDACTED and credential_name(name):
            part = f"{name}={REDACTED}"
        parts.append(part)
    return f"{base}?{''.join(parts)}{hash_mark}{fragment}"


_PARAM_NAMES = (
    r"(?:[A-Za-z0-9_-]*(?:token|secret|password|signature|api[_-]?key)|key|x-goog-api-key|auth"
    r"|authorization|bearer|code|sig|passwd|pwd|x-amz-credential|x-goog-credential)"
)
_PEM_LABEL = r"-----{0}[A-Z0-9 ]{{0,40}}PRIVATE KEY(?: BLOCK)?-----"

#: (pattern, replacement): key shapes first, then the contexts that name a credential.
_SCRUBS: tuple[tuple[re.Pattern[str], str], ...] = tuple(
    (re.compile(pattern), replacement)
    for pattern, replacement in (
        # A private key block, or what is left of one that was cut.
        (_PEM_LABEL.format("BEGIN") + r"[\s\S]*?(?:" + _PEM_LABEL.format("END") + r"|\Z)", REDACTED),
        # OpenAI (sk-, sk-proj-, sk-svcacct-), Anthropic (sk-ant-) and look-alikes.
        (r"(?<![A-Za-z0-9_-])sk-[A-Za-z0-9_-]{12,}", REDACTED),
        (r"(?<![A-Za-z0-9_-])AIza[0-9A-Za-z_-]{20,}", REDACTED),  # Google API keys
        (r"(?<![A-Za-z0-9])(?:AKIA|ASIA)[0-9A-Z]{16}(?![0-9A-Za-z])", REDACTED),  # AWS key ids
        (r"(?<![A-Za-z0-9_])(?:gh[pousr]_[A-Za-z0-9]{20,}|github_pat_[A-Za-z0-9_]{22,})", REDACTED),
        (r"(?<![A-Za-z0-9-])xox[abposr]-[A-Za-z0-9-]{10,}", REDACTED),  # Slack
        (r"(?<![A-Za-z0-9_-])eyJ[A-Za-z0-9_-]{8,}\.eyJ[A-Za-z0-9_-]{8,}\.[A-Za-z0-9_-]*", REDACTED),  # JWTs
        # An authorization scheme and its credential: "Bearer abc…", "Basic dXNlcjpwYXNz" (base64,
        # so not "basic understanding").
        (r"(?i)\b(bearer\s+)(?!\[redacted\])[A-Za-z0-9._~+/=-]{4,}", rf"\1{REDACTED}"),
        (r"(?i)\b(basic\s+)(?=[A-Za-z0-9+/]*[0-9+/=])[A-Za-z0-9+/]{8,}=*", rf"\1{REDACTED}"),
        # A credential query parameter in a URL or a form body.
        (rf"(?i)((?:^|[?&;]){_PARAM_NAMES}=)(?!\[redacted\])[^&;#\s\"'\\<>]+", rf"\1{REDACTED}"),
        # An authorization header, with or without its scheme: "Authorization: Basic …".
        (
            r"(?i)(\b(?:proxy-)?authorization[\"']?\s*[:=]\s*[\"']?(?:(?:bearer|basic|digest|token|negotiate|aws4-hmac-sha256)\s+)?+)"
            r"(?!\[redacted\])[^\s\"',;}]+",
            rf"\1{REDACTED}",
        ),
        # A credential header or assignment: "x-api-key: …", "OPENAI_API_KEY=…", '"password": "…"'.
        (
            r"(?i)(\b(?:x-api-key|api-key|x-goog-api-key|cookie"
            r"|[A-Za-z0-9_]*(?:secret|token|password|passwd|credentials?|(?:api|private|access|secret)_?key))[\"']?\s*[:=]\s*[\"']?)"
            r"(?!\[redacted\])(?![0-9]+\b)[^\s\"'&,;}]{4,}",
            rf"\1{REDACTED}",
        ),
    )
)


#: What every scrub above needs in a text to match it: a key's prefix, ``:`` or ``=`` (every
#: context pattern has one), or an authorization scheme's name. A text without any, as most of
#: Luthien's own words are (methods, paths, model names, reasons), is scrubbed with one search
#: of a tenth of the cost of trying each scrub in turn.
_SCRUB_HINT = re.compile(r"-----|sk-|AIza|AKIA|ASIA|gh|github_pat_|xox|eyJ|[:=]|(?i:bearer|basic)")


def scrub_credentials(text: str) -> str:
    """``text`` with every credential-shaped part replaced by ``[redacted]``."""
    if _SCRUB_HINT.search(text) is None:
        return text
    for pattern, replacement in _SCRUBS:
        text = pattern.sub(replacement, text)
    return text


def scrub_strings(node: Any, scrub: Callable[[str], str] = scrub_credentials) -> Any:
    """``node`` (JSON-like data) with ``scrub`` applied to every string value; keys are kept."""
    if isinstance(node, str):
        return scrub(node)
    if isinstance(node, list | tuple):
        return [scrub_strings(item, scrub) for item in node]
    if isinstance(node, dict):
        return {key: scrub_strings(value, scrub) for key, value in node.items()}
    return node


#: JSON keys whose value is a credential, in a body Luthien does not police.
_CREDENTIAL_KEY = re.compile(
    r"(?i)^(?:.*(?:token|secret|password|passwd|api_?key|private_?key|credential)s?|key|raw_?key"
    r"|authorization|cookie)$"
)
#: Names that match the above but count things or name them.
_NOT_CREDENTIAL_KEY = re.compile(r"(?i)(?:^max_|_count$|_type$|_id$|_at$|_in$|_name$|_url$|^tokens?$)")


def credential_key(key: str) -> bool:
    """A JSON key whose string value is a credential (``api_key``, ``client_secret``), not one that
    counts or names things (``max_tokens``, ``token_type``)."""
    return bool(_CREDENTIAL_KEY.match(key)) and not _NOT_CREDENTIAL_KEY.search(key)


def scrub_body(node: Any, key: str | None = None) -> Any:
    """A forwarded JSON body (or its text) with credentials removed: a string under a credential
    key is replaced whole, and key-shaped strings are scrubbed everywhere."""
    if isinstance(node, str):
        named = key is not None and credential_key(key)
        return REDACTED if named and node else scrub_credentials(node)
    if isinstance(node, list):
        return [scrub_body(item) for item in node]
    if isinstance(node, dict):
        return {k: scrub_body(v, k if isinstance(k, str) else None) for k, v in node.items()}
    return node
