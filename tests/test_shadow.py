"""Shadow mode, as a user runs it: ``luthien up`` enforcing NoOp with a tool-call blocklist as the
shadow, the official SDKs and a raw client through ``HTTPS_PROXY``, the fake provider upstream.
The client's bytes are the provider's, byte for byte, shadow or not; the calls show what the
shadow would have blocked, with the rule and the replay's diff; promoting enforces it; clearing
stops the decisions. With two control-plane replicas, a shadow set on one is run by the other.
A shadow that cannot keep up skips calls, marked, and never makes the enforced path wait."""

import asyncio
import time
import uuid
from collections.abc import Callable, Iterator
from functools import partial
from pathlib import Path
from typing import Any

import httpx
import pytest
import yaml

from controlplane.activity.memory import InMemoryBus
from controlplane.dry_run import CallReplay
from controlplane.policies.base import PolicyHandler
from controlplane.recording.records import CallRecord
from controlplane.shadow import BUSY, ShadowRunner
from controlplane.storage import SQLiteStorage
from luthien.dry_run import replay_call
from tests.conftest import RunningProxy, free_port, luthien, start_proxy, wait_until_listening
from tests.databases import fresh_postgres_database, require_service
from tests.fake_provider import FakeProvider
from tests.policies import BlockRequestsContaining
from tests.test_dashboard_api import T0, call_record
from tests.test_policy_versions import ADMIN, PROXIES, READER, auth, replica, sidecars
from tests.test_wire_fidelity import ENDPOINTS, body, client_for

pytestmark = pytest.mark.timeout(300)
BLOCKLIST: dict[str, Any] = {
    "policy": {
        "class": "ToolCallBlocklistPolicy",
        "config": {"block": [{"id": "no-rm", "name": "^bash$", "arguments": "rm -rf"}]},
    }
}
RM = "[scenario:tool_call rm -rf /tmp/x]"
LS = "[scenario:tool_call ls -la]"
#: Generous for a loaded two-core machine: the shadow decides in the background.
WAIT = 60.0  # the first replay starts the shadow's process, which imports LiteLLM


def eventually[T](read: Callable[[], T | None], what: str) -> T:
    deadline = time.monotonic() + WAIT
    while (value := read()) is None:
        assert time.monotonic() < deadline, f"not within {WAIT} s: {what}"
        time.sleep(0.2)
    return value


class Dashboard:
    """``luthien up``'s dashboard API, as a script calls it (the bearer admin token)."""

    def __init__(self, proxy: RunningProxy) -> None:
        log = proxy.log()
        start = log.index("Luthien dashboard: ") + len("Luthien dashboard: ")
        link = log[start:].split()[0]
        self.base, token = link.split("/login?token=")
        self.headers = auth(token)

    def call(self, method: str, path: str, **kwargs: Any) -> Any:
        response = httpx.request(method, f"{self.base}{path}", headers=self.headers, timeout=10, **kwargs)
        assert response.status_code == 200, response.text
        return response.json()

    def calls(self, model: str) -> dict[str, Any]:
        return self.call("GET", "/api/calls", params={"model": model, "limit": 100})

    def shadow_of(self, call_id: str) -> dict[str, Any] | None:
        return self.call("GET", f"/api/calls/{call_id}")["shadow"]


