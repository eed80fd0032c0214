"""Prometheus metrics: a real proxy's /metrics counts the calls the official SDKs made through it
(by host, model and outcome), their latencies, the policy's blocks and the open streams; the
control plane's /metrics shows the recorder's queue, spool and database state."""

import time
from collections.abc import Callable, Iterator
from pathlib import Path

import httpx
import pytest
from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.parser import text_string_to_metric_families

from certs import ensure_ca
from controlplane.local import ControlPlaneLocal
from controlplane.metrics import register_recording_metrics
from controlplane.policies import NoOpPolicy
from controlplane.recording.spool import Spool
from controlplane.recording.writer import RecordWriter
from controlplane.remote.server import create_control_plane_app
from controlplane.storage.sqlite import SQLiteStorage
from formats.policing import Policing
from tests.conftest import RunningProxy, free_port, start_proxy, wait_until_listening
from tests.fake_provider import FakeProvider
from tests.test_spool import call, unstorable

pytestmark = pytest.mark.timeout(180)

Samples = list[tuple[str, dict[str, str], float]]


def parse(text: str) -> Samples:
    return [(s.name, s.labels, s.value) for f in text_string_to_metric_families(text) for s in f.samples]


def value(samples: Samples, name: str, **labels: str) -> float:
    """The sum of the samples of ``name`` whose labels include ``labels`` (0 when none)."""
    return sum(v for n, have, v in samples if n == name and labels.items() <= have.items())


