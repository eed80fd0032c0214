"""docs/configuration.md stays the whole reference: every flag of every command is in it."""

import argparse
from pathlib import Path

from luthien.options import build_parser

DOC = Path(__file__).resolve().parent.parent / "docs" / "configuration.md"


def _flags(parser: argparse.ArgumentParser | None = None) -> set[str]:
    """Every documented flag of every command and subcommand (``luthien policy replay``'s too)."""
    flags = set()
    for action in (parser or build_parser())._actions:
        if isinstance(action, argparse._SubParsersAction):
            flags |= {flag for command in action.choices.values() for flag in _flags(command)}
        elif action.help != argparse.SUPPRESS:
            flags |= {flag for flag in action.option_strings if flag.startswith("--") and flag != "--help"}
    return flags


def test_every_flag_is_documented() -> None:
    text = DOC.read_text()
    flags = _flags()
    assert {"--upstream-timeout", "--control-plane", "--judge"} <= flags  # the walk finds them
    assert sorted(flag for flag in flags if f"`{flag}" not in text) == []
