"""Where Gemini CLI would send its model calls, read from its settings files and environment as
Gemini CLI 0.61 reads them (packages/cli/src/config/settings.ts, validateNonInterActiveAuth.ts,
packages/core/src/core/contentGenerator.ts).

Only ``gemini-api-key`` reaches the model at the host Luthien polices. Google login
(``oauth-personal``) and Compute Engine credentials go to Code Assist (cloudcode-pa.googleapis.com,
a wrapped format Luthien does not decrypt), Vertex AI to ``*-aiplatform.googleapis.com``, and a
base-URL override to whatever host it names: model traffic no policy would see, which
``luthien run`` refuses and ``luthien doctor`` flags.

Every settings file naming a type counts (a workspace's counts only in a trusted workspace, a
system file overrides the user's: Luthien cannot tell which Gemini CLI will apply), and so does
the .env file Gemini CLI would load, read as in a trusted workspace.
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

from dotenv import dotenv_values

from luthien.model_route import Problem, Route, host_of

POLICED_HOST = "generativelanguage.googleapis.com"
POLICED_AUTH = "gemini-api-key"
CODE_ASSIST_HOST = "cloudcode-pa.googleapis.com"
SYSTEM_SETTINGS = Path("/etc/gemini-cli/settings.json")
# Without a settings entry, Gemini CLI takes its auth type from the first of these that is set.
_ENV_AUTH = (
    ("GOOGLE_GENAI_USE_GCA", "oauth-personal"),
    ("GOOGLE_GENAI_USE_VERTEXAI", "vertex-ai"),
    ("GOOGLE_GEMINI_BASE_URL", "gateway"),
    ("GEMINI_API_KEY", POLICED_AUTH),
    ("CLOUD_SHELL", "compute-default-credentials"),
    ("GEMINI_CLI_USE_COMPUTE_ADC", "compute-default-credentials"),
)
_TRUE_ONLY = {
    "GOOGLE_GENAI_USE_GCA",
    "GOOGLE_GENAI_USE_VERTEXAI",
    "CLOUD_SHELL",
    "GEMINI_CLI_USE_COMPUTE_ADC",
}
FIX = (
    'use a Gemini API key: set "security": {"auth": {"selectedType": "gemini-api-key"}} in '
    "~/.gemini/settings.json (and in any other settings file that names a type) and export GEMINI_API_KEY"
)


@dataclass(frozen=True)
class AuthChoice:
    auth_type: str
    source: str  # where it is set: a settings file, an environment variable, a .env file


def gemini_route(env: Mapping[str, str], cwd: Path, argv: Sequence[str] = ()) -> Route:
    """Gemini CLI's model route for a run in ``cwd`` with environment ``env`` (it has no
    command-line option that changes the route)."""
    home = Path(env.get("GEMINI_CLI_HOME") or env.get("HOME") or Path.home())
    files = _settings_files(env, home, cwd)
    choices: list[AuthChoice] = []
    for path in files:
        try:
            selected = _selected_type(path)
        except ValueError as exc:
            unreadable = Problem(
                f"cannot read {path} ({exc}), so the auth type is unknown", f"correct {path}"
            )
            return _route(choices, unreadable)
        if selected is not None:
            choices.append(AuthChoice(selected, str(path)))
    try:
        env_file, from_file = _env_file_values(home, cwd)
    except ValueError as exc:
        return _route(choices, Problem(str(exc), "correct it"))
    if not choices and (from_env := _env_auth(env, env_file, from_file)) is not None:
        choices.append(from_env)
    merged = {**from_file, **env}
    problems = (problem for choice in choices if (problem := _problem(choice, merged)) is not None)
    return _route(choices, next(problems, None))


def _route(choices: list[AuthChoice], problem: Problem | None) -> Route:
    described = tuple(f"{choice.auth_type} ({choice.source})" for choice in choices)
    return Route(
        "Gemini CLI", POLICED_HOST, described, problem, configured=bool(choices) or problem is not None
    )


def _settings_files(env: Mapping[str, str], home: Path, cwd: Path) -> list[Path]:
    """System settings, workspace, user, system defaults (Gemini CLI's layers); the workspace's
    are not read when the workspace is the home directory."""
    system = (
        Path(env["GEMINI_CLI_SYSTEM_SETTINGS_PATH"])
        if env.get("GEMINI_CLI_SYSTEM_SETTINGS_PATH")
        else SYSTEM_SETTINGS
    )
    defaults = Path(env.get("GEMINI_CLI_SYSTEM_DEFAULTS_PATH") or system.parent / "system-defaults.json")
    workspace = [] if cwd.resolve() == home.resolve() else [cwd / ".gemini" / "settings.json"]
    return [system, *workspace, home / ".gemini" / "settings.json", defaults]


def _selected_type(path: Path) -> str | None:
    """``security.auth.selectedType`` of a settings file (JSON with comments); ValueError when the
    file exists but cannot be read as a JSON object."""
    try:
        text = path.read_text()
    except FileNotFoundError:
        return None
    except OSError as exc:
        raise ValueError(exc.strerror or type(exc).__name__) from exc
    try:
        settings = json.loads(strip_json_comments(text))
    except json.JSONDecodeError as exc:
        raise ValueError(f"not JSON: {exc.msg} at line {exc.lineno}") from exc
    if not isinstance(settings, dict):
        raise ValueError("not a JSON object")
    selected = ((settings.get("security") or {}).get("auth") or {}).get("selectedType")
    if selected is None:
        return None
    return selected if isinstance(selected, str) else repr(selected)


def strip_json_comments(text: str) -> str:
    """``text`` without ``//`` and ``/* */`` comments outside strings (Gemini CLI's settings
    files may have them)."""
    out: list[str] = []
    i, in_string = 0, False
    while i < len(text):
        char = text[i]
        if in_string:
            out.append(char)
            if char == "\\":
                out.append(text[i + 1 : i + 2])
                i += 1
            elif char == '"':
                in_string = False
        elif char == '"':
            in_string = True
            out.append(char)
        elif text.startswith("//", i):
            end = text.find("\n", i)
            i = len(text) if end < 0 else end
            continue
        elif text.startswith("/*", i):
            end = text.find("*/", i + 2)
            i = len(text) if end < 0 else end + 2
            out.append(" ")
            continue
        else:
            out.append(char)
        i += 1
    return "".join(out)


def _env_file_values(home: Path, cwd: Path) -> tuple[Path | None, dict[str, str]]:
    """The .env file Gemini CLI would load and its variables, all of them, as in a trusted
    workspace; ValueError when it cannot be read."""
    found = _env_file(home, cwd)
    if found is None:
        return None, {}
    try:
        values = dotenv_values(found, interpolate=False)
    except (OSError, UnicodeDecodeError) as exc:
        raise ValueError(f"cannot read {found} ({type(exc).__name__}), so the auth type is unknown") from exc
    return found, {key: value for key, value in values.items() if value is not None}


def _env_file(home: Path, cwd: Path) -> Path | None:
    """The first of ``.gemini/.env`` and ``.env`` from ``cwd`` up to the root, then the home's."""
    for directory in (cwd.resolve(), *cwd.resolve().parents):
        for candidate in (directory / ".gemini" / ".env", directory / ".env"):
            if candidate.is_file():
                return candidate
    for candidate in (home / ".gemini" / ".env", home / ".env"):
        if candidate.is_file():
            return candidate
    return None


