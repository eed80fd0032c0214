"""The dashboard with many recorded calls: ``scripts/bench-dashboard`` (or ``.venv/bin/python -m
bench.dashboard``).

Records ``--calls`` calls (10,000 by default: several agents, hosts, models and outcomes, streams
with their events, in sessions of 20 calls) into SQLite and into a fresh PostgreSQL database,
serves the dashboard over each with uvicorn, and measures what a user waits for: the API's
answers (the calls list, its filters, deep pages, a call's detail, the sessions list and a
session) and the pages in headless Chromium (from navigation until the rows, the call's diff or
the session's turns are on screen). Prints a markdown table of medians and p95s, each list
against its target: a page under 1 s, its API under 50 ms.
"""

import argparse
import asyncio
import os
import statistics
import sys
import tempfile
import time
import uuid
from collections.abc import AsyncIterator, Callable, Sequence
from contextlib import asynccontextmanager
from dataclasses import dataclass
from datetime import timedelta
from pathlib import Path

import httpx

from controlplane.activity import InMemoryBus
from controlplane.recording.records import CallOutcome, CallRecord, Decision
from controlplane.storage import PostgresStorage, SQLiteStorage
from controlplane.storage.base import Storage
from dashboard.app import create_app
from tests.background_server import BackgroundServer
from tests.databases import fresh_postgres_database
from tests.test_dashboard_api import T0, call_record

TOKEN = "bench-dashboard-" + uuid.uuid4().hex
CHROMIUM = Path("/usr/bin/chromium")
BATCH = 500
HOSTS_MODELS = [
    ("api.anthropic.com", "claude-sonnet-4-5"),
    ("api.anthropic.com", "claude-haiku-4-5"),
    ("api.openai.com", "gpt-5-codex"),
    ("api.openai.com", "gpt-4.1-mini"),
]
SESSION_CALLS = 20
KEYS = 3
#: What a user should not wait longer for (ms): the lists' pages and their API answers.
PAGE_TARGET, API_TARGET = 1000.0, 50.0
BLOCK = Decision.model_validate(
    {"stage": "stream", "allowed": False, "reason": "tool call `bash` matched rm -rf", "metadata": {}}
)


def log(message: str) -> None:
    print(f"[bench-dashboard {time.strftime('%H:%M:%S')}] {message}", file=sys.stderr, flush=True)


def session_of(n: int) -> str:
    """Claude Code's calls (to Anthropic) and Codex's (to OpenAI) in sessions of SESSION_CALLS."""
    agent = (n % len(HOSTS_MODELS)) // 2
    return f"bench-session-{agent}-{n // (2 * SESSION_CALLS):05d}"


def recorded_call(n: int) -> CallRecord:
    """The ``n``-th of a realistic history: a call a minute or so apart, every 17th blocked and
    every 23rd a provider error, prompts that differ, in sessions on a few keys."""
    host, model = HOSTS_MODELS[n % len(HOSTS_MODELS)]
    blocked, failed = n % 17 == 0, n % 23 == 0
    outcome = (
        CallOutcome.BLOCKED if blocked else CallOutcome.PROVIDER_ERROR if failed else CallOutcome.COMPLETED
    )
    record = call_record(
        f"bench-{n:06d}-{uuid.uuid4().hex[:8]}",
        f"Task {n}: look at src/module_{n % 311}.py and fix the failing test number {n}",
        f"I read module_{n % 311}.py; the test fails because of an off-by-one in line {n % 97}.",
        started_at=T0 + timedelta(seconds=61 * n),
        host=host,
        model=model,
        stream=n % 3 != 0,
        outcome=outcome,
        status=500 if failed else 200,
        decisions=(BLOCK,) if blocked else (),
    )
    key = f"bench-key-{(n // (2 * SESSION_CALLS)) % KEYS}"
    return record.model_copy(update={"session_id": session_of(n), "api_key_hash": key})


async def fill(storage: Storage, calls: int) -> None:
    await storage.migrate()
    for start in range(0, calls, BATCH):
        await storage.write([recorded_call(n) for n in range(start, min(calls, start + BATCH))])


@dataclass
class Figure:
    backend: str
    what: str
    samples: list[float]
    target_ms: float | None = None

    def row(self) -> str:
        ordered = sorted(self.samples)
        p95 = ordered[min(len(ordered) - 1, round(0.95 * (len(ordered) - 1)))]
        median = statistics.median(ordered)
        target = ""
        if self.target_ms is not None:
            target = f"< {self.target_ms:.0f}: {'yes' if p95 < self.target_ms else 'NO'}"
        return f"| {self.backend} | {self.what} | {median:.1f} | {p95:.1f} | {len(ordered)} | {target} |"


#: The lists, held to the targets.
LISTS = {"GET /api/calls (first page)", "GET /api/sessions (first page)"}
LIST_PAGES = {"page /calls (rows shown)", "page /sessions (rows shown)"}


