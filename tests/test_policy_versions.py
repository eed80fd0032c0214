"""Policy versions in a cluster: two `luthien controlplane` replicas sharing one database (SQLite
file, or PostgreSQL) and Redis, three sidecar proxies spread over them. A version activated
through one replica's API is enforced by every proxy within 2 s; a restart keeps it; a broken
document is refused; the roles of the tokens are enforced and every change is in the audit log;
with the policy file as the source, API writes are refused and the file's versions recorded."""

import contextlib
import getpass
import os
import subprocess
import sys
import time
import uuid
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any, Literal

import httpx
import pytest
import yaml
from websockets.exceptions import InvalidStatus
from websockets.sync.client import connect

from controlplane.access import Tokens, parse_tokens
from controlplane.activity import InMemoryBus
from controlplane.local import ControlPlaneLocal
from controlplane.policies import NoOpPolicy
from controlplane.policy_file import PolicyFileError
from controlplane.policy_nudge import NoNudge
from controlplane.policy_versions import PolicyKeeper, PolicyVersions
from controlplane.storage import SQLiteStorage
from dashboard.app import create_app
from dashboard.auth import COOKIE
from tests.conftest import ROOT, RunningProxy, free_port, start_proxy, wait_until_listening
from tests.databases import fresh_postgres_database, require_service
from tests.fake_provider import FakeProvider
from tests.fake_provider.scenarios import DEFAULT_TEXT
from tests.tcp_relay import TcpRelay
from tests.test_network_control_plane import ALL_CAPS, UPPERCASE, ControlPlane

pytestmark = pytest.mark.timeout(400)
SUFFIX = uuid.uuid4().hex[:8]
ADMIN, READER, PROXIES = f"admin-{SUFFIX}", f"read-{SUFFIX}", f"proxy-{SUFFIX}"
NAMED_TOKENS = f"alice:admin:{ADMIN},grafana:read:{READER},sidecars:proxy:{PROXIES}"
#: Generous for a loaded two-core machine; the measured times are printed.
WITHIN = 2.0
Seen = Literal["noop", "uppercase", "allcaps"]


def auth(token: str) -> dict[str, str]:
    return {"authorization": f"Bearer {token}"}


def seen(proxy: RunningProxy) -> Seen:
    """Which policy handled a call through ``proxy``, from what the official SDK got back."""
    (result,) = proxy.sdk({"api": "messages", "stream": False, "prompt": "hello"})
    assert result["ok"], result
    text = result["text"]
    if text == DEFAULT_TEXT:
        return "noop"
    if text == DEFAULT_TEXT.upper():
        return "allcaps"
    assert text.lower() == DEFAULT_TEXT.lower(), text
    return "uppercase"


def time_to_enforce(proxies: list[RunningProxy], expected: Seen, since: float) -> list[float]:
    """Seconds from ``since`` until each proxy's calls get ``expected``, asking them in turn."""
    times: dict[int, float] = {}
    while len(times) < len(proxies):
        for n, proxy in enumerate(proxies):
            if n not in times and seen(proxy) == expected:
                times[n] = time.monotonic() - since
        assert time.monotonic() - since < 15, f"not enforced everywhere after 15 s: {times}"
    return [times[n] for n in range(len(proxies))]


def activate(
    replica: ControlPlane, document: dict[str, Any], note: str, token: str = ADMIN
) -> httpx.Response:
    return httpx.put(f"{replica.url}/v1/policy", json=document, params={"note": note}, headers=auth(token))


def history(replica: ControlPlane) -> list[dict[str, Any]]:
    response = httpx.get(f"{replica.url}/v1/policy/activations", headers=auth(READER))
    assert response.status_code == 200, response.text
    return response.json()


@contextlib.asynccontextmanager
async def shared_database(kind: str, root: Path) -> AsyncIterator[str]:
    if kind == "sqlite":
        yield f"sqlite://{root / 'shared.db'}"
    else:
        async with fresh_postgres_database() as url:
            yield url


