"""A credential in a policy document is never stored: a document that would be the truth is refused
while it holds one, and a policy file's version is recorded with it redacted."""

from pathlib import Path

import pytest
import yaml

from controlplane.credentials import REDACTED
from controlplane.local import ControlPlaneLocal
from controlplane.policies.noop import NoOpPolicy
from controlplane.policy_file import PolicyFileError
from controlplane.policy_nudge import NoNudge
from controlplane.policy_versions import PolicyKeeper, PolicyVersions, document_version
from controlplane.storage import SQLiteStorage

KEY = "sk-live-0123456789abcdefghij"
JUDGE = {
    "policy": {
        "class": "SerialPolicy",
        "config": {
            "policies": [
                {"class": "NoOpPolicy"},
                {"class": "ToolCallJudgePolicy", "config": {"model": "openai/gpt-4o-mini", "api_key": KEY}},
            ]
        },
    }
}
BY_ENV = {
    "policy": {
        "class": "ToolCallJudgePolicy",
        "config": {"model": "openai/gpt-4o-mini", "api_key_env": "LUTHIEN_TEST_JUDGE_KEY"},
    }
}


async def test_a_document_with_a_credential_is_refused_and_nothing_is_stored(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("LUTHIEN_TEST_JUDGE_KEY", KEY)
    storage = SQLiteStorage(tmp_path / "calls.db")
    await storage.migrate()
    versions = PolicyVersions(storage, NoNudge(), "database")
    with pytest.raises(PolicyFileError) as refused:
        await versions.activate_document(JUDGE, "request body", "alice", "", "api")
    assert refused.value.problems == [
        "request body: policy.config.policies[1].config.api_key: holds a credential, which would be "
        "stored with the version and shown on the dashboard; give it by environment variable instead "
        "(for a judge: api_key_env)"
    ]
    assert await storage.active_policy() is None and await storage.policy_history(10) == []
    # Naming the variable is how: that document is stored as it is.
    await versions.activate_document(BY_ENV, "request body", "alice", "", "api")
    active = await storage.active_policy()
    assert active is not None and active.version.document == BY_ENV
    await storage.close()


async def test_a_policy_file_version_is_recorded_redacted_and_cannot_run_from_the_database(
    tmp_path: Path,
) -> None:
    storage = SQLiteStorage(tmp_path / "calls.db")
    await storage.migrate()
    policy = tmp_path / "policy.yaml"
    policy.write_text(yaml.safe_dump(JUDGE))
    keeper = PolicyKeeper(ControlPlaneLocal(NoOpPolicy()), storage, NoNudge(), "file", policy)
    await keeper.start()
    active = await storage.active_policy()
    assert active is not None
    # The version is the file's own (calls carry it), the stored copy has no key.
    assert active.version.version == document_version(JUDGE, "test")
    judge = active.version.document["policy"]["config"]["policies"][1]["config"]
    assert judge["api_key"] == REDACTED and KEY not in str(active.version.document)
    # Once the database is the source, that record cannot be activated: it would run without its key.
    versions = PolicyVersions(storage, NoNudge(), "database")
    with pytest.raises(PolicyFileError, match="recorded from a policy file with its credentials redacted"):
        await versions.activate_stored(active.version.version, "alice", "", "api")
    await storage.close()


async def test_a_file_with_a_credential_does_not_seed_a_database_source(tmp_path: Path) -> None:
    storage = SQLiteStorage(tmp_path / "calls.db")
    await storage.migrate()
    policy = tmp_path / "policy.yaml"
    policy.write_text(yaml.safe_dump(JUDGE))
    keeper = PolicyKeeper(ControlPlaneLocal(NoOpPolicy()), storage, NoNudge(), "database", policy)
    with pytest.raises(
        PolicyFileError, match=r"policy\.yaml: policy\.config\.policies\[1\]\.config\.api_key"
    ):
        await keeper.start()
    assert await storage.active_policy() is None
    await storage.close()
