"""The split deployment: thin proxies (`luthien proxy --control-plane URL`) sharing one
control-plane service (`luthien controlplane`) that holds the policy, records every call and
publishes the activity."""

import asyncio
import os
import re
import signal
import subprocess
import sys
import threading
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import pytest
import yaml
from websockets.asyncio.client import connect
from websockets.exceptions import InvalidStatus

from controlplane.recording.records import CallOutcome
from tests.conftest import ROOT, RunningProxy, free_port, start_proxy, wait_until_listening
from tests.fake_provider import FakeProvider
from tests.fake_provider.scenarios import DEFAULT_TEXT
from tests.recorded import recorded
from tests.test_wire_fidelity import ENDPOINTS, body, client_for

pytestmark = pytest.mark.timeout(300)
TOKEN = "cp-test-token-" + uuid.uuid4().hex[:8]
#: Both kinds of process print their spans, soon after they end, for the trace test.
TRACING = {"OTEL_TRACES_EXPORTER": "console", "OTEL_BSP_SCHEDULE_DELAY": "100"}
UPPERCASE = {"policy": {"class": "UppercaseNthWordPolicy", "config": {"n": 2}}}
ALL_CAPS = {"policy": {"class": "AllCapsPolicy"}}


@dataclass
class ControlPlane:
    url: str
    port: int
    policy_file: Path | None
    database_url: str
    root: Path
    process: subprocess.Popen[bytes] | None = None
    extra_args: tuple[str, ...] = ()
    env: dict[str, str] = field(default_factory=dict)  # over the defaults (TOKEN, TRACING)

    def start(self) -> None:
        args = [sys.executable, "-m", "luthien", "controlplane", "--port", str(self.port)]
        args += ["--data-dir", str(self.root / "cp-data"), "--database-url", self.database_url]
        if self.policy_file is not None:
            args += ["--policy", str(self.policy_file)]
        args += self.extra_args
        log = (self.root / "controlplane.log").open("ab")
        env = {**os.environ, "LUTHIEN_CONTROL_PLANE_TOKEN": TOKEN, **TRACING, **self.env}
        self.process = subprocess.Popen(args, stdout=log, stderr=subprocess.STDOUT, cwd=ROOT, env=env)
        deadline = time.monotonic() + 120
        while True:
            try:
                if httpx.get(f"{self.url}/healthz").status_code == 200:
                    return
            except httpx.TransportError:
                pass
            assert self.process.poll() is None and time.monotonic() < deadline, self.log()
            time.sleep(0.2)

    def kill(self) -> None:
        assert self.process is not None
        self.process.send_signal(signal.SIGKILL)
        self.process.wait()

    def stop(self) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.terminate()
            self.process.wait(15)

    def log(self) -> str:
        return (self.root / "controlplane.log").read_text(errors="replace")

    def set_policy(self, document: dict[str, Any]) -> None:
        assert self.policy_file is not None
        self.policy_file.write_text(yaml.safe_dump(document))


@pytest.fixture(scope="module")
def provider() -> Iterator[FakeProvider]:
    with FakeProvider() as fake:
        yield fake


@pytest.fixture(scope="module")
def control_plane(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ControlPlane]:
    root = tmp_path_factory.mktemp("controlplane")
    port = free_port()
    plane = ControlPlane(
        f"http://127.0.0.1:{port}", port, root / "policy.yaml", f"sqlite://{root / 'cp.db'}", root
    )
    plane.set_policy(UPPERCASE)
    plane.start()
    yield plane
    plane.stop()