@contextlib.contextmanager
def sidecars(
    provider: FakeProvider, replicas: list[ControlPlane], root: Path
) -> Iterator[list[RunningProxy]]:
    """Three proxies: two on the first replica, one on the second, all with the proxy-role token."""
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("LUTHIEN_CONTROL_PLANE_TOKEN", PROXIES)
        proxies = [
            start_proxy(
                f"p{n}", None, provider, root, root / f"p{n}-data", extra_args=["--control-plane", plane.url]
            )
            for n, plane in enumerate((replicas[0], replicas[0], replicas[1]))
        ]
    try:
        for proxy in proxies:
            wait_until_listening(proxy)
            proxy.start_sdk()
        yield proxies
    finally:
        for proxy in proxies:
            proxy.terminate()
        for proxy in proxies:
            proxy.wait()


def replica(
    root: Path, name: str, database_url: str, redis_port: int, source_args: tuple[str, ...]
) -> ControlPlane:
    port = free_port()
    (home := root / name).mkdir()
    return ControlPlane(
        f"http://127.0.0.1:{port}",
        port,
        None,
        database_url,
        home,
        extra_args=("--redis-url", f"redis://127.0.0.1:{redis_port}/0", *source_args),
        env={"LUTHIEN_CONTROL_PLANE_TOKEN": "", "LUTHIEN_CONTROL_PLANE_TOKENS": NAMED_TOKENS},
    )


@pytest.mark.parametrize("database", ["sqlite", "postgres"])
async def test_a_version_activated_on_one_replica_is_enforced_by_every_proxy_within_2_s(
    database: str, tmp_path: Path
) -> None:
    require_service("Redis", "127.0.0.1", 6379)
    with FakeProvider() as provider, TcpRelay("127.0.0.1", 6379) as redis:
        async with shared_database(database, tmp_path) as url:
            replicas = [
                replica(tmp_path, f"cp{n}", url, redis.port, ("--policy-source", "database"))
                for n in range(2)
            ]
            try:
                for plane in replicas:
                    plane.start()
                    assert "Policy source: the database; no version activated yet" in plane.log()
                with sidecars(provider, replicas, tmp_path) as proxies:
                    assert [seen(proxy) for proxy in proxies] == ["noop"] * 3
                    check_roles(replicas[0])

                    for document, expected, note in (
                        (UPPERCASE, "uppercase", "first"),
                        (ALL_CAPS, "allcaps", "louder"),
                    ):
                        since = time.monotonic()
                        response = activate(replicas[0], document, note)
                        assert response.status_code == 200, response.text
                        times = time_to_enforce(proxies, expected, since)
                        print(f"\n[{database}] {note}: enforced by the 3 proxies after {fmt(times)} (nudged)")
                        assert max(times) < WITHIN, times

                    first, *_ = reversed(history(replicas[1]))
                    assert (first["activated_by"], first["source"], first["note"]) == (
                        "alice",
                        "api",
                        "first",
                    )

                    broken = {"policy": {"class": "ToolCallBlocklistPolicy", "config": {"patterns": "rm"}}}
                    refused = activate(replicas[1], broken, "broken")
                    assert refused.status_code == 400
                    assert (
                        refused.json()["error"]
                        == "request body: policy.config.patterns: Input should be a valid list"
                    )
                    assert len(history(replicas[0])) == 2 and seen(proxies[2]) == "allcaps"

                    # A rollback through the other replica, with the nudge channel down: the
                    # periodic check alone brings the first replica's proxies along.
                    redis.cut()
                    since = time.monotonic()
                    back = httpx.post(
                        f"{replicas[1].url}/v1/policy/activations",
                        json={"version": first["version"], "note": "roll back"},
                        headers=auth(ADMIN),
                    )
                    assert back.status_code == 200, back.text
                    times = time_to_enforce(proxies, "uppercase", since)
                    print(f"[{database}] rollback: enforced by the 3 proxies after {fmt(times)} (Redis down)")
                    assert max(times) < WITHIN, times
                    redis.restore()
                    latest = history(replicas[0])[0]
                    assert (latest["version"], latest["note"], latest["seq"]) == (
                        first["version"],
                        "roll back",
                        3,
                    )

                    for plane in replicas:
                        plane.stop()
                    for plane in replicas:
                        plane.start()
                        assert (
                            f"Policy source: the database; version {first['version']} activated by alice"
                            in plane.log()
                        )
                    assert [seen(proxy) for proxy in proxies] == ["uppercase"] * 3
            finally:
                for plane in replicas:
                    plane.stop()


