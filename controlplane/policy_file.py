"""Loads a policy from a YAML file:

    policy:
      class: ToolCallBlocklistPolicy        # a built-in name, or "package.module:ClassName"
      config:
        patterns: ['rm\\s+-rf']

Composite policies (SerialPolicy, SelectPolicy) nest the same ``{class, config}`` specs. The
problems are reported together, in one PolicyFileError, each naming the file, the path to the
key and what is wrong, e.g. ``policy.yaml: policy.config.policies[1].config.patterns: Field
required``.
"""

import importlib
from pathlib import Path
from typing import Any

import yaml
from pydantic import ValidationError

# Looked up at call time: composite policies import this module to build their children.
import controlplane.policies as policies
from controlplane.policies.base import PolicyHandler
from controlplane.policies.noop import NoOpPolicy


class PolicyFileError(ValueError):
    """A policy file that cannot be used: each of its problems says where and why (the message
    holds them a line each)."""

    def __init__(self, *problems: str) -> None:
        super().__init__("\n".join(problems))
        self.problems = list(problems)

    def within(self, prefix: str) -> "PolicyFileError":
        """The same problems, located inside ``prefix``."""
        return PolicyFileError(*(prefix + problem for problem in self.problems))


def load_policy_file(path: Path | None) -> PolicyHandler:
    """The policy described by ``path``; ``NoOpPolicy`` when no file is given."""
    if path is None:
        return NoOpPolicy()
    return policy_from_document(read_policy_document(path), source=str(path))


def read_policy_document(path: Path) -> Any:
    """The YAML document in ``path``, not yet checked to be a policy."""
    return parse_policy_yaml(read_policy_bytes(path), str(path))


def read_policy_bytes(path: Path) -> bytes:
    try:
        return path.read_bytes()
    except OSError as exc:
        raise PolicyFileError(f"{path}: cannot read the policy file: {exc.strerror}") from exc


def parse_policy_yaml(content: bytes, source: str) -> Any:
    try:
        return yaml.safe_load(content)
    except yaml.YAMLError as exc:
        raise PolicyFileError(f"{source}: not valid YAML: {exc}") from exc


def policy_from_document(document: Any, source: str) -> PolicyHandler:
    if not isinstance(document, dict) or "policy" not in document:
        raise PolicyFileError(f"{source}: policy: expected a mapping with a 'policy' key")
    try:
        return build_policy(document["policy"], "policy")
    except PolicyFileError as exc:
        raise exc.within(f"{source}: ") from exc


def build_policy(spec: Any, where: str) -> PolicyHandler:
    """A policy from a ``{class, config}`` spec; errors are prefixed with ``where``."""
    if not isinstance(spec, dict):
        raise PolicyFileError(f"{where}: expected a mapping with 'class' and optional 'config'")
    problems = []
    if unknown := set(spec) - {"class", "config"}:
        problems.append(f"{where}: unknown keys {sorted(unknown)}")
    config = spec.get("config") or {}
    if not isinstance(config, dict):
        problems.append(f"{where}.config: expected a mapping")
    try:
        cls = resolve_policy_class(spec.get("class"), where)
    except PolicyFileError as exc:
        raise PolicyFileError(*problems, *exc.problems) from exc
    if problems:
        raise PolicyFileError(*problems)
    try:
        validated = cls.Config.model_validate(config)
    except ValidationError as exc:
        raise PolicyFileError(*(_problem(where, error) for error in exc.errors())) from exc
    try:
        return cls(validated)
    except PolicyFileError as exc:  # a composite's children, already located relative to it
        raise exc.within(f"{where}.") from exc
    except ValueError as exc:  # the policy refused its (valid-looking) config, e.g. a missing env var
        raise PolicyFileError(f"{where}.config: {exc}") from exc


def build_policies(specs: list[tuple[Any, str]]) -> list[PolicyHandler]:
    """``build_policy`` for each ``(spec, where)`` (a composite's children): the problems of all
    of them, not only the first's."""
    built, problems = [], []
    for spec, where in specs:
        try:
            built.append(build_policy(spec, where))
        except PolicyFileError as exc:
            problems += exc.problems
    if problems:
        raise PolicyFileError(*problems)
    return built


def _problem(where: str, error: Any) -> str:
    path = "".join(_loc(part) for part in error["loc"])
    return f"{where}.config{path}: {error['msg'].removeprefix('Value error, ')}"


def resolve_policy_class(name: Any, where: str) -> type[PolicyHandler]:
    if not isinstance(name, str) or not name:
        raise PolicyFileError(f"{where}.class: expected a policy class name")
    if name in policies.BUILTIN_POLICIES:
        return policies.BUILTIN_POLICIES[name]
    if ":" not in name:
        known = ", ".join(sorted(policies.BUILTIN_POLICIES))
        raise PolicyFileError(
            f"{where}.class: unknown policy {name!r} (built-ins: {known}; or give 'module:ClassName')"
        )
    module_name, _, attribute = name.partition(":")
    try:
        cls = getattr(importlib.import_module(module_name), attribute)
    # ValueError and TypeError: names importlib refuses outright, such as ":X" or ".x:Y".
    except (ImportError, AttributeError, ValueError, TypeError) as exc:
        raise PolicyFileError(f"{where}.class: cannot import {name!r}: {exc}") from exc
    if not (isinstance(cls, type) and issubclass(cls, PolicyHandler)):
        raise PolicyFileError(f"{where}.class: {name!r} is not a PolicyHandler")
    return cls


def _loc(part: int | str) -> str:
    return f"[{part}]" if isinstance(part, int) else f".{part}"
