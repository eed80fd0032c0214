"""A sidecar (`luthien proxy --control-plane URL`) whose control plane goes away, through a TCP
relay the test cuts or mutes: its record spool shows on its own /metrics, and the activity it
sends again after a lost reply reaches a dashboard follower once."""

import asyncio
import json
import time
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import httpx
import pytest
import redis
from prometheus_client.parser import text_string_to_metric_families

from controlplane.activity import RedisStreamBus
from controlplane.models import ActivityEvent, ActivityType
from controlplane.storage import SQLiteStorage
from tests.conftest import RunningProxy, free_port, start_proxy, wait_until_listening
from tests.databases import require_service
from tests.fake_provider import FakeProvider
from tests.tcp_relay import TcpRelay
from tests.test_dashboard_api import AUTH, Dashboard, serve, sse
from tests.test_network_control_plane import TOKEN, UPPERCASE, ControlPlane
from tests.test_wire_fidelity import client_for

pytestmark = pytest.mark.timeout(180)
REDIS_HOST, REDIS_PORT = "127.0.0.1", 6379
REDIS_URL = f"redis://{REDIS_HOST}:{REDIS_PORT}/0"
STREAM = "luthien:activity"  # the control plane's, by default


@dataclass
class Setup:
    sidecar: RunningProxy
    metrics_port: int
    relay: TcpRelay  # between the sidecar and its control plane


@pytest.fixture(scope="module")
def setup(fake: FakeProvider, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Setup]:
    require_service("Redis", REDIS_HOST, REDIS_PORT)
    root = tmp_path_factory.mktemp("sidecar-outage")
    port = free_port()
    plane = ControlPlane(
        f"http://127.0.0.1:{port}",
        port,
        root / "policy.yaml",
        f"sqlite://{root / 'cp.db'}",
        root,
        extra_args=("--redis-url", REDIS_URL),
    )
    plane.set_policy(UPPERCASE)
    metrics_port = free_port()
    with TcpRelay("127.0.0.1", port) as relay, pytest.MonkeyPatch.context() as patch:
        patch.setenv("LUTHIEN_CONTROL_PLANE_TOKEN", TOKEN)
        extra = ["--control-plane", f"http://127.0.0.1:{relay.port}", "--metrics-port", str(metrics_port)]
        sidecar = start_proxy("sidecar", None, fake, root, root / "data", extra_args=extra)
        try:
            plane.start()  # while the sidecar starts: both import LiteLLM
            wait_until_listening(sidecar)
            yield Setup(sidecar, metrics_port, relay)
        finally:
            sidecar.terminate()
            sidecar.wait()
            plane.stop()


def passthrough(sidecar: RunningProxy, probe: str) -> None:
    """A call the sidecar forwards without asking its control plane (a listing of models): it is
    served whether the control plane answers or not, and is still recorded and published."""
    with client_for(sidecar) as client:
        assert client.get(f"https://api.openai.com/v1/models?probe={probe}").status_code == 200


def scrape(port: int) -> dict[str, tuple[str, float]]:
    """Each metric's help text and value."""
    text = httpx.get(f"http://127.0.0.1:{port}/metrics", timeout=5).text
    return {
        sample.name: (family.documentation, sample.value)
        for family in text_string_to_metric_families(text)
        for sample in family.samples
    }


def wait_for_metrics(port: int, done: Callable[[dict[str, float]], bool]) -> dict[str, tuple[str, float]]:
    """Scrapes until the values satisfy ``done``: the writer retries on its own schedule."""
    deadline = time.monotonic() + 30
    while True:
        metrics = scrape(port)
        values = {name: value for name, (_, value) in metrics.items()}
        if done(values):
            return metrics
        recording = {name: value for name, value in values.items() if name.startswith("luthien_recording")}
        assert time.monotonic() < deadline, f"recording metrics: {recording}"
        time.sleep(0.2)


def caught_up(values: dict[str, float]) -> bool:
    return (
        values.get("luthien_recording_spool_records") == 0
        and values.get("luthien_recording_database_up") == 1
    )


