"""The ``luthien`` command line: its commands and options (each with its environment variable),
and what the options common to several commands resolve to (the data directory, the CA)."""

import argparse
import math
import os
import re
import shlex
import sys
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Literal

from addon.upstream import DEFAULT_UPSTREAM_TIMEOUT
from certs import CAFiles, default_data_dir, ensure_ca, trust_env
from certs import ca_files as ca_paths
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


def _policy_source(text: str) -> str:
    if text not in ("file", "database"):
        raise argparse.ArgumentTypeError(f"expected file or database, got {text!r}")
    return text


def _add_policy_options(parser: argparse.ArgumentParser, policy_help: str) -> None:
    parser.add_argument(
        "--policy",
        type=Path,
        default=Path(os.environ["LUTHIEN_POLICY"]) if os.environ.get("LUTHIEN_POLICY") else None,
        help=policy_help,
    )
    parser.add_argument(
        "--policy-source",
        type=_policy_source,
        metavar="{file,database}",
        default=os.environ.get("LUTHIEN_POLICY_SOURCE") or None,
        help="where the active policy is decided: the --policy file (API writes refused), or the "
        "database (versions activated through the API or luthien policy activate; a --policy file "
        "seeds an empty database) (env LUTHIEN_POLICY_SOURCE; default file with --policy, else database)",
    )


def policy_source(args: argparse.Namespace) -> Literal["file", "database"]:
    """The source of truth ``args`` choose; a file source without a file stops the command."""
    if (args.policy_source or ("file" if args.policy else "database")) == "database":
        return "database"
    if args.policy is None:
        print("luthien: --policy-source file needs a --policy file", file=sys.stderr)
        raise SystemExit(2)
    return "file"


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
    _add_policy_options(parser, "policy YAML file, reloaded when it changes (env LUTHIEN_POLICY)")
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
        metavar="PROFILE|HOST|HOST=FORMAT[/PREFIX]",
        help="a provider to intercept and police: a profile (openai, anthropic, gemini, openrouter, "
        "groq, together, mistral, deepseek, xai, azure, vertex), a host of one, or a host with its "
        "FORMAT (openai, anthropic or gemini) and PREFIX (its base URL's path); repeatable "
        "(env LUTHIEN_PROVIDER_HOSTS, comma-separated; default openai, anthropic and gemini)",
    )
    parser.add_argument(
        "--metrics-port",
        type=int,
        default=int(os.environ.get("LUTHIEN_METRICS_PORT", DEFAULT_METRICS_PORT)),
        help="serve Prometheus metrics at /metrics on this port, on --host; 0 disables "
        f"(env LUTHIEN_METRICS_PORT; default {DEFAULT_METRICS_PORT})",
    )


_AGO = re.compile(r"^(\d+)([smhd])$")
_UNITS = {"s": "seconds", "m": "minutes", "h": "hours", "d": "days"}


def moment(text: str) -> datetime:
    """``24h``, ``30m``, ``7d`` (that long ago), or an ISO 8601 time (UTC unless it says)."""
    if match := _AGO.match(text.strip()):
        return datetime.now(UTC) - timedelta(**{_UNITS[match[2]]: int(match[1])})
    try:
        when = datetime.fromisoformat(text.strip())
    except ValueError:
        raise argparse.ArgumentTypeError(
            f"{text!r}: expected a duration ago (24h, 30m, 7d) or an ISO 8601 time"
        ) from None
    return when if when.tzinfo is not None else when.replace(tzinfo=UTC)


def _add_replay(commands: "argparse._SubParsersAction[argparse.ArgumentParser]") -> None:
    from controlplane.recording.records import CallOutcome

    replay = _command(
        commands,
        "replay",
        "dry run: what a policy file would have done to recorded calls (no provider contacted)",
    )
    replay.add_argument(
        "candidate",
        metavar="FILE|VERSION",
        help="a policy file, or a stored version (luthien policy history)",
    )
    _add_data_dir(replay)
    replay.add_argument(
        "--database-url",
        default=os.environ.get("DATABASE_URL") or None,
        help="where the calls were recorded (env DATABASE_URL; default: SQLite in the data dir)",
    )
    replay.add_argument(
        "--redis-url",
        default=os.environ.get("REDIS_URL") or None,
        help="where an LLM judge's verdicts are cached, as the proxies have it (env REDIS_URL)",
    )
    replay.add_argument("--since", type=moment, default=None, help="calls since: 24h, 30m, 7d or an ISO time")
    replay.add_argument("--until", type=moment, default=None, help="calls until: as --since")
    replay.add_argument("--host", default=None, help="calls to hosts containing this")
    replay.add_argument("--model", default=None, help="calls to models containing this")
    replay.add_argument("--outcome", type=CallOutcome, choices=list(CallOutcome), default=None)
    replay.add_argument(
        "--limit", type=int, default=1000, help="at most this many calls, oldest first (1000)"
    )
    replay.add_argument(
        "--judge",
        choices=["cache", "skip"],
        default="cache",
        help="an LLM judge answers from its cache (a miss is marked skipped) or is skipped (default cache)",
    )
    replay.add_argument(
        "--json", action="store_true", help="the report as JSON, with each affected call's diffs"
    )