def _env_auth(
    env: Mapping[str, str], env_file: Path | None, from_file: Mapping[str, str]
) -> AuthChoice | None:
    """The auth type the environment picks, the .env file's variables filling in for unset ones
    (Gemini CLI never overrides a variable already set)."""
    for variable, auth_type in _ENV_AUTH:
        value = env[variable] if variable in env else from_file.get(variable, "")
        if (value == "true") if variable in _TRUE_ONLY else bool(value):
            where = variable if variable in env else f"{variable} in {env_file}"
            return AuthChoice(auth_type, where)
    return None


def _problem(choice: AuthChoice, env: Mapping[str, str]) -> Problem | None:
    """Why this choice's model calls would pass unseen, with what to set instead; None if policed."""
    where = f"auth type {choice.auth_type} ({choice.source})"
    if choice.auth_type in ("oauth-personal", "compute-default-credentials"):
        host = host_of(env.get("CODE_ASSIST_ENDPOINT") or CODE_ASSIST_HOST)
        return Problem(
            f"{where} sends model calls to Code Assist at {host}, which Luthien does not police", FIX
        )
    if choice.auth_type == "vertex-ai":
        return Problem(
            f"{where} sends model calls to Vertex AI at {_vertex_host(env)}, which only a proxy started "
            "with the Vertex AI provider profile polices",
            FIX,
        )
    if choice.auth_type not in (POLICED_AUTH, "gateway"):
        return Problem(f"{where}: Luthien does not know where it sends model calls", FIX)
    base_url = env.get("GOOGLE_GEMINI_BASE_URL")
    host = host_of(base_url) if base_url else POLICED_HOST
    if host != POLICED_HOST:
        return Problem(
            f"{where} with GOOGLE_GEMINI_BASE_URL sends model calls to {host or 'an unparseable URL'}, "
            "which Luthien does not police",
            f"unset GOOGLE_GEMINI_BASE_URL (Luthien polices {POLICED_HOST})",
        )
    return None


def _vertex_host(env: Mapping[str, str]) -> str:
    if env.get("GOOGLE_VERTEX_BASE_URL"):
        return host_of(env["GOOGLE_VERTEX_BASE_URL"])
    location = env.get("GOOGLE_CLOUD_LOCATION")
    if location in ("us", "eu"):
        return f"aiplatform.{location}.rep.googleapis.com"
    return f"{location}-aiplatform.googleapis.com" if location else "aiplatform.googleapis.com"
