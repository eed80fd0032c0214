"""Luthien's local certificate authority.

Clients trust this CA (via ``SSL_CERT_FILE`` / ``NODE_EXTRA_CA_CERTS``) so that
mitmproxy can present leaf certificates it signs on the fly. The CA is created
once and then reused forever: regenerating it would silently break every
client that already trusts the old one.
"""

from __future__ import annotations

import contextlib
import datetime
import fcntl
import logging
import os
import secrets
import stat
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import certifi
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import rsa
from cryptography.x509.oid import NameOID
from mitmproxy.certs import DEFAULT_DHPARAM

logger = logging.getLogger(__name__)

CA_COMMON_NAME = "Luthien Local CA"
CA_ORGANIZATION = "Luthien"
# RSA rather than EC: mitmproxy signs leaves with the CA key *and* reuses it as
# the leaf key, and its CertStore is typed and tested around RSA keys only.
CA_KEY_SIZE = 2048
CA_VALIDITY = datetime.timedelta(days=10 * 365)
# Backdated so clients with a slightly wrong clock still accept the CA.
CA_BACKDATE = datetime.timedelta(days=1)
# Warn well before expiry: an expired CA breaks every intercepted connection.
CA_EXPIRY_WARNING = datetime.timedelta(days=30)

CA_DIR = "ca"
CA_CERT_NAME = "luthien-ca.pem"
CA_KEY_NAME = "luthien-ca.key"
CA_BUNDLE_NAME = "ca-bundle.pem"
LOCK_NAME = ".lock"

MITMPROXY_DIR = "mitmproxy"
# mitmproxy's CertStore.from_store(confdir, "mitmproxy", ...) reads
# "<basename>-ca.pem" (key + cert) and only generates its own CA when that file
# is missing. It also writes "<basename>-dhparam.pem" if absent; we write it
# ourselves so mitmproxy never has to create anything in the confdir.
MITMPROXY_BASENAME = "mitmproxy"
MITMPROXY_CA_NAME = f"{MITMPROXY_BASENAME}-ca.pem"
MITMPROXY_CA_CERT_NAME = f"{MITMPROXY_BASENAME}-ca-cert.pem"
MITMPROXY_DHPARAM_NAME = f"{MITMPROXY_BASENAME}-dhparam.pem"

SYSTEM_BUNDLE_CANDIDATES: tuple[Path, ...] = (
    Path("/etc/ssl/certs/ca-certificates.crt"),  # Debian, Ubuntu, Alpine, Arch
    Path("/etc/pki/tls/certs/ca-bundle.crt"),  # Fedora, RHEL
    Path("/etc/ssl/cert.pem"),  # macOS, BSDs
)

SECRET_MODE = 0o600
PUBLIC_MODE = 0o644
PRIVATE_DIR_MODE = 0o700


class CAError(RuntimeError):
    """The on-disk CA is unusable and must not be silently replaced."""


class CAKeyPermissionError(CAError):
    """The CA key is readable by other users: it may have leaked, so it is not used."""


@dataclass(frozen=True)
class CAFiles:
    cert: Path
    key: Path
    bundle: Path
    mitmproxy_confdir: Path


def ensure_ca(data_dir: Path) -> CAFiles:
    """Create the Luthien CA under ``data_dir`` if needed and return its paths.

    Idempotent: an existing key and certificate are reused as they are. The
    derived files (mitmproxy confdir, trust bundle) are refreshed every call.
    """
    files = ca_files(data_dir)
    files.cert.parent.mkdir(parents=True, exist_ok=True)
    files.mitmproxy_confdir.mkdir(mode=PRIVATE_DIR_MODE, parents=True, exist_ok=True)

    # Serialise concurrent first runs: two processes generating at once could
    # otherwise leave a key on disk that does not match the certificate.
    with _locked(files.cert.parent / LOCK_NAME):
        key, cert = _load_or_create_ca(files)
        _write_mitmproxy_confdir(files.mitmproxy_confdir, key, cert)
        _write_bundle(files.bundle, cert)
    _warn_if_expiring(cert)
    return files


