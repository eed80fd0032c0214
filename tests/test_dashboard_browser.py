"""The dashboard's pages in a real browser (Debian's Chromium through Playwright), served by
uvicorn over SQLite and the in-memory bus, with data written through the real storage and bus.
The screenshots of docs/dashboard.md are taken by scripts/screenshots (tests/screenshots.py) over
the sample session below.
"""

import asyncio
import os
import re
import uuid
from collections.abc import Coroutine, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any
from urllib.parse import quote

import pytest
from playwright.sync_api import Browser, Page, expect, sync_playwright

from controlplane.activity import InMemoryBus, RedisStreamBus
from controlplane.models import ActivityEvent, ActivityType
from controlplane.recording.records import CallOutcome, CallRecord, Decision, Usage
from controlplane.storage import SQLiteStorage
from dashboard.app import create_app
from tests.background_server import BackgroundServer
from tests.tcp_relay import TcpRelay
from tests.test_dashboard_api import TOKEN, call_record

CHROMIUM = Path("/usr/bin/chromium")
CHROMIUM_ARGS = [
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]
XSS_IMG = '<img src=x onerror="window.__xss=1">'
XSS_SCRIPT = "<script>window.__xss=2</script>"


@dataclass
class Site:
    url: str
    storage: SQLiteStorage
    bus: InMemoryBus
    server: BackgroundServer

    def run[T](self, work: Coroutine[Any, Any, T]) -> T:
        """Runs ``work`` on the server's event loop, where the in-memory bus lives."""
        assert self.server.loop is not None
        return asyncio.run_coroutine_threadsafe(work, self.server.loop).result(timeout=10)

    def add(self, records: list[CallRecord], events: list[ActivityEvent]) -> None:
        self.run(self.storage.write(records))
        for event in events:
            self.run(self.bus.publish(event))


@pytest.fixture(scope="module")
def browser() -> Iterator[Browser]:
    if not CHROMIUM.exists():
        reason = f"{CHROMIUM} is missing (Debian package chromium)"
        if os.environ.get("CI") == "true":
            pytest.fail(reason)
        pytest.skip(reason)
    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=str(CHROMIUM), args=CHROMIUM_ARGS)
        yield browser
        browser.close()


@pytest.fixture
def site(tmp_path: Path) -> Iterator[Site]:
    storage, bus = SQLiteStorage(tmp_path / "calls.db"), InMemoryBus()
    server = BackgroundServer(create_app(storage, bus, TOKEN), "dashboard")
    served = Site(server.start(), storage, bus, server)
    served.run(storage.migrate())
    yield served
    served.run(storage.close())
    server.stop()


@contextmanager
def watched_page(browser: Browser, login_url: str) -> Iterator[Page]:
    """A page logged in at ``login_url``. Any console error (a CSP violation, a script error)
    fails the test."""
    context = browser.new_context(viewport={"width": 1440, "height": 900})
    page = context.new_page()
    errors: list[str] = []
    page.on("console", lambda message: errors.append(message.text) if message.type == "error" else None)
    page.on("pageerror", lambda error: errors.append(str(error)))
    page.goto(login_url)
    yield page
    context.close()
    assert errors == []


@pytest.fixture
def page(browser: Browser, site: Site) -> Iterator[Page]:
    with watched_page(browser, f"{site.url}/login?token={TOKEN}") as page:
        yield page


# --- A realistic session: what the docs' screenshots show --------------------------------------------

NOW = datetime.now(UTC).replace(microsecond=0)
ANTHROPIC, OPENAI = "api.anthropic.com", "api.openai.com"
SONNET, HAIKU, GPT = "claude-sonnet-4-5", "claude-haiku-4-5", "gpt-5-codex"
SECRET_ANSWER = (
    "Create the client once and reuse it:\n"
    'stripe.api_key = "sk_live_51Hc8kQ2eZvKYlo2CtestKey"\n'
    "Then call stripe.Customer.create(email=user.email) when a user signs up.\n"
    "Keep the key in an environment variable rather than in the code."
)
REDACTED_ANSWER = SECRET_ANSWER.replace("sk_live_51Hc8kQ2eZvKYlo2CtestKey", "[REDACTED:stripe_key]")


