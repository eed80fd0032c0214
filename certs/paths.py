"""Where Luthien keeps its state."""

from __future__ import annotations

import os
from pathlib import Path

DATA_DIR_ENV = "LUTHIEN_DATA_DIR"


def default_data_dir() -> Path:
    """``$LUTHIEN_DATA_DIR`` if set (and non-empty), else ``~/.luthien``."""
    configured = os.environ.get(DATA_DIR_ENV)
    if configured:
        return Path(configured).expanduser()
    return Path.home() / ".luthien"
