import re
from collections import Counter
from collections.abc import Callable
from typing import Any, Literal

import regex
from pydantic import BaseModel, ConfigDict, Field, model_validator

from controlplane.models import NormalizedRequest, PolicyResult, RequestMetadata
from controlplane.policies.text_stream import (
    PatternSet,
    Rule,
    StreamingTextPolicy,
    StreamingTextRewriter,
    compile_pattern,
    rewrite_request_texts,
)


def match_case(matched: str, replacement: str) -> str:
    """``replacement`` in the case of ``matched``: "HELLO" gives "BYE", "Hello" gives "Bye",
    "hello" gives "bye"; a mixed-case match leaves the replacement as written."""
    cased = [c for c in matched if c.isupper() or c.islower()]
    if not cased:
        return replacement
    if all(c.isupper() for c in cased):
        return replacement.upper()
    if all(c.islower() for c in cased):
        return replacement.lower()
    if matched.istitle():
        if len(matched.split()) > 1:  # "Quick Brown" -> "Slow Red"
            return " ".join(word[:1].upper() + word[1:] for word in replacement.split(" "))
        return replacement[:1].upper() + replacement[1:]
    return replacement


class Replacement(BaseModel):
    """One ``find`` → ``replace`` rule."""

    model_config = ConfigDict(extra="forbid")
    find: str = Field(min_length=1, description="The text, or with `regex: true` the regular expression.")
    replace: str = Field(description="The replacement; for a regex, `\\1` and `\\g<name>` refer to groups.")
    regex: bool = Field(default=False, description="`find` is a Python regular expression.")
    ignore_case: bool = False
    preserve_case: bool = Field(
        default=False,
        description="Give the replacement the case of each match (HELLO → BYE, Hello → Bye); "
        "implies ignore_case.",
    )

    @model_validator(mode="after")
    def _compiles(self) -> "Replacement":
        if not self.regex:
            return self
        try:
            compiled = re.compile(self.find)
            compile_pattern(self.find)
        except (re.error, regex.error) as exc:
            raise ValueError(f"invalid regular expression {self.find!r}: {exc}") from exc
        if compiled.fullmatch(""):
            raise ValueError(f"regular expression {self.find!r} matches the empty string")
        try:
            compiled.sub(self.replace, "")  # parses the template: bad escapes, unknown groups
        except (re.error, IndexError) as exc:
            raise ValueError(f"invalid replacement {self.replace!r} for {self.find!r}: {exc}") from exc
        return self


class StringReplacementPolicy(StreamingTextPolicy):
    """Replaces strings or regex matches in the model's text and/or in the request's messages."""

    class Config(BaseModel):
        model_config = ConfigDict(extra="forbid")
        replacements: list[Replacement] = Field(
            min_length=1, description="Applied in one pass; the earliest match wins."
        )
        apply_to: Literal["requests", "responses", "both"] = Field(
            default="responses", description="Rewrite the requests' messages, the responses' text, or both."
        )

    config: Config
    description = "Replaces strings or regex matches in requests and/or responses (streams included)."

    def __init__(self, config: BaseModel | None = None) -> None:
        super().__init__(config)
        self.patterns = PatternSet([self._rule(r) for r in self.config.replacements])

    @staticmethod
    def _rule(replacement: Replacement) -> Rule:
        ignore_case = replacement.ignore_case or replacement.preserve_case
        pattern = compile_pattern(replacement.find, literal=not replacement.regex, ignore_case=ignore_case)

        def replace(match: Any) -> tuple[str, str]:
            text = match.expand(replacement.replace) if replacement.regex else replacement.replace
            if replacement.preserve_case:
                text = match_case(match.group(), text)
            return text, replacement.find

        return Rule(pattern, replace, fixed=not replacement.regex)

    @property
    def _requests(self) -> bool:
        return self.config.apply_to in ("requests", "both")

    @property
    def _responses(self) -> bool:
        return self.config.apply_to in ("responses", "both")

    def rewrite(self, text: str, counts: Counter[str] | None = None) -> str:
        """``text`` with every replacement applied."""
        return self.patterns.sub(text, counts)

    async def apply_request_policies(
        self, request: NormalizedRequest, metadata: RequestMetadata
    ) -> PolicyResult[NormalizedRequest]:
        if not self._requests:
            return PolicyResult.allow(request)
        counts: Counter[str] = Counter()
        rewritten = rewrite_request_texts(request, lambda text: self.rewrite(text, counts))
        if rewritten is None:
            return PolicyResult.allow(request)
        return self.allow_counted(rewritten, counts)

    def response_rewriter(self) -> Callable[[str, Counter[str]], str] | None:
        return self.rewrite if self._responses else None

    def stream_rewriter(self, counts: Counter[str]) -> StreamingTextRewriter | None:
        return self.patterns.rewriter(counts) if self._responses else None

    def describe(self, counts: Counter[str]) -> tuple[str, dict[str, Any]] | None:
        total = counts.total()
        plural = "" if total == 1 else "s"
        return f"replaced {total} occurrence{plural}", {"replacements": total}
