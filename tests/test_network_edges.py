"""What must never happen: non-provider traffic decrypted, WebSockets slipping past policy,
secrets in logs."""

import datetime
import http.client
import os
import ssl
import stat
import subprocess
import sys
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest
import websockets.sync.client
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID
from websockets.exceptions import InvalidStatus

from tests.conftest import ROOT, RunningProxy, luthien
from tests.fake_provider import FakeProvider

SECRET_OPENAI = "sk-LEAKCHECK-openai-0123456789abcdef"
SECRET_ANTHROPIC = "sk-ant-LEAKCHECK-0123456789abcdef"


def self_signed_localhost(directory: Path) -> tuple[Path, Path, bytes]:
    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "localhost")])
    now = datetime.datetime.now(datetime.UTC)
    cert = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(days=1))
        .not_valid_after(now + datetime.timedelta(days=1))
        .add_extension(x509.SubjectAlternativeName([x509.DNSName("localhost")]), critical=False)
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .sign(key, hashes.SHA256())
    )
    cert_path, key_path = directory / "server.pem", directory / "server.key"
    cert_path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    key_path.write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
        )
    )
    return cert_path, key_path, cert.public_bytes(serialization.Encoding.DER)


@pytest.fixture
def other_tls_server(tmp_path: Path) -> Iterator[tuple[int, Path, bytes]]:
    """A TLS server for some host that is not an LLM provider, with its own certificate."""
    cert_path, key_path, der = self_signed_localhost(tmp_path)
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    context.load_cert_chain(cert_path, key_path)
    server = context.wrap_socket(__import__("socket").create_server(("127.0.0.1", 0)), server_side=True)
    port = server.getsockname()[1]

    def serve() -> None:
        while True:
            try:
                conn, _ = server.accept()
            except OSError:
                return
            with conn:
                conn.recv(65536)
                conn.sendall(b"HTTP/1.1 200 OK\r\ncontent-length: 5\r\nconnection: close\r\n\r\nhello")

    thread = threading.Thread(target=serve, daemon=True)
    thread.start()
    yield port, cert_path, der
    server.close()


def test_other_hosts_are_tunnelled_not_decrypted(
    noop: RunningProxy, other_tls_server: tuple[int, Path, bytes]
) -> None:
    port, cert_path, der = other_tls_server
    # Trusting only the server's own certificate: the handshake succeeds only if nothing in
    # between substituted a certificate of ours.
    context = ssl.create_default_context(cafile=str(cert_path))
    connection = http.client.HTTPSConnection("127.0.0.1", noop.port, context=context, timeout=10)
    connection.set_tunnel("localhost", port)
    connection.request("GET", "/")
    assert connection.sock.getpeercert(binary_form=True) == der
    response = connection.getresponse()
    assert (response.status, response.read()) == (200, b"hello")
    connection.close()


def test_provider_hosts_are_decrypted_with_our_ca(noop: RunningProxy) -> None:
    context = ssl.create_default_context(cafile=str(noop.data_dir / "ca" / "luthien-ca.pem"))
    connection = http.client.HTTPSConnection("127.0.0.1", noop.port, context=context, timeout=10)
    connection.set_tunnel("api.openai.com", 443)
    connection.request("GET", "/v1/models")
    issuer = connection.sock.getpeercert()["issuer"]
    assert connection.getresponse().status == 200
    assert (("commonName", "Luthien Local CA"),) in issuer
    connection.close()


@pytest.mark.parametrize("url", ["wss://api.openai.com/v1/responses", "wss://api.anthropic.com/v1/messages"])
def test_websocket_upgrades_to_providers_are_refused(
    noop: RunningProxy, fake: FakeProvider, url: str
) -> None:
    before = len(fake.requests)
    context = ssl.create_default_context(cafile=str(noop.bundle))
    with pytest.raises(InvalidStatus) as refused:
        websockets.sync.client.connect(url, proxy=noop.url, ssl=context, open_timeout=10)
    assert refused.value.response.status_code == 426
    assert b"would bypass policy" in refused.value.response.body
    assert len(fake.requests) == before


def test_credentials_never_reach_the_logs(proxies: dict[str, RunningProxy]) -> None:
    prompt = "[scenario:tool_call rm -rf /]"
    for name in ("noop", "blocklist"):
        calls = [
            {
                "api": api,
                "stream": stream,
                "prompt": prompt,
                "key": SECRET_ANTHROPIC if api == "messages" else SECRET_OPENAI,
            }
            for api in ("chat", "responses", "messages")
            for stream in (False, True)
        ]
        assert all(r["ok"] for r in proxies[name].sdk(*calls))
    for proxy in proxies.values():
        log = proxy.log()
        assert "DEBUG" in log or proxy.name != "noop"
        assert "LEAKCHECK" not in log


