"""``luthien doctor``: checks the pieces a working setup needs, a line each, with a fix for each failure.

It creates no CA (the default SQLite file is opened as `luthien up` would) and never prints a
secret; URLs are shown with their password masked.
"""

from __future__ import annotations

import asyncio
import base64
import datetime
import os
import re
import shlex
import shutil
import socket
import ssl
import stat
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import TextIO
from urllib.parse import urlsplit

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from certs import ca_files, default_data_dir
from luthien.agent_routes import ROUTES
from luthien.model_route import Route

DEFAULT_PROXY_URL = "http://127.0.0.1:8080"
TIMEOUT = 1.0
DATABASE_TIMEOUT = 5.0
PROBE_HOST = "luthien-doctor.test"
_PEM_CERTIFICATE = re.compile(r"-----BEGIN CERTIFICATE-----(.*?)-----END CERTIFICATE-----", re.S)


@dataclass(frozen=True)
class Check:
    status: str  # OK, FAIL, WARN or SKIP
    name: str
    detail: str
    fix: str | None = None

    def lines(self) -> list[str]:
        lines = [f"{self.status:<4}  {self.name}: {self.detail}"]
        if self.fix:
            lines.append(f"      fix: {self.fix}")
        return lines


def mask_url(url: str) -> str:
    """``url`` with any password replaced by ``***``."""
    try:
        parts = urlsplit(url)
        password = parts.password
    except ValueError:
        return "(unparseable URL)"
    if password is None:
        return url
    user = parts.username or ""
    host = parts.netloc.rpartition("@")[2]
    return parts._replace(netloc=f"{user}:***@{host}").geturl()


def check_ca(data_dir: Path) -> Check:
    files = ca_files(data_dir)
    create = f"start Luthien once (`luthien up`) or run `luthien certs path --data-dir {data_dir}`"
    if not files.cert.is_file() or not files.key.is_file():
        return Check("FAIL", "CA", f"no CA in {files.cert.parent}", create)
    mode = stat.S_IMODE(files.key.stat().st_mode)
    if mode & 0o077:
        return Check("FAIL", "CA", f"{files.key} has mode {mode:o}", f"chmod 600 {files.key}")
    return Check("OK", "CA", f"{files.cert} (key mode 600)")


def certs_env_command(data_dir: Path, proxy_url: str) -> str:
    """``luthien certs env`` with the --port and --data-dir that reach this proxy and its CA."""
    words = ["luthien", "certs", "env"]
    _, port = _host_port(proxy_url, 8080)
    if port != 8080:
        words += ["--port", str(port)]
    if data_dir != default_data_dir():
        words += ["--data-dir", shlex.quote(str(data_dir))]
    return " ".join(words)


def check_python_trust(data_dir: Path, certs_env: str = "luthien certs env") -> Check:
    """A TLS handshake, in memory, between a server presenting a leaf the CA signs and a client
    using Python's default trust store (``SSL_CERT_FILE`` when set)."""
    files = ca_files(data_dir)
    configured = os.environ.get("SSL_CERT_FILE")
    where = f"SSL_CERT_FILE={configured}" if configured else "the default trust store"
    fix = f'eval "$({certs_env})" (sets SSL_CERT_FILE={files.bundle}), or `sudo luthien certs install`'
    try:
        ca_key = serialization.load_pem_private_key(files.key.read_bytes(), password=None)
        ca_cert = x509.load_pem_x509_certificate(files.cert.read_bytes())
    except (OSError, ValueError, TypeError):
        return Check("FAIL", "Python trust", "cannot read the CA", "see the CA check above")
    if not isinstance(ca_key, rsa.RSAPrivateKey):
        return Check("FAIL", "Python trust", "the CA key is not an RSA key", "see the CA check above")
    try:
        _handshake(*_leaf(ca_key, ca_cert))
    except ssl.SSLCertVerificationError:
        return Check("FAIL", "Python trust", f"{where} does not trust the Luthien CA", fix)
    except (ssl.SSLError, OSError) as exc:
        return Check("FAIL", "Python trust", f"{where}: {type(exc).__name__}: {exc}", fix)
    return Check("OK", "Python trust", f"{where} trusts the Luthien CA")


def check_node_trust(data_dir: Path, certs_env: str = "luthien certs env") -> list[Check]:
    files = ca_files(data_dir)
    fix = f'export NODE_EXTRA_CA_CERTS={files.cert} (or eval "$({certs_env})")'
    configured = os.environ.get("NODE_EXTRA_CA_CERTS")
    checks = []
    if not configured:
        checks.append(Check("FAIL", "Node trust", "NODE_EXTRA_CA_CERTS is not set", fix))
    elif not _contains_certificate(Path(configured), files.cert):
        checks.append(
            Check("FAIL", "Node trust", f"NODE_EXTRA_CA_CERTS={configured} lacks the Luthien CA", fix)
        )
    else:
        checks.append(Check("OK", "Node trust", f"NODE_EXTRA_CA_CERTS={configured}"))
    node = shutil.which("node")
    if node is None:
        checks.append(Check("WARN", "node", "not found on PATH (only Node agents need it)"))
    else:
        checks.append(Check("OK", "node", node))
    return checks


