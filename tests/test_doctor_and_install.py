"""`luthien certs install|uninstall` against a stand-in filesystem root, and `luthien doctor` against
real services, some running and some not.

(`luthien run -- python -c <an openai SDK call>` through the proxy is covered by
tests/test_network_edges.py::test_luthien_run_sends_a_commands_sdk_calls_through_the_proxy.)
"""

import io
import shutil
import socket
from collections.abc import Iterator, Sequence
from pathlib import Path

import pytest

from certs import CAFiles, ensure_ca
from certs.install import install, uninstall
from luthien.doctor import run_checks
from tests.conftest import free_port, luthien
from tests.databases import require_service

DEBIAN_DIR = Path("usr/local/share/ca-certificates")
RHEL_DIR = Path("etc/pki/ca-trust/source/anchors")


@pytest.fixture
def ca(tmp_path: Path) -> CAFiles:
    return ensure_ca(tmp_path / "data")


class Recorder:
    def __init__(self, status: int = 0) -> None:
        self.commands: list[list[str]] = []
        self.status = status

    def __call__(self, argv: Sequence[str]) -> int:
        self.commands.append(list(argv))
        return self.status


def stand_in_root(tmp_path: Path, store: Path | None) -> Path:
    root = tmp_path / "root"
    root.mkdir()
    if store is not None:
        (root / store).mkdir(parents=True)
    return root


def assert_manual_steps(output: str, cert: Path) -> None:
    assert f"    sudo cp {cert} /usr/local/share/ca-certificates/luthien-ca.crt\n" in output
    assert "    sudo update-ca-certificates\n" in output
    assert f"    sudo cp {cert} /etc/pki/ca-trust/source/anchors/luthien-ca.pem\n" in output
    assert "    sudo update-ca-trust extract\n" in output
    assert (
        f"    sudo security add-trusted-cert -d -r trustRoot -k /Library/Keychains/System.keychain {cert}\n"
        in output
    )


def test_install_copies_the_certificate_into_the_debian_store_and_uninstall_removes_it(
    tmp_path: Path, ca: CAFiles
) -> None:
    root = stand_in_root(tmp_path, DEBIAN_DIR)
    runner, out = Recorder(), io.StringIO()

    assert install(ca.cert, root=root, runner=runner, platform="linux", out=out) == 0
    target = root / DEBIAN_DIR / "luthien-ca.crt"
    assert target.read_bytes() == ca.cert.read_bytes()
    assert b"PRIVATE KEY" not in target.read_bytes()
    assert runner.commands == [["update-ca-certificates"]]
    assert out.getvalue().splitlines() == [
        f"Copied {ca.cert} to {target} (Debian/Ubuntu)",
        "Updated the system trust store (update-ca-certificates)",
    ]

    out = io.StringIO()
    assert uninstall(ca.cert, root=root, runner=runner, platform="linux", out=out) == 0
    assert not target.exists()
    assert runner.commands[-1] == ["update-ca-certificates", "--fresh"]
    assert out.getvalue().splitlines()[0] == f"Removed {target} (Debian/Ubuntu)"
    # A second uninstall has nothing to do and succeeds without running anything.
    assert uninstall(ca.cert, root=root, runner=runner, platform="linux", out=io.StringIO()) == 0
    assert len(runner.commands) == 2


def test_install_uses_the_rhel_anchors(tmp_path: Path, ca: CAFiles) -> None:
    root = stand_in_root(tmp_path, RHEL_DIR)
    runner = Recorder()
    assert install(ca.cert, root=root, runner=runner, platform="linux", out=io.StringIO()) == 0
    assert (root / RHEL_DIR / "luthien-ca.pem").read_bytes() == ca.cert.read_bytes()
    assert runner.commands == [["update-ca-trust", "extract"]]


def test_install_on_macos_trusts_the_certificate_in_the_system_keychain(ca: CAFiles) -> None:
    runner = Recorder()
    assert install(ca.cert, runner=runner, platform="darwin", out=io.StringIO()) == 0
    assert runner.commands == [
        [
            "security",
            "add-trusted-cert",
            "-d",
            "-r",
            "trustRoot",
            "-k",
            "/Library/Keychains/System.keychain",
            str(ca.cert),
        ]
    ]


def test_a_failing_update_command_prints_the_manual_steps(tmp_path: Path, ca: CAFiles) -> None:
    root = stand_in_root(tmp_path, DEBIAN_DIR)
    out = io.StringIO()
    assert install(ca.cert, root=root, runner=Recorder(status=1), platform="linux", out=out) == 1
    assert "`update-ca-certificates` failed (exit status 1).\n" in out.getvalue()
    assert_manual_steps(out.getvalue(), ca.cert)


