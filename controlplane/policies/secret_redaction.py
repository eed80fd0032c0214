"""Redacts credentials from what agents send to the provider (and optionally from what comes back).

Each detector finds one kind of secret; a redaction records only the kind, never the value.
"""

import itertools
import json
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import regex
from pydantic import BaseModel, ConfigDict, Field, field_validator

from controlplane.models import NormalizedRequest, PolicyResult, RequestMetadata
from controlplane.policies.text_stream import (
    PatternSet,
    Rule,
    StreamingTextPolicy,
    StreamingTextRewriter,
    rewrite_request_texts,
)


@dataclass(frozen=True)
class Detector:
    """A kind of secret. If ``pattern`` has a group named ``secret``, only that group is redacted
    (``NAME=value`` keeps its name); ``accept`` may reject a match that only looks like one."""

    kind: str
    pattern: str
    accept: Callable[[Any], bool] | None = None

    def compiled(self) -> "regex.Pattern[str]":
        return regex.compile(self.pattern)


# --- `NAME=value` assignments -------------------------------------------------------------------

_NAME_PARTS = regex.compile(r"[A-Z]+(?![a-z])|[A-Z]?[a-z]+|[0-9]+")
_SECRET_PARTS = frozenset({"SECRET", "TOKEN", "PASSWORD", "PASSWD", "PASS", "PWD", "APIKEY", "PRIVATEKEY"})
_SECRET_PAIRS = frozenset({("API", "KEY"), ("PRIVATE", "KEY")})
_SECRET_ENDINGS = ("SECRET", "TOKEN", "PASSWORD", "PASSWD", "APIKEY", "PRIVATEKEY")
# A name ending in one of these holds something about a secret, not the secret.
_NOT_SECRET_LAST_PARTS = frozenset(
    {
        *("URL", "URI", "TYPE", "FILE", "PATH", "DIR", "NAME", "FIELD", "HEADER", "ENDPOINT", "PARAM"),
        *("LEN", "LENGTH", "COUNT", "LIMIT", "SIZE", "ID", "KIND", "MODE", "PREFIX", "SUFFIX", "ARN"),
        *("EXPIRY", "EXPIRES", "EXPIRATION", "TTL", "TIMEOUT", "ENABLED", "REQUIRED", "POLICY", "REF"),
        *("HASH", "VERSION", "ENV", "VAR"),
    }
)
_NOT_SECRET_VALUES = frozenset({"none", "null", "nil", "true", "false", "undefined"})
_REFERENCE = regex.compile(r"[A-Za-z_$][\w$]*(?:\.[A-Za-z_$][\w$]*)+")  # settings.SECRET, process.env.X


def secret_name(name: str) -> bool:
    """``GITHUB_TOKEN``, ``db_password``, ``apiKey``, ``PGPASSWORD``; not ``max_tokens``,
    ``tokenizer``, ``secretary`` or ``TOKEN_URL``."""
    parts = _NAME_PARTS.findall(name)
    upper = [p.upper() for p in parts if not p.isdigit()]
    if not upper or (upper[-1] in _NOT_SECRET_LAST_PARTS and len(upper) > 1):
        return False
    if any(p in _SECRET_PARTS for p in upper):
        return True
    if any(pair in _SECRET_PAIRS for pair in itertools.pairwise(upper)):
        return True
    # One upper-case word: PGPASSWORD, MYTOKEN.
    return any(p.isupper() and p.endswith(_SECRET_ENDINGS) for p in parts)


def secret_value(value: str, *, quoted: bool) -> bool:
    """A value that could be a secret, not an expression, a reference or a placeholder."""
    if not quoted:
        value = value.rstrip(";,")
    if len(value) < 4 or value.lower() in _NOT_SECRET_VALUES or value[0] in "$%<{[(*#":
        return False
    if len(set(value)) == 1:  # xxxx, ****
        return False
    return quoted or not (any(c in value for c in "()[]{}<>") or _REFERENCE.fullmatch(value))


def _assignment(match: Any) -> bool:
    name, start, end = match.group("name"), match.start("secret"), match.end("secret")
    quoted = match.string[start - 1 : start] in ("'", '"') and match.end() > end
    if not quoted and any(c.islower() for c in name):
        return False  # code, not a .env file: `token = get_token()`
    return secret_name(name) and secret_value(match.group("secret"), quoted=quoted)


_PEM = r"(?:[A-Za-z0-9+/=:,\- \t\r\n]|\\[nr])"  # what a PEM body may contain (also escaped \n)
_PEM_LABEL = r"-----{0}[A-Z0-9 ]{{0,40}}PRIVATE KEY(?: BLOCK)?-----"

