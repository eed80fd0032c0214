"""docs/configuration.md stays the whole reference: every flag of every command is in it."""

import argparse
from pathlib import Path

from luthien.options import build_parser

DOC = Path(__file__).resolve().parent.parent / "docs" / "configuration.md"


def _flags() -> set[str]:
    commands = next(a for a in build_parser()._actions if isinstance(a, argparse._SubParsersAction))
    return {
        flag
        for parser in commands.choices.values()
        for action in parser._actions
        for flag in action.option_strings
        if flag.startswith("--") and flag != "--help"
    }


def test_every_flag_is_documented() -> None:
    text = DOC.read_text()
    flags = _flags()
    assert "--upstream-timeout" in flags and "--control-plane" in flags  # the walk finds them
    assert sorted(flag for flag in flags if f"`{flag}" not in text) == []
