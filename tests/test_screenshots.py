"""scripts/screenshots takes every picture docs/dashboard.md shows, and only those."""

import os
import re
from pathlib import Path

import pytest

from tests.screenshots import CHROMIUM, DOCS_IMAGES, SCHEMES, SHOTS, image_name, take

DASHBOARD_DOC = DOCS_IMAGES.parent / "dashboard.md"


def test_the_docs_show_each_page_light_and_dark() -> None:
    shown = set(re.findall(r"\(images/(dashboard-[\w-]+\.png)\)", DASHBOARD_DOC.read_text()))
    assert shown == {image_name(shot, scheme) for shot in SHOTS for scheme in SCHEMES}
    assert all((DOCS_IMAGES / name).is_file() for name in shown)


def test_the_script_shoots_every_page_once_it_shows_its_data(tmp_path: Path) -> None:
    if not CHROMIUM.exists():
        reason = f"{CHROMIUM} is missing (Debian package chromium)"
        if os.environ.get("CI") == "true":
            pytest.fail(reason)
        pytest.skip(reason)
    written = take(tmp_path)
    assert sorted(path.name for path in written) == sorted(
        image_name(shot, scheme) for shot in SHOTS for scheme in SCHEMES
    )
    for path in written:
        assert path.read_bytes().startswith(b"\x89PNG") and path.stat().st_size > 10_000
