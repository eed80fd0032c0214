"""Loads a policy from a YAML file:

    policy:
      class: ToolCallBlocklistPolicy        # a built-in name, or "package.module:ClassName"
      config:
        patterns: ['rm\\s+-rf']

Every problem is reported as one PolicyFileError naming the file, the key and what is wrong.
"""

import importlib
from pathlib import Path
from typing import Any

import yaml
from pydantic import ValidationError

from controlplane.policies import BUILTIN_POLICIES, NoOpPolicy, PolicyHandler


class PolicyFileError(ValueError):
    """A policy file that cannot be used; the message says where and why."""


def load_policy_file(path: Path | None) -> PolicyHandler:
    """The policy described by ``path``; ``NoOpPolicy`` when no file is given."""
    if path is None:
        return NoOpPolicy()
    try:
        document = yaml.safe_load(path.read_text())
    except OSError as exc:
        raise PolicyFileError(f"{path}: cannot read the policy file: {exc.strerror}") from exc
    except yaml.YAMLError as exc:
        raise PolicyFileError(f"{path}: not valid YAML: {exc}") from exc
    return policy_from_document(document, source=str(path))


def policy_from_document(document: Any, source: str) -> PolicyHandler:
    if not isinstance(document, dict) or not isinstance(document.get("policy"), dict):
        raise PolicyFileError(f"{source}: policy: expected a mapping with a 'policy' key")
    spec = document["policy"]
    unknown = set(spec) - {"class", "config"}
    if unknown:
        raise PolicyFileError(f"{source}: policy: unknown keys {sorted(unknown)}")
    cls = resolve_policy_class(spec.get("class"), source)
    config = spec.get("config") or {}
    if not isinstance(config, dict):
        raise PolicyFileError(f"{source}: policy.config: expected a mapping")
    try:
        return cls(cls.Config.model_validate(config))
    except ValidationError as exc:
        first = exc.errors()[0]
        where = ".".join(["policy", "config", *(_loc(part) for part in first["loc"])])
        raise PolicyFileError(f"{source}: {where}: {first['msg']}".replace(".[", "[")) from exc


def resolve_policy_class(name: Any, source: str) -> type[PolicyHandler]:
    if not isinstance(name, str) or not name:
        raise PolicyFileError(f"{source}: policy.class: expected a policy class name")
    if name in BUILTIN_POLICIES:
        return BUILTIN_POLICIES[name]
    if ":" not in name:
        known = ", ".join(sorted(BUILTIN_POLICIES))
        raise PolicyFileError(
            f"{source}: policy.class: unknown policy {name!r} (built-ins: {known}; "
            "or give 'module:ClassName')"
        )
    module_name, _, attribute = name.partition(":")
    try:
        cls = getattr(importlib.import_module(module_name), attribute)
    except (ImportError, AttributeError) as exc:
        raise PolicyFileError(f"{source}: policy.class: cannot import {name!r}: {exc}") from exc
    if not (isinstance(cls, type) and issubclass(cls, PolicyHandler)):
        raise PolicyFileError(f"{source}: policy.class: {name!r} is not a PolicyHandler")
    return cls


def _loc(part: int | str) -> str:
    return f"[{part}]" if isinstance(part, int) else str(part)
