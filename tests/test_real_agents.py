"""The real agents, unmodified: Claude Code, Codex CLI and Gemini CLI (pinned in
tests/agents/package.json, installed from the npm registry) run through `luthien run` against the
fake provider."""

import asyncio
import json
import os
import shutil
import socket
import subprocess
import sys
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

from addon.session_identity import claude_code_session
from certs import ensure_ca
from tests.conftest import ROOT, RunningProxy
from tests.fake_provider import FakeProvider
from tests.fake_provider.server import RecordedRequest
from tests.recorded import recorded

AGENTS = ROOT / "tests" / "agents"
FAKE_TEXT = "Hello from the fake provider. The quick brown fox jumps over the lazy dog."
# Never a real target: even if a policy failed, the agents run without permission to execute it.
DANGEROUS = "[scenario:tool_call rm -rf /tmp/luthien-canary]"
#: No usage log calls, update checks or retries; the API key as its way to sign in (without
#: selectedType headless Gemini CLI says "Invalid auth method selected").
GEMINI_SETTINGS = {
    "privacy": {"usageStatisticsEnabled": False},
    "general": {"enableAutoUpdate": False, "maxAttempts": 1},
    "security": {"auth": {"selectedType": "gemini-api-key"}},
}


@pytest.fixture(scope="session")
def agent_bin() -> Path:
    if shutil.which("npm") is None:
        if os.environ.get("CI") == "true":
            pytest.fail("npm is needed to install the real agents (Debian package npm)")
        pytest.skip("npm is not installed, so the real agents cannot be installed")
    bin_dir = AGENTS / "node_modules" / ".bin"
    if not all((bin_dir / agent).exists() for agent in ("claude", "codex", "gemini")):
        done = subprocess.run(
            ["npm", "ci", "--no-audit", "--no-fund"], cwd=AGENTS, capture_output=True, text=True, timeout=600
        )
        assert done.returncode == 0, f"npm ci failed:\n{done.stderr[-3000:]}"
    return bin_dir


@pytest.fixture
def home(tmp_path: Path) -> Iterator[Path]:
    (tmp_path / ".codex").mkdir()
    yield tmp_path


def luthien_run(
    proxy: RunningProxy, home: Path, argv: list[str], **env: str
) -> subprocess.CompletedProcess[str]:
    """`luthien run -- AGENT ...` in an environment holding nothing else of ours."""
    base = {"PATH": "/usr/bin:/bin", "HOME": str(home), **env}
    return subprocess.run(
        [
            sys.executable,
            "-m",
            "luthien",
            "run",
            "--port",
            str(proxy.port),
            "--data-dir",
            str(proxy.data_dir),
            "--",
            *argv,
        ],
        env=base,
        capture_output=True,
        text=True,
        timeout=180,
        cwd=home,
    )


def claude(
    proxy: RunningProxy, home: Path, bin_dir: Path, prompt: str, *, all_traffic: bool = False
) -> dict[str, object]:
    """Claude Code's answer; ``all_traffic`` lets it make its settings, feature-flag and telemetry
    calls too, as it does by default."""
    quiet = {} if all_traffic else {"CLAUDE_CODE_DISABLE_NONESSENTIAL_TRAFFIC": "1"}
    done = luthien_run(
        proxy,
        home,
        [str(bin_dir / "claude"), "-p", prompt, "--output-format", "json"],
        ANTHROPIC_API_KEY="sk-ant-test-key",
        DISABLE_AUTOUPDATER="1",
        **quiet,
    )
    assert done.returncode == 0, f"{done.stdout[-2000:]}\n{done.stderr[-2000:]}\n{proxy.log()[-2000:]}"
    return json.loads(done.stdout)


def codex(proxy: RunningProxy, home: Path, bin_dir: Path, prompt: str) -> str:
    done = luthien_run(
        proxy,
        home,
        [str(bin_dir / "codex"), "exec", "--skip-git-repo-check", prompt],
        OPENAI_API_KEY="sk-test-key",
        CODEX_HOME=str(home / ".codex"),
    )
    assert done.returncode == 0, f"{done.stdout[-2000:]}\n{done.stderr[-2000:]}\n{proxy.log()[-2000:]}"
    return done.stdout


