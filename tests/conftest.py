"""Shared fixtures: a fake provider, real `luthien proxy` processes routed to it, and the control
planes (local and over HTTP) the policy and pipeline tests run against."""

import json
import os
import random
import socket
import subprocess
import sys
import time
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import httpx
import pytest
import yaml
from prometheus_client.parser import text_string_to_metric_families

from certs import ensure_ca
from tests.fake_judge import FakeJudge
from tests.fake_provider import FakeProvider

if TYPE_CHECKING:  # imported late: it imports LiteLLM, slow to import, which many tests do not need
    from tests.control_planes import Kind

ROOT = Path(__file__).resolve().parent.parent
# Many proxies run at once in the tests: none serves metrics on the default port unless asked.
os.environ.setdefault("LUTHIEN_METRICS_PORT", "0")
SDK_CLIENT = Path(__file__).with_name("sdk_client.py")
STARTUP_TIMEOUT = 120
DEAD_PROVIDER = "dead.provider.test"

#: One proxy process per policy; they start together because LiteLLM's import is slow.
POLICIES: dict[str, dict[str, Any] | None] = {
    "noop": None,
    "blocklist": {"class": "ToolCallBlocklistPolicy", "config": {"patterns": [r"rm\s+-rf", r"DROP\s+TABLE"]}},
    "block_requests": {
        "class": "tests.policies:BlockRequestsContaining",
        "config": {"word": "forbidden-word"},
    },
    "rewrite_request": {
        "class": "tests.policies:RewriteUserText",
        "config": {"old": "apple", "new": "orange"},
    },
    "slow_chunks": {"class": "tests.policies:SlowFirstChunkPolicy"},
    "uppercase": {"class": "UppercaseNthWordPolicy", "config": {"n": 2}},
    "end_stream": {"class": "tests.policies:EndStreamAfterWords", "config": {"chunks": 3}},
    "catalogue": None,  # see catalogue_policy(): it needs the fake judge's address
}


def catalogue_policy(judge_url: str) -> dict[str, Any]:
    """One proxy for the whole policy catalogue: SelectPolicy routes each call by the suffix of
    its model name (e.g. ``gpt-5-caps``), which also tests selection end to end."""

    def route(suffix: str, policy: dict[str, Any]) -> dict[str, Any]:
        return {"when": {"model": f"*-{suffix}"}, "policy": policy}

    judge = {
        "model": "openai/fake-judge",
        "api_base": judge_url,
        "api_key": "sk-judge-test",
        "threshold": 0.7,
    }
    rules = {
        "block": [
            {"id": "no-rm", "name": "^bash$", "arguments": r"rm -rf", "reason": "no recursive deletes here"}
        ],
        "allow": [{"arguments": r"rm -rf \./build"}],
    }
    serial = [
        {"class": "SecretRedactionPolicy"},
        {"class": "UppercaseNthWordPolicy", "config": {"n": 2}},
        {"class": "DangerousCommandPolicy"},
    ]
    return {
        "class": "SelectPolicy",
        "config": {
            "routes": [
                route("caps", {"class": "AllCapsPolicy"}),
                route(
                    "replace",
                    {
                        "class": "StringReplacementPolicy",
                        "config": {"replacements": [{"find": "quick brown", "replace": "slow red"}]},
                    },
                ),
                route("dangerous", {"class": "DangerousCommandPolicy"}),
                route("secrets", {"class": "SecretRedactionPolicy", "config": {"redact_responses": True}}),
                route("judge", {"class": "ToolCallJudgePolicy", "config": judge}),
                route("rules", {"class": "ToolCallBlocklistPolicy", "config": rules}),
                route("serial", {"class": "SerialPolicy", "config": {"policies": serial}}),
            ]
        },
    }


