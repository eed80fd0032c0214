"""Environment variables that route a client through Luthien and trust our CA."""

from __future__ import annotations

import re
import shlex

from certs.authority import CAFiles

# Local services (the control plane, test servers) must never be intercepted.
NO_PROXY_HOSTS = "localhost,127.0.0.1,::1"

_SHELL_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")


def trust_env(proxy_url: str, files: CAFiles) -> dict[str, str]:
    """The variables a client process needs to use the proxy at ``proxy_url``."""
    bundle = str(files.bundle)
    return {
        # Both spellings: curl only reads the lowercase one, most others either.
        "HTTPS_PROXY": proxy_url,
        "https_proxy": proxy_url,
        # Replaces OpenSSL's store (Python ssl, curl, Go on Linux), hence the
        # bundle with system roots rather than our CA alone.
        "SSL_CERT_FILE": bundle,
        # requests ignores SSL_CERT_FILE and uses certifi unless told otherwise.
        "REQUESTS_CA_BUNDLE": bundle,
        # Node appends these to its built-in roots, so our CA alone suffices.
        "NODE_EXTRA_CA_CERTS": str(files.cert),
        "NO_PROXY": NO_PROXY_HOSTS,
        "no_proxy": NO_PROXY_HOSTS,
    }


def shell_exports(env: dict[str, str]) -> str:
    """POSIX-shell ``export`` lines for ``env``, suitable for ``eval``.

    Sorted so the output is stable across runs and diffable.
    """
    lines = []
    for name in sorted(env):
        # Names are emitted unquoted, so refuse anything that is not a plain
        # identifier rather than let it inject shell syntax.
        if not _SHELL_NAME.fullmatch(name):
            raise ValueError(f"not a valid environment variable name: {name!r}")
        lines.append(f"export {name}={shlex.quote(env[name])}")
    return "".join(f"{line}\n" for line in lines)
