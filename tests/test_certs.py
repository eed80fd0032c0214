"""Tests for the Luthien CA, the mitmproxy confdir it feeds, and the client env."""

from __future__ import annotations

import contextlib
import datetime
import os
import re
import shutil
import socket
import ssl
import stat
import subprocess
import sys
import threading
from collections.abc import Iterator
from pathlib import Path

import certifi
import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, padding, rsa
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID
from cryptography.x509.verification import PolicyBuilder, Store
from mitmproxy.certs import CertStore

from certs import (
    CAError,
    CAFiles,
    authority,
    default_data_dir,
    ensure_ca,
    shell_exports,
    system_roots_path,
    trust_env,
)

PROXY_URL = "http://127.0.0.1:8080"
INTERCEPTED_HOST = "api.openai.com"


# --- helpers -----------------------------------------------------------------


def _mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


def _load_cert(path: Path) -> x509.Certificate:
    return x509.load_pem_x509_certificate(path.read_bytes())


def _load_ca_key(files: CAFiles) -> rsa.RSAPrivateKey:
    key = serialization.load_pem_private_key(files.key.read_bytes(), password=None)
    assert isinstance(key, rsa.RSAPrivateKey)
    return key


def _pem(cert: x509.Certificate) -> bytes:
    return cert.public_bytes(serialization.Encoding.PEM)


def _sign_leaf(files: CAFiles, hostname: str) -> tuple[x509.Certificate, ec.EllipticCurvePrivateKey]:
    """A server certificate as a well-behaved intermediary would issue it."""
    ca_cert = _load_cert(files.cert)
    ca_key = _load_ca_key(files)
    leaf_key = ec.generate_private_key(ec.SECP256R1())
    now = datetime.datetime.now(datetime.UTC)
    ca_ski = ca_cert.extensions.get_extension_for_class(x509.SubjectKeyIdentifier).value
    leaf = (
        x509.CertificateBuilder()
        .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, hostname)]))
        .issuer_name(ca_cert.subject)
        .public_key(leaf_key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(hours=1))
        .not_valid_after(now + datetime.timedelta(days=30))
        .add_extension(x509.SubjectAlternativeName([x509.DNSName(hostname)]), critical=False)
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH]), critical=False)
        .add_extension(x509.AuthorityKeyIdentifier.from_issuer_subject_key_identifier(ca_ski), critical=False)
        .sign(ca_key, hashes.SHA256())
    )
    return leaf, leaf_key


def _mitmproxy_leaf(files: CAFiles, hostname: str) -> tuple[x509.Certificate, rsa.RSAPrivateKey]:
    store = CertStore.from_store(files.mitmproxy_confdir, "mitmproxy", 2048)
    entry = store.get_cert(hostname, [x509.DNSName(hostname)])
    return entry.cert.to_cryptography(), entry.privatekey


def _write_server_pem(
    tmp_path: Path,
    cert: x509.Certificate,
    key: rsa.RSAPrivateKey | ec.EllipticCurvePrivateKey,
) -> Path:
    path = tmp_path / "server.pem"
    key_pem = key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    )
    path.write_bytes(key_pem + _pem(cert))
    return path


def _pem_blocks(data: bytes) -> list[bytes]:
    return re.findall(rb"-----BEGIN CERTIFICATE-----.+?-----END CERTIFICATE-----", data, re.DOTALL)


@contextlib.contextmanager
def _tls_server(server_pem: Path) -> Iterator[int]:
    """Serve TLS on 127.0.0.1 for one connection; yields the port."""
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.load_cert_chain(server_pem)
    listener = socket.create_server(("127.0.0.1", 0))
    listener.settimeout(30)

    def serve() -> None:
        # A rejected handshake surfaces on the client side; the server's view
        # of it (alert received, connection reset) is irrelevant here.
        with contextlib.suppress(OSError):
            conn, _ = listener.accept()
            with context.wrap_socket(conn, server_side=True) as tls:
                tls.sendall(b"ok")

    thread = threading.Thread(target=serve, daemon=True)
    thread.start()
    try:
        yield listener.getsockname()[1]
    finally:
        listener.close()
        thread.join(timeout=30)