def check_roles(plane: ControlPlane) -> None:
    """A read token reads and a proxy token polices; neither changes the policy."""
    for token in (READER, PROXIES):
        response = activate(plane, ALL_CAPS, "not allowed", token)
        assert response.status_code == 403, response.text
        assert "needs admin" in response.json()["error"]
    assert httpx.get(f"{plane.url}/v1/policy", headers=auth(READER)).json()["source"] == "database"
    refused = httpx.post(f"{plane.url}/v1/police-request", json={}, headers=auth(READER))
    assert refused.status_code == 403 and "needs proxy" in refused.json()["error"]
    with pytest.raises(InvalidStatus) as denied:  # nor open a stream
        connect(plane.url.replace("http", "ws") + "/v1/streams", additional_headers=auth(READER)).close()
    assert denied.value.response.status_code == 403
    assert history(plane) == []
    for token in (ADMIN, READER, PROXIES):
        assert token not in plane.log()


def fmt(times: list[float]) -> str:
    return ", ".join(f"{t:.2f} s" for t in times)


async def test_with_the_file_as_the_source_api_writes_are_refused_and_file_versions_recorded(
    tmp_path: Path,
) -> None:
    require_service("Redis", "127.0.0.1", 6379)
    url = f"sqlite://{tmp_path / 'shared.db'}"
    policy = tmp_path / "policy.yaml"
    policy.write_text(yaml.safe_dump(UPPERCASE))
    planes = [replica(tmp_path, f"cp{n}", url, 6379, ("--policy", str(policy))) for n in range(2)]
    try:
        for plane in planes:
            plane.start()
            assert f"Policy source: the file {policy} (API writes are refused)" in plane.log()
        refused = activate(planes[0], ALL_CAPS, "via the API")
        assert refused.status_code == 409
        assert "the policy's source of truth is the policy file" in refused.json()["error"]
        (recorded,) = history(planes[1])  # both replicas saw the file; it is one activation
        assert (recorded["source"], recorded["activated_by"]) == ("file", "policy file policy.yaml")

        policy.write_text(yaml.safe_dump(ALL_CAPS))
        deadline = time.monotonic() + 10
        while len(entries := history(planes[0])) < 2:
            assert time.monotonic() < deadline, entries
            time.sleep(0.2)
        time.sleep(1.5)  # the second replica's check too: it must not record the change again
        assert [e["seq"] for e in history(planes[0])] == [2, 1]
        for plane in planes:
            info = httpx.get(f"{plane.url}/v1/policy", headers=auth(READER)).json()
            assert info == {"policy": "AllCapsPolicy", "version": entries[0]["version"], "source": "file"}
    finally:
        for plane in planes:
            plane.stop()


