"""Where an agent would send its model calls, as Luthien reads the agent's own settings: the
shared shape of the answer, which `luthien run` (refuses) and `luthien doctor` (flags) act on.

A model call to a host Luthien does not decrypt passes unseen, against the rule that what a
policy cannot see does not pass; so does one through a provider switch or a base URL elsewhere.
Where the agent could pick among several settings (a layer that may or may not apply, a
workspace that may or may not be trusted), every candidate must be policed: what cannot be told
for sure is refused, never guessed.
"""

from __future__ import annotations

from dataclasses import dataclass
from urllib.parse import urlsplit


@dataclass(frozen=True)
class Problem:
    detail: str  # what would pass unseen, and where that is set
    fix: str


@dataclass(frozen=True)
class Route:
    agent: str  # as people name it: "Gemini CLI"
    host: str  # the policed host its model calls go to when there is no problem
    choices: tuple[
        str, ...
    ]  # how it is configured, each with where: "gemini-api-key (~/.gemini/settings.json)"
    problem: Problem | None
    configured: bool = True  # False: the agent has no way to reach a model set up at all


def host_of(url: str) -> str:
    """The host of a base URL, lowercased and without a trailing dot ("" when it has none)."""
    try:
        return (urlsplit(url if "://" in url else f"https://{url}").hostname or "").rstrip(".")
    except ValueError:
        return ""


def truthy(value: str | None) -> bool:
    return (value or "").strip().lower() in ("1", "true", "yes", "on")