@pytest.fixture(params=["sqlite", "postgres"])
def database(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[str]:
    if request.param == "sqlite":
        yield f"sqlite://{tmp_path / 'calls.db'}"
        return
    loop = asyncio.new_event_loop()
    fresh = fresh_postgres_database()
    try:
        yield loop.run_until_complete(fresh.__aenter__())
    finally:
        loop.run_until_complete(fresh.__aexit__(None, None, None))
        loop.close()


@pytest.fixture
def up(database: str, fake: FakeProvider, tmp_path: Path) -> Iterator[RunningProxy]:
    """``luthien up`` on ``database``, its policy from the database (NoOp: none activated)."""
    args = ["--dashboard-port", str(free_port()), "--metrics-port", str(free_port())]
    proxy = start_proxy("up", None, fake, tmp_path, tmp_path / "data", database, args, command="up")
    try:
        wait_until_listening(proxy)
        proxy.start_sdk()
        yield proxy
    finally:
        proxy.terminate()
        proxy.wait()


def test_a_shadow_blocklist_changes_no_byte_marks_what_it_would_block_and_is_promoted(
    up: RunningProxy, fake: FakeProvider
) -> None:
    dashboard = Dashboard(up)
    setting = dashboard.call("PUT", "/api/policy/shadow", json=BLOCKLIST, params={"note": "try no-rm"})
    version = setting["version"]
    assert setting["set_by"] == "dashboard token" and setting["note"] == "try no-rm"

    # Enforced traffic: byte for byte what the provider sent, whole and streamed, every API.
    raw_ids = []
    with client_for(up) as client:
        for api in ENDPOINTS:
            for stream in (False, True):
                response = client.post(ENDPOINTS[api][0], json=body(api, RM, stream))
                assert response.status_code == 200
                assert response.content == fake.sent(-1), (api, stream)
                raw_ids.append(response.headers["x-luthien-call-id"])

    # The official SDKs get the tool call the shadow would have removed: NoOp is enforced.
    model = f"claude-sonnet-4-6-{uuid.uuid4().hex[:8]}"
    for stream in (False, True):
        for prompt in (RM, LS):
            (result,) = up.sdk({"api": "messages", "stream": stream, "prompt": prompt, "model": model})
            assert result["ok"] and [c["name"] for c in result["tool_calls"]] == ["bash"], result

    # Each call shows what the shadow would have done: blocked the rm -rf (rule no-rm), not the ls.
    for call_id in raw_ids:
        shadow = eventually(partial(dashboard.shadow_of, call_id), f"a shadow decision on {call_id}")
        assert shadow["outcome"] == "would_block" and shadow["rules"] == ["no-rm"], shadow
        assert shadow["block_kind"] == "tool_call_removed" and shadow["shadow_version"] == version
        assert shadow["diffs"]["tool_calls"]["changed"], shadow["diffs"]

    def listed() -> dict[str, Any] | None:
        page = dashboard.calls(model)
        return page if len(page["shadow"]) == 4 and len(page["calls"]) == 4 else None

    page = eventually(listed, "four SDK calls listed with their shadow marks")
    by_prompt = {call["preview"]: page["shadow"][call["call_id"]] for call in page["calls"]}
    assert {mark["outcome"] for prompt, mark in by_prompt.items() if "rm -rf" in prompt} == {"would_block"}
    assert {mark["outcome"] for prompt, mark in by_prompt.items() if "ls -la" in prompt} == {"same"}
    state = dashboard.call("GET", "/api/policy/shadow")
    assert state["shadow"]["version"]["version"] == version
    assert state["counts"] == {"would_block": len(raw_ids) + 2, "same": 2}

    # Promoted: the blocklist is enforced, the shadow slot is empty, both audited.
    activation = dashboard.call("POST", "/api/policy/shadow/promote", json={"note": "looks right"})
    assert activation["version"] == version and activation["note"] == "looks right"
    (result,) = up.sdk({"api": "messages", "stream": True, "prompt": RM, "model": model})
    assert result["ok"] and result["tool_calls"] == [], result
    state = dashboard.call("GET", "/api/policy/shadow")
    assert state["shadow"]["version"] is None and state["counts"] == {}
    assert [(s["version"], s["note"]) for s in state["history"]] == [
        (None, f"promoted {version}"),
        (version, "try no-rm"),
    ]
    assert dashboard.call("GET", "/api/policy")["active"]["activation"]["version"] == version


def test_a_cleared_shadow_decides_nothing_and_a_file_shadow_is_set_from_the_cli(
    up: RunningProxy, tmp_path: Path
) -> None:
    dashboard = Dashboard(up)
    (shadow_file := tmp_path / "shadow.yaml").write_text(yaml.safe_dump(BLOCKLIST))
    model = f"gpt-4o-{uuid.uuid4().hex[:8]}"

    def stored(count: int) -> list[dict[str, Any]] | None:
        calls = dashboard.calls(model)["calls"]
        return calls if len(calls) == count else None

    def shadow_cli(*args: str) -> str:
        done = luthien(
            "policy", "shadow", *args, "--database-url", up.database_url, "--data-dir", str(up.data_dir)
        )
        assert done.returncode == 0, done.stderr
        return done.stdout

    said = shadow_cli(str(shadow_file))
    assert said.startswith("shadow: version ")
    version = said.split()[-1]
    # The CLI wrote to the database; the proxy's check picks the shadow up within about a second.
    first = eventually(lambda: _shadowed_call(up, dashboard, model), "a call the CLI's shadow decided")
    assert first["shadow_version"] == version

    assert shadow_cli("--clear") == "shadow cleared\n"
    eventually(lambda: _unshadowed(dashboard, model), "the proxy seeing the shadow cleared")
    before = len(dashboard.calls(model)["calls"])
    (result,) = up.sdk({"api": "chat", "stream": True, "prompt": RM, "model": model})
    assert result["ok"]
    # Stored in the database behind the answer (the journal has it first): waited for.
    calls = eventually(lambda: stored(before + 1), "the call stored")
    unshadowed = calls[0]["call_id"]
    # A shadow set again decides the next call; the call made without one has no decision.
    dashboard.call("POST", "/api/policy/shadow", json={"version": version})
    eventually(lambda: _shadowed_call(up, dashboard, model), "a call the shadow set again decided")
    assert dashboard.shadow_of(unshadowed) is None
    # Promote with nothing to promote, after clearing again: refused, nothing changed.
    dashboard.call("DELETE", "/api/policy/shadow")
    refused = httpx.post(f"{dashboard.base}/api/policy/shadow/promote", json={}, headers=dashboard.headers)
    assert refused.status_code == 409 and "no shadow policy is set" in refused.json()["error"]
    assert dashboard.call("GET", "/api/policy")["active"] is None


def _shadowed_call(up: RunningProxy, dashboard: Dashboard, model: str) -> dict[str, Any] | None:
    """Makes a call; its shadow decision once made (None while no shadow decides it). The call's
    record reaches the database behind its answer (the journal has it first): waited for."""
    before = len(dashboard.calls(model)["calls"])
    (result,) = up.sdk({"api": "chat", "stream": False, "prompt": RM, "model": model})
    assert result["ok"]
    deadline = time.monotonic() + 3
    while time.monotonic() < deadline:
        calls = dashboard.calls(model)["calls"]
        if len(calls) > before and (shadow := dashboard.shadow_of(calls[0]["call_id"])) is not None:
            return shadow
        time.sleep(0.2)
    return None


def _unshadowed(dashboard: Dashboard, model: str) -> bool | None:
    """True once the shadow state reads cleared (the proxy checks the database every second)."""
    state = dashboard.call("GET", "/api/policy/shadow")
    if state["shadow"]["version"] is not None:
        return None
    time.sleep(2)  # two of the proxy's checks: its shadow is the cleared one from now on
    return True


@pytest.mark.parametrize("kind", ["sqlite", "postgres"])
async def test_a_shadow_set_on_one_replica_is_run_by_the_other(
    kind: str, fake: FakeProvider, tmp_path: Path
) -> None:
    require_service("Redis", "127.0.0.1", 6379)
    if kind == "postgres":
        async with fresh_postgres_database() as url:
            await asyncio.to_thread(_two_replicas, url, fake, tmp_path)
    else:
        await asyncio.to_thread(_two_replicas, f"sqlite://{tmp_path / 'shared.db'}", fake, tmp_path)


def _two_replicas(database_url: str, fake: FakeProvider, root: Path) -> None:
    replicas = [replica(root, f"cp{n}", database_url, 6379, ()) for n in range(2)]
    try:
        for plane in replicas:
            plane.start()
        with sidecars(fake, replicas, root) as proxies:
            forbidden = httpx.put(
                f"{replicas[0].url}/v1/policy/shadow", json=BLOCKLIST, headers=auth(PROXIES)
            )
            assert forbidden.status_code == 403, forbidden.text
            setting = httpx.put(f"{replicas[0].url}/v1/policy/shadow", json=BLOCKLIST, headers=auth(ADMIN))
            assert setting.status_code == 200, setting.text
            version = setting.json()["version"]

            def decided_on_the_other() -> dict[str, Any] | None:
                # The third proxy records through the second replica, which replays its calls.
                (result,) = proxies[2].sdk({"api": "messages", "stream": True, "prompt": RM})
                assert result["ok"] and result["tool_calls"], result
                state = httpx.get(f"{replicas[1].url}/v1/policy/shadow", headers=auth(READER)).json()
                return state if state["counts"].get("would_block") else None

            state = eventually(decided_on_the_other, "a shadow decision by the second replica")
            assert state["shadow"]["version"]["version"] == version
            assert state["history"][0]["set_by"] == "alice"
    finally:
        for plane in replicas:
            plane.stop()


class InLoopReplay:
    """The shadow's replay on the test's own event loop (the control plane's runs in a child
    process, for a version it reads from storage)."""

    async def replay(self, record: CallRecord, policy: PolicyHandler, version: str) -> CallReplay:
        return await replay_call(record, policy, version, InMemoryBus(retain=1))


async def test_a_full_queue_skips_calls_and_marks_them_busy_without_waiting(tmp_path: Path) -> None:
    storage = SQLiteStorage(tmp_path / "calls.db")
    await storage.migrate()
    shadow = ShadowRunner(storage, InLoopReplay(), queue_limit=1)
    policy = BlockRequestsContaining(BlockRequestsContaining.Config(word="forbidden-word"))
    shadow.observe(policy, "v1", seq=1)
    records = [call_record(f"c{n}", "say forbidden-word", "No.") for n in range(3)]
    shadow.offer(records)  # the workers are not started: the first fills the queue
    assert (shadow.queued, shadow.skipped) == (1, 2)
    shadow.start()
    try:
        await shadow.idle()
    finally:
        await shadow.close()
    decided = await storage.shadow_decisions([record.call_id for record in records])
    assert decided["c0"].outcome == "would_block" and decided["c0"].notes == []
    assert [(decided[c].outcome, decided[c].notes) for c in ("c1", "c2")] == [("skipped", [BUSY])] * 2
    assert await storage.shadow_counts("v1", T0) == {"would_block": 1, "skipped": 2}
    shadow.observe(None, None, seq=2)  # cleared: nothing is queued any more
    shadow.offer(records)
    assert (shadow.queued, shadow.skipped) == (0, 2)
    await storage.close()