async def api_figures(backend: str, base: str, some_call: str, rounds: int) -> list[Figure]:
    """Each request ``rounds`` times, after one warm-up; milliseconds from send to whole body."""
    some_session = session_of(1000)
    requests = {
        "GET /api/calls (first page)": "/api/calls",
        "GET /api/calls?model=… (a filter)": "/api/calls?model=claude-haiku-4-5",
        "GET /api/calls?blocked=true": "/api/calls?blocked=true",
        "GET /api/calls?search=… (prompt text)": "/api/calls?search=module_42.py",
        "GET /api/calls?offset=9000 (a deep page)": "/api/calls?offset=9000",
        "GET /api/calls/{id} (a call, with diffs)": f"/api/calls/{some_call}",
        "GET /api/calls?session_id=… (a session's calls)": f"/api/calls?session_id={some_session}",
        "GET /api/sessions (first page)": "/api/sessions",
        "GET /api/sessions?agent=… (a filter)": "/api/sessions?agent=codex",
        "GET /api/sessions?offset=400 (a deep page)": "/api/sessions?offset=400",
        "GET /api/sessions/{id} (its 20 turns)": f"/api/sessions/{some_session}",
        "GET /api/sessions/{id}/export?format=md": f"/api/sessions/{some_session}/export?format=md",
    }
    figures = []
    async with httpx.AsyncClient(base_url=base, headers={"authorization": f"Bearer {TOKEN}"}) as http:
        for what, path in requests.items():
            (await http.get(path)).raise_for_status()
            samples = []
            for _ in range(rounds):
                started = time.perf_counter()
                (await http.get(path)).raise_for_status()
                samples.append((time.perf_counter() - started) * 1000)
            figures.append(Figure(backend, what, samples, API_TARGET if what in LISTS else None))
    return figures


def page_figures(backend: str, base: str, some_call: str, rounds: int) -> list[Figure]:
    """Milliseconds from navigation to the content on screen, in a fresh page each time."""
    from playwright.sync_api import sync_playwright

    pages: dict[str, tuple[str, str]] = {
        "page /calls (rows shown)": ("/calls", "#calls tbody tr"),
        "page /calls/{id} (diff shown)": (f"/calls/{some_call}", "#content h1"),
        "page /sessions (rows shown)": ("/sessions", "#sessions tbody tr"),
        "page /sessions/{id} (turns shown)": (f"/sessions/{session_of(1000)}", "article.turn"),
    }
    figures = []
    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(
            executable_path=str(CHROMIUM), args=["--no-sandbox", "--disable-gpu"]
        )
        context = browser.new_context()
        context.new_page().goto(f"{base}/login?token={TOKEN}")
        for what, (path, ready) in pages.items():
            samples = []
            for i in range(rounds + 1):
                page = context.new_page()
                started = time.perf_counter()
                page.goto(base + path)
                page.locator(ready).first.wait_for(state="visible")
                elapsed = (time.perf_counter() - started) * 1000
                page.close()
                if i:  # the first warms the cache of the page's own scripts
                    samples.append(elapsed)
            figures.append(Figure(backend, what, samples, PAGE_TARGET if what in LIST_PAGES else None))
        browser.close()
    return figures


@asynccontextmanager
async def backends(calls: int, work: Path) -> AsyncIterator[list[tuple[str, Callable[[], Storage]]]]:
    """A filler and a factory for each backend, holding ``calls`` calls."""
    async with fresh_postgres_database() as url:
        sqlite_path = work / "calls.db"
        made: list[tuple[str, Callable[[], Storage]]] = [
            ("SQLite", lambda: SQLiteStorage(sqlite_path)),
            ("PostgreSQL", lambda: PostgresStorage(url)),
        ]
        for name, make in made:
            log(f"{name}: recording {calls:,} calls")
            storage = make()
            await fill(storage, calls)
            await storage.close()
        yield made


def measure(name: str, make: Callable[[], Storage], rounds: int) -> list[Figure]:
    storage = make()
    server = BackgroundServer(create_app(storage, InMemoryBus(), TOKEN), "dashboard")
    base = server.start()
    try:
        some_call = httpx.get(
            f"{base}/api/calls?offset=500&limit=1", headers={"authorization": f"Bearer {TOKEN}"}
        ).json()["calls"][0]["call_id"]
        figures = asyncio.run(api_figures(name, base, some_call, rounds))  # a client loop of its own
        log(f"{name}: API measured")
        figures += page_figures(name, base, some_call, max(5, rounds // 6))
        log(f"{name}: pages measured")
        return figures
    finally:
        assert server.loop is not None
        asyncio.run_coroutine_threadsafe(storage.close(), server.loop).result()
        server.stop()


async def record_all(calls: int, work: Path, rounds: int) -> list[Figure]:
    figures: list[Figure] = []
    async with backends(calls, work) as made:
        for name, make in made:
            figures += await asyncio.to_thread(measure, name, make, rounds)
    return figures


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument(
        "--calls", type=int, default=10_000, help="calls recorded in each database (default 10,000)"
    )
    parser.add_argument("--rounds", type=int, default=30, help="requests per API figure (default 30)")
    return parser.parse_args(argv)


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    if not CHROMIUM.exists():
        print(f"bench-dashboard: {CHROMIUM} is missing (Debian package chromium)", file=sys.stderr)
        return 2
    os.environ.setdefault("CI", "true")  # a missing PostgreSQL is an error here, not a skip
    with tempfile.TemporaryDirectory(prefix="bench-dashboard-") as work:
        started = time.monotonic()
        figures = asyncio.run(record_all(args.calls, Path(work), args.rounds))
    print(
        f"Dashboard benchmark, {time.strftime('%Y-%m-%dT%H:%M:%S%z')}, {time.monotonic() - started:.0f} s\n"
    )
    print(
        f"{args.calls:,} recorded calls in each database; API: {args.rounds} requests each after one warm-up;"
    )
    print("pages: a fresh tab each time, from navigation until the content is visible. Times in ms;")
    print(
        f"the lists' targets are on the p95: a page under {PAGE_TARGET:.0f}, "
        f"its API under {API_TARGET:.0f}.\n"
    )
    print("| database | what | median | p95 | n | target |")
    print("|---|---|---|---|---|---|")
    for figure in figures:
        print(figure.row())
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
