"""Zero loss, proven by killing things (issue 13): an acknowledged record is a durable record.

Under steady load of the three APIs (official SDKs through HTTPS_PROXY, streaming and not, retries
off, a unique marker word in every prompt), SIGKILL at a random moment, in rounds:

- the control plane of a sidecar layout (``luthien controlplane`` + a fail-closed sidecar),
- the sidecar of such a layout,
- ``luthien up`` (proxy and control plane in one process),

each recording into PostgreSQL through a relay that is healthy, cut or hung during the round. After
each round: restart what was killed, restore the database, wait until records stop arriving, and
count in PostgreSQL. Every call the client saw complete has exactly one record, ``completed``;
every call the provider received has exactly one; every call the client saw fail has at most one,
and exactly one when it reached the provider or a live proxy answered the failure (the 503 of a
fail-closed sidecar whose control plane is dead); no marker has two.

The three layouts run side by side. ``LUTHIEN_CRASH_SEED`` replays a run's choices (its seed is
printed); ``LUTHIEN_CRASH_ROUNDS`` sets the rounds per layout (default 3: each condition once).
"""

import asyncio
import contextlib
import json
import os
import random
import re
import signal
import subprocess
import sys
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import asyncpg
import httpx
import pytest

from tests.conftest import ROOT, STARTUP_TIMEOUT, free_port
from tests.databases import fresh_postgres_database
from tests.fake_provider import FakeProvider
from tests.tcp_relay import TcpRelay

pytestmark = pytest.mark.timeout(480)  # ~1 min alone; a loaded 2-CPU machine can take 4

TOKEN = "crash-test-token-" + uuid.uuid4().hex[:8]
CRASH_LOAD = Path(__file__).with_name("crash_load.py")
CONDITIONS = ("healthy", "cut", "hung")
ROUNDS = int(os.environ.get("LUTHIEN_CRASH_ROUNDS", len(CONDITIONS)))
WORKERS = 3  # client threads per layout
FIRST_CALL_TIMEOUT = 30.0  # a round's load must complete a call before the kill
LOAD_STOP_TIMEOUT = 40.0  # each client thread ends its call (SDK timeout 20 s)
SETTLE_QUIET = 6.0  # records stopped arriving: none for longer than the writers' retry backoff (5 s)
SETTLE_QUIET_ALL_THERE = 0.5  # ... or, once every expected record is there, for this long
SETTLE_LIMIT = 25.0
#: Log lines that say something about recording, shown for a round that lost or doubled a record.
#: The error of a record made at a restart for a call in flight when its proxy was killed.
INTERRUPTED = re.compile(r"stopped before", re.I)
RELEVANT = re.compile(r"WARNING|ERROR|CRITICAL|Traceback|Error|spool|journal|flight|replay|record", re.I)


def through(relay: TcpRelay, url: str) -> str:
    """``url`` with its host and port replaced by the relay's."""
    parts = urlsplit(url)
    return parts._replace(netloc=f"{parts.username}@127.0.0.1:{relay.port}").geturl()


def provider_args(fake: FakeProvider) -> list[str]:
    args = []
    for host in ("api.openai.com", "api.anthropic.com"):
        args += ["--provider-host", host, "--upstream", f"{host}={fake.url}"]
    return args


def service_env() -> dict[str, str]:
    env = {**os.environ, "LUTHIEN_CONTROL_PLANE_TOKEN": TOKEN, "LUTHIEN_METRICS_PORT": "0"}
    env["PYTHONUNBUFFERED"] = "1"  # what a process wrote before its SIGKILL is in its log
    for name in ("DATABASE_URL", "REDIS_URL", "LUTHIEN_CONTROL_PLANE_URL", "LUTHIEN_FAIL_OPEN"):
        env.pop(name, None)
    return env


