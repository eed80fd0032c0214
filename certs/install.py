"""Adding Luthien's CA certificate to the operating system's trust store (and removing it).

Only the public certificate is ever copied; the private key stays in the data directory. Where
no known store exists, or the user may not write to it, the exact manual steps are printed
instead. ``root`` and ``runner`` are injectable so this can be exercised without touching the
machine's trust store: with a ``root`` other than ``/`` commands are printed, never run.
"""

from __future__ import annotations

import hashlib
import shlex
import subprocess
import sys
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TextIO

from cryptography import x509
from cryptography.hazmat.primitives import serialization

ROOT_ENV = "LUTHIEN_TRUST_ROOT"
SYSTEM_ROOT = Path("/")
MACOS_KEYCHAIN = "/Library/Keychains/System.keychain"

#: Runs a command and returns its exit status.
Runner = Callable[[Sequence[str]], int]


@dataclass(frozen=True)
class LinuxStore:
    name: str
    directory: str  # relative to the filesystem root
    filename: str
    update: tuple[str, ...]
    refresh: tuple[str, ...]  # after removing a certificate

    def target(self, root: Path) -> Path:
        return root / self.directory / self.filename


DEBIAN = LinuxStore(
    name="Debian/Ubuntu",
    directory="usr/local/share/ca-certificates",
    filename="luthien-ca.crt",
    update=("update-ca-certificates",),
    refresh=("update-ca-certificates", "--fresh"),
)
RHEL = LinuxStore(
    name="RHEL/Fedora",
    directory="etc/pki/ca-trust/source/anchors",
    filename="luthien-ca.pem",
    update=("update-ca-trust", "extract"),
    refresh=("update-ca-trust", "extract"),
)
LINUX_STORES = (DEBIAN, RHEL)


def run_command(argv: Sequence[str]) -> int:
    try:
        return subprocess.call(list(argv))
    except OSError as exc:  # the tool is not installed
        print(f"luthien: could not run {argv[0]}: {exc.strerror or exc}", file=sys.stderr)
        return 127


def manual_steps(cert: Path) -> str:
    """The commands a user runs by hand to trust (or distrust) ``cert`` on each platform."""
    quoted = shlex.quote(str(cert))
    lines = ["To trust the Luthien CA by hand, run as an administrator:"]
    for store in LINUX_STORES:
        lines += [
            f"  {store.name}:",
            f"    sudo cp {quoted} /{store.directory}/{store.filename}",
            f"    sudo {shlex.join(store.update)}",
        ]
    lines += [
        "  macOS:",
        f"    sudo security add-trusted-cert -d -r trustRoot -k {MACOS_KEYCHAIN} {quoted}",
        "  Elsewhere (or without administrator rights): point clients at it with",
        '    eval "$(luthien certs env)"   or   luthien run -- CMD',
    ]
    return "\n".join(lines)


def install(
    cert: Path,
    *,
    root: Path = SYSTEM_ROOT,
    runner: Runner | None = None,
    platform: str = sys.platform,
    out: TextIO | None = None,
) -> int:
    """Trusts ``cert`` system-wide; returns the exit status (1: printed the manual steps)."""
    out = out or sys.stdout
    runner = runner or _default_runner(root, out)
    if platform == "darwin" and root == SYSTEM_ROOT:
        argv = ["security", "add-trusted-cert", "-d", "-r", "trustRoot", "-k", MACOS_KEYCHAIN, str(cert)]
        return _run_or_explain(argv, runner, cert, out, done=f"Trusted {cert} in {MACOS_KEYCHAIN}")
    store = _linux_store(root)
    if store is None:
        print(f"No known system trust store under {root}.", file=out)
        print(manual_steps(cert), file=out)
        return 1
    target = store.target(root)
    try:
        # Only the certificate, read and rewritten: never the key, whatever the file holds.
        target.write_bytes(_certificate_pem(cert))
        target.chmod(0o644)
    except OSError as exc:
        print(f"Cannot write {target} ({exc.strerror or exc}); are you root?", file=out)
        print(manual_steps(cert), file=out)
        return 1
    print(f"Copied {cert} to {target} ({store.name})", file=out)
    return _run_or_explain(list(store.update), runner, cert, out, done="Updated the system trust store")


def uninstall(
    cert: Path,
    *,
    root: Path = SYSTEM_ROOT,
    runner: Runner | None = None,
    platform: str = sys.platform,
    out: TextIO | None = None,
) -> int:
    """Removes ``cert`` from the system trust store; 0 also when it was not there."""
    out = out or sys.stdout
    runner = runner or _default_runner(root, out)
    if platform == "darwin" and root == SYSTEM_ROOT:
        sha1 = hashlib.sha1(_certificate(cert).public_bytes(serialization.Encoding.DER)).hexdigest()
        argv = ["security", "delete-certificate", "-Z", sha1.upper(), MACOS_KEYCHAIN]
        return _run_or_explain(argv, runner, cert, out, done=f"Removed the Luthien CA from {MACOS_KEYCHAIN}")
    store = _linux_store(root)
    if store is None:
        print(f"No known system trust store under {root}; nothing to remove.", file=out)
        return 0
    target = store.target(root)
    if not target.exists():
        print(f"{target} is not there; nothing to remove.", file=out)
        return 0
    try:
        target.unlink()
    except OSError as exc:
        print(f"Cannot remove {target} ({exc.strerror or exc}); are you root?", file=out)
        print(f"Run: sudo rm {shlex.quote(str(target))} && sudo {shlex.join(store.refresh)}", file=out)
        return 1
    print(f"Removed {target} ({store.name})", file=out)
    return _run_or_explain(list(store.refresh), runner, cert, out, done="Updated the system trust store")


def _linux_store(root: Path) -> LinuxStore | None:
    for store in LINUX_STORES:
        if (root / store.directory).is_dir():
            return store
    return None


def _default_runner(root: Path, out: TextIO) -> Runner:
    if root == SYSTEM_ROOT:
        return run_command

    def dry_run(argv: Sequence[str]) -> int:
        print(f"Not run (trust root is {root}, not /): {shlex.join(argv)}", file=out)
        return 0

    return dry_run


def _run_or_explain(argv: list[str], runner: Runner, cert: Path, out: TextIO, done: str) -> int:
    status = runner(argv)
    if status != 0:
        print(f"`{shlex.join(argv)}` failed (exit status {status}).", file=out)
        print(manual_steps(cert), file=out)
        return 1
    print(f"{done} ({shlex.join(argv)})", file=out)
    return 0


def _certificate(path: Path) -> x509.Certificate:
    return x509.load_pem_x509_certificate(path.read_bytes())


def _certificate_pem(path: Path) -> bytes:
    return _certificate(path).public_bytes(serialization.Encoding.PEM)
