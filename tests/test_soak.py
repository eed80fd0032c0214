"""A soak run through a real proxy process: for a while, mixed streaming and whole calls with the
official OpenAI and Anthropic SDKs, while other clients keep walking away mid-stream. Afterwards
the proxy's open files and memory are back near where they started, nothing is left streaming, and
every call was recorded exactly once.

The long run (``LUTHIEN_SOAK_SECONDS``, default 120) is marked ``soak`` and left out of default
runs (``pytest -m soak`` runs it); a few seconds of the same loop run in every CI run."""

import asyncio
import os
import secrets
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest

from controlplane.recording.records import CallOutcome
from controlplane.storage import CallQuery, open_storage
from tests.conftest import RunningProxy, free_port, metric, start_proxy, wait_until_listening
from tests.fake_provider import FakeProvider
from tests.test_reliability import MIB, open_fds, rss
from tests.test_wire_fidelity import ENDPOINTS, body, client_for

SOAK_SECONDS = float(os.environ.get("LUTHIEN_SOAK_SECONDS", "120"))
SHORT_SECONDS = 2.0
pytestmark = pytest.mark.timeout(max(600, int(SOAK_SECONDS * 3)))
APIS = ("chat", "responses", "messages")
#: A policy that rewrites every answer, streamed or whole: the soak goes through the policy path.
POLICY = {"class": "UppercaseNthWordPolicy", "config": {"n": 2}}


@dataclass
class SoakProxy:
    proxy: RunningProxy
    metrics_port: int

    def gauge(self, name: str) -> float:
        return metric(self.metrics_port, name)


@pytest.fixture(scope="module")
def soak_proxy(fake: FakeProvider, tmp_path_factory: pytest.TempPathFactory) -> Iterator[SoakProxy]:
    root = tmp_path_factory.mktemp("soak")
    port = free_port()
    args = ["--metrics-port", str(port)]
    running = start_proxy("soak", POLICY, fake, root, root / "data", extra_args=args)
    running.start_sdk()  # it imports the SDKs while the proxy starts
    try:
        wait_until_listening(running)
        yield SoakProxy(running, port)
    finally:
        running.terminate()
        running.wait()


@dataclass
class Tally:
    """What the clients did; each call's prompt carries a tag of its own, found again in storage."""

    run: str
    completed: list[str] = field(default_factory=list)  # SDK calls that returned an answer
    abandoned: list[str] = field(default_factory=list)  # streams the client hung up on
    errors: list[str] = field(default_factory=list)

    def tag(self, kind: str, n: int) -> str:
        return f"soak{self.run}{kind}{n:07d}"  # fixed width: no tag is a substring of another


def sdk_calls(proxy: RunningProxy, tally: Tally, deadline: float) -> None:
    """Batches of six SDK calls, every API streamed and whole: one, then more until ``deadline``."""
    n = 0
    while n == 0 or time.monotonic() < deadline:
        calls: list[dict[str, Any]] = []
        for api in APIS:
            for stream in (True, False):
                calls.append({"api": api, "stream": stream, "prompt": f"hello {tally.tag('c', n)}"})
                n += 1
        for call, result in zip(calls, proxy.sdk(*calls), strict=True):
            tag = call["prompt"].split()[-1]
            if result.get("ok") and result["text"]:
                tally.completed.append(tag)
            else:
                tally.errors.append(f"{tag}: {result}")


def abandoning_clients(proxy: RunningProxy, tally: Tally, deadline: float) -> None:
    """Clients that start a slow stream, read its first bytes and hang up, until ``deadline``."""
    n = 0
    try:
        while time.monotonic() < deadline:
            api = APIS[n % 3]
            tag = tally.tag("a", n)
            n += 1
            payload = body(api, f"[scenario:slow 0.05] {tag}", True)
            with (
                client_for(proxy) as client,
                client.stream("POST", ENDPOINTS[api][0], json=payload) as response,
            ):
                if response.status_code != 200:
                    tally.errors.append(f"{tag}: status {response.status_code}")
                    continue
                next(response.iter_bytes())
            tally.abandoned.append(tag)
    except Exception as exc:  # reported by the test, not lost in the thread
        tally.errors.append(f"abandoning client: {exc!r}")