def test_an_unwritable_store_prints_the_manual_steps(tmp_path: Path, ca: CAFiles) -> None:
    root = stand_in_root(tmp_path, DEBIAN_DIR)
    (root / DEBIAN_DIR / "luthien-ca.crt").mkdir()  # unwritable as a file, even for root
    runner, out = Recorder(), io.StringIO()
    assert install(ca.cert, root=root, runner=runner, platform="linux", out=out) == 1
    assert out.getvalue().startswith(f"Cannot write {root / DEBIAN_DIR / 'luthien-ca.crt'} (")
    assert_manual_steps(out.getvalue(), ca.cert)
    assert runner.commands == []


def test_cli_install_and_uninstall_into_a_stand_in_root(tmp_path: Path) -> None:
    root = stand_in_root(tmp_path, DEBIAN_DIR)
    data_dir = tmp_path / "data"
    done = luthien("certs", "install", "--data-dir", str(data_dir), "--root", str(root))
    assert done.returncode == 0, done.stdout + done.stderr
    cert = data_dir / "ca" / "luthien-ca.pem"
    target = root / DEBIAN_DIR / "luthien-ca.crt"
    assert target.read_bytes() == cert.read_bytes()
    assert done.stdout.splitlines() == [
        f"Copied {cert} to {target} (Debian/Ubuntu)",
        f"Not run (trust root is {root}, not /): update-ca-certificates",
        "Updated the system trust store (update-ca-certificates)",
    ]
    key_body = (data_dir / "ca" / "luthien-ca.key").read_text().splitlines()[1]
    assert key_body not in done.stdout + done.stderr

    done = luthien("certs", "uninstall", "--data-dir", str(data_dir), env={"LUTHIEN_TRUST_ROOT": str(root)})
    assert done.returncode == 0, done.stdout + done.stderr
    assert not target.exists()
    assert done.stdout.splitlines()[0] == f"Removed {target} (Debian/Ubuntu)"


def test_cli_install_without_a_known_store_prints_the_manual_steps(tmp_path: Path) -> None:
    root = stand_in_root(tmp_path, None)
    data_dir = tmp_path / "data"
    done = luthien("certs", "install", "--data-dir", str(data_dir), env={"LUTHIEN_TRUST_ROOT": str(root)})
    assert done.returncode == 1
    assert done.stdout.startswith(f"No known system trust store under {root}.\n")
    assert_manual_steps(done.stdout, data_dir / "ca" / "luthien-ca.pem")
    assert list(root.iterdir()) == []


def test_doctor_flags_a_ca_key_others_can_read(ca: CAFiles) -> None:
    ca.key.chmod(0o644)
    check = run_checks(ca.cert.parent.parent)[0]
    assert check.lines() == [f"FAIL  CA: {ca.key} has mode 644", f"      fix: chmod 600 {ca.key}"]


def node_line() -> str:
    node = shutil.which("node")
    if node is None:
        return "WARN  node: not found on PATH (only Node agents need it)"
    return f"OK    node: {node}"


def client_env(ca: CAFiles) -> dict[str, str]:
    """The CA trusted, and a home with no Gemini CLI settings (tests/test_gemini_route.py has those)."""
    return {
        "SSL_CERT_FILE": str(ca.bundle),
        "NODE_EXTRA_CA_CERTS": str(ca.cert),
        "HOME": str(ca.cert.parent.parent),
        "GEMINI_API_KEY": "",
    }


AGENT_LINES = [
    "OK    Claude Code: no provider switch or base URL: model calls go to api.anthropic.com, which Luthien polices",
    "OK    Codex: model provider openai (the default): model calls go to api.openai.com, which Luthien polices",
    "SKIP  Gemini CLI: no way to reach a model is set up",
]