#: The built-in detectors, by id (the id is also the kind recorded).
DETECTORS: dict[str, Detector] = {
    d.kind: d
    for d in (
        Detector("anthropic_api_key", r"(?<![A-Za-z0-9_-])sk-ant-[A-Za-z0-9_-]{20,}"),
        Detector(
            "openai_api_key",
            r"(?<![A-Za-z0-9_-])sk-(?:(?:proj|svcacct|admin)-[A-Za-z0-9_-]{20,}|[A-Za-z0-9]{32,})",
        ),
        Detector("aws_access_key_id", r"(?<![A-Za-z0-9])(?:AKIA|ASIA)[0-9A-Z]{16}(?![0-9A-Za-z])"),
        Detector(
            "aws_secret_access_key",
            r"""(?i:\baws_?secret_?access_?key|\bsecret_?access_?key)["']?\s*[=:]\s*["']?"""
            r"""(?P<secret>[A-Za-z0-9/+]{40})(?![A-Za-z0-9/+=])["']?""",
        ),
        Detector(
            "github_token",
            r"(?<![A-Za-z0-9_])(?:gh[pousr]_[A-Za-z0-9]{36,}|github_pat_[A-Za-z0-9_]{22,})",
        ),
        Detector("slack_token", r"(?<![A-Za-z0-9-])xox[abposr]-(?=[A-Za-z0-9-]*[0-9])[A-Za-z0-9-]{10,}"),
        Detector("google_api_key", r"(?<![A-Za-z0-9_-])AIza[0-9A-Za-z_-]{35}(?![0-9A-Za-z_-])"),
        Detector(
            "private_key",
            # The whole block; or, with no END line (a truncated key), the key material there is.
            _PEM_LABEL.format("BEGIN")
            + rf"(?:{_PEM}{{0,16384}}?{_PEM_LABEL.format('END')}|{_PEM}*?[A-Za-z0-9+/=]{{32}}{_PEM}*)",
        ),
        Detector(
            "jwt",
            r"(?<![A-Za-z0-9_-])eyJ[A-Za-z0-9_-]{8,}\.eyJ[A-Za-z0-9_-]{8,}\.[A-Za-z0-9_-]{8,}",
        ),
        Detector(
            "secret_assignment",
            r"""(?P<name>\b[A-Za-z0-9_]*(?i:SECRET|TOKEN|PASSWORD|PASSWD|PASS|PWD|API_?KEY|PRIVATE_?KEY)"""
            r"""[A-Za-z0-9_]*)\s*=(?!=)\s*"""
            r"""(?:"(?P<secret>[^"\n]*)"|'(?P<secret>[^'\n]*)'|(?P<secret>[^\s"'`]+))""",
            accept=_assignment,
        ),
    )
}


class ExtraPattern(BaseModel):
    """A site-specific secret: a regex (the ``regex`` package's syntax, a superset of ``re``).
    With a group named ``secret``, only that group is redacted."""

    model_config = ConfigDict(extra="forbid")
    kind: str = Field(min_length=1, pattern=r"^[A-Za-z0-9_.:-]+$", description="Recorded per redaction.")
    pattern: str = Field(min_length=1)

    @field_validator("pattern")
    @classmethod
    def _compiles(cls, pattern: str) -> str:
        try:
            compiled = regex.compile(pattern)
        except regex.error as exc:
            raise ValueError(f"invalid regular expression {pattern!r}: {exc}") from exc
        if compiled.fullmatch(""):
            raise ValueError(f"regular expression {pattern!r} matches the empty string")
        return pattern