def wait_for(condition: Any, timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, what
        time.sleep(0.2)


async def recorded_outcomes(database_url: str, tags: list[str], timeout: float = 30) -> dict[str, list[str]]:
    """Each tag's recorded calls (their outcomes), once as many calls as tags have landed."""
    storage = open_storage(database_url, Path("/nonexistent"))
    try:
        prefix = tags[0][: -len("0000000")] if tags else ""
        deadline = time.monotonic() + timeout
        while (await storage.list_calls(CallQuery(search=prefix, limit=1))).total < len(tags):
            if time.monotonic() > deadline:
                break
            await asyncio.sleep(0.2)
        found: dict[str, list[str]] = {}
        for tag in tags:
            page = await storage.list_calls(CallQuery(search=tag, limit=10))
            found[tag] = [summary.outcome.value for summary in page.calls]
        return found
    finally:
        await storage.close()


@pytest.mark.parametrize(
    "seconds",
    [pytest.param(SHORT_SECONDS, id="short"), pytest.param(SOAK_SECONDS, id="soak", marks=pytest.mark.soak)],
)
def test_a_soak_of_mixed_calls_and_departures_leaks_nothing_and_records_every_call_once(
    soak_proxy: SoakProxy, seconds: float
) -> None:
    proxy = soak_proxy.proxy
    # The first calls open the proxy's pools and caches (not leaks): each API, streamed and whole,
    # and a few departures. The SDK worker makes its first call after the baseline, and is stopped
    # before the proxy is measured again: its connections are its own, not the proxy's leaks.
    warm = Tally("warm" + secrets.token_hex(3))
    with client_for(proxy) as client:
        for api in APIS:
            for stream in (True, False):
                assert client.post(ENDPOINTS[api][0], json=body(api, "warm up", stream)).status_code == 200
    abandoning_clients(proxy, warm, time.monotonic() + 0.5)
    assert warm.abandoned and not warm.errors, warm.errors
    wait_for(lambda: soak_proxy.gauge("luthien_open_streams") == 0, 15, "warm-up streams still open")
    fds_before, rss_before = open_fds(proxy), rss(proxy)
    assert proxy.sdk() == []  # the SDK worker is up (importing the SDKs takes seconds)

    tally = Tally(secrets.token_hex(4))
    started = time.monotonic()
    deadline = started + seconds
    leaver = threading.Thread(target=abandoning_clients, args=(proxy, tally, deadline), daemon=True)
    leaver.start()
    sdk_calls(proxy, tally, deadline)
    leaver.join(30)
    assert not leaver.is_alive()
    elapsed = time.monotonic() - started

    assert not tally.errors, tally.errors[:5]
    assert tally.completed and tally.abandoned
    # The proxy notices each departure on its own schedule; then nothing is left open.
    wait_for(lambda: soak_proxy.gauge("luthien_open_streams") == 0, 15, "streams still open after the soak")
    assert soak_proxy.gauge("luthien_policy_streams_open") == 0  # every stream's policy state released
    completed = asyncio.run(recorded_outcomes(proxy.database_url, tally.completed))
    abandoned = asyncio.run(recorded_outcomes(proxy.database_url, tally.abandoned))
    proxy.stop_sdk()  # its SDK clients' connections close with it; the proxy's sockets follow
    try:
        wait_for(lambda: open_fds(proxy) <= fds_before + 10, 15, "file descriptors not back")
    finally:
        fds_after, rss_after = open_fds(proxy), rss(proxy)
    print(
        f"\nsoak {elapsed:.0f} s: {len(tally.completed)} SDK calls, {len(tally.abandoned)} departures; "
        f"fds {fds_before} -> {fds_after}, RSS {rss_before / MIB:.0f} -> {rss_after / MIB:.0f} MiB"
    )

    not_once = {tag: found for tag, found in completed.items() if found != [CallOutcome.COMPLETED.value]}
    assert not not_once, (
        f"{len(not_once)} completed calls not recorded exactly once: {list(not_once.items())[:5]}"
    )
    not_once = {tag: found for tag, found in abandoned.items() if len(found) != 1}
    assert not not_once, (
        f"{len(not_once)} abandoned calls not recorded exactly once: {list(not_once.items())[:5]}"
    )
    assert fds_after <= fds_before + 10  # sockets to the clients and the provider are closed
    assert rss_after - rss_before < 100 * MIB
    with client_for(proxy) as client:  # and the proxy still serves
        assert client.post(ENDPOINTS["chat"][0], json=body("chat", "still there?", False)).status_code == 200


def test_the_soak_marker_is_left_out_of_default_runs(pytestconfig: pytest.Config) -> None:
    """The long run is opt-in: pyproject's addopts deselect ``soak`` unless ``-m`` says otherwise."""
    assert "soak" in "".join(pytestconfig.getini("markers"))
    assert "not soak" in " ".join(pytestconfig.getini("addopts"))