def ca_files(data_dir: Path) -> CAFiles:
    """Where ``ensure_ca`` keeps its files; does not touch the filesystem."""
    ca_dir = data_dir / CA_DIR
    return CAFiles(
        cert=ca_dir / CA_CERT_NAME,
        key=ca_dir / CA_KEY_NAME,
        bundle=ca_dir / CA_BUNDLE_NAME,
        mitmproxy_confdir=data_dir / MITMPROXY_DIR,
    )


def system_roots_path() -> Path:
    """The system's PEM root bundle, or certifi's when the OS has none."""
    for candidate in SYSTEM_BUNDLE_CANDIDATES:
        if candidate.is_file():
            return candidate
    return Path(certifi.where())


def _load_or_create_ca(
    files: CAFiles,
) -> tuple[rsa.RSAPrivateKey, x509.Certificate]:
    if not files.key.exists():
        key = rsa.generate_private_key(public_exponent=65537, key_size=CA_KEY_SIZE)
        cert = _build_ca_cert(key)
        # Key first: if we die before the cert is written, the next run
        # re-issues a cert for the same key instead of orphaning it.
        _atomic_write(files.key, _key_pem(key), SECRET_MODE)
        _atomic_write(files.cert, _cert_pem(cert), PUBLIC_MODE)
        logger.info("Created Luthien CA at %s", files.cert)
        return key, cert

    _refuse_loose_key(files.key)
    key = _load_key(files.key)
    if not files.cert.exists():
        cert = _build_ca_cert(key)
        _atomic_write(files.cert, _cert_pem(cert), PUBLIC_MODE)
        logger.warning("CA certificate was missing; re-issued it for the existing key")
        return key, cert

    cert = x509.load_pem_x509_certificate(files.cert.read_bytes())
    if cert.public_key() != key.public_key():
        raise CAError(
            f"{files.cert} does not belong to the key in {files.key}; "
            "delete both to create a new CA (clients must then trust it again)"
        )
    return key, cert


def _build_ca_cert(key: rsa.RSAPrivateKey) -> x509.Certificate:
    name = x509.Name(
        [
            x509.NameAttribute(NameOID.COMMON_NAME, CA_COMMON_NAME),
            x509.NameAttribute(NameOID.ORGANIZATION_NAME, CA_ORGANIZATION),
        ]
    )
    now = datetime.datetime.now(datetime.UTC)
    not_before = now - CA_BACKDATE
    # BasicConstraints must be critical and a SubjectKeyIdentifier present, or
    # OpenSSL's X509_STRICT mode (default in Python >= 3.13) rejects the chain.
    # The SKI also feeds the AuthorityKeyIdentifier mitmproxy puts on leaves.
    # path_length=0: we only ever sign leaves directly. No ExtendedKeyUsage,
    # so the CA is not restricted to any purpose on clients that check it.
    return (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(not_before)
        .not_valid_after(not_before + CA_VALIDITY)
        .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
        .add_extension(
            x509.KeyUsage(
                digital_signature=False,
                content_commitment=False,
                key_encipherment=False,
                data_encipherment=False,
                key_agreement=False,
                key_cert_sign=True,
                crl_sign=True,
                encipher_only=False,
                decipher_only=False,
            ),
            critical=True,
        )
        .add_extension(
            x509.SubjectKeyIdentifier.from_public_key(key.public_key()),
            critical=False,
        )
        .sign(private_key=key, algorithm=hashes.SHA256())
    )


def _write_mitmproxy_confdir(confdir: Path, key: rsa.RSAPrivateKey, cert: x509.Certificate) -> None:
    _write_if_changed(confdir / MITMPROXY_CA_NAME, _key_pem(key) + _cert_pem(cert), SECRET_MODE)
    _write_if_changed(confdir / MITMPROXY_CA_CERT_NAME, _cert_pem(cert), PUBLIC_MODE)
    _write_if_changed(confdir / MITMPROXY_DHPARAM_NAME, DEFAULT_DHPARAM, PUBLIC_MODE)