class SecretRedactionPolicy(StreamingTextPolicy):
    """Replaces secrets (API keys, tokens, private keys, passwords in assignments) in requests
    before they reach the provider, and optionally in responses."""

    class Config(BaseModel):
        model_config = ConfigDict(extra="forbid")
        detectors: list[str] | None = Field(
            default=None, description=f"Detector ids to enable (default: all): {', '.join(DETECTORS)}."
        )
        extra_patterns: list[ExtraPattern] = Field(default_factory=list)
        replacement: str = Field(default="[REDACTED:{kind}]", description="`{kind}` names the detector.")
        redact_responses: bool = Field(default=False, description="Also redact the model's text.")

        @field_validator("detectors")
        @classmethod
        def _known(cls, detectors: list[str] | None) -> list[str] | None:
            unknown = [d for d in detectors or [] if d not in DETECTORS]
            if unknown:
                raise ValueError(f"unknown detector {unknown[0]!r}; known detectors: {', '.join(DETECTORS)}")
            return detectors

    config: Config
    description = "Redacts API keys, tokens, private keys and passwords from requests (and responses)."

    def __init__(self, config: BaseModel | None = None) -> None:
        super().__init__(config)
        enabled = self.config.detectors if self.config.detectors is not None else list(DETECTORS)
        detectors = [DETECTORS[d] for d in DETECTORS if d in enabled]
        detectors += [Detector(p.kind, p.pattern) for p in self.config.extra_patterns]
        self._assignments = "secret_assignment" in enabled
        # Recognises what a `NAME=value` value is, to record the most specific kind.
        self._classifiers = [
            (d.kind, compiled)
            for d in detectors
            if d.accept is None and "secret" not in (compiled := d.compiled()).groupindex
        ]
        self.patterns = PatternSet([self._rule(d, self._placeholder) for d in detectors])
        # Records keep the original request too; there a secret becomes a distinct marker, so the
        # recorded diff still shows where the policy redacted.
        self._withheld = PatternSet([self._rule(d, "[secret not recorded: {}]".format) for d in detectors])

    def _rule(self, detector: Detector, placeholder: Callable[[str], str]) -> Rule:
        compiled = detector.compiled()
        has_group = "secret" in compiled.groupindex

        def replace(match: Any) -> tuple[str, str] | None:
            if detector.accept is not None and not detector.accept(match):
                return None
            start, end = match.span()
            if has_group and match.start("secret") >= 0:
                start, end = match.span("secret")
            kind = detector.kind
            if detector.accept is _assignment:
                kind = self._classify(match.group("secret")) or kind
            text = match.group()
            before, after = text[: start - match.start()], text[end - match.start() :]
            return before + placeholder(kind) + after, kind

        return Rule(compiled, replace)

    def _classify(self, value: str) -> str | None:
        return next((kind for kind, pattern in self._classifiers if pattern.search(value)), None)

    def _placeholder(self, kind: str) -> str:
        return self.config.replacement.replace("{kind}", kind)

    def redact(self, text: str, counts: Counter[str] | None = None) -> str:
        """``text`` with every secret replaced; counts each redaction under its kind."""
        return self.patterns.sub(text, counts)

    def redact_for_recording(self, text: str) -> str:
        withheld = self._withheld.sub(text)
        # Tool-call arguments are JSON, where a secret may be known only by its key.
        return self.redact_arguments(withheld) if withheld[:1] in ("{", "[") else withheld

    def redact_arguments(self, arguments: str, counts: Counter[str] | None = None) -> str:
        """Tool-call arguments with secrets redacted inside their JSON strings; still valid JSON,
        and the same string when there was nothing to redact."""
        try:
            parsed = json.loads(arguments)
        except ValueError:
            return self.redact(arguments, counts)
        redacted = self._redact_json(parsed, counts if counts is not None else Counter())
        return arguments if redacted is parsed else json.dumps(redacted, ensure_ascii=False)

    def _redact_json(self, node: Any, counts: Counter[str], key: str | None = None) -> Any:
        """``node`` with secrets redacted in its strings (the same object when unchanged)."""
        if isinstance(node, str):
            redacted = self.redact(node, counts)
            named = key is not None and self._assignments and secret_name(key)
            if redacted == node and named and secret_value(node, quoted=True):  # {"password": "hunter2"}
                kind = self._classify(node) or "secret_assignment"
                counts[kind] += 1
                return self._placeholder(kind)
            return node if redacted == node else redacted
        if isinstance(node, list):
            items = [self._redact_json(item, counts) for item in node]
            return node if all(a is b for a, b in zip(items, node, strict=True)) else items
        if isinstance(node, dict):
            values = {k: self._redact_json(v, counts, k) for k, v in node.items()}
            return node if all(values[k] is node[k] for k in node) else values
        return node

    async def apply_request_policies(
        self, request: NormalizedRequest, metadata: RequestMetadata
    ) -> PolicyResult[NormalizedRequest]:
        counts: Counter[str] = Counter()
        redacted = rewrite_request_texts(
            request,
            lambda text: self.redact(text, counts),
            lambda arguments: self.redact_arguments(arguments, counts),
        )
        if redacted is None:
            return PolicyResult.allow(request)
        return self.allow_counted(redacted, counts)

    def response_rewriter(self) -> Callable[[str, Counter[str]], str] | None:
        return self.redact if self.config.redact_responses else None

    def stream_rewriter(self, counts: Counter[str]) -> StreamingTextRewriter | None:
        return self.patterns.rewriter(counts) if self.config.redact_responses else None

    def describe(self, counts: Counter[str]) -> tuple[str, dict[str, Any]] | None:
        total = counts.total()
        kinds = ", ".join(sorted(counts))
        reason = f"redacted {total} secret{'' if total == 1 else 's'} ({kinds})"
        return reason, {"redacted": dict(sorted(counts.items()))}