def activity(call: CallRecord, kind: ActivityType, after_ms: float, **data: Any) -> ActivityEvent:
    at = call.started_at + timedelta(milliseconds=after_ms)
    return ActivityEvent(
        call_id=call.call_id, type=kind, timestamp=at, host=call.host, model=call.model, data=data
    )


def session() -> tuple[list[CallRecord], list[ActivityEvent]]:
    redaction = Decision(
        stage="stream", allowed=True, reason="redacted 1 secret", metadata={"kinds": ["stripe_key"]}
    )
    blocklist = Decision(
        stage="request",
        allowed=False,
        reason="matches blocked command pattern rm\\s+-rf",
        metadata={"rule_id": "no-recursive-delete"},
    )
    calls = [
        call_record(
            "7f3a9c2e41d04b8e",
            "Add a retry with exponential backoff to fetch_user() in api/client.py",
            "I'll wrap the request in a loop that doubles the delay after each failure, up to 5 attempts.",
            started_at=NOW - timedelta(minutes=9),
        ),
        call_record(
            "a41b77d09e2c4f61",
            "Why does test_parse_dates fail on Windows?",
            "The test builds paths with '/' and compares them to os.sep-joined strings.",
            started_at=NOW - timedelta(minutes=7),
            host=OPENAI,
            model=GPT,
            stream=False,
        ),
        call_record(
            "c90d1e5f3a7b4c22",
            "Clean the build directory: rm -rf ./build ~/",
            "",
            started_at=NOW - timedelta(minutes=5),
            outcome=CallOutcome.BLOCKED,
            status=403,
            decisions=(blocklist,),
        ),
        call_record(
            "e5b2f8a6c1d94e07",
            "Show me how to configure the Stripe client",
            SECRET_ANSWER,
            final_answer=REDACTED_ANSWER,
            started_at=NOW - timedelta(minutes=3),
            decisions=(redaction,),
        ),
        call_record(
            "19c4d7e2b8f04a53",
            "Generate a commit message for the staged changes",
            "",
            started_at=NOW - timedelta(minutes=2),
            host=OPENAI,
            model=GPT,
            outcome=CallOutcome.PROVIDER_ERROR,
            status=429,
        ),
        call_record(
            "2d8e6b1f7c3a4d90",
            "Write a commit message for: add retry to fetch_user",
            "fix(api): retry fetch_user with exponential backoff",
            started_at=NOW - timedelta(minutes=1),
            model=HAIKU,
        ),
    ]
    # Timings and usage as they vary in real use (the detail test reads the defaults of e5b2…).
    varied: dict[str, dict[str, Any]] = {
        "7f3a9c2e41d04b8e": {
            "duration_ms": 6230.0,
            "ttfb_ms": 1210.0,
            "usage": Usage(prompt_tokens=18250, completion_tokens=412, total_tokens=18662),
        },
        "a41b77d09e2c4f61": {
            "duration_ms": 3410.0,
            "ttfb_ms": 3395.0,
            "usage": Usage(prompt_tokens=9120, completion_tokens=230, total_tokens=9350),
        },
        "c90d1e5f3a7b4c22": {"duration_ms": 3.2, "ttfb_ms": None, "usage": None},
        "19c4d7e2b8f04a53": {"duration_ms": 421.0, "ttfb_ms": 418.0, "usage": None},
        "2d8e6b1f7c3a4d90": {
            "duration_ms": 905.0,
            "ttfb_ms": 388.0,
            "usage": Usage(prompt_tokens=640, completion_tokens=18, total_tokens=658),
        },
    }
    # Claude Code's session, and Codex's.
    claude, codex = "3f9c2a1e-8b7d-4c6f-9e21-5d4a3b2c1f00", "0198c7e2-5b1a-7f30-9d4e-2a6c8b1f0e57"
    sessions = {call.call_id: claude if call.host == ANTHROPIC else codex for call in calls}
    calls = [
        call.model_copy(update={"session_id": sessions[call.call_id], **varied.get(call.call_id, {})})
        for call in calls
    ]
    events: list[ActivityEvent] = []
    for call in calls:
        events.append(
            activity(
                call, ActivityType.REQUEST_RECEIVED, 0, method="POST", path=call.path, stream=call.stream
            )
        )
        if call.outcome is CallOutcome.BLOCKED:
            events.append(
                activity(call, ActivityType.REQUEST_POLICY, 3, allowed=False, reason=call.decisions[0].reason)
            )
            events.append(activity(call, ActivityType.BLOCKED, 4, stage="request"))
            continue
        ttfb = call.ttfb_ms or 0
        events.append(activity(call, ActivityType.UPSTREAM_SENT, ttfb - 30, status=call.status))
        events.append(activity(call, ActivityType.FIRST_BYTE, ttfb))
        if call.decisions:
            events.append(
                activity(
                    call,
                    ActivityType.STREAM_POLICY,
                    ttfb + 500,
                    allowed=True,
                    reason=call.decisions[0].reason,
                )
            )
        if call.outcome is CallOutcome.PROVIDER_ERROR:
            events.append(
                activity(
                    call, ActivityType.ERROR, call.duration_ms, reason=f"provider answered {call.status}"
                )
            )
        else:
            events.append(
                activity(
                    call,
                    ActivityType.COMPLETED,
                    call.duration_ms,
                    status=call.status,
                    modified=call.response_modified,
                )
            )
    return calls, events