def _handshake(port: int, hostname: str, context: ssl.SSLContext) -> bytes:
    with (
        socket.create_connection(("127.0.0.1", port), timeout=30) as raw,
        context.wrap_socket(raw, server_hostname=hostname) as tls,
    ):
        return tls.recv(2)


@pytest.fixture
def files(tmp_path: Path) -> CAFiles:
    return ensure_ca(tmp_path / "data")


# --- layout and permissions --------------------------------------------------


def test_layout(files: CAFiles, tmp_path: Path) -> None:
    data = tmp_path / "data"
    assert files == CAFiles(
        cert=data / "ca" / "luthien-ca.pem",
        key=data / "ca" / "luthien-ca.key",
        bundle=data / "ca" / "ca-bundle.pem",
        mitmproxy_confdir=data / "mitmproxy",
    )
    for path in (files.cert, files.key, files.bundle):
        assert path.is_file()
    confdir = files.mitmproxy_confdir
    assert {p.name for p in confdir.iterdir()} == {
        "mitmproxy-ca.pem",
        "mitmproxy-ca-cert.pem",
        "mitmproxy-dhparam.pem",
    }
    assert not list(files.cert.parent.glob("*.tmp")), "temp files left behind"


def test_secret_files_are_0600_and_public_files_0644(files: CAFiles) -> None:
    assert _mode(files.key) == 0o600
    assert _mode(files.mitmproxy_confdir / "mitmproxy-ca.pem") == 0o600
    assert _mode(files.cert) == 0o644
    assert _mode(files.bundle) == 0o644
    assert _mode(files.mitmproxy_confdir / "mitmproxy-ca-cert.pem") == 0o644


def test_modes_do_not_depend_on_umask(tmp_path: Path) -> None:
    old = os.umask(0)
    try:
        files = ensure_ca(tmp_path)
    finally:
        os.umask(old)
    assert _mode(files.key) == 0o600
    assert _mode(files.mitmproxy_confdir / "mitmproxy-ca.pem") == 0o600
    assert _mode(files.cert) == 0o644


def test_second_call_reuses_ca_and_does_not_rewrite_key(files: CAFiles, tmp_path: Path) -> None:
    key_bytes = files.key.read_bytes()
    key_stat = files.key.stat()
    serial = _load_cert(files.cert).serial_number

    again = ensure_ca(tmp_path / "data")

    assert again == files
    assert _load_cert(again.cert).serial_number == serial
    assert again.key.read_bytes() == key_bytes
    # Same inode and mtime: the file was not even replaced with identical bytes.
    assert (again.key.stat().st_ino, again.key.stat().st_mtime_ns) == (
        key_stat.st_ino,
        key_stat.st_mtime_ns,
    )


def test_a_loose_key_is_refused_and_a_loose_derived_copy_tightened(files: CAFiles, tmp_path: Path) -> None:
    combined = files.mitmproxy_confdir / "mitmproxy-ca.pem"
    files.key.chmod(0o644)
    with pytest.raises(CAError, match="chmod 600"):
        ensure_ca(tmp_path / "data")
    assert _mode(files.key) == 0o644  # refused, not silently fixed: the key may have leaked
    files.key.chmod(0o600)
    combined.chmod(0o640)
    ensure_ca(tmp_path / "data")
    assert _mode(combined) == 0o600


def test_concurrent_first_runs_agree_on_one_ca(tmp_path: Path) -> None:
    data = tmp_path / "data"
    script = "import sys; from pathlib import Path; from certs import ensure_ca; ensure_ca(Path(sys.argv[1]))"
    procs = [
        subprocess.Popen([sys.executable, "-c", script, str(data)], cwd=Path(__file__).parent.parent)
        for _ in range(4)
    ]
    assert [p.wait(timeout=120) for p in procs] == [0] * 4

    files = ensure_ca(data)
    assert _load_cert(files.cert).public_key() == _load_ca_key(files).public_key()
    combined = (files.mitmproxy_confdir / "mitmproxy-ca.pem").read_bytes()
    assert combined == files.key.read_bytes() + files.cert.read_bytes()