def check_proxy(url: str) -> Check:
    shown = mask_url(url)
    host, port = _host_port(url, 8080)
    try:
        socket.create_connection((host, port), timeout=TIMEOUT).close()
    except OSError as exc:
        return Check(
            "FAIL",
            "proxy",
            f"nothing accepts connections at {shown} ({_reason(exc)})",
            f"start it with `luthien up` (or `luthien proxy --port {port}`), or set HTTPS_PROXY/--proxy",
        )
    return Check("OK", "proxy", f"{shown} accepts connections")


def check_control_plane(url: str | None) -> Check:
    if not url:
        return Check("SKIP", "control plane", "not configured (LUTHIEN_CONTROL_PLANE_URL)")
    import httpx

    shown = mask_url(url)
    fix = f"start it with `luthien controlplane`, or correct LUTHIEN_CONTROL_PLANE_URL ({shown})"
    try:
        # trust_env=False: the proxy variables must not route this; verify still honours SSL_CERT_FILE.
        with httpx.Client(timeout=TIMEOUT * 2, trust_env=False, verify=ssl.create_default_context()) as http:
            response = http.get(url.rstrip("/") + "/healthz")
    except httpx.HTTPError as exc:
        return Check("FAIL", "control plane", f"{shown} is unreachable ({_reason(exc)})", fix)
    if response.status_code != 200:
        return Check("FAIL", "control plane", f"{shown}/healthz answered {response.status_code}", fix)
    return Check("OK", "control plane", f"{shown}/healthz answered 200")


def check_database(url: str | None, data_dir: Path) -> Check:
    from controlplane.storage import open_storage

    shown = mask_url(url) if url else f"SQLite {data_dir / 'luthien.db'} (default)"
    fix = "start the database or correct DATABASE_URL (unset it for SQLite in the data dir)"
    try:
        storage = open_storage(url, data_dir)
    except ValueError as exc:
        return Check("FAIL", "database", str(exc), fix)

    async def ping() -> None:
        try:
            await asyncio.wait_for(storage.ping(), DATABASE_TIMEOUT)
        finally:
            await storage.close()

    try:
        asyncio.run(ping())
    except Exception as exc:  # any failure to answer is the finding
        return Check("FAIL", "database", f"{shown} does not answer ({_reason(exc)})", fix)
    return Check("OK", "database", f"{shown} answers")


def check_redis(url: str | None) -> Check:
    if not url:
        return Check("SKIP", "Redis", "not configured (REDIS_URL); activity stays in one process")
    import redis.asyncio as redis

    shown = mask_url(url)

    async def ping() -> None:
        client = redis.from_url(url, socket_timeout=TIMEOUT, socket_connect_timeout=TIMEOUT)
        try:
            await asyncio.wait_for(client.ping(), TIMEOUT * 2)
        finally:
            await client.aclose()

    try:
        asyncio.run(ping())
    except Exception as exc:  # any failure to answer is the finding
        return Check(
            "FAIL", "Redis", f"{shown} does not answer ({_reason(exc)})", "start Redis or correct REDIS_URL"
        )
    return Check("OK", "Redis", f"{shown} answers PING")


def check_agents(cwd: Path) -> list[Check]:
    """Whether each agent Luthien knows, run here, would send its model calls to a policed host."""
    return [check_route(read(os.environ, cwd, ())) for read in ROUTES.values()]


def check_route(route: Route) -> Check:
    if route.problem is not None:
        return Check("FAIL", route.agent, route.problem.detail, route.problem.fix)
    if not route.configured:
        return Check("SKIP", route.agent, "no way to reach a model is set up")
    how = ", ".join(route.choices) or "no provider switch or base URL"
    return Check("OK", route.agent, f"{how}: model calls go to {route.host}, which Luthien polices")


def run_checks(
    data_dir: Path,
    proxy_url: str | None = None,
    control_plane_url: str | None = None,
    database_url: str | None = None,
    redis_url: str | None = None,
) -> list[Check]:
    proxy = proxy_url or os.environ.get("HTTPS_PROXY") or os.environ.get("https_proxy") or DEFAULT_PROXY_URL
    control_plane = control_plane_url or os.environ.get("LUTHIEN_CONTROL_PLANE_URL") or None
    certs_env = certs_env_command(data_dir, proxy)
    checks = [check_ca(data_dir)]
    if checks[0].status == "OK":
        checks.append(check_python_trust(data_dir, certs_env))
    else:
        checks.append(Check("FAIL", "Python trust", "no usable CA", "see the CA check above"))
    checks += check_node_trust(data_dir, certs_env)
    checks += check_agents(Path.cwd())
    checks.append(check_proxy(proxy))
    checks.append(check_control_plane(control_plane))
    checks.append(check_database(database_url or os.environ.get("DATABASE_URL") or None, data_dir))
    checks.append(check_redis(redis_url or os.environ.get("REDIS_URL") or None))
    return checks


