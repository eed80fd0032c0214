"""The dashboard's policy page in a real browser (Debian's Chromium through Playwright): the policy
in force, editing with validation as you type, activation, rollback, comparing versions, a call
linking to the version that handled it, what a read-only token sees, and the shadow policy's
card (set, a call it would have blocked, promote)."""

import re
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
from playwright.sync_api import Browser, Page, expect

from controlplane.access import Credential, Tokens
from controlplane.activity import InMemoryBus
from controlplane.policy_file import policy_from_document
from controlplane.shadow import shadow_decision
from controlplane.storage import SQLiteStorage
from controlplane.storage.base import CallQuery
from dashboard.app import create_app
from luthien.dry_run import DryRun, replay_call
from tests.background_server import BackgroundServer
from tests.test_dashboard_api import TOKEN, call_record, sample_calls
from tests.test_dashboard_browser import Site, browser, watched_page

__all__ = ["browser"]  # the module-scoped Chromium fixture

READ_TOKEN = "read-token-for-the-policy-page"
UPPERCASE = "policy:\n  class: UppercaseNthWordPolicy\n  config: {n: 2}\n"
EVERY_THIRD = "policy:\n  class: UppercaseNthWordPolicy\n  config: {n: 3}\n"


@pytest.fixture
def site(tmp_path: Path) -> Iterator[Site]:
    storage, bus = SQLiteStorage(tmp_path / "calls.db"), InMemoryBus()
    readers = Tokens([(Credential(name="auditor", role="read"), READ_TOKEN)])
    server = BackgroundServer(create_app(storage, bus, TOKEN, named=readers, dry_run=DryRun()), "dashboard")
    served = Site(server.start(), storage, bus, server)
    served.run(storage.migrate())
    yield served
    served.run(storage.close())
    server.stop()


@pytest.fixture
def page(browser: Browser, site: Site) -> Iterator[Page]:
    with watched_page(browser, f"{site.url}/login?token={TOKEN}") as page:
        yield page


def type_document(page: Page, text: str) -> None:
    page.fill("textarea[name=document]", text)


def activate(page: Page, text: str, note: str) -> str:
    """Types ``text``, waits for it to be valid, activates it; returns its version."""
    type_document(page, text)
    status = page.locator("#edit [role=status]")
    expect(status).to_contain_text("would be version")
    version = re.search(r"version (\w+)", status.inner_text())
    assert version is not None
    page.fill("input[name=note]", note)
    page.get_by_role("button", name="Activate").click()
    expect(page.locator(".done")).to_have_text(f"Version {version[1]} is now in force.")
    return version[1]


def test_edit_validate_activate_compare_and_roll_back(site: Site, page: Page) -> None:
    page.goto(f"{site.url}/policy")
    expect(page.locator("#in-force h1")).to_have_text("NoOpPolicy")
    expect(page.locator("#in-force")).to_contain_text("No version has been activated yet")

    # Every problem, where it is, as you type; nothing to activate meanwhile.
    type_document(page, "policy:\n  class: UppercaseNthWordPolicy\n  config: {n: two, colour: red}\n")
    status = page.locator("#edit [role=status]")
    expect(status.locator(".badge")).to_have_text("invalid")
    expect(status.locator(".problems li")).to_have_count(2)
    expect(status).to_contain_text("n")
    expect(status).to_contain_text("colour")
    expect(page.get_by_role("button", name="Activate")).to_be_disabled()
    type_document(page, "policy: [")
    expect(status).to_contain_text("not valid YAML")

    first = activate(page, UPPERCASE, "every 2nd word")
    expect(page.locator("#in-force h1")).to_have_text("UppercaseNthWordPolicy")
    expect(page.locator("#in-force dl")).to_contain_text(first)
    expect(page.locator("#in-force dl")).to_contain_text("dashboard token")
    expect(page.locator("#in-force .policy-document")).to_contain_text('"n": 2')
    # The version in force is not offered again.
    expect(page.locator("#edit [role=status]")).to_contain_text("nothing to activate")

    second = activate(page, EVERY_THIRD, "every 3rd word")
    rows = page.locator("#history tbody tr")
    expect(rows).to_have_count(2)
    changed = page.locator("#compare [data-diff=policy] tr.op-replace")
    expect(changed).to_have_count(1)
    expect(changed.locator("td.left mark")).to_have_text("2")
    expect(changed.locator("td.right mark")).to_have_text("3")

    page.locator(f"#history button[data-activate='{first}']").click()
    expect(page.locator(".done")).to_have_text(f"Version {first} is now in force.")
    expect(rows).to_have_count(3)
    expect(rows.first).to_contain_text(first)
    expect(rows.first).to_contain_text("Roll back from the dashboard")
    expect(rows.first.locator(".badge")).to_have_text("in force")
    expect(page.locator(f"#history button[data-activate='{second}']")).to_be_visible()
    expect(page.locator("#in-force .policy-document")).to_contain_text('"n": 2')


