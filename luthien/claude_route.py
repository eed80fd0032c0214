"""Where Claude Code would send its model calls: api.anthropic.com (policed) unless a provider
switch (``CLAUDE_CODE_USE_BEDROCK``, ``CLAUDE_CODE_USE_VERTEX``, …) or ``ANTHROPIC_BASE_URL``
sends them elsewhere, set in the environment or in the ``env`` of a settings file.

Claude Code applies its settings files' ``env`` over the environment, managed settings over the
rest; every one of them counts here, since any could apply.
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from pathlib import Path

from luthien.model_route import Problem, Route, host_of, truthy

POLICED_HOST = "api.anthropic.com"
MANAGED_SETTINGS = Path("/etc/claude-code/managed-settings.json")
#: Each turns Claude Code to a provider other than the Anthropic API (Claude Code 2.1).
PROVIDER_SWITCHES = (
    "CLAUDE_CODE_USE_BEDROCK",
    "CLAUDE_CODE_USE_VERTEX",
    "CLAUDE_CODE_USE_FOUNDRY",
    "CLAUDE_CODE_USE_ANTHROPIC_AWS",
    "CLAUDE_CODE_USE_ANTHROPIC_GOOGLE_CLOUD",
    "CLAUDE_CODE_USE_MANTLE",
    "CLAUDE_CODE_USE_GATEWAY",
)


def claude_route(env: Mapping[str, str], cwd: Path, argv: Sequence[str] = ()) -> Route:
    """Claude Code's model route for a run in ``cwd`` with environment ``env`` (``--settings``
    on its command line is not read: see docs/agents.md)."""
    config = (
        Path(env["CLAUDE_CONFIG_DIR"])
        if env.get("CLAUDE_CONFIG_DIR")
        else Path(env.get("HOME") or Path.home()) / ".claude"
    )
    sources: list[tuple[str, Mapping[str, str]]] = [("the environment", env)]
    for path in (
        MANAGED_SETTINGS,
        config / "settings.json",
        cwd / ".claude" / "settings.json",
        cwd / ".claude" / "settings.local.json",
    ):
        try:
            settings_env = _settings_env(path)
        except ValueError as exc:
            return _route(Problem(f"cannot read {path} ({exc}), so its env is unknown", f"correct {path}"))
        sources.append((str(path), settings_env))
    for where, variables in sources:
        if (problem := _problem(where, variables)) is not None:
            return _route(problem)
    return _route(None)


def _route(problem: Problem | None) -> Route:
    return Route("Claude Code", POLICED_HOST, (), problem)


def _settings_env(path: Path) -> dict[str, str]:
    try:
        settings = json.loads(path.read_text())
    except FileNotFoundError:
        return {}
    except OSError as exc:
        raise ValueError(exc.strerror or type(exc).__name__) from exc
    except json.JSONDecodeError as exc:
        raise ValueError(f"not JSON: {exc.msg} at line {exc.lineno}") from exc
    variables = settings.get("env") if isinstance(settings, dict) else None
    if variables is None:
        return {}
    if not isinstance(variables, dict):
        raise ValueError("its env is not an object")
    return {str(key): str(value) for key, value in variables.items()}


def _problem(where: str, variables: Mapping[str, str]) -> Problem | None:
    for switch in PROVIDER_SWITCHES:
        if truthy(variables.get(switch)):
            return Problem(
                f"{switch} ({where}) sends model calls to a provider other than {POLICED_HOST}, "
                "which Luthien does not police",
                f"unset {switch} (Luthien polices Claude Code on {POLICED_HOST})",
            )
    base_url = variables.get("ANTHROPIC_BASE_URL")
    if base_url and host_of(base_url) != POLICED_HOST:
        return Problem(
            f"ANTHROPIC_BASE_URL ({where}) sends model calls to {host_of(base_url) or 'an unparseable URL'}, "
            "which Luthien does not police",
            f"unset ANTHROPIC_BASE_URL (Luthien polices {POLICED_HOST}: no base URL is needed)",
        )
    return None
