"""SIGTERM: the proxy stops accepting, lets the calls in progress finish up to its grace period,
cuts the rest, and records every one of them before it exits."""

import json
import signal
import socket
import subprocess
import sys
import time
import uuid
from pathlib import Path
from typing import Any

import pytest

from controlplane.recording.records import CallOutcome
from tests.conftest import SDK_CLIENT, RunningProxy, start_proxy, wait_until_listening
from tests.fake_provider import FakeProvider
from tests.recorded import recorded

pytestmark = pytest.mark.timeout(120)

GRACE = 4.0


def sdk_call(proxy: RunningProxy, call: dict[str, Any]) -> subprocess.Popen[str]:
    """One call in an SDK process of its own, so that several are in flight at once."""
    worker = subprocess.Popen(
        [sys.executable, str(SDK_CLIENT)],
        env=proxy.client_env(),
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        stderr=subprocess.DEVNULL,
        text=True,
        cwd="/",
    )
    assert worker.stdin is not None
    worker.stdin.write(json.dumps([call]) + "\n")
    worker.stdin.close()
    return worker


def result_of(worker: subprocess.Popen[str]) -> dict[str, Any]:
    """The call's result; a stream cut mid-body raises out of the SDK (httpx's error is not
    wrapped in an APIError there), and the worker dies without one."""
    assert worker.stdout is not None
    out = worker.stdout.read()
    worker.wait(timeout=60)
    if not out:
        return {"ok": False, "cut": True}
    (result,) = json.loads(out)
    return dict(result)


def wait_for_requests(fake: FakeProvider, word: str, count: int) -> None:
    deadline = time.monotonic() + 60
    while sum(word in r.body.decode(errors="replace") for r in list(fake.requests)) < count:
        assert time.monotonic() < deadline, f"the provider never got {count} calls marked {word}"
        time.sleep(0.05)


async def test_sigterm_lets_calls_finish_cuts_the_rest_and_records_every_one(
    fake: FakeProvider, tmp_path: Path
) -> None:
    word = f"term{uuid.uuid4().hex[:10]}"
    proxy = start_proxy(
        "term", None, fake, tmp_path, tmp_path / "data", extra_args=["--shutdown-grace", str(GRACE)]
    )
    try:
        wait_until_listening(proxy)
        apis = ("chat", "messages", "responses")
        # About 1.5 s of events each: they finish within the grace period.
        finishing = [
            sdk_call(proxy, {"api": api, "stream": True, "prompt": f"{word} f{n} [scenario:slow 0.1]"})
            for n, api in enumerate(apis)
        ]
        # Held by the provider past the grace period: cut.
        held = [
            sdk_call(proxy, {"api": api, "stream": stream, "prompt": f"{word} h{n} [scenario:gated]"})
            for n, (api, stream) in enumerate(zip(apis * 2, (True,) * 3 + (False,) * 3, strict=True))
        ]
        wait_for_requests(fake, word, len(finishing) + len(held))
        proxy.process.send_signal(signal.SIGTERM)
        time.sleep(0.5)
        with pytest.raises(OSError), socket.create_connection(("127.0.0.1", proxy.port), timeout=2):
            pass  # no new connections once stopping
        finished = [result_of(w) for w in finishing]
        cut = [result_of(w) for w in held]
        exit_code = proxy.process.wait(timeout=GRACE + 20)
    finally:
        proxy.terminate()
        proxy.wait()
        for index in range(len(fake.requests)):
            fake.release(index)
    assert exit_code == 0, proxy.log()[-3000:]
    assert all(r["ok"] for r in finished), finished
    assert not any(r["ok"] for r in cut), cut
    # Every call is in the database by the time the process has exited: none waits in the spool.
    records = await recorded(proxy.database_url, word, len(finished) + len(cut))
    outcomes = sorted((r.outcome, r.error or "") for r in records)
    assert outcomes.count((CallOutcome.COMPLETED, "")) == len(finished), outcomes
    stopped = [error for outcome, error in outcomes if outcome is CallOutcome.ERROR]
    assert len(stopped) == len(cut) and all(e.startswith("Luthien was stopping") for e in stopped), outcomes
    assert not any((tmp_path / "data" / "spool").glob("*.jsonl")), "records left for a replay"
    assert "Task exception was never retrieved" not in proxy.log()