class Service:
    """A ``luthien`` process that the test kills and starts again, on the same port and data dir.
    Every start appends to one log, after a line naming the start."""

    def __init__(self, name: str, args: list[str], log_path: Path, health_url: str | None = None) -> None:
        self.name, self.log_path, self.health_url = name, log_path, health_url
        self.args = [sys.executable, "-m", "luthien", *args, "--log-level", "INFO"]
        self.process: subprocess.Popen[bytes] | None = None
        self._start_offset = 0
        self.starts = 0

    def spawn(self, why: str) -> None:
        with self.log_path.open("ab") as log:
            log.write(f"\n===== crash test: start {self.starts} of {self.name} ({why}) =====\n".encode())
            log.flush()
            self._start_offset = log.tell()
            self.process = subprocess.Popen(
                self.args, stdout=log, stderr=subprocess.STDOUT, cwd=ROOT, env=service_env()
            )
        self.starts += 1

    async def ready(self) -> None:
        """Returns once it serves: ``/healthz`` answers, or the log says it is listening."""
        assert self.process is not None
        deadline = time.monotonic() + STARTUP_TIMEOUT
        async with httpx.AsyncClient(timeout=2) as client:
            while not await self._serving(client):
                if self.process.poll() is not None or time.monotonic() > deadline:
                    raise RuntimeError(f"{self.name} did not start:\n{self.log(self._start_offset)[-4000:]}")
                await asyncio.sleep(0.1)

    async def _serving(self, client: httpx.AsyncClient) -> bool:
        if self.health_url is None:
            return "listening on" in self.log(self._start_offset)
        try:
            return (await client.get(self.health_url)).status_code == 200
        except httpx.TransportError:
            return False

    def kill(self) -> None:
        assert self.process is not None
        self.process.send_signal(signal.SIGKILL)
        self.process.wait()

    def stop(self) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(20)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()

    def log_size(self) -> int:
        return self.log_path.stat().st_size if self.log_path.exists() else 0

    def log(self, start: int = 0, end: int | None = None) -> str:
        with self.log_path.open("rb") as log:
            log.seek(start)
            return log.read(-1 if end is None else end - start).decode(errors="replace")


class Load:
    """The client side of one layout: tests/crash_load.py, a process of its own configured only
    by HTTPS_PROXY and SSL_CERT_FILE, reporting every call as it ends."""

    def __init__(self, proxy_port: int, bundle: Path) -> None:
        self._env = {
            "HTTPS_PROXY": f"http://127.0.0.1:{proxy_port}",
            "SSL_CERT_FILE": str(bundle),
            "PATH": os.environ["PATH"],
        }
        self._process: asyncio.subprocess.Process | None = None
        self._reader: asyncio.Task[None] | None = None
        self._ready = asyncio.Event()
        self._stopped = asyncio.Event()
        self._changed = asyncio.Event()
        self.results: list[dict[str, Any]] = []

    async def start(self) -> None:
        self._process = await asyncio.create_subprocess_exec(
            sys.executable, str(CRASH_LOAD), env=self._env, cwd="/",
            stdin=asyncio.subprocess.PIPE, stdout=asyncio.subprocess.PIPE, limit=1 << 20,
        )  # fmt: skip
        self._reader = asyncio.create_task(self._read())

    async def _read(self) -> None:
        assert self._process is not None and self._process.stdout is not None
        while line := await self._process.stdout.readline():
            message: dict[str, Any] = json.loads(line)
            if message.get("ready"):
                self._ready.set()
            elif "stopped" in message:
                self._stopped.set()
            else:
                self.results.append(message)
            self._changed.set()

    async def _send(self, command: dict[str, Any]) -> None:
        assert self._process is not None and self._process.stdin is not None
        self._process.stdin.write(json.dumps(command).encode() + b"\n")
        await self._process.stdin.drain()

    async def begin(self, prefix: str, seed: int) -> None:
        await asyncio.wait_for(self._ready.wait(), STARTUP_TIMEOUT)
        self.results, self._stopped = [], asyncio.Event()
        await self._send({"start": prefix, "workers": WORKERS, "seed": seed})

    async def completed(self, count: int, timeout: float) -> bool:
        """Waits until ``count`` calls of this batch completed; False if they did not in time."""
        deadline = time.monotonic() + timeout
        while sum(r["ok"] for r in self.results) < count:
            if (left := deadline - time.monotonic()) <= 0:
                return False
            self._changed.clear()
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._changed.wait(), left)
        return True

    async def end(self) -> list[dict[str, Any]]:
        """Stops the batch once each client thread has ended its call; returns every call."""
        await self._send({"stop": True})
        await asyncio.wait_for(self._stopped.wait(), LOAD_STOP_TIMEOUT)
        return self.results

    async def close(self) -> None:
        if self._process is not None and self._process.returncode is None:
            self._process.kill()
            await self._process.wait()
        if self._reader is not None:
            self._reader.cancel()