async def test_dashboard_read_tokens_read_and_only_admin_tokens_change_the_policy(tmp_path: Path) -> None:
    storage = SQLiteStorage(tmp_path / "luthien.db")
    await storage.migrate()
    named = Tokens(parse_tokens(f"alice:admin:{ADMIN},grafana:read:{READER}", "LUTHIEN_DASHBOARD_TOKENS"))
    owner = f"owner-{SUFFIX}"
    app = create_app(storage, InMemoryBus(), owner, named)
    transport = httpx.ASGITransport(app=app)
    try:
        async with httpx.AsyncClient(transport=transport, base_url="http://dashboard") as client:
            assert (await client.get("/api/calls")).status_code == 401
            assert (await client.get("/api/calls", headers=auth(READER))).status_code == 200
            state = await client.get("/api/policy", headers=auth(READER))
            assert state.json() == {"source": "database", "active": None, "history": []}
            refused = await client.put("/api/policy", json=ALL_CAPS, headers=auth(READER))
            assert refused.status_code == 403
            assert refused.json() == {"error": "the token 'grafana' has the role read; this needs admin"}

            first = await client.put(
                "/api/policy", json=UPPERCASE, params={"note": "hi"}, headers=auth(ADMIN)
            )
            assert first.status_code == 200, first.text
            second = await client.put("/api/policy", json=ALL_CAPS, headers=auth(owner))
            broken = await client.put("/api/policy", json={"policy": {"class": "Nope"}}, headers=auth(ADMIN))
            assert broken.status_code == 400 and broken.json()["error"].startswith(
                "request body: policy.class: unknown policy 'Nope'"
            )
            # A browser logged in with the read token has its rights, no more.
            login = await client.get("/login", params={"token": READER})
            assert login.status_code == 303 and client.cookies[COOKIE] == READER
            back = {"version": first.json()["version"], "note": "back"}
            assert (await client.post("/api/policy/activations", json=back)).status_code == 403
            assert (
                await client.post("/api/policy/activations", json=back, headers=auth(ADMIN))
            ).status_code == 200
            state = (await client.get("/api/policy")).json()
        who = [(a["seq"], a["activated_by"], a["note"]) for a in state["history"]]
        assert who == [(3, "alice", "back"), (2, "dashboard token", ""), (1, "alice", "hi")]
        assert state["active"]["version"]["document"] == UPPERCASE
        assert second.json()["version"] != first.json()["version"]
        dump = (tmp_path / "luthien.db").read_bytes()
        for token in (ADMIN, READER, owner):
            assert token.encode() not in dump  # names only, never a token
    finally:
        await storage.close()


async def test_a_dashboard_beside_file_sourced_control_planes_refuses_changes_with_409(
    tmp_path: Path,
) -> None:
    storage = SQLiteStorage(tmp_path / "luthien.db")
    await storage.migrate()
    versions = PolicyVersions(storage, NoNudge(), "file", tmp_path / "policy.yaml")
    app = create_app(storage, InMemoryBus(), ADMIN, versions=versions)
    try:
        async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://d") as client:
            response = await client.put("/api/policy", json=ALL_CAPS, headers=auth(ADMIN))
        assert response.status_code == 409
        assert response.json()["error"].startswith(
            f"the policy's source of truth is the policy file {tmp_path / 'policy.yaml'} (--policy-source file)"
        )
        assert await storage.policy_history(10) == []
    finally:
        await storage.close()


def luthien_policy(*args: str, data_dir: Path) -> subprocess.CompletedProcess[str]:
    command = [sys.executable, "-m", "luthien", "policy", *args, "--data-dir", str(data_dir)]
    env = {
        k: v
        for k, v in os.environ.items()
        if k not in ("LUTHIEN_POLICY", "LUTHIEN_POLICY_SOURCE", "REDIS_URL")
    }
    return subprocess.run(command, capture_output=True, text=True, cwd=ROOT, env=env, timeout=120)


def test_luthien_policy_activates_lists_and_rolls_back_versions_of_the_embedded_default(
    tmp_path: Path,
) -> None:
    """``luthien up`` with no setup (SQLite in the data dir, no Redis, no policy file) follows
    versions that ``luthien policy`` activates in its database."""
    data_dir = tmp_path / "data"
    (upper := tmp_path / "upper.yaml").write_text(yaml.safe_dump(UPPERCASE))
    (caps := tmp_path / "caps.yaml").write_text(yaml.safe_dump(ALL_CAPS))
    (broken := tmp_path / "broken.yaml").write_text("policy:\n  class: ToolCallBlocklistPolicy\n")
    with FakeProvider() as provider:
        up = start_proxy(
            "up", None, provider, tmp_path, data_dir, f"sqlite://{data_dir / 'luthien.db'}",
            ["--dashboard-port", "0", "--metrics-port", "0"], command="up",
        )  # fmt: skip
        try:
            wait_until_listening(up)
            assert "Policy source: the database; no version activated yet (NoOpPolicy)" in up.log()
            assert seen(up) == "noop"
            for path, expected in ((upper, "uppercase"), (caps, "allcaps")):
                done = luthien_policy("activate", str(path), "--note", f"try {path.stem}", data_dir=data_dir)
                assert done.returncode == 0, done.stderr
                (took,) = time_to_enforce([up], expected, time.monotonic())
                print(f"\nluthien up enforces {path.name} {took:.2f} s after `luthien policy activate` ended")
                assert took < WITHIN

            refused = luthien_policy("activate", str(broken), data_dir=data_dir)
            assert refused.returncode == 1
            assert (
                refused.stderr
                == f"luthien: {broken}: policy.config.patterns: Field required: give `patterns`, `block` rules, or both\n"
            )
            assert luthien_policy("rollback", "--note", "too loud", data_dir=data_dir).returncode == 0
            listed = luthien_policy("history", data_dir=data_dir)
            lines = listed.stdout.splitlines()
            assert len(lines) == 3 and lines[0].startswith("*    3 ") and lines[0].endswith("too loud")
            assert f"luthien policy ({getpass.getuser()})" in lines[0] and " cli " in lines[0]
            assert lines[0].split()[2] == lines[2].split()[1]  # the rollback's version is the first's
            time_to_enforce([up], "uppercase", time.monotonic())
        finally:
            up.terminate()
            up.wait()


