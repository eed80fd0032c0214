"""The whole product in one process, as a user runs it: `luthien up` (proxy, recording and
dashboard), an official SDK making calls through the proxy, and the dashboard in Chromium."""

import re
import uuid
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
from playwright.sync_api import Browser, Page, expect

from tests.conftest import RunningProxy, free_port, start_proxy, wait_until_listening
from tests.fake_provider import FakeProvider
from tests.fake_provider.scenarios import DEFAULT_TEXT
from tests.test_dashboard_browser import XSS_IMG, XSS_SCRIPT, browser, screenshot

__all__ = ["browser"]  # the Chromium fixture, shared with the dashboard's own browser tests
pytestmark = pytest.mark.timeout(240)


@pytest.fixture(scope="module")
def luthien_up(fake: FakeProvider, tmp_path_factory: pytest.TempPathFactory) -> Iterator[RunningProxy]:
    root = tmp_path_factory.mktemp("up")
    policy = {"class": "UppercaseNthWordPolicy", "config": {"n": 2}}
    args = ["--dashboard-port", str(free_port())]
    proxy = start_proxy("up", policy, fake, root, root / "data", extra_args=args, command="up")
    try:
        wait_until_listening(proxy)
        yield proxy
    finally:
        proxy.terminate()
        proxy.wait()


def login_link(proxy: RunningProxy) -> str:
    match = re.search(r"Luthien dashboard: (http://\S+/login\?token=\S+)", proxy.log())
    assert match, proxy.log()
    return match.group(1)


@pytest.fixture
def page(browser: Browser, luthien_up: RunningProxy) -> Iterator[Page]:
    context = browser.new_context(viewport={"width": 1440, "height": 900})
    page = context.new_page()
    errors: list[str] = []
    page.on("console", lambda message: errors.append(message.text) if message.type == "error" else None)
    page.on("pageerror", lambda error: errors.append(str(error)))
    page.goto(login_link(luthien_up))
    yield page
    context.close()
    assert errors == []


def test_a_call_appears_live_and_its_rewritten_stream_is_shown_as_a_diff(
    luthien_up: RunningProxy, page: Page, tmp_path: Path
) -> None:
    link = login_link(luthien_up)
    base, token = link.split("/login?token=")
    expect(page.locator("#connection")).to_have_text("Live")
    model = f"claude-sonnet-4-6-{uuid.uuid4().hex[:8]}"
    prompt = f"Summarise {XSS_IMG} and {XSS_SCRIPT} please"

    (result,) = luthien_up.sdk({"api": "messages", "stream": True, "prompt": prompt, "model": model})
    assert result["ok"] and result["text"] != DEFAULT_TEXT  # the policy rewrote the stream

    # The live monitor shows the call's events within a few seconds, without a reload.
    live = page.locator("#events tbody tr", has_text=model)
    expect(live.filter(has_text="completed")).to_have_count(1, timeout=5000)
    screenshot(page, tmp_path, "e2e-monitor", for_docs=False)

    # The API has both sides of the stream, and they differ.
    with httpx.Client(base_url=base, headers={"authorization": f"Bearer {token}"}) as api:
        for _ in range(50):
            calls = api.get("/api/calls", params={"model": model}).json()["calls"]
            if calls:
                break
            page.wait_for_timeout(100)
        (summary,) = calls
        detail = api.get(f"/api/calls/{summary['call_id']}").json()
    call = detail["call"]
    assert call["response_modified"] and call["stream"]
    assert re.fullmatch(r"[0-9a-f]{12}", call["policy_version"])  # the policy file's version
    assert call["original_output"]["text"] == DEFAULT_TEXT
    assert call["final_output"]["text"] == result["text"]
    assert detail["diffs"]["output_text"]["changed"] and detail["diffs"]["response"]["changed"]

    # The page shows the diff: the original text on the left, what the agent got on the right.
    page.goto(f"{base}/calls/{summary['call_id']}")
    expect(page.locator("dl.facts")).to_contain_text(call["policy_version"])
    text_diff = page.locator('[data-diff="output_text"]')
    expect(text_diff.locator("td.code.left")).to_contain_text([DEFAULT_TEXT])
    expect(text_diff.locator("td.code.right")).to_contain_text([result["text"]])
    # The hostile prompt is shown as text and never runs.
    expect(page.locator("#content")).to_contain_text(XSS_IMG)
    expect(page.locator("#content")).to_contain_text(XSS_SCRIPT)
    assert page.evaluate("typeof window.__xss") == "undefined"
    assert page.locator("#content img").count() == 0
    screenshot(page, tmp_path, "e2e-detail", for_docs=False)