@dataclass
class Layout:
    name: str
    letter: str  # in the markers of its calls
    database: str  # the database itself, for counting (the services reach it through the relay)
    relay: TcpRelay
    services: list[Service]  # in start order
    target: Service  # what the rounds kill
    entry_port: int  # the proxy the clients use
    entry_data_dir: Path


@dataclass
class Round:
    layout: str
    condition: str
    number: int
    prefix: str
    kill_delay: float = 0.0  # seconds from the first completed call to the kill
    killed_at: float = 0.0  # time.time() of the kill
    note: str = ""
    results: list[dict[str, Any]] = field(default_factory=list)
    reached: set[str] = field(default_factory=set)
    records: dict[str, list[tuple[str, str, str | None]]] = field(default_factory=dict)
    records_at_settle: int = 0
    settle_seconds: float = 0.0
    load_seconds: float = 0.0  # from the start of the load to its end after the kill
    restart_seconds: float = 0.0
    log_offsets: dict[str, tuple[int, int]] = field(default_factory=dict)  # each service's, in the round

    @property
    def complete(self) -> set[str]:
        return {r["marker"] for r in self.results if r["ok"]}

    @property
    def failed(self) -> set[str]:
        return {r["marker"] for r in self.results if not r["ok"]}

    @property
    def live_failed(self) -> set[str]:
        return {r["marker"] for r in self.results if not r["ok"] and r["live"]}

    @property
    def required(self) -> set[str]:
        """The calls that must have exactly one record."""
        return self.complete | self.reached | self.live_failed

    @property
    def missing(self) -> set[str]:
        return {m for m in self.required if m not in self.records}

    @property
    def duplicates(self) -> set[str]:
        return {m for m, rows in self.records.items() if len(rows) > 1}

    @property
    def wrong_outcome(self) -> set[str]:
        return {m for m in self.complete if any(row[1] != "completed" for row in self.records.get(m, []))}

    @property
    def stray(self) -> set[str]:
        """Records of markers the client never reported: a record made up, or a lost report."""
        return set(self.records) - {r["marker"] for r in self.results}

    @property
    def interrupted(self) -> int:
        """Records made at a restart from a call in flight when its proxy died (information)."""
        return sum(
            bool(row[2] and INTERRUPTED.search(row[2])) for rows in self.records.values() for row in rows
        )

    @property
    def record_count(self) -> int:
        return sum(len(rows) for rows in self.records.values())


def markers_in(text: str, prefix: str) -> set[str]:
    return set(re.findall(rf"\b{re.escape(prefix)}\d+\b", text))


def reached_provider(fake: FakeProvider, prefix: str) -> set[str]:
    return {
        m
        for request in list(fake.requests)
        for m in markers_in(request.body.decode(errors="replace"), prefix)
    }


async def stored(connection: asyncpg.Connection, prefix: str) -> dict[str, list[tuple[str, str, str | None]]]:
    """Every stored call of the round, by marker: (call id, outcome, error)."""
    try:
        rows = await connection.fetch(
            "SELECT call_id, outcome, error, search_text FROM calls WHERE search_text LIKE $1", f"%{prefix}%"
        )
    except asyncpg.UndefinedTableError:  # not migrated yet
        return {}
    by_marker: dict[str, list[tuple[str, str, str | None]]] = {}
    for row in rows:
        for marker in markers_in(row["search_text"], prefix) or {"(no marker)"}:
            by_marker.setdefault(marker, []).append((row["call_id"], row["outcome"], row["error"]))
    return by_marker


