"""The dashboard's access token.

Kept in the data directory (mode 0600), so that open tabs and bookmarked login links survive a
restart. Rotating it replaces the file; a running dashboard notices the new file at the next
request, so every browser holding the old token is logged out at once.
"""

import os
import secrets
import stat
from pathlib import Path
from typing import Protocol

TOKEN_FILE = "dashboard-token"


class TokenSource(Protocol):
    def current(self) -> str:
        """The token a request must carry now."""
        ...


class TokenFileError(OSError):
    """A token file others may read, or one that cannot be read: the dashboard does not start."""


class FixedToken:
    """A token set once (``LUTHIEN_DASHBOARD_TOKEN``, tests)."""

    def __init__(self, token: str) -> None:
        if not token:
            raise ValueError("the dashboard needs a non-empty token")
        self._token = token

    def current(self) -> str:
        return self._token


class TokenFile:
    """The token in ``DATA_DIR/dashboard-token``, created on first use."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self._seen: tuple[int, int] | None = None
        self._token = ""
        if not path.exists():
            self._write(path, _new_token())
        self.current()

    @classmethod
    def in_dir(cls, data_dir: Path) -> "TokenFile":
        return cls(data_dir / TOKEN_FILE)

    def current(self) -> str:
        # A stat per request: cheap, and a rotation takes effect at once.
        try:
            info = self.path.stat()
        except OSError as exc:
            raise TokenFileError(f"cannot read the dashboard token {self.path}: {exc.strerror}") from exc
        if (info.st_ino, info.st_mtime_ns) != self._seen:
            if info.st_mode & (stat.S_IRWXG | stat.S_IRWXO):
                raise TokenFileError(
                    f"the dashboard token {self.path} may be read by others: chmod 600 {self.path}"
                )
            token = self.path.read_text().strip()
            if not token:
                raise TokenFileError(f"the dashboard token file {self.path} is empty")
            self._token, self._seen = token, (info.st_ino, info.st_mtime_ns)
        return self._token

    def rotate(self) -> str:
        """A new token; the old one stops working at once."""
        self._write(self.path, _new_token())
        return self.current()

    @staticmethod
    def _write(path: Path, token: str) -> None:
        """Atomically, and never readable by others, not even for a moment."""
        path.parent.mkdir(parents=True, exist_ok=True)
        staged = path.with_name(f".{path.name}.{secrets.token_hex(4)}")
        fd = os.open(staged, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        with os.fdopen(fd, "w") as handle:
            handle.write(token + "\n")
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(staged, path)


def _new_token() -> str:
    return secrets.token_urlsafe(24)
