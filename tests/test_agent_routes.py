"""Where Gemini CLI, Claude Code and Codex would send their model calls, read from real settings,
config and .env files in a temporary home and workspace; `luthien run -- AGENT` refusing a route
no policy sees (a real subprocess of the luthien command, before it looks for a CA or a proxy);
`luthien doctor`'s line."""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from luthien.claude_route import claude_route
from luthien.codex_route import API_KEY_FIX, codex_route
from luthien.gemini_route import CODE_ASSIST_HOST, FIX, POLICED_HOST, gemini_route, strip_json_comments

API_KEY_SETTINGS = {"security": {"auth": {"selectedType": "gemini-api-key"}}}
GOOGLE_LOGIN = {"security": {"auth": {"selectedType": "oauth-personal"}}}


@pytest.fixture
def home(tmp_path: Path) -> Path:
    (tmp_path / "home" / ".gemini").mkdir(parents=True)
    return tmp_path / "home"


@pytest.fixture
def workspace(tmp_path: Path) -> Path:
    (tmp_path / "work").mkdir()
    return tmp_path / "work"


def settings(directory: Path, content: dict[str, object] | str) -> Path:
    path = directory / ".gemini" / "settings.json"
    path.parent.mkdir(exist_ok=True)
    path.write_text(content if isinstance(content, str) else json.dumps(content))
    return path


def environment(home: Path, tmp_path: Path, **variables: str) -> dict[str, str]:
    """A home of its own and no system settings (the file named does not exist)."""
    return {
        "HOME": str(home),
        "GEMINI_CLI_SYSTEM_SETTINGS_PATH": str(tmp_path / "etc" / "settings.json"),
    } | variables


def test_an_api_key_in_the_user_settings_reaches_the_policed_host(
    home: Path, workspace: Path, tmp_path: Path
) -> None:
    path = settings(home, API_KEY_SETTINGS)
    route = gemini_route(environment(home, tmp_path, GEMINI_API_KEY="AIza-test"), workspace)
    assert route.problem is None
    assert route.choices == (f"gemini-api-key ({path})",)


def test_google_login_is_refused_with_the_fix(home: Path, workspace: Path, tmp_path: Path) -> None:
    path = settings(home, GOOGLE_LOGIN)
    route = gemini_route(environment(home, tmp_path, GEMINI_API_KEY="AIza-test"), workspace)
    assert route.problem is not None
    assert route.problem.detail == (
        f"auth type oauth-personal ({path}) sends model calls to Code Assist at {CODE_ASSIST_HOST}, "
        "which Luthien does not police"
    )
    assert route.problem.fix == FIX


def test_a_workspace_naming_google_login_is_refused_even_over_an_api_key_at_home(
    home: Path, workspace: Path, tmp_path: Path
) -> None:
    settings(home, API_KEY_SETTINGS)
    path = settings(workspace, GOOGLE_LOGIN)
    route = gemini_route(environment(home, tmp_path), workspace)
    assert route.problem is not None and str(path) in route.problem.detail


def test_a_system_settings_file_counts(home: Path, workspace: Path, tmp_path: Path) -> None:
    settings(home, API_KEY_SETTINGS)
    system = tmp_path / "etc" / "settings.json"
    system.parent.mkdir()
    system.write_text(json.dumps({"security": {"auth": {"selectedType": "compute-default-credentials"}}}))
    route = gemini_route(environment(home, tmp_path), workspace)
    assert route.problem is not None and f"compute-default-credentials ({system})" in route.problem.detail


def test_vertex_ai_names_its_regional_host_and_the_provider_profile(
    home: Path, workspace: Path, tmp_path: Path
) -> None:
    env = environment(
        home,
        tmp_path,
        GOOGLE_GENAI_USE_VERTEXAI="true",
        GOOGLE_CLOUD_PROJECT="p",
        GOOGLE_CLOUD_LOCATION="europe-west4",
    )
    route = gemini_route(env, workspace)
    assert route.problem is not None
    assert route.problem.detail == (
        "auth type vertex-ai (GOOGLE_GENAI_USE_VERTEXAI) sends model calls to Vertex AI at "
        "europe-west4-aiplatform.googleapis.com, which only a proxy started with the Vertex AI "
        "provider profile polices"
    )