@pytest.fixture(scope="module")
def sidecars(
    provider: FakeProvider, control_plane: ControlPlane, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[list[RunningProxy]]:
    """Three fail-closed proxies and one that fails open, all on the one control plane."""
    root = tmp_path_factory.mktemp("sidecars")
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("LUTHIEN_CONTROL_PLANE_TOKEN", TOKEN)
        for name, value in TRACING.items():
            patch.setenv(name, value)
        proxies = [
            start_proxy(
                f"sidecar{n}", None, provider, root, root / f"data{n}",
                extra_args=["--control-plane", control_plane.url, *(["--fail-open"] if n == 3 else [])],
            )
            for n in range(4)
        ]  # fmt: skip
    try:
        for proxy in proxies:
            wait_until_listening(proxy)
        yield proxies
    finally:
        for proxy in proxies:
            proxy.terminate()
        for proxy in proxies:
            proxy.wait()


def messages(prompt: str, stream: bool = True) -> dict[str, Any]:
    return {"api": "messages", "stream": stream, "prompt": prompt}


async def test_unauthenticated_calls_get_401(control_plane: ControlPlane) -> None:
    async with httpx.AsyncClient(base_url=control_plane.url) as client:
        body = {
            "wire_format": "openai_chat",
            "body": {},
            "metadata": {"call_id": "x", "host": "h", "path": "/"},
        }
        assert (await client.post("/v1/police-request", json=body)).status_code == 401
        wrong = {"authorization": "Bearer not-the-token"}
        assert (await client.post("/v1/police-request", json=body, headers=wrong)).status_code == 401
        assert (await client.get("/v1/policy")).status_code == 401
        assert (await client.get("/healthz")).status_code == 200
        right = {"authorization": f"Bearer {TOKEN}"}
        assert (await client.get("/v1/policy", headers=right)).json()["policy"] == "UppercaseNthWordPolicy"
    with pytest.raises(InvalidStatus) as refused:
        async with connect(control_plane.url.replace("http", "ws") + "/v1/streams"):
            pass
    assert refused.value.response.status_code == 401


async def test_calls_through_three_proxies_are_policed_and_recorded_by_one_control_plane(
    sidecars: list[RunningProxy], control_plane: ControlPlane
) -> None:
    word = f"three{uuid.uuid4().hex[:8]}"
    for n, proxy in enumerate(sidecars[:3]):
        for call in (messages(f"{word} {n}"), {"api": "chat", "stream": False, "prompt": f"{word} {n}"}):
            (result,) = proxy.sdk(call)
            assert result["ok"], result
            assert result["text"] != DEFAULT_TEXT and result["text"].lower() == DEFAULT_TEXT.lower()
    records = await recorded(control_plane.database_url, word, 6)
    assert {r.outcome for r in records} == {CallOutcome.COMPLETED}
    assert all(r.response_modified and r.policy_version and not r.unpoliced for r in records)


@pytest.fixture(scope="module")
def lean_sidecar(
    provider: FakeProvider, control_plane: ControlPlane, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[RunningProxy]:
    """A sidecar whose log lists every module it imports, whenever it imports it (Python's
    ``-X importtime``, set by the environment: the proxy is run as a user runs it)."""
    root = tmp_path_factory.mktemp("lean")
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("LUTHIEN_CONTROL_PLANE_TOKEN", TOKEN)
        patch.setenv("PYTHONPROFILEIMPORTTIME", "1")
        proxy = start_proxy(
            "lean", None, provider, root, root / "data", extra_args=["--control-plane", control_plane.url]
        )
    try:
        wait_until_listening(proxy)
        yield proxy
    finally:
        proxy.terminate()
        proxy.wait()


def imported_packages(proxy: RunningProxy) -> set[str]:
    """The top-level packages the proxy's process has imported so far."""
    lines = re.finditer(r"^import time:\s+\d+ \|\s+\d+ \|\s*([\w.]+)\s*$", proxy.log(), re.M)
    return {line.group(1).split(".")[0] for line in lines}


async def test_a_sidecar_polices_every_format_without_loading_litellm(
    lean_sidecar: RunningProxy, control_plane: ControlPlane
) -> None:
    """LiteLLM is what normalises bodies, and the control plane does that: a sidecar that has
    served all three APIs, whole and streamed, under a policy that rewrites them, has not loaded
    it (importing it costs seconds and about 200 MB)."""
    word = f"lean{uuid.uuid4().hex[:8]}"
    calls = [
        {"api": api, "stream": stream, "prompt": f"{word} {api} {stream}"}
        for api in ("chat", "responses", "messages")
        for stream in (False, True)
    ]
    for call, result in zip(calls, lean_sidecar.sdk(*calls), strict=True):
        assert result["ok"], (call, result)
        assert result["text"] != DEFAULT_TEXT and result["text"].lower() == DEFAULT_TEXT.lower(), call
    records = await recorded(control_plane.database_url, word, len(calls))
    assert {r.outcome for r in records} == {CallOutcome.COMPLETED}
    assert all(r.response_modified and r.final_output is not None for r in records)
    packages = imported_packages(lean_sidecar)
    assert {"mitmproxy", "httpx", "addon"} <= packages  # the log lists its imports
    assert "litellm" not in packages


def test_the_control_plane_token_reaches_no_log(
    sidecars: list[RunningProxy], control_plane: ControlPlane
) -> None:
    """A sidecar at DEBUG opens its stream WebSockets with the token in a header, which the
    ``websockets`` logger prints at DEBUG with every message it sends: only Luthien's own loggers
    go below WARNING."""
    (result,) = sidecars[0].sdk(messages(f"token check {uuid.uuid4().hex[:8]}"))
    assert result["ok"], result
    log = sidecars[0].log()
    assert "DEBUG luthien.logs" in log
    for proxy in sidecars:
        assert TOKEN not in proxy.log(), proxy.name
    assert TOKEN not in control_plane.log()


def policy_streams_open(control_plane: ControlPlane) -> float:
    text = httpx.get(f"{control_plane.url}/metrics", headers={"authorization": f"Bearer {TOKEN}"}).text
    match = re.search(r"^luthien_policy_streams_open (\S+)$", text, re.M)
    assert match, text
    return float(match.group(1))


def test_streams_whose_client_left_are_released_on_the_control_plane(
    sidecars: list[RunningProxy], control_plane: ControlPlane
) -> None:
    for n in range(20):
        api = ("chat", "messages", "responses")[n % 3]
        with (
            client_for(sidecars[n % 3]) as client,
            client.stream(
                "POST", ENDPOINTS[api][0], json=body(api, "[scenario:slow 0.05]", True)
            ) as response,
        ):
            assert response.status_code == 200
            next(response.iter_bytes())  # the first bytes arrived; then the client hangs up
    deadline = time.monotonic() + 10  # each proxy notices its client left on its own schedule
    while policy_streams_open(control_plane) and time.monotonic() < deadline:
        time.sleep(0.2)
    assert policy_streams_open(control_plane) == 0


def in_thread(proxy: RunningProxy, call: dict[str, Any]) -> tuple[threading.Thread, list[dict[str, Any]]]:
    results: list[dict[str, Any]] = []
    thread = threading.Thread(target=lambda: results.extend(proxy.sdk(call)), daemon=True)
    thread.start()
    return thread, results


def wait_for_request(provider: FakeProvider, count: int) -> None:
    provider.wait_for_requests(count)
    time.sleep(0.3)  # the first event has reached the proxy and the control plane


async def test_a_policy_change_reaches_every_proxy_while_a_running_stream_keeps_its_policy(
    sidecars: list[RunningProxy], control_plane: ControlPlane, provider: FakeProvider
) -> None:
    before = len(provider.requests)
    thread, in_flight = in_thread(sidecars[0], messages("[scenario:gated]"))
    wait_for_request(provider, before + 1)
    control_plane.set_policy(ALL_CAPS)
    try:
        deadline = time.monotonic() + 15
        for proxy in sidecars[1:3]:
            while (text := proxy.sdk(messages("hello", stream=False))[0]["text"]) != DEFAULT_TEXT.upper():
                assert time.monotonic() < deadline, text
                await asyncio.sleep(0.5)
        provider.release(before)
        thread.join(30)
        (result,) = in_flight
        assert result["ok"] and result["text"] != DEFAULT_TEXT.upper()  # still the old policy
        assert result["text"].lower() == DEFAULT_TEXT.lower()
    finally:
        control_plane.set_policy(UPPERCASE)
        await asyncio.sleep(2.5)  # the reload is seen before the next test


async def test_killing_the_control_plane_mid_stream_fails_closed_and_recovers_by_itself(
    sidecars: list[RunningProxy], control_plane: ControlPlane, provider: FakeProvider
) -> None:
    closed, open_ = sidecars[0], sidecars[3]
    word = f"killed{uuid.uuid4().hex[:8]}"
    before = len(provider.requests)
    closed_thread, closed_result = in_thread(closed, messages(f"{word} closed [scenario:gated]"))
    wait_for_request(provider, before + 1)
    open_thread, open_result = in_thread(open_, messages(f"{word} open [scenario:gated]"))
    wait_for_request(provider, before + 2)
    control_plane.kill()
    try:
        provider.release(before)
        provider.release(before + 1)
        closed_thread.join(30)
        open_thread.join(30)
        (failed,) = closed_result
        assert not failed["ok"] and "control plane" in failed["message"]  # a provider-format error event
        (passed,) = open_result
        assert passed["ok"] and passed["text"]  # fail-open: the stream completed
        # New calls while it is down: 503 in the provider's format, or unpoliced when failing open.
        (refused,) = closed.sdk(messages("while down", stream=False))
        assert not refused["ok"] and refused["status"] == 503 and "control plane" in refused["message"]
        (unpoliced,) = open_.sdk(messages(f"{word} unpoliced", stream=False))
        assert unpoliced["ok"] and unpoliced["text"] == DEFAULT_TEXT
    finally:
        control_plane.start()
    # Back without restarting any proxy: policed again.
    (policed,) = closed.sdk(messages("after", stream=False))
    assert policed["ok"] and policed["text"] != DEFAULT_TEXT
    # What the fail-open proxy let through unpoliced was spooled there and recorded once it returned.
    records = await recorded(control_plane.database_url, f"{word} unpoliced", 1)
    assert records[0].unpoliced
    (stream,) = await recorded(control_plane.database_url, f"{word} open", 1)
    assert stream.unpoliced and stream.outcome is CallOutcome.COMPLETED


def traces(log: str, span: str) -> set[str]:
    """The trace ids of the spans named ``span`` that a process printed (console exporter)."""
    pattern = rf'"name": "{re.escape(span)}",\s*"context": {{\s*"trace_id": "0x([0-9a-f]{{32}})"'
    return set(re.findall(pattern, log))


async def test_the_proxy_and_control_plane_processes_share_one_trace(
    sidecars: list[RunningProxy], control_plane: ControlPlane
) -> None:
    (result,) = sidecars[1].sdk(messages("traced", stream=False))
    assert result["ok"], result
    deadline = time.monotonic() + 15
    # One trace from the call's root span to the control plane's policy span. Each process exports
    # its spans in batches, on its own schedule: wait until all three are out.
    while not (traces(sidecars[1].log(), "luthien.request_policy")
               & traces(control_plane.log(), "luthien.controlplane.request_policy")
               & traces(sidecars[1].log(), "luthien.call")):  # fmt: skip
        assert time.monotonic() < deadline, "no control-plane span shares a trace with the proxy's call"
        await asyncio.sleep(0.2)