@pytest.fixture
def listener() -> Iterator[int]:
    """A TCP port that accepts connections (the kernel completes them from the backlog)."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        sock.listen(8)
        yield sock.getsockname()[1]


def test_doctor_reports_each_missing_dependency_with_a_fix(ca: CAFiles) -> None:
    require_service("Redis", "127.0.0.1", 6379)
    proxy, postgres, control_plane = free_port(), free_port(), free_port()
    data_dir = ca.cert.parent.parent
    env = client_env(ca) | {
        "HTTPS_PROXY": f"http://127.0.0.1:{proxy}",
        "DATABASE_URL": f"postgresql://luthien:hunter2@127.0.0.1:{postgres}/luthien",
        "REDIS_URL": "redis://127.0.0.1:6379/0",
        "LUTHIEN_CONTROL_PLANE_URL": f"http://127.0.0.1:{control_plane}",
    }
    done = luthien("doctor", "--data-dir", str(data_dir), env=env)
    assert done.returncode == 1, done.stdout + done.stderr
    assert done.stdout.splitlines() == [
        f"OK    CA: {ca.cert} (key mode 600)",
        f"OK    Python trust: SSL_CERT_FILE={ca.bundle} trusts the Luthien CA",
        f"OK    Node trust: NODE_EXTRA_CA_CERTS={ca.cert}",
        node_line(),
        *AGENT_LINES,
        f"FAIL  proxy: nothing accepts connections at http://127.0.0.1:{proxy} (connection refused)",
        f"      fix: start it with `luthien up` (or `luthien proxy --port {proxy}`), or set HTTPS_PROXY/--proxy",
        f"FAIL  control plane: http://127.0.0.1:{control_plane} is unreachable (connection refused)",
        "      fix: start it with `luthien controlplane`, or correct LUTHIEN_CONTROL_PLANE_URL "
        f"(http://127.0.0.1:{control_plane})",
        f"FAIL  database: postgresql://luthien:***@127.0.0.1:{postgres}/luthien does not answer "
        "(connection refused)",
        "      fix: start the database or correct DATABASE_URL (unset it for SQLite in the data dir)",
        "OK    Redis: redis://127.0.0.1:6379/0 answers PING",
    ]
    assert "hunter2" not in done.stdout + done.stderr


def test_doctor_flags_clients_that_do_not_trust_the_ca(ca: CAFiles, listener: int) -> None:
    env = {
        "SSL_CERT_FILE": str(ca.cert.with_name("missing.pem")),  # an empty trust store
        "NODE_EXTRA_CA_CERTS": "",
        "HTTPS_PROXY": "",
        "DATABASE_URL": "",
        "REDIS_URL": "",
        "LUTHIEN_CONTROL_PLANE_URL": "",
    }
    data_dir = ca.cert.parent.parent
    done = luthien("doctor", "--data-dir", str(data_dir), "--proxy", f"127.0.0.1:{listener}", env=env)
    assert done.returncode == 1, done.stdout + done.stderr
    lines = done.stdout.splitlines()
    # The fix reaches this proxy and this CA: its port and data dir are not the defaults.
    certs_env = f"luthien certs env --port {listener} --data-dir {data_dir}"
    assert lines[1:5] == [
        f"FAIL  Python trust: SSL_CERT_FILE={ca.cert.with_name('missing.pem')} does not trust the Luthien CA",
        f'      fix: eval "$({certs_env})" (sets SSL_CERT_FILE={ca.bundle}), or `sudo luthien certs install`',
        "FAIL  Node trust: NODE_EXTRA_CA_CERTS is not set",
        f'      fix: export NODE_EXTRA_CA_CERTS={ca.cert} (or eval "$({certs_env})")',
    ]
    assert f"OK    database: SQLite {data_dir / 'luthien.db'} (default) answers" in lines


def test_doctor_passes_when_everything_answers(ca: CAFiles, listener: int, tmp_path: Path) -> None:
    require_service("Redis", "127.0.0.1", 6379)
    database = tmp_path / "doctor.db"
    env = client_env(ca) | {
        "HTTPS_PROXY": f"http://127.0.0.1:{listener}",
        "DATABASE_URL": f"sqlite://{database}",
        "REDIS_URL": "redis://127.0.0.1:6379",
        "LUTHIEN_CONTROL_PLANE_URL": "",
    }
    done = luthien("doctor", "--data-dir", str(ca.cert.parent.parent), env=env)
    assert done.returncode == 0, done.stdout + done.stderr
    assert done.stdout.splitlines() == [
        f"OK    CA: {ca.cert} (key mode 600)",
        f"OK    Python trust: SSL_CERT_FILE={ca.bundle} trusts the Luthien CA",
        f"OK    Node trust: NODE_EXTRA_CA_CERTS={ca.cert}",
        node_line(),
        *AGENT_LINES,
        f"OK    proxy: http://127.0.0.1:{listener} accepts connections",
        "SKIP  control plane: not configured (LUTHIEN_CONTROL_PLANE_URL)",
        f"OK    database: sqlite://{database} answers",
        "OK    Redis: redis://127.0.0.1:6379 answers PING",
    ]