def test_a_credential_in_a_document_is_refused_before_it_is_stored(site: Site, page: Page) -> None:
    page.goto(f"{site.url}/policy")
    type_document(
        page,
        "policy:\n  class: ToolCallJudgePolicy\n  config: {model: openai/gpt-4o-mini, api_key: sk-live-abcdef0123456789}\n",
    )
    status = page.locator("#edit [role=status]")
    expect(status.locator(".badge")).to_have_text("invalid")
    expect(status).to_contain_text("policy.config.api_key: holds a credential")
    expect(page.get_by_role("button", name="Activate")).to_be_disabled()


def test_a_call_links_to_the_version_that_handled_it(site: Site, page: Page) -> None:
    page.goto(f"{site.url}/policy")
    handled = activate(page, UPPERCASE, "")
    activate(page, EVERY_THIRD, "")
    call = call_record("c1", "Hello", "Hi there").model_copy(update={"policy_version": handled})
    site.run(site.storage.write([call]))

    page.goto(f"{site.url}/calls/c1")
    page.get_by_role("link", name=handled).click()
    expect(page).to_have_url(f"{site.url}/policy?version={handled}")
    version = page.locator("#version")
    expect(version.locator("h2")).to_have_text(f"Version {handled}")
    expect(version.locator(".heading .badge")).to_have_text("not in force")
    expect(version.locator("[data-diff=against-active] tr.op-replace")).to_have_count(1)
    expect(page.locator("#history tr.selected")).to_contain_text(handled)


def test_a_read_token_sees_the_policy_but_cannot_change_it(browser: Browser, site: Site, page: Page) -> None:
    page.goto(f"{site.url}/policy")
    first = activate(page, UPPERCASE, "")
    activate(page, EVERY_THIRD, "")
    with watched_page(browser, f"{site.url}/login?token={READ_TOKEN}") as reader:
        reader.goto(f"{site.url}/policy")
        expect(reader.locator("#in-force h1")).to_have_text("UppercaseNthWordPolicy")
        expect(reader.locator("#history tbody tr")).to_have_count(2)
        expect(reader.locator("#edit")).to_contain_text("The token “auditor” may read only")
        expect(reader.locator("textarea")).to_have_count(0)
        expect(reader.locator(f"button[data-activate='{first}']")).to_have_count(0)


SLOWER = (
    "policy:\n  class: StringReplacementPolicy\n"
    "  config: {replacements: [{find: quick, replace: slow}], apply_to: responses}\n"
)


def test_a_dry_run_shows_what_a_candidate_would_have_changed(site: Site, page: Page) -> None:
    site.run(site.storage.write(sample_calls()))  # c3's streamed answer says "The quick brown fox"
    page.goto(f"{site.url}/policy")
    type_document(page, SLOWER)
    expect(page.locator("#edit [role=status]")).to_contain_text("would be version")
    dry = page.locator("#dry-run")
    dry.locator("select[name=since]").select_option(label="all recorded")
    dry.get_by_role("button", name="Run").click()
    expect(dry.locator(".dry-summary")).to_contain_text("5 calls replayed")
    expect(dry.locator(".dry-summary")).to_contain_text("1 affected (0 blocked, 1 modified)")
    affected = dry.locator("table.affected > tbody > tr")
    expect(affected).to_have_count(1)
    expect(affected.first).to_contain_text("c3")
    expect(affected.first.locator("td").nth(4)).to_have_text("modified")
    affected.first.locator("summary").click()
    text = affected.first.locator("[data-diff=output_text]")
    expect(text.locator("td.left mark")).to_contain_text("quick")
    expect(text.locator("td.right mark")).to_contain_text("slow")

    # A stored version is a candidate too; nothing was activated or recorded by the dry run.
    version = activate(page, SLOWER, "slower foxes")
    dry.locator("select[name=candidate]").select_option(version)
    dry.locator("select[name=since]").select_option(label="all recorded")
    dry.get_by_role("button", name="Run").click()
    expect(dry.locator(".dry-summary")).to_contain_text("1 affected (0 blocked, 1 modified)")
    assert [c.call_id for c in site.run(site.storage.list_calls(CallQuery(limit=50))).calls] == [
        "c4",
        "c3",
        "c2",
        "c1",
        "c0",
    ]


