"""ToolCallBlocklistPolicy: removes tool calls that match a regex blocklist, unless an allow rule
lets them through. Holding, releasing and rewriting the response is done by ``ToolCallGate``."""

import re
from typing import Any

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator
from pydantic_core import PydanticCustomError

from controlplane.models import RequestMetadata
from controlplane.policies.chunks import ToolCall, decoded_text
from controlplane.policies.config_types import Regex
from controlplane.policies.tool_gate import ToolCallGate, Verdict


class Rule(BaseModel):
    """Matches a tool call when every regex it gives is found: ``name`` in the tool's name,
    ``arguments`` in the arguments' decoded text (and, for a block rule, in their JSON text)."""

    model_config = ConfigDict(extra="forbid")
    id: str | None = Field(default=None, description="Recorded with the decision.")
    name: Regex | None = Field(default=None, description="Regex searched in the tool name.")
    arguments: Regex | None = Field(
        default=None,
        description="Regex searched in the arguments' decoded values (a block rule: or their JSON).",
    )
    reason: str | None = Field(default=None, description="Shown to the agent when the rule blocks.")

    @model_validator(mode="after")
    def _matches_something(self) -> "Rule":
        if self.name is None and self.arguments is None:
            raise ValueError("a rule needs `name` or `arguments` (a regular expression), or both")
        return self


class _NothingToBlock:
    """Stands in for ``patterns`` when neither it nor ``block`` is given, so the error is
    reported at ``patterns``."""

    def __init__(self, given: bool) -> None:
        self.given = given


class ToolCallBlocklistPolicy(ToolCallGate):
    """Removes tool calls whose name or arguments match a blocklist, unless an allow rule matches."""

    class Config(BaseModel):
        model_config = ConfigDict(extra="forbid")
        patterns: list[Regex] = Field(
            default_factory=list,
            description="Regexes searched in each tool call's name and arguments (decoded values, and JSON).",
        )
        block: list[Rule] = Field(default_factory=list, description="Rules that block a matching call.")
        allow: list[Rule] = Field(
            default_factory=list, description="Rules that let a call through whatever would block it."
        )
        ignore_case: bool = True

        @model_validator(mode="before")
        @classmethod
        def _something_to_block(cls, data: Any) -> Any:
            if isinstance(data, dict) and not data.get("patterns") and not data.get("block"):
                return {**data, "patterns": _NothingToBlock(given="patterns" in data)}
            return data

        @field_validator("patterns", mode="before")
        @classmethod
        def _not_nothing(cls, value: Any) -> Any:
            if isinstance(value, _NothingToBlock):
                if value.given:
                    raise ValueError("give at least one pattern, or some `block` rules")
                raise PydanticCustomError(
                    "missing", "Field required: give `patterns`, `block` rules, or both"
                )
            return value

    config: Config
    description = "Removes tool calls whose name or arguments match a regex, unless allowed; explains why."

    def __init__(self, config: BaseModel | None = None) -> None:
        super().__init__(config)
        flags = re.IGNORECASE if self.config.ignore_case else 0
        self._patterns = [re.compile(p, flags) for p in self.config.patterns]
        self._block = [(i, rule, *self._compiled(rule, flags)) for i, rule in enumerate(self.config.block)]
        self._allow = [(i, rule, *self._compiled(rule, flags)) for i, rule in enumerate(self.config.allow)]

    @staticmethod
    def _compiled(rule: Rule, flags: int) -> tuple[re.Pattern[str] | None, re.Pattern[str] | None]:
        name = re.compile(rule.name, flags) if rule.name is not None else None
        arguments = re.compile(rule.arguments, flags) if rule.arguments is not None else None
        return name, arguments

    @staticmethod
    def _matches(
        name_re: re.Pattern[str] | None, arguments_re: re.Pattern[str] | None, name: str, texts: list[str]
    ) -> bool:
        return (name_re is None or name_re.search(name) is not None) and (
            arguments_re is None or any(arguments_re.search(text) for text in texts)
        )

    def matching_pattern(self, name: str, arguments: str) -> str | None:
        """The first of ``patterns`` found in the name or the arguments (allow rules aside)."""
        texts = [name, arguments, decoded_text(arguments)]
        for pattern in self._patterns:
            if any(pattern.search(text) for text in texts):
                return pattern.pattern
        return None

    def match(self, name: str, arguments: str) -> Verdict | None:
        """A blocking Verdict, an allowing one (an allow rule overrode a block), or None.

        Patterns are matched on what the arguments say (``decoded_text``: ``rm\\u0020-rf`` is
        ``rm -rf``); a block rule also on their JSON text, so a pattern written for it still
        blocks. An allow rule is matched on the decoded text only: escapes cannot make it match."""
        decoded = decoded_text(arguments)
        blocked = self._blocking(name, [arguments, decoded])
        if blocked is None:
            return None
        for index, rule, name_re, arguments_re in self._allow:
            if self._matches(name_re, arguments_re, name, [decoded]):
                allow_id = rule.id or f"allow[{index}]"
                return Verdict(
                    reason=f"allowed by rule {allow_id} although {blocked.reason}",
                    rule_id=allow_id,
                    details={"overridden_rule": blocked.rule_id},
                    allowed=True,
                )
        return blocked

    def _blocking(self, name: str, texts: list[str]) -> Verdict | None:
        for index, rule, name_re, arguments_re in self._block:
            if self._matches(name_re, arguments_re, name, texts):
                rule_id = rule.id or f"block[{index}]"
                reason = rule.reason or f"it matches the blocklist rule {rule_id}"
                return Verdict(reason=reason, rule_id=rule_id)
        for index, pattern in enumerate(self._patterns):
            if pattern.search(name) or any(pattern.search(text) for text in texts):
                return Verdict(
                    reason=f"it matches the blocklist pattern `{pattern.pattern}`",
                    rule_id=f"patterns[{index}]",
                    details={"pattern": pattern.pattern},
                )
        return None

    async def judge(self, call: ToolCall, metadata: RequestMetadata) -> Verdict | None:
        return self.match(call.name, call.arguments)
