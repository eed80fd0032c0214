"""What the benchmark measures: each target is a way for a client to reach the fake provider.

A target starts its processes, says how a client reaches it, and stops them. Every target is
started alone, so its start-up time and memory are its own.
"""

from __future__ import annotations

import os
import secrets
import socket
import subprocess
import sys
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

import yaml

from certs import ca_files

ROOT = Path(__file__).resolve().parent.parent
HOST = "127.0.0.1"
PROVIDER_HOSTS = ("api.openai.com", "api.anthropic.com")
LITELLM_VENV = ROOT / ".bench" / "litellm"
# LiteLLM's import-time defaults try the network and read .env from the working directory.
QUIET_LITELLM = {"LITELLM_LOCAL_MODEL_COST_MAP": "True", "LITELLM_MODE": "PRODUCTION"}


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind((HOST, 0))
        return int(sock.getsockname()[1])


@dataclass
class Process:
    name: str
    popen: subprocess.Popen[bytes]
    log_path: Path
    spawned_at: float  # time.monotonic()

    def output(self) -> str:
        return self.log_path.read_text(errors="replace")

    def stop(self) -> None:
        if self.popen.poll() is None:
            self.popen.terminate()
        try:
            self.popen.wait(timeout=15)
        except subprocess.TimeoutExpired:
            self.popen.kill()
            self.popen.wait(timeout=15)


def spawn(
    name: str, args: Sequence[str], work: Path, env: Mapping[str, str] | None = None, tree: Path = ROOT
) -> Process:
    """Starts ``args`` in ``tree``; another tree than this one goes first on the path too (``-m``
    looks in the working directory, but a child process of it would find this tree's copy)."""
    log_path = work / f"{name}.log"
    spawned_at = time.monotonic()
    environment = {**os.environ, **(env or {})}
    if tree != ROOT:
        environment["PYTHONPATH"] = str(tree)
    with log_path.open("wb") as out:
        popen = subprocess.Popen(list(args), stdout=out, stderr=subprocess.STDOUT, cwd=tree, env=environment)
    return Process(name, popen, log_path, spawned_at)


