"""The dashboard's colours, light and dark: every colour has its dark counterpart, and text stays
readable on what it is shown on (WCAG 2 contrast ratios)."""

import re
from pathlib import Path

import pytest

STYLESHEETS = Path(__file__).resolve().parent.parent / "dashboard" / "static"
DARK = "@media (prefers-color-scheme: dark)"

# (text, background) as the stylesheet pairs them.
TEXT_ON = [
    ("text", "bg"),
    ("text", "card"),
    ("text", "head-bg"),
    ("text", "hover-bg"),
    ("text", "input-bg"),
    ("text", "empty-bg"),
    ("text", "del-bg"),
    ("text", "ins-bg"),
    ("text", "del-mark"),
    ("text", "ins-mark"),
    ("muted", "bg"),
    ("muted", "card"),
    ("muted", "head-bg"),
    ("muted", "muted-bg"),
    ("muted", "skip-bg"),
    ("muted", "empty-bg"),  # a session's policy actions
    ("accent", "bg"),
    ("accent", "card"),
    ("accent", "info-bg"),
    ("on-accent", "accent"),
    ("ok", "ok-bg"),
    ("bad", "bad-bg"),
    ("warn", "warn-bg"),
]


def palettes(css: str) -> tuple[dict[str, str], dict[str, str]]:
    """The colour variables of the light page, and of the dark one."""
    light, _, dark = css.partition(DARK)
    assert dark, f"no {DARK} block"
    colours = re.compile(r"--([\w-]+):\s*(#[0-9a-fA-F]{6})\b")
    return dict(colours.findall(light)), dict(colours.findall(dark.split("\n}\n")[0]))


def luminance(colour: str) -> float:
    channels = [int(colour[i : i + 2], 16) / 255 for i in (1, 3, 5)]
    r, g, b = (c / 12.92 if c <= 0.03928 else ((c + 0.055) / 1.055) ** 2.4 for c in channels)
    return 0.2126 * r + 0.7152 * g + 0.0722 * b


def contrast(one: str, other: str) -> float:
    lighter, darker = sorted((luminance(one), luminance(other)), reverse=True)
    return (lighter + 0.05) / (darker + 0.05)


@pytest.mark.parametrize("sheet", ["style.css", "login.css"])
def test_every_colour_has_a_dark_counterpart(sheet: str) -> None:
    light, dark = palettes((STYLESHEETS / sheet).read_text())
    assert light.keys() == dark.keys()


@pytest.mark.parametrize("scheme", ["light", "dark"])
def test_text_keeps_its_contrast(scheme: str) -> None:
    light, dark = palettes((STYLESHEETS / "style.css").read_text())
    colours = light if scheme == "light" else dark
    low = {
        (text, background): round(contrast(colours[text], colours[background]), 2)
        for text, background in TEXT_ON
        if contrast(colours[text], colours[background]) < 4.5
    }
    assert low == {}
    # Line numbers are there to find a line, not to be read as text: WCAG's 3:1 for them.
    assert contrast(colours["line-no"], colours["head-bg"]) >= 3


def test_the_contrast_formula_gives_wcags_own_examples() -> None:
    assert contrast("#000000", "#ffffff") == pytest.approx(21)
    assert contrast("#767676", "#ffffff") == pytest.approx(4.54, abs=0.01)