async def test_a_policy_file_seeds_an_empty_database_and_is_ignored_after(tmp_path: Path) -> None:
    storage = SQLiteStorage(tmp_path / "luthien.db")
    await storage.migrate()
    (seed := tmp_path / "seed.yaml").write_text(yaml.safe_dump(UPPERCASE))
    try:
        first = ControlPlaneLocal(NoOpPolicy())
        said = await PolicyKeeper(first, storage, NoNudge(), "database", seed).start()
        assert said.startswith("Policy source: the database; version ") and "only seeds" not in said
        assert type(first.policy).__name__ == "UppercaseNthWordPolicy"
        seed.write_text(yaml.safe_dump(ALL_CAPS))  # a later file does not override the database
        again = ControlPlaneLocal(NoOpPolicy())
        said = await PolicyKeeper(again, storage, NoNudge(), "database", seed).start()
        assert said.endswith(f"(the --policy file {seed} only seeds an empty database)")
        assert again.policy_version == first.policy_version
        (activation,) = await storage.policy_history(10)
        assert (activation.source, activation.activated_by, activation.note) == (
            "file",
            "policy file seed.yaml",
            "seed",
        )
    finally:
        await storage.close()


async def test_a_document_json_cannot_hold_is_refused_before_anything_is_stored(tmp_path: Path) -> None:
    """YAML reads an unquoted date as a date, which JSON (how versions are stored) cannot hold."""
    storage = SQLiteStorage(tmp_path / "luthien.db")
    await storage.migrate()
    (policy := tmp_path / "policy.yaml").write_text("policy:\n  class: NoOpPolicy\nreviewed: 2026-12-04\n")
    try:
        keeper = PolicyKeeper(ControlPlaneLocal(NoOpPolicy()), storage, NoNudge(), "file", policy)
        with pytest.raises(PolicyFileError) as refused:
            await keeper.start()
        assert str(refused.value).startswith(
            f"{policy}: holds a value that cannot be stored as JSON (quote it): "
        )
        assert await storage.policy_history(10) == []
    finally:
        await storage.close()


async def test_a_check_that_read_the_database_before_an_activation_does_not_take_the_replica_back(
    tmp_path: Path,
) -> None:
    storage = SQLiteStorage(tmp_path / "luthien.db")
    await storage.migrate()
    control_plane = ControlPlaneLocal(NoOpPolicy())
    keeper = PolicyKeeper(control_plane, storage, NoNudge(), "database", None)
    versions = PolicyVersions(storage, NoNudge(), "database", keeper=keeper)
    try:
        await keeper.start()
        await versions.activate_document(UPPERCASE, "upper", "alice", "", "api")
        stale = await storage.active_policy()  # what a periodic check read, just before…
        assert stale is not None
        louder = await versions.activate_document(ALL_CAPS, "caps", "alice", "", "api")  # …this one
        keeper.follow(stale)
        assert control_plane.policy_version == louder.version
        rollback = await versions.activate_stored(stale.version.version, "bob", "", "api")
        keeper.follow(stale)  # the same version, now current again
        assert control_plane.policy_version == rollback.version == stale.version.version
    finally:
        await storage.close()
