"""Policy files: what loads, and the errors a user sees for what does not."""

from pathlib import Path

import pytest

from controlplane.policies import NoOpPolicy, ToolCallBlocklistPolicy, UppercaseNthWordPolicy
from controlplane.policy_file import PolicyFileError, load_policy_file


def write(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "policy.yaml"
    path.write_text(text)
    return path


def test_no_file_means_noop() -> None:
    assert isinstance(load_policy_file(None), NoOpPolicy)


def test_builtins_load_by_class_name(tmp_path: Path) -> None:
    policy = load_policy_file(write(tmp_path, "policy:\n  class: UppercaseNthWordPolicy\n  config: {n: 4}\n"))
    assert isinstance(policy, UppercaseNthWordPolicy) and policy.config.n == 4


def test_classes_load_by_module_path(tmp_path: Path) -> None:
    policy = load_policy_file(write(tmp_path, "policy:\n  class: tests.policies:SlowFirstChunkPolicy\n"))
    assert type(policy).__name__ == "SlowFirstChunkPolicy"


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        (
            "policy: {class: Nope}",
            "policy.class: unknown policy 'Nope' (built-ins: AllCapsPolicy, DangerousCommandPolicy, NoOpPolicy",
        ),
        ("policy: {class: 'no.such.module:X'}", "policy.class: cannot import 'no.such.module:X'"),
        ("policy: {class: 'json:dumps'}", "policy.class: 'json:dumps' is not a PolicyHandler"),
        ("policy: {}", "policy.class: expected a policy class name"),
        ("nothing: here", "policy: expected a mapping with a 'policy' key"),
        ("policy: {class: NoOpPolicy, extra: 1}", "policy: unknown keys ['extra']"),
        (
            "policy: {class: UppercaseNthWordPolicy, config: {n: 0}}",
            "policy.config.n: Input should be greater",
        ),
        ("policy: {class: UppercaseNthWordPolicy, config: {m: 1}}", "policy.config.m: Extra inputs"),
        ("policy: {class: ToolCallBlocklistPolicy, config: {}}", "policy.config.patterns: Field required"),
        (
            "policy: {class: ToolCallBlocklistPolicy, config: {patterns: [ok, '(']}}",
            "policy.config.patterns[1]: invalid regular expression '('",
        ),
        ("policy: [unclosed", "not valid YAML"),
    ],
)
def test_errors_name_the_file_the_key_and_the_problem(tmp_path: Path, text: str, expected: str) -> None:
    path = write(tmp_path, text)
    with pytest.raises(PolicyFileError) as error:
        load_policy_file(path)
    assert str(error.value).startswith(f"{path}: ")
    assert expected in str(error.value)


def test_a_missing_file_is_reported(tmp_path: Path) -> None:
    with pytest.raises(PolicyFileError, match="cannot read the policy file"):
        load_policy_file(tmp_path / "absent.yaml")


def test_blocklist_patterns_ignore_case_by_default() -> None:
    policy = ToolCallBlocklistPolicy(ToolCallBlocklistPolicy.Config(patterns=[r"DROP\s+TABLE"]))
    assert policy.matching_pattern("sql", '{"query": "drop table users"}') == r"DROP\s+TABLE"
    assert policy.matching_pattern("sql", '{"query": "select 1"}') is None