def test_without_settings_the_environment_decides_in_gemini_clis_order(
    home: Path, workspace: Path, tmp_path: Path
) -> None:
    only_key = gemini_route(environment(home, tmp_path, GEMINI_API_KEY="AIza-test"), workspace)
    assert (only_key.problem, only_key.choices) == (None, ("gemini-api-key (GEMINI_API_KEY)",))
    # GOOGLE_GENAI_USE_GCA comes before GEMINI_API_KEY, and only "true" turns it on.
    login = gemini_route(
        environment(home, tmp_path, GEMINI_API_KEY="k", GOOGLE_GENAI_USE_GCA="true"), workspace
    )
    assert login.problem is not None and "oauth-personal (GOOGLE_GENAI_USE_GCA)" in login.problem.detail
    off = gemini_route(environment(home, tmp_path, GEMINI_API_KEY="k", GOOGLE_GENAI_USE_GCA="1"), workspace)
    assert off.problem is None


def test_nothing_configured_is_not_a_problem_but_not_configured(
    home: Path, workspace: Path, tmp_path: Path
) -> None:
    route = gemini_route(environment(home, tmp_path), workspace)
    assert (route.problem, route.configured) == (None, False)


def test_a_dot_env_file_up_the_tree_can_switch_to_google_login(
    home: Path, workspace: Path, tmp_path: Path
) -> None:
    """Gemini CLI loads the first .env from the workspace upwards, without overriding what is set."""
    project = workspace / "project"
    project.mkdir()
    (workspace / ".env").write_text('GOOGLE_GENAI_USE_GCA="true"\n')
    route = gemini_route(environment(home, tmp_path, GEMINI_API_KEY="k"), project)
    assert route.problem is not None
    assert f"oauth-personal (GOOGLE_GENAI_USE_GCA in {workspace / '.env'})" in route.problem.detail
    turned_off = environment(home, tmp_path, GEMINI_API_KEY="k", GOOGLE_GENAI_USE_GCA="false")
    assert gemini_route(turned_off, project).problem is None
    (workspace / ".env").write_bytes(b"GEMINI_API_KEY=\xff\n")
    unreadable = gemini_route(environment(home, tmp_path, GEMINI_API_KEY="k"), project).problem
    assert unreadable is not None
    assert (
        unreadable.detail
        == f"cannot read {workspace / '.env'} (UnicodeDecodeError), so the auth type is unknown"
    )


def test_a_base_url_elsewhere_is_refused_even_with_an_api_key(
    home: Path, workspace: Path, tmp_path: Path
) -> None:
    settings(home, API_KEY_SETTINGS)
    env = environment(
        home, tmp_path, GEMINI_API_KEY="k", GOOGLE_GEMINI_BASE_URL="https://gemini.example.com/"
    )
    route = gemini_route(env, workspace)
    assert route.problem is not None and "gemini.example.com" in route.problem.detail
    policed = {**env, "GOOGLE_GEMINI_BASE_URL": f"https://{POLICED_HOST.upper()}"}
    assert gemini_route(policed, workspace).problem is None


def test_settings_with_comments_are_read_and_unreadable_ones_refused(
    home: Path, workspace: Path, tmp_path: Path
) -> None:
    settings(
        home,
        '{\n  // Google login\n  "security": {"auth": {/* how */ "selectedType": "oauth-personal"}},\n'
        '  "url": "http://a//b"\n}',
    )
    route = gemini_route(environment(home, tmp_path), workspace)
    assert route.problem is not None and "oauth-personal" in route.problem.detail
    path = settings(home, '{"security": ')
    broken = gemini_route(environment(home, tmp_path, GEMINI_API_KEY="k"), workspace)
    assert broken.problem is not None
    assert broken.problem.detail.startswith(f"cannot read {path} (not JSON: ")


def test_strip_json_comments_leaves_strings_alone() -> None:
    text = '{"a": "x // not a comment", "b": "/* nor this */", "c": "q\\" // still"} // gone'
    assert json.loads(strip_json_comments(text)) == json.loads(text.rsplit(" // gone", 1)[0])