def _command(
    commands: "argparse._SubParsersAction[argparse.ArgumentParser]", name: str, summary: str
) -> argparse.ArgumentParser:
    """A subcommand whose summary is both its line in ``luthien --help`` and its own ``--help``."""
    return commands.add_parser(name, help=summary, description=summary)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="luthien",
        description="See and control what AI coding agents send to and receive from LLM providers.",
    )
    commands = parser.add_subparsers(dest="command", required=True)

    up = _command(
        commands,
        "up",
        "run the proxy, its control plane and the dashboard in one process (embedded defaults)",
    )
    _add_proxy_options(up)
    _add_dashboard_options(up)
    proxy = _command(commands, "proxy", "run the proxy alone (the sidecar process)")
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
    control = _command(
        commands, "controlplane", "serve the policies, recording and activity to proxies over the network"
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
    _add_policy_options(control, "policy YAML file, reloaded when it changes (env LUTHIEN_POLICY)")
    dashboard = _command(commands, "dashboard", "run the dashboard alone over the recorded calls")
    _add_data_dir(dashboard)
    _add_backend_options(dashboard)
    _add_dashboard_options(dashboard)
    _add_policy_options(
        dashboard, "the control planes' policy file: with it, the file is the source (env LUTHIEN_POLICY)"
    )

    login = _command(
        commands, "login", "print the dashboard's login link (the same across restarts, until rotated)"
    )
    _add_data_dir(login)
    _add_dashboard_options(login)
    login.add_argument(
        "--rotate", action="store_true", help="a new token first: every browser logged in must log in again"
    )

    certs = _command(commands, "certs", "the local CA that clients must trust")
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

    policy = _command(commands, "policy", "built-in policies; check a policy file; stored versions; dry runs")
    policy_commands = policy.add_subparsers(dest="policy_command", required=True)
    policy_commands.add_parser("list", help="the built-in policies, a line each")
    check = _command(
        policy_commands, "check", "validate a policy file: every error, a line each (exit status 1 if broken)"
    )
    check.add_argument("file", type=Path)
    policy_commands.add_parser("schema", help="print the JSON Schema of policy files")
    history = _command(
        policy_commands, "history", "the policy's activations, newest first (* the active one)"
    )
    activate = _command(
        policy_commands,
        "activate",
        "validate a policy file, store it as a version and activate it everywhere",
    )
    activate.add_argument("file", type=Path)
    rollback = _command(
        policy_commands, "rollback", "activate a stored version again (default: the one active before)"
    )
    rollback.add_argument("version", nargs="?", default=None)
    shadow = _command(
        policy_commands,
        "shadow",
        "run a policy file or stored version beside the active one, observing only (or --clear it)",
    )
    shadow.add_argument("candidate", nargs="?", default=None, metavar="FILE|VERSION")
    shadow.add_argument("--clear", action="store_true", help="stop the shadow policy")
    promote = _command(
        policy_commands, "promote", "activate the shadow policy and clear the shadow, in one change"
    )
    for command in (history, activate, rollback, shadow, promote):
        _add_data_dir(command)
        _add_backend_options(command)
        _add_policy_options(
            command, "the policy file the deployment runs on: with it, the file is the source"
        )
    history.add_argument("--limit", type=int, default=20, help="how many activations to list (default 20)")
    for command in (activate, rollback, shadow, promote):
        command.add_argument("--note", default="", help="why, recorded with the change")
    _add_replay(policy_commands)

    run = _command(commands, "run", "run a command with the proxy exports set: luthien run -- CMD ARGS")
    _add_common(run)
    run.add_argument("argv", nargs=argparse.REMAINDER, metavar="-- CMD ARGS")

    doctor = _command(commands, "doctor", "check the CA, client trust, proxy and backends, a line each")
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


def client_env(args: argparse.Namespace, files: CAFiles) -> dict[str, str]:
    """What a client needs to go through the proxy of ``args`` and trust ``files``' CA."""
    return trust_env(f"http://127.0.0.1:{args.port}", files)


def existing_ca(args: argparse.Namespace) -> CAFiles:
    """The CA a running proxy made, for a client command: creating one here would give the client
    a CA the proxy does not present (exit status 2 when there is none)."""
    directory = data_dir(args)
    paths = ca_paths(directory)
    if not (paths.cert.exists() and paths.key.exists()):
        given = "" if args.data_dir is not None else " (the default; pass the --data-dir the proxy uses)"
        print(
            f"luthien: no Luthien CA in {directory}{given}: start the proxy first (luthien up)",
            file=sys.stderr,
        )
        raise SystemExit(2)
    return ca_files(args)


def client_command(args: argparse.Namespace, command: str, rest: str = "") -> str:
    """``luthien COMMAND`` as a user would type it to reach the proxy of ``args``: with the
    --port and --data-dir that differ from the defaults, so it finds this proxy and its CA."""
    words = ["luthien", command]
    if getattr(args, "port", DEFAULT_PORT) != DEFAULT_PORT:
        words += ["--port", str(args.port)]
    if args.data_dir is not None:
        words += ["--data-dir", shlex.quote(str(args.data_dir))]
    return " ".join([*words, rest] if rest else words)