def test_missing_cert_is_reissued_for_existing_key(files: CAFiles, tmp_path: Path) -> None:
    key_bytes = files.key.read_bytes()
    files.cert.unlink()

    ensure_ca(tmp_path / "data")

    assert files.key.read_bytes() == key_bytes
    assert _load_cert(files.cert).public_key() == _load_ca_key(files).public_key()
    assert (files.mitmproxy_confdir / "mitmproxy-ca-cert.pem").read_bytes() == files.cert.read_bytes()


def test_mismatched_cert_and_key_is_an_error_not_a_silent_regeneration(
    files: CAFiles, tmp_path: Path
) -> None:
    other = ensure_ca(tmp_path / "other")
    files.cert.write_bytes(other.cert.read_bytes())
    key_bytes = files.key.read_bytes()

    with pytest.raises(CAError, match="does not belong"):
        ensure_ca(tmp_path / "data")
    assert files.key.read_bytes() == key_bytes


def test_mitmproxy_confdir_is_resynced_with_the_ca(files: CAFiles, tmp_path: Path) -> None:
    # E.g. mitmproxy once ran with this confdir before our files existed.
    combined = files.mitmproxy_confdir / "mitmproxy-ca.pem"
    combined.write_bytes(b"stale")
    (files.mitmproxy_confdir / "mitmproxy-ca-cert.pem").write_bytes(b"stale")

    ensure_ca(tmp_path / "data")

    assert combined.read_bytes() == files.key.read_bytes() + files.cert.read_bytes()
    assert (files.mitmproxy_confdir / "mitmproxy-ca-cert.pem").read_bytes() == files.cert.read_bytes()
    assert _mode(combined) == 0o600


# --- the CA certificate ------------------------------------------------------


def test_ca_certificate_properties(files: CAFiles) -> None:
    cert = _load_cert(files.cert)
    key = _load_ca_key(files)

    assert cert.public_key() == key.public_key()
    assert cert.subject == cert.issuer
    assert cert.subject.get_attributes_for_oid(NameOID.COMMON_NAME)[0].value == "Luthien Local CA"
    assert cert.subject.get_attributes_for_oid(NameOID.ORGANIZATION_NAME)[0].value == "Luthien"

    basic = cert.extensions.get_extension_for_class(x509.BasicConstraints)
    assert basic.critical
    assert basic.value.ca
    assert basic.value.path_length == 0

    usage = cert.extensions.get_extension_for_class(x509.KeyUsage)
    assert usage.critical
    assert usage.value.key_cert_sign
    assert usage.value.crl_sign
    assert not usage.value.digital_signature

    ski = cert.extensions.get_extension_for_class(x509.SubjectKeyIdentifier).value
    assert ski == x509.SubjectKeyIdentifier.from_public_key(key.public_key())
    with pytest.raises(x509.ExtensionNotFound):
        cert.extensions.get_extension_for_class(x509.ExtendedKeyUsage)

    now = datetime.datetime.now(datetime.UTC)
    assert now - datetime.timedelta(days=2) < cert.not_valid_before_utc < now
    assert cert.not_valid_after_utc - cert.not_valid_before_utc >= datetime.timedelta(days=3649)


def test_ca_certificate_is_self_signed_and_verifies(files: CAFiles) -> None:
    cert = _load_cert(files.cert)
    cert.verify_directly_issued_by(cert)
    # And the same check spelled out against the raw signature.
    public_key = cert.public_key()
    assert isinstance(public_key, rsa.RSAPublicKey)
    assert cert.signature_hash_algorithm is not None
    public_key.verify(
        cert.signature,
        cert.tbs_certificate_bytes,
        padding.PKCS1v15(),
        cert.signature_hash_algorithm,
    )


# --- the trust bundle --------------------------------------------------------


def test_bundle_contains_system_roots_and_our_ca(files: CAFiles) -> None:
    # Compared as PEM blocks: some distro roots have serials that newer
    # cryptography versions refuse to parse, and bytes are what clients read.
    bundle = _pem_blocks(files.bundle.read_bytes())
    system = _pem_blocks(system_roots_path().read_bytes())

    assert len(system) > 10
    assert bundle == [*system, *_pem_blocks(files.cert.read_bytes())]


