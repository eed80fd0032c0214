"""The ``luthien`` command line: its commands and options (each with its environment variable),
and what the options common to several commands resolve to (the data directory, the CA)."""

import argparse
import math
import os
import sys
from pathlib import Path

from addon.upstream import DEFAULT_UPSTREAM_TIMEOUT
from certs import CAFiles, default_data_dir, ensure_ca, trust_env
from certs.authority import CAKeyPermissionError

DEFAULT_PORT = 8080
#: Below Kubernetes' default termination grace period (30 s), so a pod drains before it is killed.
DEFAULT_SHUTDOWN_GRACE = 10.0
DEFAULT_HOST = "127.0.0.1"
DEFAULT_DASHBOARD_PORT = 8000
DEFAULT_CONTROL_PLANE_PORT = 8081
DEFAULT_METRICS_PORT = 9464


def _seconds(text: str) -> float:
    try:
        seconds = float(text)
    except ValueError:
        seconds = math.nan
    if not (math.isfinite(seconds) and seconds > 0):
        raise argparse.ArgumentTypeError(f"expected a number of seconds above 0, got {text!r}")
    return seconds


def _unknown_endpoints(text: str) -> str:
    if text not in ("forward", "refuse"):
        raise argparse.ArgumentTypeError(f"expected forward or refuse, got {text!r}")
    return text


def env_list(name: str) -> list[str]:
    return [item.strip() for item in os.environ.get(name, "").split(",") if item.strip()]


def _add_data_dir(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--data-dir",
        type=Path,
        default=None,
        help="where the CA and state live (env LUTHIEN_DATA_DIR; default ~/.luthien)",
    )


def _add_common(parser: argparse.ArgumentParser) -> None:
    _add_data_dir(parser)
    parser.add_argument(
        "--port",
        type=int,
        default=int(os.environ.get("LUTHIEN_PORT", DEFAULT_PORT)),
        help=f"proxy port (env LUTHIEN_PORT; default {DEFAULT_PORT})",
    )


def _add_backend_options(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--database-url",
        default=os.environ.get("DATABASE_URL") or None,
        help="where calls are recorded: postgresql://… or sqlite:///path (env DATABASE_URL; "
        "default: SQLite in the data dir)",
    )
    parser.add_argument(
        "--redis-url",
        default=os.environ.get("REDIS_URL") or None,
        help="activity bus shared by processes: redis://… (env REDIS_URL; default: in memory)",
    )
    parser.add_argument(
        "--log-level",
        default=os.environ.get("LUTHIEN_LOG_LEVEL", "INFO").upper(),
        choices=["DEBUG", "INFO", "WARNING", "ERROR"],
        help="log verbosity (env LUTHIEN_LOG_LEVEL; default INFO); secrets are never logged at any level",
    )


def _add_dashboard_options(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--dashboard-host",
        default=os.environ.get("LUTHIEN_DASHBOARD_HOST", DEFAULT_HOST),
        help=f"dashboard address (env LUTHIEN_DASHBOARD_HOST; default {DEFAULT_HOST})",
    )
    parser.add_argument(
        "--dashboard-port",
        type=int,
        default=int(os.environ.get("LUTHIEN_DASHBOARD_PORT", DEFAULT_DASHBOARD_PORT)),
        help=f"dashboard port (env LUTHIEN_DASHBOARD_PORT; default {DEFAULT_DASHBOARD_PORT})",
    )