async def settle(
    connection: asyncpg.Connection, prefix: str, required: set[str]
) -> tuple[dict[str, Any], float]:
    """The round's records once they stopped arriving (bounded), and how long that took."""
    start = time.monotonic()
    last: list[str] | None = None
    changed = start
    while True:
        records = await stored(connection, prefix)
        ids = sorted(row[0] for rows in records.values() for row in rows)
        now = time.monotonic()
        if ids != last:
            last, changed = ids, now
        quiet = now - changed
        if (required <= set(records) and quiet >= SETTLE_QUIET_ALL_THERE) or quiet >= SETTLE_QUIET:
            return records, now - start
        if now - start > SETTLE_LIMIT:
            return records, now - start
        await asyncio.sleep(0.2)


async def run_layout(
    layout: Layout,
    fake: FakeProvider,
    rng: random.Random,
    run: str,
    rounds: list[Round],
    log: Callable[[str], None],
) -> None:
    """Starts the layout and runs its rounds, adding each to ``rounds`` as it begins."""
    load = Load(layout.entry_port, layout.entry_data_dir / "ca" / "ca-bundle.pem")
    connection = await asyncpg.connect(layout.database)
    try:
        began = time.monotonic()
        await load.start()
        for service in layout.services:  # together: their imports of LiteLLM overlap
            service.spawn("first start")
        for service in layout.services:
            await service.ready()
        log(f"  {layout.name:<13} started in {time.monotonic() - began:.1f} s")
        conditions = rng.sample(CONDITIONS, len(CONDITIONS))
        for number in range(ROUNDS):
            condition = conditions[number % len(conditions)]
            current = Round(layout.name, condition, number, f"crash{run}{layout.letter}{number}x")
            rounds.append(current)
            try:
                await run_round(layout, load, fake, rng, current, connection)
            except Exception as exc:
                current.note = f"the round did not finish: {exc!r}"[:300]
                raise
            log(
                f"  {layout.name:<13} round {number} ({condition:<7}): {len(current.results):3d} calls "
                f"in {current.load_seconds:.1f} s, killed {current.kill_delay:.2f} s after the first "
                f"completed call, restarted in {current.restart_seconds:.1f} s, "
                f"{current.record_count} records after {current.settle_seconds:.1f} s"
            )
    finally:
        await load.close()
        await connection.close()


async def run_round(
    layout: Layout,
    load: Load,
    fake: FakeProvider,
    rng: random.Random,
    current: Round,
    connection: asyncpg.Connection,
) -> None:
    log_start = {s.name: s.log_size() for s in layout.services}
    if current.condition == "cut":
        layout.relay.cut()
    elif current.condition == "hung":
        layout.relay.hang()
    began = time.monotonic()
    await load.begin(current.prefix, rng.randrange(2**32))
    if not await load.completed(1, FIRST_CALL_TIMEOUT):
        current.note = f"no call completed within {FIRST_CALL_TIMEOUT:.0f} s before the kill"
    current.kill_delay = rng.uniform(0.0, 1.5)
    await asyncio.sleep(current.kill_delay)  # the random moment
    current.killed_at = time.time()
    layout.target.kill()
    await asyncio.sleep(rng.uniform(0.2, 0.6))  # calls go on meeting the dead (or failing-closed) layout
    current.results = list(await load.end())
    current.load_seconds = time.monotonic() - began
    layout.target.spawn(f"after round {current.number}, killed in {current.condition}")
    layout.relay.restore()
    await layout.target.ready()
    current.restart_seconds = time.monotonic() - began - current.load_seconds
    current.reached = reached_provider(fake, current.prefix)
    current.records, current.settle_seconds = await settle(connection, current.prefix, current.required)
    current.records_at_settle = current.record_count
    current.log_offsets = {s.name: (log_start[s.name], s.log_size()) for s in layout.services}


