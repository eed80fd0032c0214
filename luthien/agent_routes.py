"""The agents whose model route Luthien reads, by command name: `luthien run -- NAME …` refuses
one that would pass unseen, and `luthien doctor` checks each."""

from __future__ import annotations

import os
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path

from luthien.claude_route import claude_route
from luthien.codex_route import codex_route
from luthien.gemini_route import gemini_route
from luthien.model_route import Route

RouteReader = Callable[[Mapping[str, str], Path, Sequence[str]], Route]
ROUTES: dict[str, RouteReader] = {"claude": claude_route, "codex": codex_route, "gemini": gemini_route}


def route_of(argv: Sequence[str], env: Mapping[str, str], cwd: Path) -> Route | None:
    """The model route of the agent ``argv`` runs (None: not an agent Luthien knows)."""
    reader = ROUTES.get(os.path.basename(argv[0]))
    return None if reader is None else reader(env, cwd, argv[1:])