def test_a_broken_candidate_is_not_run(site: Site, page: Page) -> None:
    page.goto(f"{site.url}/policy")
    type_document(page, "policy:\n  class: NoSuchPolicy\n")
    page.locator("#dry-run select[name=since]").select_option(label="all recorded")
    page.locator("#dry-run").get_by_role("button", name="Run").click()
    expect(page.locator("#dry-run [role=alert]")).to_contain_text("not a valid policy yet")
    expect(page.locator("#edit [role=status]")).to_contain_text("NoSuchPolicy")
    # Asked directly, the API says what is wrong, and what it needs.
    api = httpx.Client(base_url=site.url, headers={"authorization": f"Bearer {TOKEN}"})
    broken = api.post("/api/policy/dry-run", json={"text": "policy:\n  class: NoSuchPolicy\n"})
    assert broken.status_code == 400 and "NoSuchPolicy" in broken.json()["error"]
    both = api.post("/api/policy/dry-run", json={"text": SLOWER, "version": "abc"})
    assert both.status_code == 422 and "not both" in both.json()["error"]
    reader = api.post(
        "/api/policy/dry-run", json={"text": SLOWER}, headers={"authorization": f"Bearer {READ_TOKEN}"}
    )
    assert reader.status_code == 403


BLOCK_WORD = "policy:\n  class: tests.policies:BlockRequestsContaining\n  config: {word: forbidden-word}\n"


def test_a_shadow_is_set_from_the_editor_marks_a_call_it_would_block_and_is_promoted(
    site: Site, page: Page
) -> None:
    site.run(site.storage.write([call_record("sh-1", "say forbidden-word", "No.")]))
    page.goto(f"{site.url}/policy")
    card = page.locator("#shadow")
    expect(card).to_contain_text("No shadow policy runs.")

    type_document(page, BLOCK_WORD)
    expect(page.locator("#edit [role=status]")).to_contain_text("would be version")
    card.get_by_role("button", name="Set as shadow").click()
    expect(page.locator(".done")).to_contain_text("The shadow policy is set")
    expect(card.locator("h1")).to_have_text("tests.policies:BlockRequestsContaining")
    expect(card.locator(".badge")).to_have_text("observing")
    expect(page.locator("#in-force h1")).to_have_text("NoOpPolicy")  # nothing enforced

    # The call, replayed by the shadow as a live call's record is (controlplane.shadow).
    shadow = site.run(site.storage.shadow_policy())
    assert shadow is not None and shadow.version is not None
    version = shadow.version.version
    (call,) = site.run(site.storage.list_calls(CallQuery(call_id="sh-1"))).calls
    record = site.run(site.storage.get_call("sh-1"))
    assert record is not None
    policy = policy_from_document(shadow.version.document, "shadow")
    replay = site.run(replay_call(record, policy, version, InMemoryBus(retain=1)))
    site.run(site.storage.write_shadow_decisions([shadow_decision(replay, version)]))

    page.reload()
    expect(card.locator(".shadow-counts")).to_have_text(
        "1 would have blocked, 0 would have changed, 0 the same"
    )
    page.goto(f"{site.url}/calls")
    expect(page.locator("#calls tbody tr [data-shadow]")).to_have_text("shadow: would have blocked")
    page.goto(f"{site.url}/calls/{call.call_id}")
    expect(page.locator("#shadow")).to_contain_text("shadow: would have blocked")
    expect(page.locator("#shadow")).to_contain_text(f"version {version}")

    page.goto(f"{site.url}/policy")
    card.get_by_role("button", name="Promote").click()
    expect(page.locator(".done")).to_have_text(f"Version {version} is now in force; no shadow runs.")
    expect(page.locator("#in-force h1")).to_have_text("tests.policies:BlockRequestsContaining")
    expect(card).to_contain_text("No shadow policy runs.")
    expect(page.locator("#history tbody tr").first).to_contain_text("promoted from the dashboard")