def test_claude_code_provider_switches_and_base_urls_are_refused(
    home: Path, workspace: Path, tmp_path: Path
) -> None:
    assert claude_route(environment(home, tmp_path), workspace, ()).problem is None
    assert (
        claude_route(environment(home, tmp_path, CLAUDE_CODE_USE_VERTEX="0"), workspace, ()).problem is None
    )
    bedrock = claude_route(environment(home, tmp_path, CLAUDE_CODE_USE_BEDROCK="1"), workspace, ()).problem
    assert bedrock is not None
    assert bedrock.detail == (
        "CLAUDE_CODE_USE_BEDROCK (the environment) sends model calls to a provider other than "
        "api.anthropic.com, which Luthien does not police"
    )
    path = workspace / ".claude" / "settings.local.json"
    path.parent.mkdir()
    path.write_text(json.dumps({"env": {"ANTHROPIC_BASE_URL": "https://llm-gateway.example.com/anthropic"}}))
    gateway = claude_route(environment(home, tmp_path), workspace, ()).problem
    assert gateway is not None
    assert gateway.detail.startswith(
        f"ANTHROPIC_BASE_URL ({path}) sends model calls to llm-gateway.example.com"
    )
    path.write_text(json.dumps({"env": {"ANTHROPIC_BASE_URL": "https://api.anthropic.com"}}))
    assert claude_route(environment(home, tmp_path), workspace, ()).problem is None


def codex_home(home: Path, config: str = "", auth: dict[str, object] | None = None) -> Path:
    directory = home / ".codex"
    directory.mkdir(exist_ok=True)
    (directory / "config.toml").write_text(config)
    if auth is not None:
        (directory / "auth.json").write_text(json.dumps(auth))
    return directory


CHATGPT_LOGIN = {
    "auth_mode": "chatgpt",
    "OPENAI_API_KEY": None,
    "tokens": {"id_token": "x", "access_token": "y"},
}


def test_codex_logged_in_with_chatgpt_is_refused_and_an_api_key_login_passes(
    home: Path, workspace: Path, tmp_path: Path
) -> None:
    directory = codex_home(home, auth=CHATGPT_LOGIN)
    route = codex_route(environment(home, tmp_path, OPENAI_API_KEY="sk-test"), workspace, ["exec", "hi"])
    assert route.problem is not None
    assert route.problem.detail == (
        f"the ChatGPT login in {directory / 'auth.json'} sends model calls to "
        "chatgpt.com/backend-api/codex, which Luthien does not police"
    )
    assert route.problem.fix == API_KEY_FIX
    codex_home(home, auth={"auth_mode": "apikey", "OPENAI_API_KEY": "sk-test"})
    assert codex_route(environment(home, tmp_path), workspace, ["exec", "hi"]).problem is None


def test_codex_providers_are_read_from_config_profiles_and_the_command_line(
    home: Path, workspace: Path, tmp_path: Path
) -> None:
    config = (
        'profile = "local"\n'
        '[model_providers.ollama]\nname = "Ollama"\nbase_url = "http://localhost:11434/v1"\n'
        '[model_providers.proxy]\nname = "OpenAI again"\nbase_url = "https://api.openai.com/v1"\n'
        '[profiles.local]\nmodel_provider = "ollama"\n'
        '[profiles.cloud]\nmodel_provider = "proxy"\n'
    )
    codex_home(home, config)
    env = environment(home, tmp_path)
    local = codex_route(env, workspace, ["exec", "hi"])
    assert local.problem is not None
    assert local.problem.detail == (
        "model provider ollama (profile local) sends model calls to localhost, which Luthien does not police"
    )
    assert codex_route(env, workspace, ["--profile", "cloud", "exec", "hi"]).problem is None
    assert codex_route(env, workspace, ["exec", "--profile=cloud", "hi"]).problem is None
    assert codex_route(env, workspace, ["--config=model_provider=openai", "exec", "hi"]).problem is None
    assert codex_route(env, workspace, ["-c", "model_provider=openai", "exec", "hi"]).problem is None
    oss = codex_route(env, workspace, ["exec", "--oss", "hi"]).problem
    assert oss is not None and oss.detail.startswith("--oss sends model calls to a local model server")
    codex_home(home)
    away_env = environment(home, tmp_path, OPENAI_BASE_URL="https://openai.example.com/v1")
    away = codex_route(away_env, workspace, [])
    assert away.problem is not None and "openai.example.com" in away.problem.detail
    codex_home(home, "model_provider = ")
    broken = codex_route(env, workspace, [])
    assert broken.problem is not None
    assert broken.problem.detail.startswith(f"cannot read {home / '.codex' / 'config.toml'}")


