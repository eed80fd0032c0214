"""Policy versions and activations as both backends store them: the SQL, in one placeholder
style per backend, and rows back as models."""

import json
from collections.abc import Mapping
from typing import Any

from controlplane.storage.base import ActivePolicy, PolicyActivation, PolicyVersion
from controlplane.storage.rows import Placeholder, epoch, from_epoch

_ACTIVATION_COLUMNS = "seq, version, activated_at, activated_by, source, note"


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
