"""Takes the screenshots of docs/dashboard.md: every page of the dashboard, light and dark, over
the sample session the browser tests use, in headless Chromium.

    scripts/screenshots            # writes docs/images/dashboard-*.png
    scripts/screenshots OUT_DIR    # writes them elsewhere (what the test of this script does)

A page is shot once it shows what it is for (``Shot.ready``), so a broken page fails the script
instead of leaving a blank picture in the docs.
"""

import asyncio
import sys
import tempfile
from collections.abc import Coroutine
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from playwright.sync_api import Page, expect, sync_playwright

from controlplane.activity import InMemoryBus
from controlplane.policy_nudge import NoNudge
from controlplane.policy_versions import PolicyVersions
from controlplane.storage import SQLiteStorage
from dashboard.app import create_app
from tests.background_server import BackgroundServer
from tests.test_dashboard_api import TOKEN
from tests.test_dashboard_browser import CHROMIUM, CHROMIUM_ARGS, session

DOCS_IMAGES = Path(__file__).resolve().parent.parent / "docs" / "images"
SCHEMES = ("light", "dark")


@dataclass(frozen=True)
class Shot:
    name: str
    path: str
    #: A selector that is visible once the page shows its data.
    ready: str
    logged_in: bool = True


SHOTS = (
    Shot("login", "/calls", "main h1", logged_in=False),
    Shot("monitor", "/", "#events tbody tr >> nth=5"),
    Shot("calls", "/calls", "#calls tbody tr >> nth=5"),
    Shot("call-detail", "/calls/e5b2f8a6c1d94e07", "[data-diff=output_text] tr.op-replace"),
    Shot("call-blocked", "/calls/c90d1e5f3a7b4c22", "dl.facts"),
    Shot("sessions", "/sessions", "#sessions tbody tr >> nth=1"),
    Shot("session", "/sessions/3f9c2a1e-8b7d-4c6f-9e21-5d4a3b2c1f00", "article.turn >> nth=3"),
    Shot("policy", "/policy", "#compare [data-diff=policy] table.diff"),
)


def image_name(shot: Shot, scheme: str) -> str:
    return f"dashboard-{shot.name}{'' if scheme == 'light' else '-' + scheme}.png"


def take(out_dir: Path) -> list[Path]:
    """Serves the dashboard over the sample session and shoots every page in both schemes."""
    out_dir.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory() as data:
        storage, bus = SQLiteStorage(Path(data) / "calls.db"), InMemoryBus()
        server = BackgroundServer(create_app(storage, bus, TOKEN), "dashboard")
        url = server.start()

        def run(work: Coroutine[Any, Any, Any]) -> None:
            assert server.loop is not None  # the in-memory bus lives on the server's loop
            asyncio.run_coroutine_threadsafe(work, server.loop).result(timeout=10)

        try:
            run(storage.migrate())
            run(_policy_history(PolicyVersions(storage, NoNudge(), "database")))
            calls, events = session()
            run(storage.write(calls))
            for event in events:
                run(bus.publish(event))
            return _shoot(url, out_dir)
        finally:
            run(storage.close())
            server.stop()


async def _policy_history(versions: PolicyVersions) -> None:
    """A team's first rules, then secrets redacted too, as changed through the dashboard."""
    commands = {"class": "DangerousCommandPolicy", "config": {"protected_branches": ["main"]}}
    changes = [
        ({"policy": commands}, "alice", "block destructive commands"),
        (
            {
                "policy": {
                    "class": "SerialPolicy",
                    "config": {"policies": [{"class": "SecretRedactionPolicy"}, commands]},
                }
            },
            "dashboard token",
            "redact secrets before they leave",
        ),
    ]
    for document, by, note in changes:
        await versions.activate_document(document, "sample", by, note, "api")


def _shoot(url: str, out_dir: Path) -> list[Path]:
    written: list[Path] = []
    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=str(CHROMIUM), args=CHROMIUM_ARGS)
        for scheme in SCHEMES:
            for logged_in in (False, True):
                context = browser.new_context(viewport={"width": 1440, "height": 900}, color_scheme=scheme)
                page = context.new_page()
                if logged_in:
                    page.goto(f"{url}/login?token={TOKEN}")
                for shot in (shot for shot in SHOTS if shot.logged_in == logged_in):
                    written.append(_shoot_page(page, url, shot, out_dir / image_name(shot, scheme)))
                context.close()
        browser.close()
    return written


def _shoot_page(page: Page, url: str, shot: Shot, path: Path) -> Path:
    page.goto(url + shot.path)
    expect(page.locator(shot.ready).first).to_be_visible()
    page.screenshot(path=path, full_page=True)
    return path


def main(argv: list[str]) -> int:
    if not CHROMIUM.exists():
        print(
            f"screenshots: {CHROMIUM} is missing (Debian package chromium; scripts/browser)", file=sys.stderr
        )
        return 2
    out_dir = Path(argv[0]) if argv else DOCS_IMAGES
    for path in take(out_dir):
        print(path)
    return 0


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))
