"""`luthien dashboard` on its own, as a second process over the database a proxy records into."""

import os
import subprocess
import sys
import time
from pathlib import Path

import httpx

from controlplane.storage import SQLiteStorage
from tests.conftest import ROOT, free_port
from tests.test_dashboard_api import call_record


async def test_the_standalone_dashboard_serves_recorded_calls_behind_its_token(tmp_path: Path) -> None:
    database = tmp_path / "calls.db"
    storage = SQLiteStorage(database)
    await storage.migrate()
    await storage.write([call_record("c-cli", "list the files", "Here they are.")])
    await storage.close()
    port, token = free_port(), "cli-token-" + os.urandom(8).hex()
    args = [sys.executable, "-m", "luthien", "dashboard", "--data-dir", str(tmp_path / "data")]
    args += ["--database-url", f"sqlite://{database}", "--dashboard-port", str(port)]
    env = {**os.environ, "LUTHIEN_DASHBOARD_TOKEN": token}
    with subprocess.Popen(
        args, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, cwd=ROOT, env=env
    ) as process:
        try:
            base = f"http://127.0.0.1:{port}"
            deadline = time.monotonic() + 60
            while True:
                try:
                    if httpx.get(f"{base}/healthz").status_code == 200:
                        break
                except httpx.TransportError:
                    assert time.monotonic() < deadline and process.poll() is None
                    time.sleep(0.2)
            assert httpx.get(f"{base}/api/calls").status_code == 401
            calls = httpx.get(f"{base}/api/calls", headers={"authorization": f"Bearer {token}"}).json()
            assert [c["call_id"] for c in calls["calls"]] == ["c-cli"]
            ready = httpx.get(f"{base}/readyz", headers={"authorization": f"Bearer {token}"})
            assert ready.status_code == 200
        finally:
            process.terminate()
            output, _ = process.communicate(timeout=15)
    assert f"Luthien dashboard: http://127.0.0.1:{port}" in output
    assert token not in output  # a configured token is never printed