def split_layout(
    name: str, letter: str, kill: str, root: Path, fake: FakeProvider, database: str, relay: TcpRelay
) -> Layout:
    cp_port, proxy_port = free_port(), free_port()
    cp_data, sidecar_data = root / "cp-data", root / "sidecar-data"
    cp_args = ["--port", str(cp_port), "--data-dir", str(cp_data), "--database-url", through(relay, database)]
    control_plane = Service(
        f"{letter}-controlplane",
        ["controlplane", *cp_args],
        root / "controlplane.log",
        health_url=f"http://127.0.0.1:{cp_port}/healthz",
    )
    sidecar_args = ["--port", str(proxy_port), "--data-dir", str(sidecar_data)]
    sidecar_args += ["--control-plane", f"http://127.0.0.1:{cp_port}", *provider_args(fake)]
    sidecar = Service(f"{letter}-sidecar", ["proxy", *sidecar_args], root / "sidecar.log")
    target = control_plane if kill == "controlplane" else sidecar
    return Layout(name, letter, database, relay, [control_plane, sidecar], target, proxy_port, sidecar_data)


def up_layout(
    name: str, letter: str, root: Path, fake: FakeProvider, database: str, relay: TcpRelay
) -> Layout:
    port, data = free_port(), root / "up-data"
    args = ["--port", str(port), "--dashboard-port", str(free_port()), "--data-dir", str(data)]
    args += ["--database-url", through(relay, database), *provider_args(fake)]
    up = Service(f"{letter}-up", ["up", *args], root / "up.log")
    return Layout(name, letter, database, relay, [up], up, port, data)


async def recount(layouts: list[Layout], rounds: list[Round], fake: FakeProvider) -> None:
    """Counts every round again at the end, once no record has arrived anywhere for a while: a
    record that came after its round was counted is seen (the "late" column)."""
    connections = {layout.name: await asyncpg.connect(layout.database) for layout in layouts}
    try:
        deadline = time.monotonic() + SETTLE_QUIET
        last = None
        while True:
            for r in rounds:
                r.records = await stored(connections[r.layout], r.prefix)
                r.reached = reached_provider(fake, r.prefix)
            total = [r.record_count for r in rounds]
            if total == last or time.monotonic() > deadline:
                return
            last = total
            await asyncio.sleep(1.0)
    finally:
        for connection in connections.values():
            await connection.close()


def table(rounds: list[Round]) -> str:
    header = (
        f"{'layout':<13} {'condition':<9} {'calls':>5} {'complete':>8} {'failed':>6} {'reached':>7} "
        f"{'records':>7} {'missing':>7} {'dups':>4} {'!completed':>10} {'late':>4} {'interrupted':>11}"
    )
    lines = [header, "-" * len(header)]
    for r in sorted(rounds, key=lambda r: (r.layout, CONDITIONS.index(r.condition), r.number)):
        lines.append(
            f"{r.layout:<13} {r.condition:<9} {len(r.results):>5} {len(r.complete):>8} {len(r.failed):>6} "
            f"{len(r.reached):>7} {r.record_count:>7} {len(r.missing):>7} {len(r.duplicates):>4} "
            f"{len(r.wrong_outcome):>10} {r.record_count - r.records_at_settle:>4} {r.interrupted:>11}"
        )
    return "\n".join(lines)