@pytest.fixture(scope="module")
def metered(
    fake: FakeProvider, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[tuple[RunningProxy, int]]:
    root = tmp_path_factory.mktemp("metrics")
    ensure_ca(root / "data")
    port = free_port()
    policy = {
        "class": "SerialPolicy",
        "config": {
            "policies": [
                {"class": "tests.policies:BlockRequestsContaining", "config": {"word": "forbidden-word"}},
                {
                    "class": "ToolCallBlocklistPolicy",
                    "config": {"block": [{"id": "no-rm", "arguments": "rm -rf"}]},
                },
            ]
        },
    }
    proxy = start_proxy(
        "metrics", policy, fake, root, root / "data", extra_args=["--metrics-port", str(port)]
    )
    try:
        wait_until_listening(proxy)
        yield proxy, port
    finally:
        proxy.terminate()
        proxy.wait()


def scrape_until(port: int, done: Callable[[Samples], bool]) -> Samples:
    """Calls are counted just after their last byte is sent: scrape until the counts are in."""
    deadline = time.monotonic() + 10
    while True:
        response = httpx.get(f"http://127.0.0.1:{port}/metrics", timeout=5)
        assert response.status_code == 200
        assert response.headers["content-type"].startswith("text/plain")
        samples = parse(response.text)
        if done(samples) or time.monotonic() > deadline:
            return samples
        time.sleep(0.1)


def test_the_proxy_counts_calls_latencies_blocks_and_streams(metered: tuple[RunningProxy, int]) -> None:
    proxy, port = metered
    results = proxy.sdk(
        {"api": "chat", "stream": False, "prompt": "hello", "model": "gpt-metrics-whole"},
        {"api": "messages", "stream": True, "prompt": "hello", "model": "claude-metrics-stream"},
        {"api": "chat", "stream": False, "prompt": "say forbidden-word", "model": "gpt-metrics-whole"},
    )
    assert [r["ok"] for r in results] == [True, True, False], results
    samples = scrape_until(port, lambda s: value(s, "luthien_calls_total") >= 3)

    openai, anthropic = {"host": "api.openai.com"}, {"host": "api.anthropic.com"}
    calls = "luthien_calls_total"
    assert value(samples, calls, **openai, model="gpt-metrics-whole", outcome="completed") == 1
    assert value(samples, calls, **openai, model="gpt-metrics-whole", outcome="blocked") == 1
    assert value(samples, calls, **anthropic, model="claude-metrics-stream", outcome="completed") == 1
    assert value(samples, calls) == 3

    # Every call has a duration; the blocked one never reached the provider, so no first byte.
    assert value(samples, "luthien_call_duration_seconds_count", **openai) == 2
    assert value(samples, "luthien_call_duration_seconds_count", **anthropic) == 1
    assert value(samples, "luthien_call_duration_seconds_sum", **openai) > 0
    assert value(samples, "luthien_time_to_first_byte_seconds_count", **openai) == 1
    assert value(samples, "luthien_time_to_first_byte_seconds_count", **anthropic) == 1
    five_minutes = value(samples, "luthien_call_duration_seconds_bucket", **openai, le="300.0")
    assert five_minutes == 2
    assert value(samples, "luthien_call_duration_seconds_bucket", **openai, le="+Inf") == 2

    assert value(samples, "luthien_policy_decisions_total", stage="request", allowed="false") == 1
    assert value(samples, "luthien_policy_decisions_total", allowed="true") == 0
    assert value(samples, "luthien_open_streams") == 0
    assert value(samples, "luthien_unpoliced_calls_total") == 0
    # `luthien proxy` records in-process: its recorder's state is on the same endpoint.
    assert value(samples, "luthien_recording_database_up") == 1
    assert any(name == "luthien_recording_queue_depth" for name, _, _ in samples)


def test_a_removed_tool_call_counts_as_a_block(metered: tuple[RunningProxy, int]) -> None:
    proxy, port = metered
    model = "gpt-metrics-tool"
    results = proxy.sdk(
        {"api": "chat", "stream": True, "prompt": "[scenario:tool_call rm -rf /tmp/x]", "model": model},
        {"api": "chat", "stream": False, "prompt": "[scenario:tool_call rm -rf /tmp/y]", "model": model},
    )
    assert [(r["ok"], r["tool_calls"]) for r in results] == [(True, []), (True, [])], results
    samples = scrape_until(port, lambda s: value(s, "luthien_calls_total", model=model) >= 2)

    assert value(samples, "luthien_calls_total", model=model, outcome="blocked") == 2
    removed = {"allowed": "false", "block": "tool_call_removed"}
    assert value(samples, "luthien_policy_decisions_total", stage="stream", **removed) == 1
    assert value(samples, "luthien_policy_decisions_total", stage="response", **removed) == 1
    assert value(samples, "luthien_policy_decisions_total", allowed="true") == 0


async def test_the_control_plane_serves_its_recording_metrics_without_a_token(tmp_path: Path) -> None:
    storage = SQLiteStorage(tmp_path / "calls.db")
    writer = RecordWriter(storage, Spool(tmp_path / "spool"))
    control_plane = ControlPlaneLocal(NoOpPolicy(), recorder=writer)
    app = create_control_plane_app(control_plane, Policing(control_plane), storage, "a-token", writer)
    transport = httpx.ASGITransport(app=app)
    try:
        async with httpx.AsyncClient(transport=transport, base_url="http://controlplane") as client:
            response = await client.get("/metrics")
            assert response.status_code == 200
            assert response.headers["content-type"].startswith("text/plain")
            samples = parse(response.text)
            assert value(samples, "luthien_recording_queue_depth") == 0
            assert value(samples, "luthien_recording_spool_records") == 0
            assert value(samples, "luthien_recording_database_up") == 1
            assert any(name == "luthien_recording_stored_records" for name, _, _ in samples)
            assert value(samples, "luthien_recording_rejected_records") == 0
            # The rest of the API still wants the token.
            assert (await client.get("/v1/policy")).status_code == 401
    finally:
        await writer.close()
        await storage.close()


async def test_a_record_the_database_refuses_is_counted(tmp_path: Path) -> None:
    storage = SQLiteStorage(tmp_path / "calls.db")
    writer = RecordWriter(storage, Spool(tmp_path / "spool"))
    registry = CollectorRegistry()
    register_recording_metrics(writer, registry)
    writer.start()
    try:
        await writer.store([call(1)])
        await writer.store([unstorable(2)])
        await writer.flush()
        samples = parse(generate_latest(registry).decode())
    finally:
        await writer.close()
        await storage.close()
    assert value(samples, "luthien_recording_stored_records") == 1
    assert value(samples, "luthien_recording_rejected_records") == 1