# --- The pages ---------------------------------------------------------------------------------


def test_the_live_monitor_shows_a_row_per_call_updated_in_place(site: Site, page: Page) -> None:
    calls, events = session()
    site.add(calls, events)
    page.goto(site.url)
    rows = page.locator("#events tbody tr")
    visible = page.locator("#events tbody tr:visible")
    # The in-memory bus carries this process's events only, and the badge says so.
    expect(page.locator("#connection")).to_have_text("Live · this process")
    expect(rows).to_have_count(len(calls))  # one row per call, however many events it had
    expect(rows.first).to_contain_text("2d8e6b1f7c3a")  # newest on top
    options = page.locator("select[name=type] option").all_inner_texts()
    assert options == ["all events", *ActivityType]

    # A call that begins after the page loaded arrives through the stream, in a row of its own...
    new_call = "b7e1c04f9a2d4e6f"

    def publish(kind: ActivityType, **data: Any) -> None:
        event = ActivityEvent(call_id=new_call, type=kind, host=ANTHROPIC, model=SONNET, data=data)
        site.run(site.bus.publish(event))

    publish(ActivityType.REQUEST_RECEIVED, path="/v1/messages")
    expect(rows).to_have_count(len(calls) + 1)
    expect(rows.first).to_contain_text(new_call[:12])
    expect(rows.first).to_contain_text("path=/v1/messages")
    expect(rows.first.locator("a")).to_have_attribute("href", f"/calls/{new_call}")
    # ...and its later events update that row where it is.
    publish(ActivityType.COMPLETED, status=200)
    expect(rows).to_have_count(len(calls) + 1)
    expect(rows.first.locator("td").nth(4)).to_have_text("completed")
    rows.first.locator("summary").click()
    expect(rows.first.locator(".call-events li")).to_have_count(2)

    # Paused, new events wait (counted) and the rows stay as they are until resumed.
    page.click("#pause")
    publish(ActivityType.ERROR, reason="late event")
    expect(page.locator("#pause")).to_have_text("Resume (1 new event)")
    expect(rows.first.locator("td").nth(4)).to_have_text("completed")
    page.click("#pause")
    expect(rows.first.locator("td").nth(4)).to_have_text("error")
    expect(rows.first).to_contain_text("late event")

    openai_calls = sum(1 for call in calls if call.host == OPENAI)
    page.fill("input[name=host]", "openai")
    expect(visible).to_have_count(openai_calls)
    expect(page.locator("#events tbody tr:visible", has_text=ANTHROPIC)).to_have_count(0)
    page.fill("input[name=host]", "no-such-host")
    expect(visible).to_have_count(0)
    expect(page.locator("#empty")).to_have_text(f"No call matches these filters ({len(calls) + 1} hidden).")
    page.fill("input[name=host]", "")
    page.select_option("select[name=outcome]", "blocked")
    expect(visible).to_have_count(1)
    expect(visible).to_contain_text("c90d1e5f3a7b")
    page.select_option("select[name=outcome]", "")
    page.select_option("select[name=type]", "completed")
    page.fill("input[name=model]", "HAIKU")
    expect(visible).to_have_count(1)
    expect(visible).to_contain_text("2d8e6b1f7c3a")
    page.select_option("select[name=type]", "")
    page.fill("input[name=model]", "")
    expect(visible).to_have_count(len(calls) + 1)