def test_bundle_follows_system_root_changes(
    files: CAFiles, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    fake_system = tmp_path / "roots.pem"
    other_ca = ensure_ca(tmp_path / "other")
    # No trailing newline: the bundle must still separate the PEM blocks.
    fake_system.write_bytes(other_ca.cert.read_bytes().rstrip(b"\n"))
    monkeypatch.setattr(authority, "SYSTEM_BUNDLE_CANDIDATES", (tmp_path / "missing.pem", fake_system))

    ensure_ca(tmp_path / "data")

    bundle = x509.load_pem_x509_certificates(files.bundle.read_bytes())
    assert bundle == [_load_cert(other_ca.cert), _load_cert(files.cert)]


def test_system_roots_fall_back_to_certifi(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(authority, "SYSTEM_BUNDLE_CANDIDATES", (tmp_path / "missing.pem",))
    assert system_roots_path() == Path(certifi.where())


# --- clients accept what we sign ---------------------------------------------


def test_python_ssl_accepts_leaf_signed_by_ca_with_bundle_as_only_store(
    files: CAFiles, tmp_path: Path
) -> None:
    leaf, leaf_key = _sign_leaf(files, "localhost")
    client = ssl.create_default_context(cafile=str(files.bundle))
    # Python 3.13 turns on X509_STRICT by default; the CA must satisfy it.
    assert client.verify_flags & ssl.VERIFY_X509_STRICT

    with _tls_server(_write_server_pem(tmp_path, leaf, leaf_key)) as port:
        assert _handshake(port, "localhost", client) == b"ok"


def test_python_ssl_rejects_leaf_without_our_ca(files: CAFiles, tmp_path: Path) -> None:
    # Control for the test above: proves the bundle, not something else, is trusted.
    leaf, leaf_key = _sign_leaf(files, "localhost")
    client = ssl.create_default_context(cafile=certifi.where())

    with (
        _tls_server(_write_server_pem(tmp_path, leaf, leaf_key)) as port,
        pytest.raises(ssl.SSLCertVerificationError),
    ):
        _handshake(port, "localhost", client)


def test_mitmproxy_certstore_uses_our_ca(files: CAFiles) -> None:
    before = {p.name: p.read_bytes() for p in files.mitmproxy_confdir.iterdir()}

    store = CertStore.from_store(files.mitmproxy_confdir, "mitmproxy", 2048)

    assert store.default_ca.to_cryptography() == _load_cert(files.cert)
    # mitmproxy generated nothing of its own (no CA, no p12 files, no dhparam).
    after = {p.name: p.read_bytes() for p in files.mitmproxy_confdir.iterdir()}
    assert after == before


def test_mitmproxy_leaf_chains_to_our_ca(files: CAFiles) -> None:
    ca = _load_cert(files.cert)
    leaf, _ = _mitmproxy_leaf(files, INTERCEPTED_HOST)

    leaf.verify_directly_issued_by(ca)
    # Full RFC 5280 / CA-B-Forum-style path validation, not just the signature.
    verifier = PolicyBuilder().store(Store([ca])).build_server_verifier(x509.DNSName(INTERCEPTED_HOST))
    chain = verifier.verify(leaf, [])
    assert chain[-1] == ca


def test_python_ssl_accepts_mitmproxy_leaf_via_ssl_cert_file(files: CAFiles, tmp_path: Path) -> None:
    """What an intercepted Python client does: default context + our env."""
    leaf, leaf_key = _mitmproxy_leaf(files, INTERCEPTED_HOST)
    env = {**os.environ, **trust_env(PROXY_URL, files)}
    env.pop("SSL_CERT_DIR", None)
    script = (
        "import socket, ssl, sys\n"
        "ctx = ssl.create_default_context()\n"
        "raw = socket.create_connection(('127.0.0.1', int(sys.argv[1])), timeout=30)\n"
        f"tls = ctx.wrap_socket(raw, server_hostname={INTERCEPTED_HOST!r})\n"
        "print(tls.recv(2).decode())\n"
    )
    with _tls_server(_write_server_pem(tmp_path, leaf, leaf_key)) as port:
        result = subprocess.run(
            [sys.executable, "-c", script, str(port)],
            env=env,
            capture_output=True,
            text=True,
            timeout=60,
        )
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "ok"


@pytest.mark.skipif(shutil.which("node") is None, reason="node is not installed")
def test_node_accepts_mitmproxy_leaf_via_node_extra_ca_certs(files: CAFiles, tmp_path: Path) -> None:
    leaf, leaf_key = _mitmproxy_leaf(files, INTERCEPTED_HOST)
    env = {**os.environ, **trust_env(PROXY_URL, files)}
    script = (
        "const tls = require('tls');\n"
        "const s = tls.connect({host: '127.0.0.1', port: Number(process.argv[1]),"
        f" servername: '{INTERCEPTED_HOST}'}}, () => {{\n"
        "  console.log(s.authorized ? 'authorized' : 'unauthorized: ' + s.authorizationError);\n"
        "  s.destroy();\n"
        "});\n"
        "s.on('error', (e) => { console.log('error: ' + e.message); process.exit(1); });\n"
    )
    node = shutil.which("node")
    assert node is not None
    with _tls_server(_write_server_pem(tmp_path, leaf, leaf_key)) as port:
        result = subprocess.run(
            [node, "-e", script, str(port)],
            env=env,
            capture_output=True,
            text=True,
            timeout=60,
        )
    assert result.stdout.strip() == "authorized", result.stdout + result.stderr


# --- the client environment --------------------------------------------------


def test_trust_env(files: CAFiles) -> None:
    assert trust_env(PROXY_URL, files) == {
        "HTTPS_PROXY": PROXY_URL,
        "https_proxy": PROXY_URL,
        "SSL_CERT_FILE": str(files.bundle),
        "REQUESTS_CA_BUNDLE": str(files.bundle),
        "NODE_EXTRA_CA_CERTS": str(files.cert),
        "NO_PROXY": "localhost,127.0.0.1,::1",
        "no_proxy": "localhost,127.0.0.1,::1",
    }


def _bash_env_changes(script: str) -> dict[str, str]:
    """Variables that ``eval "$script"`` adds or changes in a clean bash."""
    # Trailing ":" stops bash from exec'ing the last command, which would
    # change SHLVL between the two snapshots.
    probe = 'env -0; printf "\\1"; eval "$LUTHIEN_EXPORTS"; env -0; :'
    out = subprocess.run(
        ["bash", "-c", probe],
        env={"PATH": os.environ.get("PATH", "/usr/bin:/bin"), "LUTHIEN_EXPORTS": script},
        capture_output=True,
        check=True,
        timeout=30,
    ).stdout.decode()
    before_raw, after_raw = out.split("\1")

    def parse(raw: str) -> dict[str, str]:
        return dict(item.split("=", 1) for item in raw.split("\0") if item)

    before, after = parse(before_raw), parse(after_raw)
    return {k: v for k, v in after.items() if before.get(k) != v}


def test_shell_exports_round_trip_through_bash(tmp_path: Path) -> None:
    awkward = tmp_path / "it's a $HOME `dir` with spaces\nand a newline"
    files = ensure_ca(awkward)
    env = trust_env("http://user:p@ss w0rd!@127.0.0.1:8080", files)

    assert _bash_env_changes(shell_exports(env)) == env


def test_shell_exports_format_is_deterministic() -> None:
    env = {"b": "2", "A": "x y", "C": ""}
    assert shell_exports(env) == "export A='x y'\nexport C=''\nexport b=2\n"
    assert shell_exports(dict(reversed(env.items()))) == shell_exports(env)


@pytest.mark.parametrize("name", ["", "1ABC", "A B", "A;rm -rf /", "A=B", "$(x)"])
def test_shell_exports_rejects_names_that_are_not_identifiers(name: str) -> None:
    with pytest.raises(ValueError):
        shell_exports({name: "v"})


# --- data dir ----------------------------------------------------------------


def test_default_data_dir_from_env(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("LUTHIEN_DATA_DIR", str(tmp_path / "x"))
    assert default_data_dir() == tmp_path / "x"


def test_default_data_dir_defaults_to_home(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("LUTHIEN_DATA_DIR", raising=False)
    monkeypatch.setenv("HOME", str(tmp_path))
    assert default_data_dir() == tmp_path / ".luthien"


def test_default_data_dir_ignores_empty_env(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("LUTHIEN_DATA_DIR", "")
    monkeypatch.setenv("HOME", str(tmp_path))
    assert default_data_dir() == tmp_path / ".luthien"