def luthien(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    """Runs the `luthien` command as a user would, from the repository root."""
    return subprocess.run(
        [sys.executable, "-m", "luthien", *args],
        capture_output=True,
        text=True,
        timeout=120,
        cwd=ROOT,
        env={**os.environ, **(env or {})},
    )


_PORTS_GIVEN: set[int] = set()


def free_port() -> int:
    """A free port below Linux's ephemeral range (32768 and up), never given twice in a run.

    A port from ``bind(("127.0.0.1", 0))`` lies in the range the OS hands out to outgoing
    connections, so in a suite that opens thousands of them one could take it between this check
    and the bind of the process it is meant for; a port below the range can only be taken by a
    listener, and this run's listeners all get their ports here. A service restarted on its port
    keeps it for the same reason."""
    rng = random.SystemRandom()
    while True:
        port = rng.randrange(20000, 32000)
        if port in _PORTS_GIVEN:
            continue
        with socket.socket() as sock:
            try:
                sock.bind(("127.0.0.1", port))
            except OSError:
                continue
        _PORTS_GIVEN.add(port)
        return port


@dataclass
class RunningProxy:
    name: str
    port: int
    data_dir: Path
    database_url: str  # where this proxy records calls
    log_path: Path
    process: subprocess.Popen[bytes]
    _sdk_worker: subprocess.Popen[str] | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def bundle(self) -> Path:
        return self.data_dir / "ca" / "ca-bundle.pem"

    def client_env(self) -> dict[str, str]:
        """Only the proxy and the trust store: what a user sets for an unmodified agent."""
        return {"HTTPS_PROXY": self.url, "SSL_CERT_FILE": str(self.bundle), "PATH": os.environ["PATH"]}

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")

    def sdk(self, *calls: dict[str, Any]) -> list[dict[str, Any]]:
        """Runs the calls with the official SDKs in a process configured only by env."""
        worker = self._worker()
        assert worker.stdin is not None and worker.stdout is not None
        worker.stdin.write(json.dumps(list(calls)) + "\n")
        worker.stdin.flush()
        line = worker.stdout.readline()
        assert line, f"SDK client died; proxy log:\n{self.log()[-3000:]}"
        return json.loads(line)

    def start_sdk(self) -> None:
        """Starts the SDK worker ahead of its first call (importing the SDKs takes seconds)."""
        self._worker()

    def stop_sdk(self) -> None:
        """Stops the SDK worker, which makes a new SDK client per call and never closes them, so
        holds connections to the proxy until it exits; the next ``sdk()`` starts a new one."""
        if self._sdk_worker is not None:
            self._sdk_worker.kill()
            self._sdk_worker.wait()

    def _worker(self) -> subprocess.Popen[str]:
        if self._sdk_worker is None or self._sdk_worker.poll() is not None:
            self._sdk_worker = subprocess.Popen(
                [sys.executable, str(SDK_CLIENT)],
                env=self.client_env(),
                stdin=subprocess.PIPE,
                stdout=subprocess.PIPE,
                text=True,
                cwd="/",
            )
        return self._sdk_worker

    def terminate(self) -> None:
        if self._sdk_worker is not None:
            self._sdk_worker.kill()
        self.process.terminate()

    def wait(self) -> None:
        try:
            self.process.wait(timeout=15)
        except subprocess.TimeoutExpired:
            self.process.kill()


def start_proxy(
    name: str,
    policy: dict[str, Any] | None,
    fake: FakeProvider,
    root: Path,
    data_dir: Path,
    database_url: str | None = None,
    extra_args: Sequence[str] = (),
    command: str = "proxy",
) -> RunningProxy:
    """A ``luthien proxy`` (or ``up``) process routed to the fake provider; it records into
    ``database_url`` (default: a SQLite file of its own)."""
    port = free_port()
    database_url = database_url or f"sqlite://{root / f'{name}.db'}"
    args = [sys.executable, "-m", "luthien", command, "--port", str(port), "--data-dir", str(data_dir)]
    args += ["--database-url", database_url, *extra_args]
    args += ["--log-level", "DEBUG"]  # the most verbose logging must still never show a secret
    for host in ("api.openai.com", "api.anthropic.com", "generativelanguage.googleapis.com"):
        args += ["--provider-host", host, "--upstream", f"{host}={fake.url}"]
    # A provider host whose upstream is down (nothing listens on that port).
    args += [
        "--provider-host",
        f"{DEAD_PROVIDER}=openai",
        "--upstream",
        f"{DEAD_PROVIDER}=http://127.0.0.1:{free_port()}",
    ]
    if policy is not None:
        (policy_file := root / f"{name}.yaml").write_text(yaml.safe_dump({"policy": policy}))
        args += ["--policy", str(policy_file)]
    log_path = root / f"{name}.log"
    with log_path.open("wb") as log:
        process = subprocess.Popen(args, stdout=log, stderr=subprocess.STDOUT, cwd=ROOT)
    return RunningProxy(name, port, data_dir, database_url, log_path, process)


def wait_until_listening(proxy: RunningProxy) -> None:
    deadline = time.monotonic() + STARTUP_TIMEOUT
    while "listening on" not in proxy.log():
        if proxy.process.poll() is not None or time.monotonic() > deadline:
            raise RuntimeError(f"proxy {proxy.name} did not start:\n{proxy.log()}")
        time.sleep(0.2)


@contextmanager
def running_proxy(
    name: str, fake: FakeProvider, root: Path, extra_args: Sequence[str] = ()
) -> Iterator[RunningProxy]:
    """A NoOp ``luthien proxy`` of its own (for a module's fixture): listening on entry, stopped on exit."""
    running = start_proxy(name, None, fake, root, root / "data", extra_args=extra_args)
    try:
        wait_until_listening(running)
        yield running
    finally:
        running.terminate()
        running.wait()


@contextmanager
def running_proxies(
    specs: dict[str, tuple[dict[str, Any] | None, Sequence[str]]], fake: FakeProvider, root: Path
) -> Iterator[dict[str, RunningProxy]]:
    """A ``luthien proxy`` per name, with its policy and extra arguments, started together (their
    LiteLLM imports overlap) and sharing one CA: listening on entry, stopped on exit."""
    data_dir = root / "data"
    ensure_ca(data_dir)
    running = {
        name: start_proxy(name, policy, fake, root, data_dir, extra_args=extra)
        for name, (policy, extra) in specs.items()
    }
    try:
        for proxy in running.values():
            wait_until_listening(proxy)
        yield running
    finally:
        for proxy in running.values():
            proxy.terminate()
        for proxy in running.values():
            proxy.wait()


def metric(port: int, name: str) -> float:
    """The value of the sample ``name`` among the Prometheus metrics served on ``port``."""
    text = httpx.get(f"http://127.0.0.1:{port}/metrics").text
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            if sample.name == name:
                return sample.value
    raise AssertionError(f"{name} not exported")


@pytest.fixture(scope="session")
def fake() -> Iterator[FakeProvider]:
    provider = FakeProvider().start()
    yield provider
    provider.stop()


@pytest.fixture(scope="session")
def control_plane_service() -> Iterator[None]:
    """Stops the session's control-plane service (tests/control_planes.py) if a test started it."""
    yield
    from tests.control_planes import stop_service_host

    stop_service_host()


@pytest.fixture(params=["local", "http"])
def control_plane_kind(request: pytest.FixtureRequest, control_plane_service: None) -> "Kind":
    """The ControlPlaneService a policy or pipeline test runs against: a test that takes this runs
    once with ControlPlaneLocal and once with ControlPlaneHTTP and the control-plane service (see
    ``control_plane_for``)."""
    return request.param


@pytest.fixture(scope="session")
def judge() -> Iterator[FakeJudge]:
    fake_judge = FakeJudge().start()
    yield fake_judge
    fake_judge.stop()


@pytest.fixture(scope="session")
def proxies(
    fake: FakeProvider, judge: FakeJudge, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[dict[str, RunningProxy]]:
    root = tmp_path_factory.mktemp("proxies")
    policies = POLICIES | {"catalogue": catalogue_policy(judge.url)}
    with running_proxies({name: (policy, []) for name, policy in policies.items()}, fake, root) as running:
        yield running


@pytest.fixture(scope="session")
def noop(proxies: dict[str, RunningProxy]) -> RunningProxy:
    return proxies["noop"]
