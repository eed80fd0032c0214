"""The whole product in one process, as a user runs it: `luthien up` (proxy, recording and
dashboard), an official SDK making calls through the proxy, and the dashboard in Chromium."""

import json
import re
import time
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import httpx
import pytest
from playwright.sync_api import Browser, Page, expect

from tests.conftest import RunningProxy, free_port, start_proxy, wait_until_listening
from tests.fake_provider import FakeProvider
from tests.fake_provider.scenarios import DEFAULT_TEXT
from tests.test_dashboard_browser import XSS_IMG, XSS_SCRIPT, browser, watched_page
from tests.test_wire_fidelity import ENDPOINTS, body, client_for

__all__ = ["browser"]  # the Chromium fixture, shared with the dashboard's own browser tests
pytestmark = pytest.mark.timeout(240)


@pytest.fixture(scope="module")
def luthien_up(fake: FakeProvider, tmp_path_factory: pytest.TempPathFactory) -> Iterator[RunningProxy]:
    with running_up({"class": "UppercaseNthWordPolicy", "config": {"n": 2}}, fake, tmp_path_factory) as proxy:
        yield proxy


@contextmanager
def running_up(
    policy: dict[str, Any], fake: FakeProvider, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[RunningProxy]:
    """``luthien up`` (proxy and dashboard) under ``policy``, upstream the fake provider."""
    root = tmp_path_factory.mktemp("up")
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
    with watched_page(browser, login_link(luthien_up)) as page:
        yield page


def test_a_call_appears_live_and_its_rewritten_stream_is_shown_as_a_diff(
    luthien_up: RunningProxy, page: Page, tmp_path: Path
) -> None:
    link = login_link(luthien_up)
    base, token = link.split("/login?token=")
    expect(page.locator("#connection")).to_have_text("Live · this process")  # luthien up, in-memory bus
    model = f"claude-sonnet-4-6-{uuid.uuid4().hex[:8]}"
    prompt = f"Summarise {XSS_IMG} and {XSS_SCRIPT} please"

    (result,) = luthien_up.sdk({"api": "messages", "stream": True, "prompt": prompt, "model": model})
    assert result["ok"] and result["text"] != DEFAULT_TEXT  # the policy rewrote the stream

    # The live monitor shows the call's events within a few seconds, without a reload.
    live = page.locator("#events tbody tr", has_text=model)
    expect(live.filter(has_text="completed")).to_have_count(1, timeout=5000)

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

    # The call's policy version leads to the policy in force: the same version, from the file.
    page.get_by_role("link", name=call["policy_version"]).click()
    expect(page.locator("#version h2")).to_have_text(f"Version {call['policy_version']}")
    expect(page.locator("#version .heading .badge")).to_have_text("in force")
    expect(page.locator("#in-force h1")).to_have_text("UppercaseNthWordPolicy")
    expect(page.locator("#in-force .heading")).to_contain_text("source: policy file")
    expect(page.locator("#in-force dl")).to_contain_text(call["policy_version"])
    expect(page.locator("#in-force .policy-document")).to_contain_text('"n": 2')
    expect(page.locator("#edit")).to_contain_text("The policy file is the source of truth")


# --- What an investigator needs: blocks of every kind, readable diffs, raw bodies ---------------

REMOVED_COMMAND = "rm -rf ./build"
INVESTIGATOR_POLICY = {
    "class": "SerialPolicy",
    "config": {
        "policies": [
            {
                "class": "ToolCallBlocklistPolicy",
                "config": {"block": [{"id": "no-rm", "arguments": "rm -rf"}]},
            },
            {
                "class": "StringReplacementPolicy",
                "config": {"replacements": [{"find": "Hello", "replace": "Howdy"}], "apply_to": "responses"},
            },
        ]
    },
}


@pytest.fixture(scope="module")
def investigated(fake: FakeProvider, tmp_path_factory: pytest.TempPathFactory) -> Iterator[RunningProxy]:
    with running_up(INVESTIGATOR_POLICY, fake, tmp_path_factory) as proxy:
        yield proxy


@pytest.fixture
def investigator(browser: Browser, investigated: RunningProxy) -> Iterator[Page]:
    with watched_page(browser, login_link(investigated)) as page:
        yield page


def recorded_call(proxy: RunningProxy, model: str) -> dict[str, object]:
    """The summary of the one recorded call to ``model``, once it is stored."""
    base, token = login_link(proxy).split("/login?token=")
    with httpx.Client(base_url=base, headers={"authorization": f"Bearer {token}"}) as api:
        for _ in range(100):
            calls = api.get("/api/calls", params={"model": model}).json()["calls"]
            if calls:
                (call,) = calls
                return dict(call)
            time.sleep(0.1)
    raise AssertionError(f"no call to {model} was recorded")


def test_a_removed_tool_call_is_listed_under_blocked_only_with_its_rule_and_kind(
    investigated: RunningProxy, investigator: Page, tmp_path: Path
) -> None:
    base = login_link(investigated).split("/login?token=")[0]
    page = investigator
    expect(page.locator("#connection")).to_have_text("Live · this process")  # luthien up, in-memory bus
    tag = uuid.uuid4().hex[:8]
    removed_model, plain_model = f"gpt-removed-{tag}", f"gpt-plain-{tag}"
    prompt = f"[scenario:tool_call {REMOVED_COMMAND}]"
    removed, plain = investigated.sdk(
        {"api": "chat", "stream": True, "prompt": prompt, "model": removed_model},
        {"api": "chat", "stream": True, "prompt": "[scenario:tool_call ls -la]", "model": plain_model},
    )
    assert removed["ok"] and removed["tool_calls"] == []
    assert "[Luthien] Blocked the tool call `bash`" in removed["text"]
    assert plain["ok"] and [call["name"] for call in plain["tool_calls"]] == ["bash"]

    # The monitor's Outcome=blocked shows the call that lost its tool call, and not the other.
    page.select_option("#filters select[name=outcome]", "blocked")
    blocked_rows = page.locator("#events tbody tr:visible")
    expect(blocked_rows.filter(has_text=removed_model)).to_have_count(1, timeout=5000)
    expect(blocked_rows.filter(has_text=removed_model)).to_contain_text("tool_call_removed")
    expect(blocked_rows.filter(has_text=plain_model)).to_have_count(0)

    recorded_call(investigated, removed_model)
    recorded_call(investigated, plain_model)
    page.goto(f"{base}/calls")
    page.check("input[name=blocked]")
    page.click("#filters button[type=submit]")
    expect(page).to_have_url(re.compile(r"blocked=true"))
    listed = page.locator("#calls tbody tr", has_text=removed_model)
    expect(listed).to_contain_text("tool call removed")
    expect(listed).to_contain_text("blocked")
    expect(page.locator("#calls tbody tr", has_text=plain_model)).to_have_count(0)

    # The Block filter narrows to the kind.
    page.select_option("#filters select[name=block_kind]", "request_blocked")
    page.click("#filters button[type=submit]")
    expect(page.locator("#calls tbody tr", has_text=removed_model)).to_have_count(0)
    page.select_option("#filters select[name=block_kind]", "tool_call_removed")
    page.click("#filters button[type=submit]")
    expect(page).to_have_url(re.compile(r"block_kind=tool_call_removed"))
    listed.locator("a").first.click()
    decision = page.locator("section", has=page.locator("h2", has_text="Policy decisions")).locator(
        "tbody tr"
    )
    expect(decision).to_have_count(1)
    expect(decision).to_contain_text("tool call removed")
    expect(decision).to_contain_text("no-rm")
    expect(page.locator(".heading .badge", has_text="tool call removed")).to_have_count(1)


@pytest.mark.parametrize("api", ["chat", "messages"])
def test_an_unchanged_stream_chunk_after_a_rewrite_is_not_marked_changed(
    investigated: RunningProxy, investigator: Page, api: str
) -> None:
    base = login_link(investigated).split("/login?token=")[0]
    model = f"model-{api}-{uuid.uuid4().hex[:8]}"
    (result,) = investigated.sdk({"api": api, "stream": True, "prompt": "Say hello", "model": model})
    assert result["ok"] and result["text"] == DEFAULT_TEXT.replace("Hello", "Howdy")
    call = recorded_call(investigated, model)

    investigator.goto(f"{base}/calls/{call['call_id']}")
    events = investigator.locator('[data-diff="response"]')
    # Only the event that carried "Hello" differs; every later one says what the provider sent,
    # though Luthien wrote it itself once the stream had diverged.
    changed = events.locator("tbody tr.op-replace, tbody tr.op-insert, tbody tr.op-delete")
    expect(changed).to_have_count(1)
    # Word by word, by content: a null field Luthien left out is no change.
    expect(changed.locator("td.left mark", has_text=re.compile("^Hello$"))).to_have_count(1)
    expect(changed.locator("td.right mark", has_text=re.compile("^Howdy$"))).to_have_count(1)
    expect(changed.locator("mark", has_text="usage")).to_have_count(0)
    expect(events.locator("tbody tr.op-equal").first).to_be_visible()
    # The answer's text comes first, with the changed word marked.
    first = investigator.locator(".diff-part").first
    expect(first).to_have_attribute("data-diff", "output_text")
    expect(first.locator("td.right mark")).to_have_text(["Howdy"])


def test_a_providers_500_body_is_visible(investigated: RunningProxy, investigator: Page) -> None:
    base = login_link(investigated).split("/login?token=")[0]
    model = f"gpt-error-{uuid.uuid4().hex[:8]}"
    (result,) = investigated.sdk(
        {"api": "chat", "stream": False, "prompt": "[scenario:error_500]", "model": model}
    )
    assert not result["ok"]
    call = recorded_call(investigated, model)
    assert call["outcome"] == "provider_error" and call["status"] == 500

    investigator.goto(f"{base}/calls/{call['call_id']}")
    # Policy changed nothing, so the diffs have nothing to show; the raw view has the body.
    expect(investigator.locator('[data-diff="response"]')).to_contain_text("No changes")
    provider = investigator.locator('[data-raw="original_response"] pre')
    expect(provider).to_contain_text("The server had an error while processing your request")
    expect(provider).to_contain_text('"type": "server_error"')
    expect(investigator.locator('[data-raw="final_response"] pre')).to_contain_text("server_error")


def test_a_midstream_error_event_is_visible_raw(investigated: RunningProxy, investigator: Page) -> None:
    base = login_link(investigated).split("/login?token=")[0]
    model = f"gpt-midstream-{uuid.uuid4().hex[:8]}"
    prompt = "[scenario:midstream_error]"
    (result,) = investigated.sdk({"api": "chat", "stream": True, "prompt": prompt, "model": model})
    assert not result["ok"]
    call = recorded_call(investigated, model)

    investigator.goto(f"{base}/calls/{call['call_id']}")
    # The provider's error event reached the client as it was sent.
    expect(investigator.locator('[data-raw="final_response"] pre')).to_contain_text(
        "The server had an error while processing your request"
    )


def test_the_events_before_a_cut_are_visible_raw(investigated: RunningProxy, investigator: Page) -> None:
    base = login_link(investigated).split("/login?token=")[0]
    model = f"gpt-cut-{uuid.uuid4().hex[:8]}"
    payload = {**body("chat", "[scenario:cut]", True), "model": model}
    with (
        client_for(investigated) as client,
        pytest.raises(httpx.RemoteProtocolError),
        client.stream("POST", ENDPOINTS["chat"][0], json=payload) as response,
    ):
        for _ in response.iter_bytes():
            pass
    call = recorded_call(investigated, model)
    assert call["outcome"] == "error"

    investigator.goto(f"{base}/calls/{call['call_id']}")
    provider = investigator.locator('[data-raw="original_response"] pre')
    expect(provider).to_contain_text("Hello")  # the first words, before the provider dropped it


# --- Sessions: what Claude Code, Codex and an SDK app send, grouped -----------------------------

CLAUDE_CODE_UA = "claude-cli/2.1.330 (external, cli)"
CODEX_UA = "codex_exec/0.169.0 (Debian 12.0.0; x86_64) unknown (codex_exec; 0.169.0)"


def claude_code_user_id(session: str) -> str:
    """``metadata.user_id`` as Claude Code sends it from 2.1.78: a JSON string."""
    return json.dumps(
        {"device_id": "ab" * 32, "account_uuid": "", "session_id": session}, separators=(",", ":")
    )


def test_a_claude_code_and_a_codex_session_are_grouped_with_their_policy_actions(
    investigated: RunningProxy, investigator: Page
) -> None:
    base, token = login_link(investigated).split("/login?token=")
    page = investigator
    tag = uuid.uuid4().hex[:8]
    claude, codex, app_user = str(uuid.uuid4()), str(uuid.uuid4()), f"app-user-{tag}"
    claude_says = {
        "metadata": {"user_id": claude_code_user_id(claude)},
        "headers": {"User-Agent": CLAUDE_CODE_UA},
    }
    codex_sends = {
        "headers": {
            "User-Agent": CODEX_UA,
            "originator": "codex_exec",
            "session-id": codex,
            "thread-id": codex,
        }
    }
    first_prompt = f"Say hello ({tag})"
    results = investigated.sdk(
        # Claude Code: a greeting (rewritten by policy), then a command policy removes.
        {"api": "messages", "stream": True, "prompt": first_prompt, "model": f"cc-1-{tag}", **claude_says},
        {
            "api": "messages",
            "stream": True,
            "prompt": f"[scenario:tool_call {REMOVED_COMMAND}]",
            "model": f"cc-2-{tag}",
            "history": [
                {"role": "user", "content": first_prompt},
                {"role": "assistant", "content": DEFAULT_TEXT.replace("Hello", "Howdy")},
            ],
            **claude_says,
        },
        # Codex on the Responses API, its session in a header.
        {
            "api": "responses",
            "stream": True,
            "prompt": f"Add a flag ({tag})",
            "model": f"cx-1-{tag}",
            **codex_sends,
        },
        {
            "api": "responses",
            "stream": True,
            "prompt": "Now document it",
            "model": f"cx-2-{tag}",
            "history": [
                {"role": "user", "content": f"Add a flag ({tag})"},
                {"role": "assistant", "content": "Done."},
            ],
            **codex_sends,
        },
        # An app on the SDK naming its end user.
        {"api": "chat", "stream": False, "prompt": "Hi", "model": f"app-1-{tag}", "user": app_user},
        {"api": "chat", "stream": False, "prompt": "Bye", "model": f"app-2-{tag}", "user": app_user},
    )
    assert all(result["ok"] for result in results), results
    calls = {
        name: recorded_call(investigated, f"{name}-{tag}")
        for name in ("cc-1", "cc-2", "cx-1", "cx-2", "app-1", "app-2")
    }
    sessions = {name: call["session_id"] for name, call in calls.items()}
    assert sessions == {
        "cc-1": claude,
        "cc-2": claude,
        "cx-1": codex,
        "cx-2": codex,
        "app-1": app_user,
        "app-2": app_user,
    }
    assert (calls["cc-1"]["agent"], calls["cx-1"]["agent"]) == ("claude-cli", "codex_exec")

    # The sessions page lists each with its agent, turns and blocks.
    page.goto(f"{base}/sessions")
    rows = page.locator("#sessions tbody tr")
    for session, agent, blocks in [
        (claude, "claude-cli", "1"),
        (codex, "codex_exec", "0"),
        (app_user, "OpenAI", "0"),
    ]:
        row = rows.filter(has=page.locator(f'a.session[title="{session}"]'))
        expect(row).to_have_count(1)
        expect(row).to_contain_text(agent)
        expect(row.locator("td").nth(5)).to_have_text("2")
        expect(row.locator("td").nth(6)).to_have_text(blocks)
    page.select_option("select[name=agent]", "codex_exec")
    page.click("#filters button[type=submit]")
    expect(rows.filter(has=page.locator(f'a.session[title="{claude}"]'))).to_have_count(0)
    expect(rows.filter(has=page.locator(f'a.session[title="{codex}"]'))).to_have_count(1)

    # Claude Code's session reads as its conversation, policy inline.
    page.goto(f"{base}/sessions/{claude}")
    turns = page.locator("article.turn")
    expect(turns).to_have_count(2)
    expect(turns.nth(0).locator(".message.role-user")).to_have_text(re.compile(re.escape(first_prompt)))
    expect(turns.nth(0).locator(".message.role-assistant")).to_contain_text("Howdy")
    expect(turns.nth(0).locator(".policy-actions")).to_contain_text("answer modified")
    removed = turns.nth(1).locator(".policy-actions")
    expect(removed).to_contain_text("tool call removed")
    expect(removed.locator(".rule")).to_have_text("no-rm")
    expect(turns.nth(1).locator(".message.role-assistant")).to_contain_text(
        "[Luthien] Blocked the tool call `bash`"
    )

    # Exported, it says the same.
    with httpx.Client(base_url=base, headers={"authorization": f"Bearer {token}"}) as api:
        markdown = api.get(f"/api/sessions/{claude}/export", params={"format": "md"}).text
        exported = api.get(f"/api/sessions/{claude}/export", params={"format": "json"}).json()
    assert markdown.startswith(f"# Session {claude}") and "by rule `no-rm`" in markdown
    assert [turn["call_id"] for turn in exported["turns"]] == [
        calls["cc-1"]["call_id"],
        calls["cc-2"]["call_id"],
    ]
    assert "sk-ant-test-key" not in markdown and "sk-ant-test-key" not in json.dumps(exported)

    # Codex's first call steps to its second.
    page.goto(f"{base}/calls/{calls['cx-1']['call_id']}")
    expect(page.locator("#session-link")).to_have_text("Turn 1 of 2 in its session")
    page.click("#next-turn")
    expect(page).to_have_url(f"{base}/calls/{calls['cx-2']['call_id']}")