def test_the_monitor_says_when_its_redis_cannot_be_read_and_when_it_is_back(
    browser: Browser, tmp_path: Path
) -> None:
    """The badge is the bus's own state, not the browser's connection to the dashboard, which
    stays open while Redis is away."""
    with TcpRelay("127.0.0.1", 6379) as relay:
        bus = RedisStreamBus(f"redis://127.0.0.1:{relay.port}", stream=f"luthien:test:{uuid.uuid4().hex}")
        storage = SQLiteStorage(tmp_path / "calls.db")
        server = BackgroundServer(create_app(storage, bus, TOKEN), "dashboard")
        site = Site(server.start(), storage, bus, server)
        site.run(storage.migrate())
        context = browser.new_context()
        try:
            page = context.new_page()
            page.goto(f"{site.url}/login?token={TOKEN}")
            badge = page.locator("#connection")
            expect(badge).to_have_text("Live")
            relay.cut()
            expect(badge).to_have_text("Bus unreachable", timeout=15_000)
            expect(badge).to_have_attribute("title", re.compile(r"cannot be reached"))
            relay.restore()
            expect(badge).to_have_text("Live", timeout=15_000)
            site.run(bus.publish(ActivityEvent(call_id="after-the-outage", type=ActivityType.COMPLETED)))
            expect(page.locator("#events tbody tr")).to_contain_text("after-the-o")
        finally:
            context.close()
            site.run(bus.close())
            site.run(storage.close())
            server.stop()


def test_the_calls_list_searches_filters_and_pages(site: Site, page: Page) -> None:
    site.add(*session())
    page.goto(f"{site.url}/calls")
    rows = page.locator("#calls tbody tr")
    expect(rows).to_have_count(6)
    expect(page.locator("#range")).to_have_text("1\N{EN DASH}6 of 6 calls")
    expect(rows.first).to_contain_text("Write a commit message for: add retry")

    page.fill("input[name=search]", "stripe")
    page.click("button[type=submit]")
    expect(page).to_have_url(re.compile(r"/calls\?search=stripe$"))
    expect(rows).to_have_count(1)
    expect(rows.first).to_contain_text("response modified")

    page.goto(f"{site.url}/calls")
    page.check("input[name=blocked]")
    page.click("button[type=submit]")
    expect(rows).to_have_count(1)
    expect(rows.first).to_contain_text("rm -rf ./build")
    expect(page.locator("input[name=blocked]")).to_be_checked()  # the form shows the filters in force

    page.goto(f"{site.url}/calls")
    page.fill("input[name=host]", OPENAI)
    page.select_option("select[name=outcome]", "provider_error")
    page.click("button[type=submit]")
    expect(rows).to_have_count(1)
    expect(rows.first).to_contain_text("429")

    page.goto(f"{site.url}/calls")
    page.check("input[name=modified]")
    page.click("button[type=submit]")
    expect(rows).to_have_count(1)
    rows.first.locator("a").first.click()
    expect(page).to_have_url(f"{site.url}/calls/e5b2f8a6c1d94e07")

    page.goto(f"{site.url}/calls?limit=4")
    expect(rows).to_have_count(4)
    expect(page.locator("#newer")).to_be_hidden()
    page.click("#older")
    expect(rows).to_have_count(2)
    expect(page.locator("#range")).to_have_text("5\N{EN DASH}6 of 6 calls")
    expect(rows.last).to_contain_text("Add a retry with exponential backoff")


COST = 8  # the column of the estimated cost