def luthien_in(workspace: Path, env: dict[str, str], *args: str) -> subprocess.CompletedProcess[str]:
    """The luthien command run in ``workspace`` with only ``env`` (and PATH)."""
    return subprocess.run(
        [sys.executable, "-m", "luthien", *args],
        env={"PATH": os.environ["PATH"]} | env,
        cwd=workspace,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )


def run_agent(
    home: Path, workspace: Path, tmp_path: Path, argv: list[str], **variables: str
) -> subprocess.CompletedProcess[str]:
    """`luthien run -- AGENT`, with no CA in its data dir and no proxy listening: the route
    check comes before both."""
    env = environment(home, tmp_path, **variables)
    return luthien_in(workspace, env, "run", "--data-dir", str(tmp_path / "no-ca"), "--", *argv)


def test_luthien_run_refuses_gemini_cli_logged_in_with_google(
    home: Path, workspace: Path, tmp_path: Path
) -> None:
    path = settings(home, GOOGLE_LOGIN)
    done = run_agent(home, workspace, tmp_path, ["gemini", "-p", "hi"], GEMINI_API_KEY="AIza-secret-key")
    assert done.returncode == 2
    assert done.stderr == (
        f"luthien run: refusing to run Gemini CLI: auth type oauth-personal ({path}) sends model "
        f"calls to Code Assist at {CODE_ASSIST_HOST}, which Luthien does not police.\nfix: {FIX}\n"
    )
    assert "AIza-secret-key" not in done.stdout + done.stderr


def test_luthien_run_lets_a_policed_gemini_cli_through_to_its_next_check(
    home: Path, workspace: Path, tmp_path: Path
) -> None:
    settings(home, API_KEY_SETTINGS)
    done = run_agent(home, workspace, tmp_path, ["gemini", "-p", "hi"], GEMINI_API_KEY="AIza-test")
    assert done.returncode == 2
    assert done.stderr.startswith(f"luthien: no Luthien CA in {tmp_path / 'no-ca'}"), done.stderr


def test_luthien_run_refuses_codex_logged_in_with_chatgpt(
    home: Path, workspace: Path, tmp_path: Path
) -> None:
    directory = codex_home(home, auth=CHATGPT_LOGIN)
    done = run_agent(home, workspace, tmp_path, ["/opt/bin/codex", "exec", "hi"])
    assert done.returncode == 2
    assert done.stderr == (
        f"luthien run: refusing to run Codex: the ChatGPT login in {directory / 'auth.json'} sends "
        f"model calls to chatgpt.com/backend-api/codex, which Luthien does not police.\nfix: {API_KEY_FIX}\n"
    )


def doctor_line(home: Path, workspace: Path, tmp_path: Path, **variables: str) -> list[str]:
    env = environment(home, tmp_path, **variables)
    done = luthien_in(
        workspace, env, "doctor", "--data-dir", str(tmp_path / "data"), "--proxy", "127.0.0.1:1"
    )
    lines = done.stdout.splitlines()
    at = next(n for n, line in enumerate(lines) if "Gemini CLI:" in line)
    return lines[at : at + 2] if lines[at].startswith("FAIL") else lines[at : at + 1]


def test_doctor_flags_google_login_with_the_fix_and_passes_an_api_key(
    home: Path, workspace: Path, tmp_path: Path
) -> None:
    path = settings(home, GOOGLE_LOGIN)
    assert doctor_line(home, workspace, tmp_path) == [
        f"FAIL  Gemini CLI: auth type oauth-personal ({path}) sends model calls to Code Assist at "
        f"{CODE_ASSIST_HOST}, which Luthien does not police",
        f"      fix: {FIX}",
    ]
    settings(home, API_KEY_SETTINGS)
    assert doctor_line(home, workspace, tmp_path, GEMINI_API_KEY="k") == [
        f"OK    Gemini CLI: gemini-api-key ({path}): model calls go to {POLICED_HOST}, which Luthien polices"
    ]
    (path).unlink()
    assert doctor_line(home, workspace, tmp_path) == ["SKIP  Gemini CLI: no way to reach a model is set up"]