def test_claude_code_works_through_the_proxy(
    noop: RunningProxy, fake: FakeProvider, home: Path, agent_bin: Path
) -> None:
    before = len(fake.requests)
    result = claude(noop, home, agent_bin, "Say hello")
    assert (result["is_error"], result["result"], result["stop_reason"]) == (False, FAKE_TEXT, "end_turn")
    assert any(r.path.startswith("/v1/messages") for r in fake.requests[before:])


def test_claude_code_works_with_all_its_traffic(
    noop: RunningProxy, fake: FakeProvider, home: Path, agent_bin: Path
) -> None:
    """Its settings, policy-limit, feature-flag and telemetry calls pass the endpoint table."""
    before = len(fake.requests)
    result = claude(noop, home, agent_bin, "Say hello", all_traffic=True)
    assert (result["is_error"], result["result"]) == (False, FAKE_TEXT)
    paths = {r.path.split("?")[0] for r in fake.requests[before:]}
    assert "/v1/messages" in paths and "/api/claude_code/settings" in paths, paths


def test_claude_code_never_sees_a_blocked_tool_call(
    proxies: dict[str, RunningProxy], home: Path, agent_bin: Path
) -> None:
    result = claude(proxies["blocklist"], home, agent_bin, DANGEROUS)
    assert result["is_error"] is False
    assert "[Luthien] Blocked the tool call `bash`" in str(result["result"])
    assert result["stop_reason"] == "end_turn"


def test_codex_falls_back_from_the_refused_websocket_to_policed_https(
    noop: RunningProxy, fake: FakeProvider, home: Path, agent_bin: Path
) -> None:
    before = len(fake.requests)
    output = codex(noop, home, agent_bin, "Say hello")
    assert FAKE_TEXT in output
    assert any(r.method == "POST" and r.path.startswith("/v1/responses") for r in fake.requests[before:])
    assert "refused a WebSocket upgrade to api.openai.com/v1/responses" in noop.log()


def test_codex_never_sees_a_blocked_tool_call(
    proxies: dict[str, RunningProxy], home: Path, agent_bin: Path
) -> None:
    output = codex(proxies["blocklist"], home, agent_bin, DANGEROUS)
    assert "[Luthien] Blocked the tool call `bash`" in output


def gemini(proxy: RunningProxy, home: Path, bin_dir: Path, prompt: str) -> str:
    """Gemini CLI's printed answer, headless, allowed to run its shell tool (yolo)."""
    (home / ".gemini").mkdir(exist_ok=True)
    (home / ".gemini" / "settings.json").write_text(json.dumps(GEMINI_SETTINGS))
    argv = [str(bin_dir / "gemini"), "-p", prompt, "--approval-mode", "yolo", "--skip-trust"]
    done = luthien_run(proxy, home, [*argv, "--output-format", "text"], GEMINI_API_KEY="AIza-test-key")
    assert done.returncode == 0, f"{done.stdout[-2000:]}\n{done.stderr[-2000:]}\n{proxy.log()[-2000:]}"
    return done.stdout


