"""A dry run's report: what a candidate policy would have done to recorded calls.

Plain data, so that whoever shows it (the CLI, the dashboard) needs only this module; the run
itself (``luthien/dry_run.py``) drives the proxy's own pipeline and so lives where the planes
are composed. ``DryRunner`` is the seam a dashboard is given it through.
"""

from collections import Counter
from collections.abc import Sequence
from typing import Any, Literal, Protocol

from pydantic import BaseModel, Field

from controlplane.recording.records import BlockKind, CallOutcome, CallRecord, Decision
from controlplane.storage.base import CallQuery, Storage

#: How an LLM judge answers in a dry run: from its cache only (a miss is let through, marked
#: skipped: never a request to the judge), or not at all (every tool call marked skipped).
OfflineJudge = Literal["cache", "skip"]
#: The details key that marks a tool call the judge did not score in a dry run, and why.
JUDGE_SKIPPED = "judge_skipped"
#: The rule a block is counted under when its policy names none.
UNNAMED_RULE = "(no rule id)"
#: The calls list's widest page.
_PAGE = 500


class CallReplay(BaseModel):
    """One recorded call, replayed under the candidate policy."""

    call_id: str  # the recorded call's
    recorded_outcome: CallOutcome
    recorded_block_kind: BlockKind | None
    outcome: CallOutcome
    block_kind: BlockKind | None
    request_modified: bool
    response_modified: bool
    rules: list[str] = Field(description="The rules of the blocks the candidate policy made, in order.")
    judge_skipped: int = Field(description="Tool calls the judge did not score (not cached, or skipped).")
    notes: list[str] = Field(description="What limits this replay: a record without an answer, cut events.")
    replayed: CallRecord = Field(description="The call as the candidate policy would have recorded it.")

    @property
    def blocked(self) -> bool:
        return self.outcome is CallOutcome.BLOCKED

    @property
    def modified(self) -> bool:
        return self.request_modified or self.response_modified

    @property
    def affected(self) -> bool:
        """The candidate policy blocked, removed or rewrote something in this call."""
        return self.blocked or self.modified


class DryRunReport(BaseModel):
    policy_version: str
    judge: OfflineJudge
    calls: list[CallReplay]
    seconds: float

    @property
    def affected(self) -> int:
        return sum(call.affected for call in self.calls)

    @property
    def blocked(self) -> int:
        return sum(call.blocked for call in self.calls)

    @property
    def modified(self) -> int:
        return sum(call.modified for call in self.calls)

    @property
    def judge_skipped(self) -> int:
        return sum(call.judge_skipped for call in self.calls)

    def by_rule(self) -> dict[str, int]:
        """How many calls each rule blocked something in, most first."""
        counts = Counter(rule for call in self.calls for rule in dict.fromkeys(call.rules))
        return dict(counts.most_common())

    def by_kind(self) -> dict[BlockKind, int]:
        counts = Counter(call.block_kind for call in self.calls if call.block_kind is not None)
        return dict(counts.most_common())

    @property
    def calls_per_second(self) -> float:
        return len(self.calls) / self.seconds if self.seconds > 0 else 0.0

    def summary(self) -> dict[str, Any]:
        return {
            "policy_version": self.policy_version,
            "judge": self.judge,
            "calls": len(self.calls),
            "affected": self.affected,
            "blocked": self.blocked,
            "modified": self.modified,
            "judge_skipped": self.judge_skipped,
            "by_rule": self.by_rule(),
            "by_kind": self.by_kind(),
            "seconds": round(self.seconds, 3),
            "calls_per_second": round(self.calls_per_second, 1),
        }


class DryRunner(Protocol):
    async def run(
        self, policy_document: Any, calls: Sequence[CallRecord], judge: OfflineJudge = "cache"
    ) -> DryRunReport:
        """Replays ``calls`` under the policy of ``policy_document`` (a policy file's content),
        contacting no provider; raises ``PolicyFileError`` for a document that is not a policy."""
        ...


def block_rules(decisions: Sequence[Decision]) -> list[str]:
    """The rules of the blocks among ``decisions`` (a tool gate names several at once)."""
    rules: list[str] = []
    for decision in decisions:
        if decision.block is None:
            continue
        named = decision.metadata.get("rule_id")
        rules += (
            [rule.strip() for rule in named.split(",")]
            if isinstance(named, str) and named
            else [UNNAMED_RULE]
        )
    return rules


def judge_skips(decisions: Sequence[Decision]) -> int:
    """Tool calls the judge left unscored: marked in a decision's details, or in the details of
    each judged call of a whole response."""
    count = 0
    for decision in decisions:
        metadata = decision.metadata
        count += JUDGE_SKIPPED in metadata
        judged = metadata.get("judged_calls")
        if isinstance(judged, list):
            count += sum(isinstance(entry, dict) and JUDGE_SKIPPED in entry for entry in judged)
    return count


async def recorded_calls(storage: Storage, query: CallQuery, limit: int) -> list[CallRecord]:
    """Up to ``limit`` recorded calls matching ``query``, oldest first, whole."""
    calls: list[CallRecord] = []
    offset = 0
    while len(calls) < limit:
        page = await storage.list_calls(
            query.model_copy(
                update={
                    "sort": "time",
                    "order": "asc",
                    "offset": offset,
                    "limit": min(_PAGE, limit - len(calls)),
                }
            )
        )
        for summary in page.calls:
            if (call := await storage.get_call(summary.call_id)) is not None:  # deleted meanwhile
                calls.append(call)
        if len(page.calls) < page.limit:
            break
        offset += len(page.calls)
    return calls
