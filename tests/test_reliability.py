"""The proxy under sustained abuse: a thousand clients walking away mid-stream, a 10,000-event
stream and a 20 MB request. Resources come back and memory stays bounded; what is measured is
printed for the notes, and the bounds asserted are generous, not timings."""

import json
import os
import re
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

from addon.call_trace import MAX_RECORDED_EVENT_BYTES, OMITTED_EVENT
from tests.conftest import RunningProxy, free_port, metric, running_proxy
from tests.fake_provider import FakeProvider
from tests.recorded import recorded
from tests.test_wire_fidelity import ENDPOINTS, body, client_for

pytestmark = pytest.mark.timeout(600)
MIB = 1024 * 1024


METRICS_PORT = free_port()


@pytest.fixture(scope="module")
def proxy(fake: FakeProvider, tmp_path_factory: pytest.TempPathFactory) -> Iterator[RunningProxy]:
    root = tmp_path_factory.mktemp("reliability")
    with running_proxy("reliability", fake, root, ["--metrics-port", str(METRICS_PORT)]) as running:
        yield running


def rss(proxy: RunningProxy) -> int:
    status = Path(f"/proc/{proxy.process.pid}/status").read_text()
    match = re.search(r"VmRSS:\s+(\d+) kB", status)
    assert match
    return int(match.group(1)) * 1024


def open_fds(proxy: RunningProxy) -> int:
    return len(os.listdir(f"/proc/{proxy.process.pid}/fd"))


def gauge(name: str) -> float:
    return metric(METRICS_PORT, name)


def test_a_thousand_clients_leaving_mid_stream_leak_nothing(proxy: RunningProxy, fake: FakeProvider) -> None:
    with client_for(proxy) as warm:  # the first calls open pools and caches: not leaks
        for _ in range(3):
            assert warm.post(ENDPOINTS["chat"][0], json=body("chat", "warm up", False)).status_code == 200
    fds_before, rss_before = open_fds(proxy), rss(proxy)
    for n in range(1000):
        api = ("chat", "messages", "responses")[n % 3]
        with (
            client_for(proxy) as client,
            client.stream(
                "POST", ENDPOINTS[api][0], json=body(api, "[scenario:slow 0.05]", True)
            ) as response,
        ):
            assert response.status_code == 200
            next(response.iter_bytes())  # the first bytes arrived; then the client hangs up
    deadline = time.monotonic() + 10  # the proxy notices each departure on its own schedule
    while gauge("luthien_open_streams") != 0 and time.monotonic() < deadline:
        time.sleep(0.2)
    assert gauge("luthien_open_streams") == 0
    assert gauge("luthien_policy_streams_open") == 0  # each stream's policy state was released
    fds_after, rss_after = open_fds(proxy), rss(proxy)
    print(
        f"\n1000 disconnects: fds {fds_before} -> {fds_after}, RSS {rss_before / MIB:.0f} -> {rss_after / MIB:.0f} MiB"
    )
    assert fds_after <= fds_before + 10  # sockets to the provider are closed, not pooled forever
    assert rss_after - rss_before < 100 * MIB
    with client_for(proxy) as client:
        assert client.post(ENDPOINTS["chat"][0], json=body("chat", "still there?", False)).status_code == 200


def test_a_ten_thousand_event_stream_passes_whole_with_bounded_memory(
    proxy: RunningProxy, fake: FakeProvider
) -> None:
    before = rss(proxy)
    received = bytearray()
    with (
        client_for(proxy) as client,
        client.stream(
            "POST", ENDPOINTS["chat"][0], json=body("chat", "[scenario:long 10000]", True), timeout=120
        ) as response,
    ):
        for data in response.iter_bytes():
            received.extend(data)
    assert bytes(received) == fake.sent(-1)  # byte for byte, all 10,000 events
    assert received.count(b'"content":"word "') == 10_000
    grown = rss(proxy) - before
    print(f"\n10,000-event stream ({len(received) / MIB:.1f} MiB): RSS +{grown / MIB:.0f} MiB")
    assert grown < 150 * MIB


def test_a_twenty_megabyte_request_passes_with_bounded_memory(
    proxy: RunningProxy, fake: FakeProvider
) -> None:
    before = rss(proxy)
    prompt = "x" * (20 * MIB)
    with client_for(proxy) as client:
        response = client.post(ENDPOINTS["chat"][0], json=body("chat", prompt, False), timeout=120)
    assert response.status_code == 200
    assert len(fake.requests[-1].body) > 20 * MIB and prompt.encode() in fake.requests[-1].body
    grown = rss(proxy) - before
    print(f"\n20 MiB request: RSS +{grown / MIB:.0f} MiB")
    assert grown < 600 * MIB


async def test_a_stream_beyond_the_recording_budget_is_recorded_in_bounded_form(
    proxy: RunningProxy, fake: FakeProvider
) -> None:
    word = f"tag{uuid.uuid4().hex[:12]}"
    with (
        client_for(proxy) as client,
        client.stream(
            "POST",
            ENDPOINTS["chat"][0],
            json=body("chat", f"{word} [scenario:long 20000]", True),
            timeout=120,
        ) as response,
    ):
        events = sum(1 for line in response.iter_lines() if line.startswith("data: "))
    (record,) = await recorded(proxy.database_url, word, 1)
    assert record.final_output is not None and record.final_output.text == "word " * 20_000
    for kept in (record.original_events, record.final_events):
        assert kept is not None
        (marker,) = [data for name, data in kept if name == OMITTED_EVENT]
        omitted = json.loads(marker)
        assert len(kept) - 1 + omitted["omitted_events"] == events
        assert sum(len(data) for _, data in kept) - len(marker) <= MAX_RECORDED_EVENT_BYTES + 64 * 1024
        assert kept[-1][1] == "[DONE]"