def test_luthien_run_leaves_trusting_the_workspace_to_the_user(tmp_path: Path, agent_bin: Path) -> None:
    """Without --skip-trust, headless Gemini CLI in a workspace it does not trust exits 55 with
    its own explanation: `luthien run` does not trust the workspace for the user. It stops
    before any call, so a bare listening socket stands in for the proxy."""
    home, workspace = tmp_path / "home", tmp_path / "work"
    (home / ".gemini").mkdir(parents=True)
    workspace.mkdir()
    (home / ".gemini" / "settings.json").write_text(json.dumps(GEMINI_SETTINGS))
    ca = ensure_ca(tmp_path / "data")
    with socket.socket() as listener:
        listener.bind(("127.0.0.1", 0))
        listener.listen(8)
        port = listener.getsockname()[1]
        luthien = ["-m", "luthien", "run", "--port", str(port), "--data-dir", str(ca.cert.parent.parent)]
        gemini = [str(agent_bin / "gemini"), "-p", "Say hello", "--approval-mode", "yolo"]
        done = subprocess.run(
            [sys.executable, *luthien, "--", *gemini],
            env={"PATH": "/usr/bin:/bin", "HOME": str(home), "GEMINI_API_KEY": "AIza-test-key"},
            capture_output=True,
            text=True,
            timeout=180,
            cwd=workspace,
        )
    assert done.returncode == 55, f"{done.stdout[-2000:]}\n{done.stderr[-2000:]}"
    assert "--skip-trust" in done.stderr and "GEMINI_CLI_TRUST_WORKSPACE" in done.stderr, done.stderr


def scratch(home: Path) -> Path:
    """A directory the model will ask to delete."""
    directory = home / "scratch"
    directory.mkdir()
    (directory / "keep.txt").write_text("precious")
    return directory


def test_gemini_cli_works_through_the_proxy(
    noop: RunningProxy, fake: FakeProvider, home: Path, agent_bin: Path
) -> None:
    before = len(fake.requests)
    assert FAKE_TEXT in gemini(noop, home, agent_bin, "Say hello")
    paths = [r.path for r in fake.requests[before:]]
    assert any(":streamGenerateContent?alt=sse" in p for p in paths), paths


def test_gemini_cli_runs_the_models_command_when_no_policy_stops_it(
    noop: RunningProxy, home: Path, agent_bin: Path
) -> None:
    """The blocklist test below means something: unpoliced, the command really runs."""
    directory = scratch(home)
    gemini(noop, home, agent_bin, f"[scenario:tool_call rm -rf {directory}]")
    assert not directory.exists()


def test_gemini_cli_never_runs_a_blocked_command(
    proxies: dict[str, RunningProxy], home: Path, agent_bin: Path
) -> None:
    directory = scratch(home)
    output = gemini(proxies["blocklist"], home, agent_bin, f"[scenario:tool_call rm -rf {directory}]")
    assert (directory / "keep.txt").read_text() == "precious"
    assert "[Luthien] Blocked the tool call `run_shell_command`" in output


def sent_session(request: RecordedRequest) -> str | None:
    """The session an agent's request names, as it reached the provider: Claude Code's header
    or user id, Codex 0.169's ``session-id`` header (beside ``thread-id`` and the same id in
    ``x-codex-turn-metadata``)."""
    named = request.headers.get("x-claude-code-session-id") or request.headers.get("session-id")
    metadata = (request.json or {}).get("metadata") or {}
    return named or (metadata.get("user_id") and claude_code_session(metadata["user_id"]))


@pytest.mark.parametrize("agent", ["claude", "codex"])
async def test_each_agent_run_is_one_session_of_the_id_it_sent(
    noop: RunningProxy, fake: FakeProvider, home: Path, agent_bin: Path, agent: str
) -> None:
    """What the agents send, read from the requests the provider got, is what Luthien records
    as each call's session: one session for each run, a new one for the next run."""
    sessions = []
    for _ in range(2):
        word = f"session{uuid.uuid4().hex[:10]}"
        before = len(fake.requests)
        prompt = f"Say hello {word}"
        if agent == "claude":
            await asyncio.to_thread(claude, noop, home, agent_bin, prompt)
        else:
            await asyncio.to_thread(codex, noop, home, agent_bin, prompt)
        asked = [request for request in fake.requests[before:] if word.encode() in request.body]
        sent = {sent_session(request) for request in asked}
        assert len(sent) == 1 and None not in sent, sent
        calls = await recorded(noop.database_url, word, len(asked))
        assert {call.session_id for call in calls} == sent
        assert {call.agent for call in calls} == {"claude-cli" if agent == "claude" else "codex_exec"}
        sessions += sent
    assert sessions[0] != sessions[1]