def test_the_calls_list_sorts_filters_by_part_of_a_model_and_shows_costs(site: Site, page: Page) -> None:
    site.add(*session())
    page.goto(f"{site.url}/calls")
    rows = page.locator("#calls tbody tr")
    expect(rows).to_have_count(6)
    # At the list prices of LiteLLM's map (Sonnet $3 and $15 per million tokens in and out, GPT-5
    # Codex $1.25 and $10, Haiku $1 and $5); the blocked call and the provider error counted none.
    expect(page.locator("#totals")).to_have_text("In all: 29,955 tokens · $0.0802 estimated")
    newest = rows.first
    expect(newest.locator("td").nth(COST)).to_have_text("$0.0007")
    for shown in ["claude-haiku-4-5", "api.anthropic.com", "Messages", "stream", "3f9c2a1e…", "388 ms"]:
        expect(newest).to_contain_text(shown)
    expect(rows.nth(4)).to_contain_text("Chat Completions")
    expect(rows.nth(4)).to_contain_text("whole")
    # The prompt takes the width the other columns leave.
    prompt, table = newest.locator("td.preview").bounding_box(), page.locator("#calls").bounding_box()
    assert prompt is not None and table is not None
    assert prompt["width"] > 0.3 * table["width"], (prompt, table)

    cost = page.locator("#calls th[data-sort=cost]")
    cost.locator("a").click()
    expect(page).to_have_url(f"{site.url}/calls?sort=cost&order=desc")
    expect(cost).to_have_attribute("aria-sort", "descending")
    expect(rows.first).to_contain_text("Add a retry with exponential backoff")
    expect(rows.locator(f"td:nth-child({COST + 1})")).to_have_text(
        ["$0.0609", "$0.0137", "$0.0049", "$0.0007", "—", "—"]  # none last
    )
    cost.locator("a").click()
    expect(cost).to_have_attribute("aria-sort", "ascending")
    expect(rows.first).to_contain_text("Write a commit message for: add retry")
    page.locator("#calls th[data-sort=ttfb] a").click()
    expect(rows.locator("td:nth-child(7)")).to_have_text(
        ["3.40 s", "1.21 s", "418 ms", "413 ms", "388 ms", "—"]
    )

    # Any part of the model's name, ignoring case; the order stays.
    page.fill("input[name=model]", "HAIKU")
    page.click("button[type=submit]")
    expect(page).to_have_url(f"{site.url}/calls?model=HAIKU&sort=ttfb&order=desc")
    expect(rows).to_have_count(1)
    expect(page.locator("#totals")).to_have_text("In all: 658 tokens · $0.0007 estimated")

    # A model the map does not price has no cost, and says so.
    site.add([call_record("acme000000000001", "Hello there", "Hi", model="acme-coder-2", started_at=NOW)], [])
    page.goto(f"{site.url}/calls?model=acme")
    expect(rows.first.locator("td").nth(COST)).to_have_text("unknown")
    expect(page.locator("#totals")).to_have_text("In all: 1,285 tokens · 1 call without a price")


def test_new_calls_are_announced_and_shown_only_on_click(site: Site, page: Page) -> None:
    site.add(*session())
    page.goto(f"{site.url}/calls")
    rows, notice = page.locator("#calls tbody tr"), page.locator("#new-calls")
    expect(rows).to_have_count(6)
    expect(notice).to_be_hidden()

    first = call_record("a0000000000000n1", "A brand new question", "Yes.", started_at=datetime.now(UTC))
    site.add([first], [])
    expect(notice).to_have_text("1 new call: show", timeout=15_000)
    second = call_record("a0000000000000n2", "Another new one", "No.", started_at=datetime.now(UTC))
    site.add([second], [])
    expect(notice).to_have_text("2 new calls: show", timeout=15_000)
    # The list the reader is looking at has not moved.
    expect(rows).to_have_count(6)
    expect(page.locator("#range")).to_have_text("1\N{EN DASH}6 of 6 calls")

    notice.click()
    expect(rows).to_have_count(8)
    expect(rows.first).to_contain_text("Another new one")
    expect(page.locator("#range")).to_have_text("1\N{EN DASH}8 of 8 calls")
    expect(notice).to_be_hidden()