def _add_proxy_options(parser: argparse.ArgumentParser) -> None:
    _add_common(parser)
    _add_backend_options(parser)
    parser.add_argument(
        "--host",
        default=os.environ.get("LUTHIEN_HOST", DEFAULT_HOST),
        help=f"address to listen on (env LUTHIEN_HOST; default {DEFAULT_HOST})",
    )
    parser.add_argument(
        "--policy",
        type=Path,
        default=Path(os.environ["LUTHIEN_POLICY"]) if os.environ.get("LUTHIEN_POLICY") else None,
        help="policy YAML file (env LUTHIEN_POLICY; default: NoOpPolicy)",
    )
    parser.add_argument(
        "--upstream",
        action="append",
        default=env_list("LUTHIEN_UPSTREAMS"),
        metavar="HOST=URL",
        help="send a provider host's traffic to another base URL; repeatable "
        "(env LUTHIEN_UPSTREAMS, comma-separated)",
    )
    parser.add_argument(
        "--unknown-endpoints",
        type=_unknown_endpoints,
        metavar="{forward,refuse}",
        # A string default goes through ``type`` too: a bad LUTHIEN_UNKNOWN_ENDPOINTS is a usage error.
        default=os.environ.get("LUTHIEN_UNKNOWN_ENDPOINTS", "forward"),
        help="what to do with a provider path the endpoint table does not know: forward it, "
        "recorded as unpoliced, or refuse it with a 403 (env LUTHIEN_UNKNOWN_ENDPOINTS; default forward)",
    )
    parser.add_argument(
        "--shutdown-grace",
        type=_seconds,
        default=os.environ.get("LUTHIEN_SHUTDOWN_GRACE", str(DEFAULT_SHUTDOWN_GRACE)),
        metavar="SECONDS",
        help="on SIGTERM, how long calls in progress may take to finish before they are cut "
        f"(every one is recorded either way; env LUTHIEN_SHUTDOWN_GRACE; default {DEFAULT_SHUTDOWN_GRACE:g})",
    )
    parser.add_argument(
        "--upstream-timeout",
        type=_seconds,
        # A string default goes through ``type`` too: a bad LUTHIEN_UPSTREAM_TIMEOUT is a usage error.
        default=os.environ.get("LUTHIEN_UPSTREAM_TIMEOUT", str(DEFAULT_UPSTREAM_TIMEOUT)),
        metavar="SECONDS",
        help="give up on a provider silent this long, before its answer (504) or mid-stream "
        f"(env LUTHIEN_UPSTREAM_TIMEOUT; default {DEFAULT_UPSTREAM_TIMEOUT:g}, the SDKs' own)",
    )
    parser.add_argument(
        "--provider-host",
        action="append",
        default=None,
        metavar="HOST",
        help="a host to intercept and police; repeatable (env LUTHIEN_PROVIDER_HOSTS, comma-separated; "
        "default api.openai.com and api.anthropic.com)",
    )
    parser.add_argument(
        "--metrics-port",
        type=int,
        default=int(os.environ.get("LUTHIEN_METRICS_PORT", DEFAULT_METRICS_PORT)),
        help="serve Prometheus metrics at /metrics on this port, on --host; 0 disables "
        f"(env LUTHIEN_METRICS_PORT; default {DEFAULT_METRICS_PORT})",
    )


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="luthien",
        description="See and control what AI coding agents send to and receive from LLM providers.",
    )
    commands = parser.add_subparsers(dest="command", required=True)

    up = commands.add_parser(
        "up", help="run the proxy, its control plane and the dashboard in one process (embedded defaults)"
    )
    _add_proxy_options(up)
    _add_dashboard_options(up)
    proxy = commands.add_parser("proxy", help="run the proxy alone (the sidecar process)")
    _add_proxy_options(proxy)
    proxy.add_argument(
        "--control-plane",
        default=os.environ.get("LUTHIEN_CONTROL_PLANE_URL") or None,
        metavar="URL",
        help="use a control-plane service (luthien controlplane) instead of policing in-process; "
        "its token comes from LUTHIEN_CONTROL_PLANE_TOKEN (env LUTHIEN_CONTROL_PLANE_URL)",
    )
    proxy.add_argument(
        "--fail-open",
        action="store_true",
        default=os.environ.get("LUTHIEN_FAIL_OPEN", "").lower() in ("1", "true", "yes"),
        help="when the control plane is unreachable, let calls through unpoliced (marked so) instead "
        "of refusing them with a 503 (env LUTHIEN_FAIL_OPEN)",
    )
    control = commands.add_parser(
        "controlplane", help="serve the policies, recording and activity to proxies over the network"
    )
    _add_data_dir(control)
    _add_backend_options(control)
    control.add_argument(
        "--host",
        default=os.environ.get("LUTHIEN_CONTROL_PLANE_HOST", DEFAULT_HOST),
        help=f"address to listen on (env LUTHIEN_CONTROL_PLANE_HOST; default {DEFAULT_HOST})",
    )
    control.add_argument(
        "--port",
        type=int,
        default=int(os.environ.get("LUTHIEN_CONTROL_PLANE_PORT", DEFAULT_CONTROL_PLANE_PORT)),
        help=f"port (env LUTHIEN_CONTROL_PLANE_PORT; default {DEFAULT_CONTROL_PLANE_PORT})",
    )
    control.add_argument(
        "--policy",
        type=Path,
        default=Path(os.environ["LUTHIEN_POLICY"]) if os.environ.get("LUTHIEN_POLICY") else None,
        help="policy YAML file, reloaded when it changes (env LUTHIEN_POLICY; default: NoOpPolicy)",
    )
    dashboard = commands.add_parser("dashboard", help="run the dashboard alone over the recorded calls")
    _add_common(dashboard)
    _add_backend_options(dashboard)
    _add_dashboard_options(dashboard)

    certs = commands.add_parser("certs", help="the local CA that clients must trust")
    certs_commands = certs.add_subparsers(dest="certs_command", required=True)
    env = certs_commands.add_parser("env", help="print shell exports that point a client at the proxy")
    _add_common(env)
    path = certs_commands.add_parser("path", help="print the path of the CA certificate")
    _add_common(path)
    for name, summary in (
        ("install", "add the CA certificate to the system trust store (or print the manual steps)"),
        ("uninstall", "remove the CA certificate from the system trust store"),
    ):
        trust = certs_commands.add_parser(name, help=summary)
        _add_data_dir(trust)
        # For tests: a directory standing in for the filesystem root; commands are then printed, not run.
        trust.add_argument("--root", type=Path, default=None, help=argparse.SUPPRESS)

    policy = commands.add_parser("policy", help="built-in policies; check a policy file")
    policy_commands = policy.add_subparsers(dest="policy_command", required=True)
    policy_commands.add_parser("list", help="the built-in policies, a line each")
    check = policy_commands.add_parser("check", help="validate a policy file (exit status 1 if it is broken)")
    check.add_argument("file", type=Path)
    policy_commands.add_parser("schema", help="print the JSON Schema of policy files")

    run = commands.add_parser("run", help="run a command with the proxy exports set: luthien run -- CMD ARGS")
    _add_common(run)
    run.add_argument("argv", nargs=argparse.REMAINDER, metavar="-- CMD ARGS")

    doctor = commands.add_parser("doctor", help="check the CA, client trust, proxy and backends, a line each")
    _add_data_dir(doctor)
    doctor.add_argument(
        "--proxy",
        default=None,
        metavar="URL",
        help="the proxy to reach (default HTTPS_PROXY or 127.0.0.1:8080)",
    )
    doctor.add_argument(
        "--control-plane",
        default=None,
        metavar="URL",
        help="a control-plane service to check (env LUTHIEN_CONTROL_PLANE_URL)",
    )
    return parser


def data_dir(args: argparse.Namespace) -> Path:
    return args.data_dir if args.data_dir is not None else default_data_dir()


def ca_files(args: argparse.Namespace) -> CAFiles:
    """The CA, created on first use; a key others can read stops the command (exit status 2)."""
    try:
        return ensure_ca(data_dir(args))
    except CAKeyPermissionError as exc:
        print(f"luthien: {exc}", file=sys.stderr)
        raise SystemExit(2) from None


def client_env(args: argparse.Namespace) -> tuple[dict[str, str], CAFiles]:
    files = ca_files(args)
    return trust_env(f"http://127.0.0.1:{args.port}", files), files
