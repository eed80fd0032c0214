"""The front door as a new user meets it: what ``luthien up`` tells you to type reaches this proxy,
client commands never make a CA of their own, the login link survives restarts until rotated,
Ctrl-C stops at once even with a monitor tab open, and help and errors say everything."""

import os
import signal
import stat
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from certs import ensure_ca
from dashboard.token import TOKEN_FILE
from tests.conftest import ROOT, free_port


def luthien(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    environment = {k: v for k, v in os.environ.items() if k != "LUTHIEN_DASHBOARD_TOKEN"}
    return subprocess.run(
        [sys.executable, "-m", "luthien", *args],
        capture_output=True,
        text=True,
        cwd=ROOT,
        env={**environment, **(env or {})},
        timeout=60,
    )


@pytest.fixture
def running_up(tmp_path: Path) -> Iterator[tuple[subprocess.Popen[str], Path, int, int, list[str]]]:
    """``luthien up`` on ports and a data dir that are not the defaults; its banner's lines."""
    data_dir, port, dashboard = tmp_path / "data", free_port(), free_port()
    args = [sys.executable, "-m", "luthien", "up", "--data-dir", str(data_dir), "--port", str(port)]
    args += ["--dashboard-port", str(dashboard), "--metrics-port", "0"]
    env = {k: v for k, v in os.environ.items() if k != "LUTHIEN_DASHBOARD_TOKEN"}
    with subprocess.Popen(
        args, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, cwd=ROOT, env=env
    ) as up:
        assert up.stdout is not None
        lines: list[str] = []
        while not any(line.startswith("or run it through Luthien") for line in lines):
            line = up.stdout.readline()
            assert line, "luthien up exited:\n" + "".join(lines)
            lines.append(line)
        try:
            yield up, data_dir, port, dashboard, lines
        finally:
            if up.poll() is None:
                up.kill()
            up.communicate(timeout=30)


def test_what_the_banner_says_to_type_reaches_this_proxy_and_its_ca(
    running_up: tuple[subprocess.Popen[str], Path, int, int, list[str]],
) -> None:
    _, data_dir, port, _, lines = running_up
    hint = lines[-1].split(": ", 1)[1].strip()
    assert hint == f"luthien run --port {port} --data-dir {data_dir} -- claude"
    # What that command does, with `env` standing in for the agent: the banner's own exports.
    done = luthien(*hint.split()[1:-1], "env")
    assert done.returncode == 0, done.stderr
    assert f"HTTPS_PROXY=http://127.0.0.1:{port}" in done.stdout
    assert f"SSL_CERT_FILE={data_dir / 'ca' / 'ca-bundle.pem'}" in done.stdout
    exports = luthien("certs", "env", "--port", str(port), "--data-dir", str(data_dir)).stdout
    assert all(line in "".join(lines) for line in exports.splitlines())


def test_the_login_link_is_kept_private_and_survives_until_it_is_rotated(
    running_up: tuple[subprocess.Popen[str], Path, int, int, list[str]],
) -> None:
    _, data_dir, _, dashboard, lines = running_up
    announced = (
        next(line for line in lines if line.startswith("Luthien dashboard: ")).split(": ", 1)[1].strip()
    )
    token_file = data_dir / TOKEN_FILE
    assert stat.S_IMODE(token_file.stat().st_mode) == 0o600
    login = ["login", "--data-dir", str(data_dir), "--dashboard-port", str(dashboard)]
    assert luthien(*login).stdout.strip() == announced  # what a restart would print too
    old = announced.split("token=", 1)[1]
    api = f"http://127.0.0.1:{dashboard}/api/calls"
    assert httpx.get(api, headers={"authorization": f"Bearer {old}"}).status_code == 200

    rotated = luthien(*login, "--rotate")
    assert rotated.returncode == 0 and "log in again" in rotated.stderr
    new = rotated.stdout.strip().split("token=", 1)[1]
    assert new != old and stat.S_IMODE(token_file.stat().st_mode) == 0o600
    # The running dashboard takes the new token at once and refuses the old one.
    assert httpx.get(api, headers={"authorization": f"Bearer {old}"}).status_code == 401
    assert httpx.get(api, headers={"authorization": f"Bearer {new}"}).status_code == 200


def test_ctrl_c_stops_at_once_with_a_monitor_tab_open(
    running_up: tuple[subprocess.Popen[str], Path, int, int, list[str]],
) -> None:
    up, data_dir, _, dashboard, _ = running_up
    token = (data_dir / TOKEN_FILE).read_text().strip()
    opened = threading.Event()

    def monitor() -> None:  # what the monitor page's EventSource holds open
        url = f"http://127.0.0.1:{dashboard}/api/activity/stream"
        try:
            with httpx.stream(
                "GET", url, headers={"authorization": f"Bearer {token}"}, timeout=None
            ) as events:
                for _ in events.iter_lines():
                    opened.set()
        except httpx.HTTPError:
            pass

    threading.Thread(target=monitor, daemon=True).start()
    assert opened.wait(10)
    started = time.monotonic()
    up.send_signal(signal.SIGINT)
    up.wait(timeout=30)  # it used to wait for the tab forever
    print(f"stopped {time.monotonic() - started:.1f} s after Ctrl-C with a monitor stream open")
    assert up.returncode == 0


def test_client_commands_never_make_a_ca_the_proxy_does_not_present(tmp_path: Path) -> None:
    empty = tmp_path / "elsewhere"
    for command, rest in ((["certs", "env"], []), (["certs", "path"], []), (["run"], ["--", "env"])):
        done = luthien(*command, "--data-dir", str(empty), *rest)
        assert done.returncode == 2, done
        assert f"no Luthien CA in {empty}" in done.stderr and "luthien up" in done.stderr
    assert not empty.exists()


def test_run_says_when_no_proxy_listens(tmp_path: Path) -> None:
    data_dir, port = tmp_path / "data", free_port()
    ensure_ca(data_dir)
    done = luthien("run", "--data-dir", str(data_dir), "--port", str(port), "--", "env")
    assert done.returncode == 2
    assert f"no proxy listens on 127.0.0.1:{port}" in done.stderr


def test_policy_check_reports_every_problem(tmp_path: Path) -> None:
    policy = tmp_path / "policy.yaml"
    policy.write_text(
        "policy:\n"
        "  class: SerialPolicy\n"
        "  config:\n"
        "    policies:\n"
        "      - class: NoSuchPolicy\n"
        "      - class: ToolCallBlocklistPolicy\n"
        "        config: {patterns: 7, colour: blue}\n"
    )
    done = luthien("policy", "check", str(policy))
    assert done.returncode == 1
    problems = done.stderr.splitlines()
    assert len(problems) == 3, done.stderr
    assert all(line.startswith(f"luthien: {policy}: policy.config.policies[") for line in problems)
    assert "unknown policy 'NoSuchPolicy'" in problems[0]
    assert "policies[1].config.patterns: " in done.stderr and "policies[1].config.colour: " in done.stderr


def test_each_command_describes_itself_and_only_its_own_options() -> None:
    for command in ("up", "proxy", "dashboard", "controlplane", "login", "run", "doctor", "certs", "policy"):
        after_usage = luthien(command, "--help").stdout.split("\n\n")[1]
        assert not after_usage.startswith(("options:", "positional arguments:")), f"luthien {command} --help"
    assert "--port" not in luthien("dashboard", "--help").stdout.replace("--dashboard-port", "")