def test_a_sidecar_counts_its_spooled_records_while_the_control_plane_is_down(setup: Setup) -> None:
    port = setup.metrics_port
    stored = wait_for_metrics(port, caught_up)["luthien_recording_stored_records"][1]
    setup.relay.cut()
    try:
        for n in range(3):
            passthrough(setup.sidecar, f"spooled-{n}")
        down = wait_for_metrics(
            port,
            lambda values: (
                values["luthien_recording_spool_records"] >= 3
                and values["luthien_recording_database_up"] == 0
            ),
        )
        assert "control plane" in down["luthien_recording_spool_records"][0]
        assert down["luthien_recording_rejected_records"][1] == 0
    finally:
        setup.relay.restore()
    up = wait_for_metrics(port, caught_up)
    assert up["luthien_recording_stored_records"][1] >= stored + 3


def published(call_probe: str) -> list[tuple[str, ActivityEvent]]:
    """The control plane's entries on Redis for the call whose path carries ``call_probe``."""
    with redis.Redis(host=REDIS_HOST, port=REDIS_PORT, decode_responses=True) as client:
        entries = client.xrevrange(STREAM, count=1000)
    events = [(entry_id, ActivityEvent.model_validate_json(fields["event"])) for entry_id, fields in entries]
    call_ids = {e.call_id for _, e in events if call_probe in str(e.data.get("path", ""))}
    return [(entry_id, e) for entry_id, e in reversed(events) if e.call_id in call_ids]


async def until_published(call_probe: str, kind: ActivityType) -> list[tuple[str, ActivityEvent]]:
    deadline = time.monotonic() + 20
    while True:
        entries = published(call_probe)
        if any(e.type is kind for _, e in entries):
            return entries
        assert time.monotonic() < deadline, f"no {kind} for {call_probe} on Redis: {entries}"
        await asyncio.sleep(0.05)


async def test_activity_sent_again_after_a_lost_reply_reaches_a_resuming_follower_once(
    setup: Setup, tmp_path: Path
) -> None:
    probe, marker = uuid.uuid4().hex, uuid.uuid4().hex
    storage = SQLiteStorage(tmp_path / "dashboard.db")
    await storage.migrate()
    bus = RedisStreamBus(REDIS_URL)
    with serve(storage, bus) as dashboard:
        setup.relay.mute()
        try:
            await asyncio.to_thread(passthrough, setup.sidecar, probe)
            # The control plane published what the sidecar posted; the sidecar never heard so.
            await until_published(probe, ActivityType.PASSTHROUGH)
            await asyncio.sleep(0.5)  # the rest of that batch
            before = published(probe)
            followed = await follow(dashboard, after=before[-1][0], until=marker)
            setup.relay.cut()  # the sidecar's POST fails: it sends the same events again
        finally:
            setup.relay.restore()
        await asyncio.to_thread(passthrough, setup.sidecar, marker)
        await until_published(probe, ActivityType.COMPLETED)
        received = await asyncio.wait_for(followed, 20)
        await dashboard.on_server(bus.close())
    await storage.close()

    already = [e.type for _, e in before]
    after_resuming = [e.type for e in received if e.call_id == before[0][1].call_id]
    assert sorted(already + after_resuming) == sorted([ActivityType.PASSTHROUGH, ActivityType.COMPLETED])


async def follow(dashboard: Dashboard, after: str, until: str) -> "asyncio.Task[list[ActivityEvent]]":
    """Follows the dashboard's stream from ``after`` (as a reconnecting browser does, with
    Last-Event-ID) until the call whose path carries ``until`` completes; returns once following."""
    opened = asyncio.Event()

    async def read() -> list[ActivityEvent]:
        received: list[ActivityEvent] = []
        marker_call: str | None = None
        async with (
            httpx.AsyncClient(base_url=dashboard.url, headers=AUTH, timeout=30) as client,
            sse(client, headers={"Last-Event-ID": after}) as frames,
        ):
            opened.set()
            async for frame in frames:
                if frame.get("event") != "activity":
                    continue
                event = ActivityEvent.model_validate_json(frame["data"])
                received.append(event)
                if until in json.dumps(event.data):
                    marker_call = event.call_id
                if event.call_id == marker_call and event.type is ActivityType.COMPLETED:
                    return received
        raise AssertionError("the stream ended")

    task = asyncio.create_task(read())
    await asyncio.wait_for(opened.wait(), 10)
    return task
