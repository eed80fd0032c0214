"""Luthien's local CA and the client environment that trusts it."""

from certs.authority import CAError, CAFiles, ca_files, ensure_ca, system_roots_path
from certs.paths import DATA_DIR_ENV, default_data_dir
from certs.trust_env import NO_PROXY_HOSTS, shell_exports, trust_env

__all__ = [
    "DATA_DIR_ENV",
    "NO_PROXY_HOSTS",
    "CAError",
    "CAFiles",
    "ca_files",
    "default_data_dir",
    "ensure_ca",
    "shell_exports",
    "system_roots_path",
    "trust_env",
]