def test_ca_private_key_is_private(noop: RunningProxy) -> None:
    for secret in (noop.data_dir / "ca" / "luthien-ca.key", noop.data_dir / "mitmproxy" / "mitmproxy-ca.pem"):
        assert stat.S_IMODE(secret.stat().st_mode) == 0o600
    key_body = (noop.data_dir / "ca" / "luthien-ca.key").read_text().splitlines()[1]
    assert key_body not in noop.log()


def test_certs_env_prints_the_exports(noop: RunningProxy) -> None:
    done = luthien("certs", "env", "--data-dir", str(noop.data_dir), "--port", str(noop.port))
    assert done.returncode == 0, done.stderr
    exports = dict(line.removeprefix("export ").split("=", 1) for line in done.stdout.splitlines())
    bundle = str(noop.bundle)
    assert exports["HTTPS_PROXY"] == noop.url
    assert exports["SSL_CERT_FILE"] == exports["REQUESTS_CA_BUNDLE"] == bundle
    assert exports["NODE_EXTRA_CA_CERTS"] == str(noop.data_dir / "ca" / "luthien-ca.pem")
    assert "127.0.0.1" in exports["NO_PROXY"]
    path = luthien("certs", "path", env={"LUTHIEN_DATA_DIR": str(noop.data_dir)})
    assert path.stdout.strip() == str(noop.data_dir / "ca" / "luthien-ca.pem")


def test_luthien_run_sends_a_commands_sdk_calls_through_the_proxy(
    noop: RunningProxy, fake: FakeProvider
) -> None:
    script = (
        "import openai; c = openai.OpenAI(api_key='sk-x', max_retries=0); "
        "m = [{'role': 'user', 'content': 'via luthien run'}]; "
        "print(c.chat.completions.create(model='gpt-4o', messages=m).choices[0].message.content)"
    )
    clean = {k: v for k, v in os.environ.items() if "PROXY" not in k.upper()}
    done = subprocess.run(
        [
            sys.executable,
            "-m",
            "luthien",
            "run",
            "--data-dir",
            str(noop.data_dir),
            "--port",
            str(noop.port),
            "--",
            sys.executable,
            "-c",
            script,
        ],
        capture_output=True,
        text=True,
        timeout=120,
        cwd=ROOT,
        env=clean,
    )
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == "Hello from the fake provider. The quick brown fox jumps over the lazy dog."
    assert b"via luthien run" in fake.requests[-1].body


def test_a_broken_policy_file_stops_startup_with_a_precise_error(tmp_path: Path) -> None:
    policy = tmp_path / "policy.yaml"
    policy.write_text("policy:\n  class: ToolCallBlocklistPolicy\n  config:\n    patterns: ['(unclosed']\n")
    done = luthien("proxy", "--policy", str(policy), "--data-dir", str(tmp_path / "data"), "--port", "0")
    assert done.returncode == 2
    assert f"{policy}: policy.config.patterns" in done.stderr
    assert "invalid regular expression" in done.stderr


def _chat_through(proxy: RunningProxy, headers: dict[str, str]) -> http.client.HTTPResponse:
    """A client with no cookie jar of its own, as every agent is to the others."""
    context = ssl.create_default_context(cafile=str(proxy.data_dir / "ca" / "luthien-ca.pem"))
    connection = http.client.HTTPSConnection("127.0.0.1", proxy.port, context=context, timeout=10)
    connection.set_tunnel("api.openai.com", 443)
    body = b'{"model": "gpt-4o", "messages": [{"role": "user", "content": "hi"}]}'
    connection.request("POST", "/v1/chat/completions", body, {"content-type": "application/json", **headers})
    response = connection.getresponse()
    response.read()
    connection.close()
    return response


def test_a_cookie_a_provider_sets_for_one_agent_never_reaches_another(
    noop: RunningProxy, fake: FakeProvider
) -> None:
    fake.reset()
    first = _chat_through(noop, {"authorization": "Bearer sk-agent-one"})
    assert first.status == 200 and first.headers["set-cookie"].startswith("__cf_bm=")  # the agent gets it
    _chat_through(noop, {"authorization": "Bearer sk-agent-two"})
    _chat_through(noop, {"authorization": "Bearer sk-agent-three", "cookie": "own=1"})
    sent = [request.headers.get("cookie") for request in fake.requests]
    assert sent == [None, None, "own=1"]


def test_the_provider_gets_the_agents_headers_and_none_of_the_proxys_own(
    noop: RunningProxy, fake: FakeProvider
) -> None:
    """What the agent leaves out stays out: the proxy's HTTP client adds no user-agent, accept or
    accept-encoding of its own (http.client sends no user-agent, and ``identity`` encoding)."""
    fake.reset()
    assert _chat_through(noop, {"authorization": "Bearer sk-agent", "x-agent": "mine"}).status == 200
    (request,) = fake.requests
    assert request.headers["x-agent"] == "mine" and request.headers["authorization"] == "Bearer sk-agent"
    assert "user-agent" not in request.headers and "accept" not in request.headers
    assert request.headers["accept-encoding"] == "identity"