def _write_bundle(bundle: Path, cert: x509.Certificate) -> None:
    roots = system_roots_path().read_bytes()
    if roots and not roots.endswith(b"\n"):
        roots += b"\n"
    # SSL_CERT_FILE replaces the trust store, so the system roots must stay in
    # it or every non-intercepted HTTPS connection would fail.
    _write_if_changed(bundle, roots + _cert_pem(cert), PUBLIC_MODE)


def _write_if_changed(path: Path, data: bytes, mode: int) -> None:
    try:
        unchanged = path.read_bytes() == data
    except FileNotFoundError:
        unchanged = False
    if unchanged:
        if mode == SECRET_MODE:
            _tighten_secret_mode(path)
        return
    _atomic_write(path, data, mode)


def _atomic_write(path: Path, data: bytes, mode: int) -> None:
    """Replace ``path`` so readers never see a partial file.

    The temp file is created with ``mode`` already applied (os.open honours it
    at creation; umask can only remove bits), so a secret is never readable by
    others, not even between creation and chmod.
    """
    tmp = path.with_name(f".{path.name}.{secrets.token_hex(8)}.tmp")
    flags = os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC
    try:
        with os.fdopen(os.open(tmp, flags, mode), "wb") as f:
            # The umask may have stripped bits from a public file; set it exactly.
            os.fchmod(f.fileno(), mode)
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


def _tighten_secret_mode(path: Path) -> None:
    mode = stat.S_IMODE(path.stat().st_mode)
    if mode & 0o077:
        path.chmod(SECRET_MODE)
        logger.warning(
            "%s was accessible by other users (mode %o); restricted it to %o",
            path,
            mode,
            SECRET_MODE,
        )


def _refuse_loose_key(path: Path) -> None:
    """Anyone who could read the CA key can intercept every client that trusts the CA; quietly
    tightening the mode would hide that. The derived mitmproxy copy is only tightened: it is
    rewritten from this key, which is checked here first."""
    mode = stat.S_IMODE(path.stat().st_mode)
    if mode & ~SECRET_MODE:
        raise CAKeyPermissionError(
            f"{path} has mode {mode:o}, so other users may have read the CA key; "
            f"refusing to use it. If it has not leaked, run: chmod 600 {path} "
            "(otherwise delete the ca/ directory to create a new CA, and trust it again)"
        )


def _load_key(path: Path) -> rsa.RSAPrivateKey:
    try:
        key = serialization.load_pem_private_key(path.read_bytes(), password=None)
    except (ValueError, TypeError):
        # Not chained: parser errors can quote the input, keep key bytes out of logs.
        raise CAError(f"{path} is not an unencrypted PEM private key") from None
    if not isinstance(key, rsa.RSAPrivateKey):
        raise CAError(f"{path} is not an RSA key; mitmproxy requires an RSA CA key")
    return key


def _key_pem(key: rsa.RSAPrivateKey) -> bytes:
    return key.private_bytes(
        encoding=serialization.Encoding.PEM,
        format=serialization.PrivateFormat.PKCS8,
        encryption_algorithm=serialization.NoEncryption(),
    )


def _cert_pem(cert: x509.Certificate) -> bytes:
    return cert.public_bytes(serialization.Encoding.PEM)


def _warn_if_expiring(cert: x509.Certificate) -> None:
    remaining = cert.not_valid_after_utc - datetime.datetime.now(datetime.UTC)
    if remaining < CA_EXPIRY_WARNING:
        logger.warning(
            "Luthien CA %s on %s; delete the ca/ directory to create a new one",
            "expired" if remaining.total_seconds() < 0 else "expires",
            cert.not_valid_after_utc.date().isoformat(),
        )


@contextlib.contextmanager
def _locked(lock_path: Path) -> Iterator[None]:
    fd = os.open(lock_path, os.O_RDWR | os.O_CREAT, SECRET_MODE)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        yield
    finally:
        os.close(fd)