def describe(r: Round, layout: Layout, limit: int = 12) -> str:
    """What went wrong in a round: each missing, doubled or mis-recorded call with what the client
    and the provider saw of it, and the services' log lines about recording during the round."""
    by_marker = {result["marker"]: result for result in r.results}

    def call(marker: str) -> str:
        result = by_marker.get(marker)
        if result is None:
            return f"{marker}: no client report"
        seen = "complete" if result["ok"] else f"failed ({'live proxy' if result['live'] else 'no proxy'})"
        when = result["t1"] - r.killed_at
        text = (
            f"{marker}: {result['api']}{' stream' if result['stream'] else ''}, client {seen}, "
            f"ended {abs(when):.3f} s {'after' if when >= 0 else 'before'} the kill, "
            f"provider {'received it' if marker in r.reached else 'never saw it'}"
        )
        if result["error"]:
            text += f"; client error: {result['error'][:160]}"
        return text

    lines = [
        f"{r.layout} / {r.condition} (round {r.number}, prefix {r.prefix}){': ' + r.note if r.note else ''}"
    ]
    for title, markers in (
        ("missing", r.missing),
        ("duplicated", r.duplicates),
        ("not completed", r.wrong_outcome),
    ):
        for marker in sorted(markers, key=lambda m: (len(m), m))[:limit]:  # in the order of the calls
            lines.append(f"  {title} {call(marker)}")
            for call_id, outcome, error in r.records.get(marker, []):
                lines.append(f"      record {call_id}: {outcome}{': ' + error[:160] if error else ''}")
        if len(markers) > limit:
            lines.append(f"  ... and {len(markers) - limit} more {title}")
    for marker in sorted(r.stray)[:limit]:
        lines.append(f"  record of a marker the client never reported: {marker} {r.records[marker]}")
    for service in layout.services:
        relevant = [
            line
            for line in service.log(*r.log_offsets.get(service.name, (0, None))).splitlines()
            if RELEVANT.search(line)
        ]
        if relevant:
            lines.append(
                f"  {service.name} log during the round ({len(relevant)} lines about recording, last 15):"
            )
            lines += [f"    {line[:240]}" for line in relevant[-15:]]
    return "\n".join(lines)


async def test_sigkill_under_load_loses_no_record_and_doubles_none(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    seed = int(os.environ.get("LUTHIEN_CRASH_SEED") or random.SystemRandom().randrange(2**32))
    run = uuid.uuid4().hex[:6]
    started = time.monotonic()

    def log(line: str) -> None:
        with capsys.disabled():
            print(line, flush=True)

    log(f"\ncrash test: seed {seed} (replay with LUTHIEN_CRASH_SEED={seed}), {ROUNDS} rounds per layout")
    async with contextlib.AsyncExitStack() as stack:
        fake = stack.enter_context(FakeProvider())
        layouts: list[Layout] = []
        kinds = (("control plane", "a"), ("sidecar", "b"), ("luthien up", "c"))
        for name, letter in kinds:
            database = await stack.enter_async_context(fresh_postgres_database())
            relay = stack.enter_context(TcpRelay("127.0.0.1", urlsplit(database).port or 5432))
            root = tmp_path / letter
            root.mkdir()
            if letter == "c":
                layouts.append(up_layout(name, letter, root, fake, database, relay))
            else:
                kill = "controlplane" if letter == "a" else "sidecar"
                layouts.append(split_layout(name, letter, kill, root, fake, database, relay))
        for layout in layouts:
            for service in layout.services:
                stack.callback(service.stop)  # after the rounds, before the relays and databases go
        rounds: list[Round] = []
        outcomes = await asyncio.gather(
            *(
                run_layout(layout, fake, random.Random(f"{seed}:{layout.letter}"), run, rounds, log)
                for layout in layouts
            ),
            return_exceptions=True,
        )
        errors = [
            f"{layout.name}: {type(outcome).__name__}: {outcome}"
            for layout, outcome in zip(layouts, outcomes, strict=True)
            if outcome
        ]
        await recount(layouts, rounds, fake)
        by_name = {layout.name: layout for layout in layouts}
        report = table(rounds)
        bad = [
            r
            for r in rounds
            if r.missing or r.duplicates or r.wrong_outcome or r.stray or r.note or not r.complete
        ]
        details = "\n\n".join(describe(r, by_name[r.layout]) for r in bad)
        log(f"\n{report}\n(ran {time.monotonic() - started:.0f} s)")
        if details:
            log(f"\n{details}")
    if errors or bad or len(rounds) != ROUNDS * len(layouts):
        failures = "\n".join(errors)
        pytest.fail(
            f"records lost, doubled or mis-recorded, or a layout broke (seed {seed}):\n{failures}\n\n"
            f"{report}\n\n{details}",
            pytrace=False,
        )
