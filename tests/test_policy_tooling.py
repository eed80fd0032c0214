"""`luthien policy list|check|schema` and the committed JSON Schema."""

import json
import subprocess
from pathlib import Path

import jsonschema
import pytest
import yaml

from controlplane.policies import BUILTIN_POLICIES
from controlplane.policy_schema import policy_file_schema
from tests.conftest import ROOT, catalogue_policy
from tests.conftest import luthien as run_luthien

SCHEMA_FILE = ROOT / "docs" / "policy.schema.json"


def luthien(*args: str) -> subprocess.CompletedProcess[str]:
    return run_luthien(*args, env={"PYTHONPATH": str(ROOT / "docs" / "examples")})


def test_the_committed_schema_is_current() -> None:
    assert json.loads(SCHEMA_FILE.read_text()) == policy_file_schema(), (
        "docs/policy.schema.json is stale: regenerate it with `luthien policy schema > docs/policy.schema.json`"
    )


def test_the_schema_accepts_real_policy_files_and_rejects_broken_ones() -> None:
    validator = jsonschema.Draft202012Validator(policy_file_schema())
    good = [
        {"policy": catalogue_policy("http://127.0.0.1:1/v1")},
        yaml.safe_load((ROOT / "docs" / "examples" / "team_rules.yaml").read_text()),
    ]
    for document in good:
        assert not list(validator.iter_errors(document))
    bad = [
        {"policy": {"class": "UppercaseNthWordPolicy", "config": {"n": 0}}},
        {"policy": {"class": "SerialPolicy", "config": {"policies": [{"class": "NoSuchPolicy"}]}}},
        {"policy": {"class": "ToolCallBlocklistPolicy", "config": {"patterns": ["x"], "typo": 1}}},
    ]
    for document in bad:
        assert list(validator.iter_errors(document)), document


def test_policy_list_names_every_builtin_with_a_description() -> None:
    done = luthien("policy", "list")
    assert done.returncode == 0
    listed = {line.split()[0]: line for line in done.stdout.splitlines()}
    assert set(listed) == set(BUILTIN_POLICIES)
    assert all(len(line.split(maxsplit=1)) == 2 for line in listed.values())


def test_policy_check_accepts_a_good_file() -> None:
    done = luthien("policy", "check", str(ROOT / "docs" / "examples" / "team_rules.yaml"))
    assert (done.returncode, done.stdout.strip().endswith("OK (TeamRulesPolicy)")) == (0, True)


@pytest.mark.parametrize(
    ("text", "message"),
    [
        (
            "policy:\n  class: SerialPolicy\n  config:\n    policies:\n      - class: DangerousCommandPolicy\n        config: {disabled_rules: [no-such-rule]}\n",
            "policy.config.policies[0].config.disabled_rules: unknown rule 'no-such-rule'",
        ),
        (
            "policy:\n  class: ToolCallJudgePolicy\n  config: {model: openai/x, api_key_env: LUTHIEN_TEST_UNSET_KEY}\n",
            "policy.config: ",
        ),
        ("policy: [", "not valid YAML"),
    ],
)
def test_policy_check_rejects_a_broken_file_precisely(tmp_path: Path, text: str, message: str) -> None:
    path = tmp_path / "broken.yaml"
    path.write_text(text)
    done = luthien("policy", "check", str(path))
    assert done.returncode == 1
    assert done.stderr.startswith(f"luthien: {path}: ")
    assert message in done.stderr
    assert "Traceback" not in done.stderr