def wait_for_line(process: Process, marker: str, timeout: float = 60) -> str:
    """Waits until the process prints a line containing ``marker``; returns that line."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        for line in process.output().splitlines():
            if marker in line:
                return line
        if process.popen.poll() is not None:
            break
        time.sleep(0.05)
    raise RuntimeError(f"{process.name} did not print {marker!r}:\n{process.output()[-3000:]}")


@dataclass(frozen=True)
class Route:
    """How a client reaches a target: through an HTTPS proxy to the real host, or at a base URL."""

    proxy: str | None  # http://host:port of an HTTPS_PROXY-style proxy
    base_url: str  # where /v1/chat/completions lives, as the client addresses it
    headers: Mapping[str, str] = field(default_factory=dict)


@dataclass
class Running:
    route: Route
    processes: list[Process]
    measured: Process  # the process a client talks to: the one whose memory is reported


@dataclass(frozen=True)
class Setup:
    """What every target shares: the fake provider, the fake judge and one CA."""

    work: Path
    fake_url: str
    judge_url: str
    data_dir: Path  # holds the CA that all proxies present


PolicyFor = Callable[[Setup], dict[str, Any]]


class Target(Protocol):
    name: str
    description: str

    def start(self, setup: Setup) -> Running: ...


class BareMitmproxy(Target):
    name = "mitmproxy"
    description = "mitmdump with only a routing addon (bench/routing_addon.py): the floor"

    def start(self, setup: Setup) -> Running:
        port = free_port()
        confdir = ca_files(setup.data_dir).mitmproxy_confdir
        args = [
            str(Path(sys.executable).parent / "mitmdump"),
            "--quiet",
            "--listen-host", HOST,
            "--listen-port", str(port),
            "--set", f"confdir={confdir}",
            "--set", "connection_strategy=lazy",
            "--set", "upstream_cert=false",
            "--set", r"allow_hosts=^(api\.anthropic\.com|api\.openai\.com):\d+$",
            "-s", str(ROOT / "bench" / "routing_addon.py"),
        ]  # fmt: skip
        process = spawn(self.name, args, setup.work, {"BENCH_UPSTREAM": setup.fake_url})
        return Running(Route(f"http://{HOST}:{port}", "https://api.openai.com"), [process], process)


def luthien_proxy_args(name: str, setup: Setup, port: int) -> list[str]:
    args = [sys.executable, "-m", "luthien", "proxy", "--port", str(port)]
    # WARNING: per-call INFO lines would be measured as proxy overhead.
    args += ["--data-dir", str(setup.data_dir), "--log-level", "WARNING", "--metrics-port", "0"]
    args += ["--database-url", f"sqlite:///{setup.work / name}.db"]
    for host in PROVIDER_HOSTS:
        args += ["--provider-host", host, "--upstream", f"{host}={setup.fake_url}"]
    return args


def write_policy(setup: Setup, name: str, policy: dict[str, Any]) -> Path:
    path = setup.work / f"{name}.yaml"
    path.write_text(yaml.safe_dump({"policy": policy}))
    return path


class LuthienInProcess(Target):
    """``luthien proxy`` with its control plane in the same process, recording to SQLite;
    ``shadow``, a policy set as its shadow (``luthien policy shadow``) before it starts."""

    def __init__(
        self,
        name: str,
        description: str,
        policy: PolicyFor | None = None,
        tree: Path = ROOT,
        shadow: PolicyFor | None = None,
    ) -> None:
        self.name = name
        self.description = description
        self._policy = policy
        self._tree = tree
        self._shadow = shadow

    def start(self, setup: Setup) -> Running:
        port = free_port()
        args = luthien_proxy_args(self.name, setup, port)
        if self._policy is not None:
            args += ["--policy", str(write_policy(setup, self.name, self._policy(setup)))]
        if self._shadow is not None:
            shadow = write_policy(setup, f"{self.name}-shadow", self._shadow(setup))
            database = f"sqlite:///{setup.work / self.name}.db"
            subprocess.run(
                [
                    sys.executable,
                    "-m",
                    "luthien",
                    "policy",
                    "shadow",
                    str(shadow),
                    "--database-url",
                    database,
                ],
                check=True,
                capture_output=True,
                cwd=self._tree,
            )
        process = spawn(self.name, args, setup.work, tree=self._tree)
        return Running(Route(f"http://{HOST}:{port}", "https://api.openai.com"), [process], process)


class LuthienSidecar(Target):
    """``luthien proxy --control-plane`` beside a ``luthien controlplane`` that runs the policy."""

    def __init__(
        self,
        name: str = "noop-network",
        description: str = "Luthien, NoOpPolicy on a `luthien controlplane` over HTTP (the sidecar layout)",
        policy: PolicyFor | None = None,
        tree: Path = ROOT,
    ) -> None:
        self.name = name
        self.description = description
        self._policy = policy
        self._tree = tree

    def start(self, setup: Setup) -> Running:
        token = secrets.token_urlsafe(24)
        env = {"LUTHIEN_CONTROL_PLANE_TOKEN": token}
        cp_port = free_port()
        args = [
            sys.executable, "-m", "luthien", "controlplane", "--port", str(cp_port),
            "--data-dir", str(setup.data_dir), "--log-level", "WARNING",
            "--database-url", f"sqlite:///{setup.work / self.name}-controlplane.db",
        ]  # fmt: skip
        if self._policy is not None:
            args += ["--policy", str(write_policy(setup, self.name, self._policy(setup)))]
        control_plane = spawn(f"{self.name}-controlplane", args, setup.work, env, tree=self._tree)
        # The sidecar's start-up is what is measured: the shared control plane is already up.
        wait_for_line(control_plane, "listening on", timeout=120)
        port = free_port()
        args = [*luthien_proxy_args(self.name, setup, port), "--control-plane", f"http://{HOST}:{cp_port}"]
        proxy = spawn(self.name, args, setup.work, env, tree=self._tree)
        return Running(
            Route(f"http://{HOST}:{port}", "https://api.openai.com"), [proxy, control_plane], proxy
        )


class LiteLLMProxy(Target):
    name = "litellm"
    description = "LiteLLM's proxy server 1.106.2 (base-URL mode, no database), one worker"

    def start(self, setup: Setup) -> Running:
        port = free_port()
        config = setup.work / "litellm.yaml"
        config.write_text(
            yaml.safe_dump(
                {
                    "model_list": [
                        {
                            "model_name": "*",
                            "litellm_params": {
                                "model": "openai/*",
                                "api_base": f"{setup.fake_url}/v1",
                                "api_key": "sk-bench-upstream",
                            },
                        }
                    ]
                }
            )
        )
        key = "sk-" + secrets.token_hex(24)
        args = [
            str(LITELLM_VENV / "bin" / "litellm"),
            "--config",
            str(config),
            "--host",
            HOST,
            "--port",
            str(port),
        ]
        process = spawn(self.name, args, setup.work, {**QUIET_LITELLM, "LITELLM_MASTER_KEY": key})
        route = Route(None, f"http://{HOST}:{port}", {"authorization": f"Bearer {key}"})
        return Running(route, [process], process)


def ensure_litellm_venv() -> None:
    """Creates .bench/litellm with exactly bench/litellm-proxy.txt (hash-checked); quick when done."""
    uv = ROOT / ".tools" / "bin" / "uv"
    if not (LITELLM_VENV / "bin" / "python").exists():
        subprocess.run(
            [str(uv), "venv", "--quiet", "--python", sys.executable, str(LITELLM_VENV)], check=True
        )
    subprocess.run(
        [str(uv), "pip", "sync", "--quiet", "--require-hashes", str(ROOT / "bench" / "litellm-proxy.txt")],
        check=True,
        env={**os.environ, "VIRTUAL_ENV": str(LITELLM_VENV)},
    )


def regex_policy(setup: Setup) -> dict[str, Any]:
    replacement = {"find": r"sk-[A-Za-z0-9]{32,}", "replace": "[key]", "regex": True}
    return {"class": "StringReplacementPolicy", "config": {"apply_to": "both", "replacements": [replacement]}}


def judge_policy(setup: Setup) -> dict[str, Any]:
    # cache_size 0: every tool call is judged, so the judge's round trip is in every figure.
    config = {
        "model": "openai/fake-judge",
        "api_base": setup.judge_url,
        "api_key": "sk-judge",
        "cache_size": 0,
    }
    return {"class": "ToolCallJudgePolicy", "config": config}


def tree_targets(name: str, tree: Path) -> list[Target]:
    """NoOp and the regex policy, in-process and as sidecars, run from another source tree (a
    worktree of an earlier commit, say), to measure a change against what it changes in one run."""
    return [
        LuthienInProcess(f"noop@{name}", f"Luthien from {tree}, NoOpPolicy, in-process", tree=tree),
        LuthienSidecar(f"noop-network@{name}", f"Luthien from {tree}, NoOpPolicy, sidecar", tree=tree),
        LuthienInProcess(f"regex@{name}", f"Luthien from {tree}, the regex policy", regex_policy, tree),
        LuthienSidecar(
            f"regex-network@{name}", f"Luthien from {tree}, the regex policy, sidecar", regex_policy, tree
        ),
    ]


def all_targets(with_litellm: bool) -> list[Target]:
    targets: list[Target] = [
        BareMitmproxy(),
        LuthienInProcess("noop", "Luthien, NoOpPolicy, control plane in-process"),
        LuthienSidecar(),
        LuthienSidecar(
            "regex-network",
            "Luthien, the regex policy on a `luthien controlplane` (the sidecar layout)",
            regex_policy,
        ),
        LuthienInProcess(
            "regex", "Luthien, a regex StringReplacementPolicy on requests and streams", regex_policy
        ),
        LuthienInProcess(
            "judge", "Luthien, ToolCallJudgePolicy asking a fake judge about each tool call", judge_policy
        ),
        LuthienInProcess(
            "noop-shadow",
            "Luthien, NoOpPolicy enforced, the regex policy as its shadow (replaying every call)",
            shadow=regex_policy,
        ),
    ]
    if with_litellm:
        targets.append(LiteLLMProxy())
    return targets