def test_a_modified_stream_shows_a_side_by_side_diff(site: Site, page: Page) -> None:
    site.add(*session())
    page.goto(f"{site.url}/calls/e5b2f8a6c1d94e07")
    expect(page.locator("h1")).to_have_text(SONNET)
    facts = page.locator("dl.facts")
    facts_shown = ["api.anthropic.com", "claude-code", "413 ms", "1.84 s", "1200 in · 85 out · 1285 total"]
    for fact in [*facts_shown, "$0.0049 estimated"]:  # Sonnet's list price: 1200 at $3/M plus 85 at $15/M
        expect(facts).to_contain_text(fact)
    expect(page.locator(".message.role-user")).to_contain_text("Show me how to configure the Stripe client")
    expect(page.locator(".message.role-assistant")).to_contain_text("[REDACTED:stripe_key]")
    expect(page.get_by_role("row", name=re.compile("stream.*allowed.*redacted 1 secret"))).to_be_visible()

    output = page.locator("[data-diff=output_text]")
    expect(output.locator("h3")).to_contain_text("changed")
    changed = output.locator("tr.op-replace")
    expect(changed).to_have_count(1)
    expect(changed.locator("td.left")).to_have_text('stripe.api_key = "sk_live_51Hc8kQ2eZvKYlo2CtestKey"')
    expect(changed.locator("td.right")).to_have_text('stripe.api_key = "[REDACTED:stripe_key]"')
    expect(page.locator("[data-diff=response] tr.op-replace")).to_have_count(1)
    expect(page.locator("[data-diff=request]")).to_contain_text("No changes")
    expect(page.locator("[data-diff=tool_calls]")).to_contain_text("No changes")
    expect(page.get_by_role("row", name="x-api-key [redacted]")).to_be_visible()


def test_a_blocked_request_says_it_was_never_sent(site: Site, page: Page) -> None:
    site.add(*session())
    page.goto(f"{site.url}/calls/c90d1e5f3a7b4c22")
    expect(
        page.get_by_role("row", name=re.compile("request.*request blocked.*no-recursive-delete.*rm"))
    ).to_be_visible()
    request = page.locator("[data-diff=request]")
    expect(request.locator("h3")).to_contain_text("one side only")
    expect(request).to_contain_text("Sent to provider: nothing.")
    expect(request.locator("table.diff")).to_have_count(0)
    expect(page.locator("[data-raw] pre").first).to_contain_text("rm -rf ./build")


def test_a_long_changed_line_is_folded_around_its_marked_words(site: Site, page: Page) -> None:
    long_text = " ".join(f"word{n}" for n in range(400))
    call = call_record(
        "f01d000000000001",
        "Write a lot",
        f"{long_text} sk-live-123 end",
        final_answer=f"{long_text} [REDACTED] end",
    )
    site.add([call], [])
    page.goto(f"{site.url}/calls/{call.call_id}")
    cell = page.locator("[data-diff=output_text] tr.op-replace td.right")
    expect(cell.locator("mark")).to_have_text(["[REDACTED]"])
    unfold = cell.locator("button.unfold")
    expect(unfold).to_have_text(re.compile(r"… \d+ more characters …"))
    assert len(cell.inner_text()) < 600  # of about 3,600
    unfold.click()
    expect(cell).to_have_text(f"{long_text} [REDACTED] end")
    expect(cell.locator("mark")).to_have_text(["[REDACTED]"])


def test_payloads_render_as_text_and_never_run(site: Site, page: Page) -> None:
    evil = f"{XSS_IMG} {XSS_SCRIPT}"
    call = call_record(
        "xss0000000000001", f"Summarise {evil}", f"Sure: {evil}", host=f"{XSS_IMG}.example", model=XSS_SCRIPT
    ).model_copy(update={"session_id": f"{XSS_IMG}/{XSS_SCRIPT}", "agent": XSS_SCRIPT})
    site.add(
        [call],
        [
            ActivityEvent(
                call_id=call.call_id,
                type=ActivityType.COMPLETED,
                host=call.host,
                model=call.model,
                data={"note": evil},
            )
        ],
    )

    session_path = f"/sessions/{quote(call.session_id, safe='')}"
    for path in ["/", "/calls", f"/calls/{call.call_id}", "/sessions", session_path]:
        page.goto(site.url + path)
        expect(page.locator("main")).to_contain_text(XSS_SCRIPT)
        expect(page.locator("main")).to_contain_text(XSS_IMG)
        assert page.locator("main img, main script").count() == 0
        assert page.evaluate("typeof window.__xss") == "undefined", path
    expect(page.locator(".message.role-user .block")).to_have_text(f"Summarise {evil}")