def doctor(
    data_dir: Path,
    proxy_url: str | None = None,
    control_plane_url: str | None = None,
    database_url: str | None = None,
    redis_url: str | None = None,
    out: TextIO | None = None,
) -> int:
    """Prints the checks; 0 when none failed (warnings and skipped checks do not count)."""
    checks = run_checks(data_dir, proxy_url, control_plane_url, database_url, redis_url)
    for check in checks:
        for line in check.lines():
            print(line, file=out, flush=True)
    return 1 if any(check.status == "FAIL" for check in checks) else 0


def _host_port(url: str, default_port: int) -> tuple[str, int]:
    parts = urlsplit(url if "://" in url else f"http://{url}")
    return parts.hostname or "127.0.0.1", parts.port or default_port


def _reason(exc: BaseException) -> str:
    if isinstance(exc, ConnectionRefusedError):
        return "connection refused"
    if isinstance(exc, TimeoutError | asyncio.TimeoutError):
        return "timed out"
    cause = exc.__cause__ or exc.__context__
    if cause is not None and isinstance(cause, ConnectionRefusedError | OSError):
        return _reason(cause)
    import httpx

    if isinstance(exc, httpx.ConnectError):
        return "connection refused" if "refused" in str(exc).lower() else f"connect error: {exc}"
    message = str(exc)
    if "refused" in message.lower() or "Connect call failed" in message:
        return "connection refused"
    return f"{type(exc).__name__}: {message}" if message else type(exc).__name__


def _contains_certificate(bundle: Path, cert: Path) -> bool:
    """Compares the DER of each PEM block: parsing every certificate of a system bundle would
    trip over the odd malformed one."""
    try:
        wanted = _pem_blocks(cert.read_text())
        return bool(wanted) and wanted[0] in _pem_blocks(bundle.read_text(errors="replace"))
    except OSError:
        return False


def _pem_blocks(text: str) -> list[bytes]:
    blocks = []
    for body in _PEM_CERTIFICATE.findall(text):
        try:
            blocks.append(base64.b64decode("".join(body.split())))
        except ValueError:
            continue
    return blocks


def _leaf(ca_key: rsa.RSAPrivateKey, ca_cert: x509.Certificate) -> tuple[bytes, bytes]:
    key = ec.generate_private_key(ec.SECP256R1())
    now = datetime.datetime.now(datetime.UTC)
    ski = ca_cert.extensions.get_extension_for_class(x509.SubjectKeyIdentifier).value
    cert = (
        x509.CertificateBuilder()
        .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, PROBE_HOST)]))
        .issuer_name(ca_cert.subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + datetime.timedelta(hours=1))
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(x509.SubjectAlternativeName([x509.DNSName(PROBE_HOST)]), critical=False)
        .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH]), critical=False)
        .add_extension(x509.AuthorityKeyIdentifier.from_issuer_subject_key_identifier(ski), critical=False)
        .sign(ca_key, hashes.SHA256())
    )
    key_pem = key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    )
    return cert.public_bytes(serialization.Encoding.PEM), key_pem


def _handshake(cert_pem: bytes, key_pem: bytes) -> None:
    server_context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    # load_cert_chain reads files only: a private directory, deleted at once.
    with tempfile.TemporaryDirectory(prefix="luthien-doctor-") as tmp:
        chain = Path(tmp) / "leaf.pem"
        fd = os.open(chain, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        with os.fdopen(fd, "wb") as f:
            f.write(key_pem + cert_pem)
        server_context.load_cert_chain(chain)
    client_context = ssl.create_default_context()
    client_in, client_out, server_in, server_out = (ssl.MemoryBIO() for _ in range(4))
    client = client_context.wrap_bio(client_in, client_out, server_hostname=PROBE_HOST)
    server = server_context.wrap_bio(server_in, server_out, server_side=True)
    client_done = server_done = False
    for _ in range(20):
        for side, done in ((client, client_done), (server, server_done)):
            if done:
                continue
            try:
                side.do_handshake()
                if side is client:
                    client_done = True
                else:
                    server_done = True
            except ssl.SSLWantReadError:
                pass
        server_in.write(client_out.read())
        client_in.write(server_out.read())
        if client_done and server_done:
            return
    raise ssl.SSLError("the in-memory TLS handshake did not finish")
