"""Where Codex CLI would send its model calls: api.openai.com (policed) with an API key and the
built-in ``openai`` provider; elsewhere when logged in with ChatGPT (chatgpt.com/backend-api/codex,
tunnelled, not decrypted), when another model provider is chosen, or when ``OPENAI_BASE_URL``
points away.

The provider is chosen as Codex 0.169 chooses it: ``-c model_provider=…`` on the command line,
then the profile's (``--profile``, or ``profile`` in config.toml), then config.toml's
``model_provider``, then ``openai``; ``--oss`` picks a local model server.
"""

from __future__ import annotations

import itertools
import json
import tomllib
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from luthien.model_route import Problem, Route, host_of

POLICED_HOST = "api.openai.com"
CHATGPT_HOST = "chatgpt.com"
API_KEY_FIX = (
    "log out of ChatGPT (codex logout) and use an API key: export OPENAI_API_KEY "
    "(or codex login --with-api-key)"
)


def codex_route(env: Mapping[str, str], cwd: Path, argv: Sequence[str] = ()) -> Route:
    """Codex's model route with environment ``env`` and its arguments ``argv``."""
    home = (
        Path(env["CODEX_HOME"]) if env.get("CODEX_HOME") else Path(env.get("HOME") or Path.home()) / ".codex"
    )
    try:
        config = _toml(home / "config.toml")
        auth = _json(home / "auth.json")
    except ValueError as exc:
        return _route((), Problem(str(exc), "correct it"))
    if "--oss" in argv:
        return _route(
            ("--oss",),
            Problem(
                "--oss sends model calls to a local model server, which Luthien does not police", "drop --oss"
            ),
        )
    provider, where = _provider(config, argv)
    chosen = (f"model provider {provider} ({where})",)
    if provider != "openai":
        declared = (config.get("model_providers") or {}).get(provider) or {}
        host = host_of(str(declared.get("base_url", ""))) if isinstance(declared, dict) else ""
        if host == POLICED_HOST:
            return _route(chosen, None)
        return _route(
            chosen,
            Problem(
                f"model provider {provider} ({where}) sends model calls to {host or 'a host of its own'}, "
                "which Luthien does not police",
                f"use the built-in openai provider (Luthien polices {POLICED_HOST})",
            ),
        )
    base_url = env.get("OPENAI_BASE_URL", "").strip()
    if base_url and host_of(base_url) != POLICED_HOST:
        return _route(
            chosen,
            Problem(
                f"OPENAI_BASE_URL sends model calls to {host_of(base_url) or 'an unparseable URL'}, "
                "which Luthien does not police",
                f"unset OPENAI_BASE_URL (Luthien polices {POLICED_HOST})",
            ),
        )
    if auth.get("tokens") and auth.get("auth_mode") != "apikey":
        return _route(
            chosen,
            Problem(
                f"the ChatGPT login in {home / 'auth.json'} sends model calls to "
                f"{CHATGPT_HOST}/backend-api/codex, which Luthien does not police",
                API_KEY_FIX,
            ),
        )
    return _route(chosen, None)


def _route(choices: tuple[str, ...], problem: Problem | None) -> Route:
    return Route("Codex", POLICED_HOST, choices, problem)


def _provider(config: Mapping[str, Any], argv: Sequence[str]) -> tuple[str, str]:
    """The model provider's id and where it is chosen."""
    overrides, profile = {}, config.get("profile")
    # --profile=NAME and --config=KEY=VALUE are the same as the flag and its value apart.
    words = [part for word in argv for part in (word.split("=", 1) if word.startswith("--") else [word])]
    for flag, value in itertools.pairwise(words):
        if flag in ("-c", "--config") and "=" in value:
            key, _, raw = value.partition("=")
            overrides[key.strip()] = raw.strip().strip("\"'")
        elif flag in ("-p", "--profile"):
            profile = value
    if "model_provider" in overrides:
        return overrides["model_provider"], "-c model_provider"
    profiles = config.get("profiles") or {}
    chosen = profiles.get(profile) if isinstance(profiles, dict) and profile else None
    if isinstance(chosen, dict) and chosen.get("model_provider"):
        return str(chosen["model_provider"]), f"profile {profile}"
    if config.get("model_provider"):
        return str(config["model_provider"]), "config.toml"
    return "openai", "the default"


def _toml(path: Path) -> dict[str, Any]:
    try:
        return tomllib.loads(path.read_text())
    except FileNotFoundError:
        return {}
    except (OSError, UnicodeDecodeError, tomllib.TOMLDecodeError) as exc:
        raise ValueError(f"cannot read {path} ({exc}), so the model provider is unknown") from exc


def _json(path: Path) -> dict[str, Any]:
    try:
        loaded = json.loads(path.read_text())
    except FileNotFoundError:
        return {}
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise ValueError(f"cannot read {path} ({type(exc).__name__}), so the login is unknown") from exc
    return loaded if isinstance(loaded, dict) else {}