CLAUDE_CODE, CODEX = "3f9c2a1e-8b7d-4c6f-9e21-5d4a3b2c1f00", "0198c7e2-5b1a-7f30-9d4e-2a6c8b1f0e57"


def test_sessions_are_listed_and_read_as_conversations(site: Site, page: Page, tmp_path: Path) -> None:
    calls, events = session()
    agents = {ANTHROPIC: ("claude-cli", "key-claude"), OPENAI: ("codex_cli_rs", "key-codex")}
    site.add(
        [
            call.model_copy(update={"agent": agents[call.host][0], "api_key_hash": agents[call.host][1]})
            for call in calls
        ],
        events,
    )
    page.goto(f"{site.url}/sessions")
    rows = page.locator("#sessions tbody tr")
    expect(rows).to_have_count(2)
    expect(page.locator("#range")).to_have_text("1\N{EN DASH}2 of 2 sessions")
    claude = rows.filter(has_text="claude-cli")
    expect(claude).to_contain_text(CLAUDE_CODE[:8])
    expect(claude.locator("td").nth(5)).to_have_text("4")  # turns
    expect(claude.locator("td").nth(6)).to_have_text("1")  # the blocked rm -rf
    expect(claude).to_contain_text("Add a retry with exponential backoff")  # its first prompt

    page.select_option("select[name=agent]", "codex_cli_rs")
    page.click("button[type=submit]")
    expect(page).to_have_url(f"{site.url}/sessions?agent=codex_cli_rs")
    expect(rows).to_have_count(1)
    expect(page.locator("select[name=agent]")).to_have_value("codex_cli_rs")
    page.goto(f"{site.url}/sessions?blocked=true")
    expect(rows).to_have_count(1)

    rows.first.locator("a.session").click()
    expect(page).to_have_url(f"{site.url}/sessions/{CLAUDE_CODE}")
    turns = page.locator("article.turn")
    expect(turns).to_have_count(4)
    expect(turns.nth(0)).to_contain_text("Add a retry with exponential backoff")
    blocked = turns.nth(1)
    expect(blocked.locator(".policy-actions")).to_contain_text("request blocked")
    expect(blocked.locator(".policy-actions")).to_contain_text("matches blocked command pattern")
    expect(blocked).to_contain_text("No answer reached the agent (blocked).")
    redacted = turns.nth(2)
    expect(redacted.locator(".message.role-assistant")).to_contain_text("[REDACTED:stripe_key]")
    expect(redacted.locator(".policy-actions")).to_contain_text("redacted 1 secret")
    expect(redacted.locator(".policy-actions")).to_contain_text("answer modified")
    expect(page.locator("#export-json")).to_have_attribute(
        "href", f"/api/sessions/{CLAUDE_CODE}/export?format=json"
    )
    with page.expect_download() as download:
        page.click("#export-md")
    saved = tmp_path / "session.md"
    download.value.save_as(saved)
    assert saved.read_text().startswith(f"# Session {CLAUDE_CODE}")

    # A turn's call page steps through the session.
    redacted.locator("a.call-link").click()
    expect(page.locator("#session-link")).to_have_text("Turn 3 of 4 in its session")
    page.click("#next-turn")
    expect(page).to_have_url(f"{site.url}/calls/2d8e6b1f7c3a4d90")
    expect(page.locator("#next-turn")).to_have_count(0)
    page.click("#prev-turn")
    expect(page).to_have_url(f"{site.url}/calls/e5b2f8a6c1d94e07")
    page.click("#session-link")
    expect(page).to_have_url(f"{site.url}/sessions/{CLAUDE_CODE}")

    # The calls list links a call's agent and session, and filters by them.
    page.goto(f"{site.url}/calls")
    page.locator("#calls tbody tr", has_text="Generate a commit message").locator("a.agent").click()
    expect(page).to_have_url(f"{site.url}/calls?agent=codex_cli_rs")
    expect(page.locator("#calls tbody tr")).to_have_count(2)
    expect(page.locator("input[name=agent]")).to_have_value("codex_cli_rs")
    page.fill("input[name=agent]", "")
    page.fill("input[name=api_key_hash]", "key-claude")
    page.fill("input[name=session_id]", CLAUDE_CODE)
    page.click("button[type=submit]")
    expect(page.locator("#calls tbody tr")).to_have_count(4)
    page.locator("#calls tbody tr").first.locator("a.session").click()
    expect(page).to_have_url(f"{site.url}/sessions/{CLAUDE_CODE}")


