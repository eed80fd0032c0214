"""Policy versions and activations as both backends store them: the SQL, in one placeholder
style per backend, and rows back as models."""

import json
from collections.abc import Mapping, Sequence
from typing import Any

from controlplane.recording.records import CallRecord, Decision
from controlplane.storage.base import (
    ActivePolicy,
    PolicyActivation,
    PolicyVersion,
    ShadowDecision,
    ShadowPolicy,
    ShadowSetting,
)
from controlplane.storage.rows import Placeholder, epoch, from_epoch

_ACTIVATION_COLUMNS = "seq, version, activated_at, activated_by, source, note"
_SHADOW_COLUMNS = "seq, version, set_at, set_by, note"
_DECISION_COLUMNS = (
    "call_id, shadow_version, decided_at, outcome, block_kind, rules, decisions, notes, replayed"
)


class PolicySql:
    def __init__(self, placeholder: Placeholder) -> None:
        p = placeholder
        self.insert_version = (
            "INSERT INTO policy_versions (version, document, created_at, created_by, note) "
            f"VALUES ({p(1)}, {p(2)}, {p(3)}, {p(4)}, {p(5)}) ON CONFLICT (version) DO NOTHING"
        )
        self.insert_activation = (
            f"INSERT INTO policy_activations ({_ACTIVATION_COLUMNS}) "
            f"SELECT COALESCE(MAX(seq), 0) + 1, {p(1)}, {p(2)}, {p(3)}, {p(4)}, {p(5)} "
            "FROM policy_activations"
        )
        self.last_activation = (
            f"SELECT {_ACTIVATION_COLUMNS} FROM policy_activations ORDER BY seq DESC LIMIT 1"
        )
        self.history = f"SELECT {_ACTIVATION_COLUMNS} FROM policy_activations ORDER BY seq DESC LIMIT {p(1)}"
        self.get_version = f"SELECT * FROM policy_versions WHERE version = {p(1)}"
        self.insert_shadow = (
            f"INSERT INTO policy_shadows ({_SHADOW_COLUMNS}) "
            f"SELECT COALESCE(MAX(seq), 0) + 1, {p(1)}, {p(2)}, {p(3)}, {p(4)} FROM policy_shadows"
        )
        self.last_shadow = f"SELECT {_SHADOW_COLUMNS} FROM policy_shadows ORDER BY seq DESC LIMIT 1"
        self.shadow_history = f"SELECT {_SHADOW_COLUMNS} FROM policy_shadows ORDER BY seq DESC LIMIT {p(1)}"
        self.insert_decision = (
            f"INSERT INTO shadow_decisions ({_DECISION_COLUMNS}) VALUES "
            f"({', '.join(p(n) for n in range(1, 10))}) ON CONFLICT (call_id, shadow_version) DO NOTHING"
        )
        self.shadow_counts = (
            "SELECT outcome, COUNT(*) AS calls FROM shadow_decisions "
            f"WHERE shadow_version = {p(1)} AND decided_at >= {p(2)} GROUP BY outcome"
        )
        self._placeholder = p

    def decisions_of(self, count: int) -> str:
        """The shadow decisions of ``count`` calls (given as parameters), oldest first."""
        wanted = ", ".join(self._placeholder(n) for n in range(1, count + 1))
        return (
            f"SELECT {_DECISION_COLUMNS} FROM shadow_decisions WHERE call_id IN ({wanted}) "
            "ORDER BY decided_at"
        )


def version_values(version: PolicyVersion) -> tuple[Any, ...]:
    document = json.dumps(version.document, sort_keys=True)
    return (version.version, document, epoch(version.created_at), version.created_by, version.note)


def version_from_row(row: Mapping[str, Any]) -> PolicyVersion:
    return PolicyVersion(
        version=row["version"],
        document=json.loads(row["document"]),
        created_at=from_epoch(row["created_at"]),
        created_by=row["created_by"],
        note=row["note"],
    )


def activation_from_row(row: Mapping[str, Any]) -> PolicyActivation:
    return PolicyActivation.model_validate({**row, "activated_at": from_epoch(row["activated_at"])})


def active_from_rows(activation: Mapping[str, Any], version: Mapping[str, Any]) -> ActivePolicy:
    return ActivePolicy(activation=activation_from_row(activation), version=version_from_row(version))


def setting_from_row(row: Mapping[str, Any]) -> ShadowSetting:
    return ShadowSetting.model_validate({**row, "set_at": from_epoch(row["set_at"])})


def shadow_from_rows(setting: Mapping[str, Any], version: Mapping[str, Any] | None) -> ShadowPolicy:
    return ShadowPolicy(
        setting=setting_from_row(setting), version=None if version is None else version_from_row(version)
    )


def decision_values(decision: ShadowDecision) -> tuple[Any, ...]:
    replayed = None if decision.replayed is None else decision.replayed.model_dump_json()
    return (
        decision.call_id,
        decision.shadow_version,
        epoch(decision.decided_at),
        decision.outcome,
        decision.block_kind,
        json.dumps(decision.rules),
        json.dumps([d.model_dump(mode="json") for d in decision.decisions]),
        json.dumps(decision.notes),
        replayed,
    )


def decision_from_row(row: Mapping[str, Any]) -> ShadowDecision:
    replayed = row["replayed"]
    return ShadowDecision(
        call_id=row["call_id"],
        shadow_version=row["shadow_version"],
        decided_at=from_epoch(row["decided_at"]),
        outcome=row["outcome"],
        block_kind=row["block_kind"],
        rules=json.loads(row["rules"]),
        decisions=[Decision.model_validate(d) for d in json.loads(row["decisions"])],
        notes=json.loads(row["notes"]),
        replayed=None if replayed is None else CallRecord.model_validate_json(replayed),
    )


def latest_decisions(rows: Sequence[Mapping[str, Any]]) -> dict[str, ShadowDecision]:
    """Each call's latest decision, of rows oldest first."""
    return {row["call_id"]: decision_from_row(row) for row in rows}