def test_without_sessions_the_pages_say_so(site: Site, page: Page) -> None:
    site.add([call_record("nosession000001", "Hello", "Hi")], [])  # a call naming no session
    page.goto(f"{site.url}/sessions")
    expect(page.locator("#empty")).to_be_visible()
    expect(page.locator("#range")).to_have_text("0\N{EN DASH}0 of 0 sessions")
    page.goto(f"{site.url}/calls/nosession000001")
    expect(page.locator("dl.facts")).to_be_visible()
    expect(page.locator(".session-nav")).to_have_count(0)


def test_a_long_session_shows_its_turns_a_hundred_at_a_time(site: Site, page: Page) -> None:
    turns = [
        call_record(f"long{n:012d}", f"Step {n}", f"Done {n}", started_at=NOW + timedelta(seconds=n))
        for n in range(1, 103)
    ]
    site.add([call.model_copy(update={"session_id": "long-session"}) for call in turns], [])
    page.goto(f"{site.url}/sessions/long-session")
    shown = page.locator("article.turn")
    expect(shown).to_have_count(100)
    expect(shown.last).to_contain_text("Step 100")
    page.click("#more-turns")
    expect(shown).to_have_count(102)
    expect(shown.last.locator(".turn-no")).to_have_text("Turn 102")
    expect(shown.last).to_contain_text("Done 102")
    expect(page.locator("#more-turns")).to_be_hidden()


DARK_BG, DARK_CARD = "rgb(15, 18, 24)", "rgb(23, 27, 35)"


def test_every_page_follows_a_dark_system_setting(site: Site, page: Page) -> None:
    site.add(*session())
    page.emulate_media(color_scheme="dark")
    pages = [
        ("/", "#events"),
        ("/calls", "#calls"),
        ("/sessions", "#sessions"),
        (f"/sessions/{CLAUDE_CODE}", ".card"),
        ("/calls/e5b2f8a6c1d94e07", ".card"),  # last: its diff is looked at next
    ]
    for path, card in pages:
        page.goto(site.url + path)
        expect(page.locator("body")).to_have_css("background-color", DARK_BG)
        expect(page.locator(card).first).to_have_css("background-color", DARK_CARD)
        expect(page.locator("main h1")).to_have_css("color", "rgb(227, 230, 237)")
    expect(page.locator(".diff .right mark").first).to_have_css("background-color", "rgb(34, 96, 58)")
    page.goto(f"{site.url}/calls")
    expect(page.locator("#calls tbody tr")).to_have_count(6)
    expect(page.locator("input[name=search]")).to_have_css("background-color", "rgb(16, 20, 27)")


def test_the_login_page_is_styled_light_and_dark(browser: Browser, site: Site) -> None:
    context = browser.new_context(viewport={"width": 1000, "height": 600})
    anonymous = context.new_page()
    refused: list[str] = []  # what the Content-Security-Policy refused to load or apply
    anonymous.on(
        "console",
        lambda message: refused.append(message.text) if "Content Security" in message.text else None,
    )
    response = anonymous.goto(f"{site.url}/calls")
    assert response is not None and response.status == 401
    expect(anonymous.locator("main h1")).to_have_text("Log in to the Luthien dashboard")
    expect(anonymous.locator("body")).to_have_css("background-color", "rgb(246, 247, 249)")
    expect(anonymous.locator("main")).to_have_css("background-color", "rgb(255, 255, 255)")
    anonymous.emulate_media(color_scheme="dark")
    expect(anonymous.locator("body")).to_have_css("background-color", DARK_BG)
    expect(anonymous.locator("main")).to_have_css("background-color", DARK_CARD)
    context.close()
    assert refused == []
