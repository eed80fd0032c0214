"""The ``luthien`` command: the one place that composes the data plane and the control plane."""

import argparse
import asyncio
import json
import logging
import math
import os
import secrets
import shutil
import subprocess
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING

from addon.upstream import DEFAULT_UPSTREAM_TIMEOUT
from certs import CAFiles, default_data_dir, ensure_ca, shell_exports, trust_env
from certs.authority import CAKeyPermissionError

if TYPE_CHECKING:
    from prometheus_client import CollectorRegistry

    from addon.embedded import EmbeddedServer
    from addon.proxy import ProxyConfig

DEFAULT_PORT = 8080
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


def _env_list(name: str) -> list[str]:
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
        default=_env_list("LUTHIEN_UPSTREAMS"),
        metavar="HOST=URL",
        help="send a provider host's traffic to another base URL; repeatable "
        "(env LUTHIEN_UPSTREAMS, comma-separated)",
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


def _data_dir(args: argparse.Namespace) -> Path:
    return args.data_dir if args.data_dir is not None else default_data_dir()


def _ca_files(args: argparse.Namespace) -> CAFiles:
    """The CA, created on first use; a key others can read stops the command (exit status 2)."""
    try:
        return ensure_ca(_data_dir(args))
    except CAKeyPermissionError as exc:
        print(f"luthien: {exc}", file=sys.stderr)
        raise SystemExit(2) from None


def _client_env(args: argparse.Namespace) -> tuple[dict[str, str], CAFiles]:
    files = _ca_files(args)
    return trust_env(f"http://127.0.0.1:{args.port}", files), files


def _share_redis_with_policies(redis_url: str | None) -> None:
    """Policies keep shared state (the judge's verdict cache) in the Redis of ``REDIS_URL``; a
    ``--redis-url`` flag must mean the same for them."""
    if redis_url:
        os.environ["REDIS_URL"] = redis_url


def _configure_logging(level: str, service: str) -> None:
    """Logging, and trace export when the ``OTEL_*`` variables ask for it."""
    from luthien.telemetry import configure_tracing

    try:
        configure_tracing(service)
    except ValueError as exc:
        sys.exit(f"luthien: {exc}")
    logging.basicConfig(level=level, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    # These log request lines and connection details of every call; their warnings are enough.
    for noisy in ("mitmproxy", "httpx", "httpcore", "LiteLLM", "uvicorn"):
        logging.getLogger(noisy).setLevel(max(logging.WARNING, logging.getLogger().level))


def _dashboard_token() -> tuple[str, bool]:
    """The configured token, or a new one (True: generated, so the login link must be shown)."""
    configured = os.environ.get("LUTHIEN_DASHBOARD_TOKEN")
    return (configured, False) if configured else (secrets.token_urlsafe(24), True)


def _announce_dashboard(host: str, port: int, token: str, generated: bool) -> None:
    base = f"http://{host}:{port}"
    if generated:
        print(f"Luthien dashboard: {base}/login?token={token}", flush=True)
    else:
        print(f"Luthien dashboard: {base} (token: LUTHIEN_DASHBOARD_TOKEN)", flush=True)


def _proxy_config(args: argparse.Namespace) -> tuple["ProxyConfig", dict[str, str]]:
    from addon.proxy import DEFAULT_PROVIDER_HOSTS, ProxyConfig
    from addon.upstream import parse_upstreams

    hosts = args.provider_host or _env_list("LUTHIEN_PROVIDER_HOSTS") or list(DEFAULT_PROVIDER_HOSTS)
    env, files = _client_env(args)
    config = ProxyConfig(
        listen_host=args.host,
        listen_port=args.port,
        mitmproxy_confdir=files.mitmproxy_confdir,
        provider_hosts=frozenset(h.lower() for h in hosts),
        upstreams=parse_upstreams(args.upstream),
        upstream_timeout=args.upstream_timeout,
    )
    return config, env


def _metrics_server(args: argparse.Namespace, registry: "CollectorRegistry") -> "EmbeddedServer | None":
    """The proxy's ``/metrics`` (bound now, so a port in use fails startup), or None when disabled."""
    from prometheus_client import make_asgi_app

    from addon.embedded import EmbeddedServer

    if not args.metrics_port:
        return None
    return EmbeddedServer(make_asgi_app(registry), args.host, args.metrics_port)


def _proxy_ready(args: argparse.Namespace, config: "ProxyConfig", policing: str) -> None:
    print(f"Luthien proxy listening on http://{args.host}:{args.port}", flush=True)
    print(f"Policy: {policing}; intercepting {', '.join(sorted(config.provider_hosts))}", flush=True)


def _serve(args: argparse.Namespace, with_dashboard: bool) -> int:
    # Imported here: loading LiteLLM takes seconds, and `certs`/`run` do not need it.
    from addon.embedded import EmbeddedServer
    from addon.metrics import ProxyMetrics
    from addon.proxy import run_proxy
    from controlplane.local import ControlPlaneLocal
    from controlplane.metrics import register_recording_metrics
    from controlplane.policy_file import PolicyFileError, load_policy_file
    from controlplane.policy_reload import file_version, watch_policy_file
    from dashboard.app import create_app
    from luthien.backends import open_backends

    _configure_logging(args.log_level, "luthien-proxy")
    if getattr(args, "control_plane", None):
        return _serve_sidecar(args)
    _share_redis_with_policies(args.redis_url)
    try:
        policy = load_policy_file(args.policy)
        config, env = _proxy_config(args)
    except (PolicyFileError, ValueError) as exc:
        print(f"luthien: {exc}", file=sys.stderr)
        return 2
    token, generated = _dashboard_token()
    version = file_version(args.policy) if args.policy else None

    async def serve() -> None:
        async with open_backends(args.database_url, args.redis_url, _data_dir(args), record=True) as backends:
            control_plane = ControlPlaneLocal(policy, backends.bus, backends.writer, version)
            if args.policy:
                watcher = asyncio.create_task(watch_policy_file(args.policy, control_plane))
            metrics = ProxyMetrics()
            if backends.writer is not None:
                register_recording_metrics(backends.writer, metrics.registry)
            metrics_server = _metrics_server(args, metrics.registry)
            if metrics_server is not None:
                await metrics_server.start()
            dashboard = None
            if with_dashboard:
                app = create_app(backends.storage, backends.bus, token)
                dashboard = EmbeddedServer(app, args.dashboard_host, args.dashboard_port)
                await dashboard.start()

            def ready() -> None:
                _proxy_ready(args, config, type(policy).__name__)
                if dashboard is not None:
                    _announce_dashboard(args.dashboard_host, dashboard.port, token, generated)
                    print("Point your agent at it with:\n" + shell_exports(env).rstrip("\n"), flush=True)
                    print("or run it through Luthien directly: luthien run -- claude", flush=True)

            try:
                await run_proxy(config, control_plane, ready, metrics)
            finally:
                if args.policy:
                    watcher.cancel()
                if dashboard is not None:
                    await dashboard.stop()
                if metrics_server is not None:
                    await metrics_server.stop()

    asyncio.run(serve())
    return 0


def _serve_sidecar(args: argparse.Namespace) -> int:
    """``luthien proxy --control-plane URL``: policies, recording and activity are remote."""
    from addon.metrics import ProxyMetrics
    from addon.proxy import run_proxy
    from controlplane.recording.spool import Spool
    from controlplane.remote.client import ControlPlaneHTTP

    token = os.environ.get("LUTHIEN_CONTROL_PLANE_TOKEN", "")
    if not token:
        print("luthien: --control-plane needs LUTHIEN_CONTROL_PLANE_TOKEN", file=sys.stderr)
        return 2
    try:
        config, _ = _proxy_config(args)
    except ValueError as exc:
        print(f"luthien: {exc}", file=sys.stderr)
        return 2

    async def serve() -> None:
        spool = Spool(_data_dir(args) / "spool")
        control_plane = ControlPlaneHTTP(args.control_plane, token, spool, fail_open=args.fail_open)
        control_plane.start()
        mode = "fail open" if args.fail_open else "fail closed"
        metrics = ProxyMetrics()
        metrics_server = _metrics_server(args, metrics.registry)
        if metrics_server is not None:
            await metrics_server.start()
        try:
            await run_proxy(
                config,
                control_plane,
                lambda: _proxy_ready(args, config, f"from {args.control_plane} ({mode})"),
                metrics,
            )
        finally:
            await control_plane.aclose()
            if metrics_server is not None:
                await metrics_server.stop()

    asyncio.run(serve())
    return 0


def _control_plane(args: argparse.Namespace) -> int:
    import uvicorn

    from controlplane.local import ControlPlaneLocal
    from controlplane.policy_file import PolicyFileError, load_policy_file
    from controlplane.policy_reload import file_version, watch_policy_file
    from controlplane.remote.server import create_control_plane_app
    from luthien.backends import open_backends

    _configure_logging(args.log_level, "luthien-controlplane")
    token = os.environ.get("LUTHIEN_CONTROL_PLANE_TOKEN", "")
    if not token:
        print("luthien controlplane: set LUTHIEN_CONTROL_PLANE_TOKEN (proxies present it)", file=sys.stderr)
        return 2
    _share_redis_with_policies(args.redis_url)
    try:
        policy = load_policy_file(args.policy)
    except PolicyFileError as exc:
        print(f"luthien: {exc}", file=sys.stderr)
        return 2

    async def serve() -> None:
        async with open_backends(args.database_url, args.redis_url, _data_dir(args), record=True) as backends:
            version = file_version(args.policy) if args.policy else None
            control_plane = ControlPlaneLocal(policy, backends.bus, backends.writer, version)
            if args.policy:
                watcher = asyncio.create_task(watch_policy_file(args.policy, control_plane))
            app = create_control_plane_app(control_plane, backends.storage, token, backends.writer)
            # No access log: request lines say nothing the activity bus does not, at a cost per call.
            config = uvicorn.Config(
                app, host=args.host, port=args.port, log_level="warning", access_log=False
            )
            print(f"Luthien control plane listening on http://{args.host}:{args.port}", flush=True)
            print(f"Policy: {type(policy).__name__} (version {version or 'built-in'})", flush=True)
            try:
                await uvicorn.Server(config).serve()
            finally:
                if args.policy:
                    watcher.cancel()

    asyncio.run(serve())
    return 0


def _dashboard(args: argparse.Namespace) -> int:
    import uvicorn

    from dashboard.app import create_app
    from luthien.backends import open_backends

    _configure_logging(args.log_level, "luthien-dashboard")
    token, generated = _dashboard_token()

    async def serve() -> None:
        async with open_backends(
            args.database_url, args.redis_url, _data_dir(args), record=False
        ) as backends:
            if args.redis_url is None:
                print("No REDIS_URL: the live monitor shows only this process's events (none).", flush=True)
            app = create_app(backends.storage, backends.bus, token)
            config = uvicorn.Config(
                # No access log: the login link carries the token.
                app,
                host=args.dashboard_host,
                port=args.dashboard_port,
                log_level="warning",
                access_log=False,
            )
            server = uvicorn.Server(config)
            _announce_dashboard(args.dashboard_host, args.dashboard_port, token, generated)
            await server.serve()

    asyncio.run(serve())
    return 0


def _run(args: argparse.Namespace) -> int:
    argv = args.argv[1:] if args.argv[:1] == ["--"] else args.argv
    if not argv:
        print("luthien run: give a command, e.g. luthien run -- claude", file=sys.stderr)
        return 2
    env, _ = _client_env(args)
    if shutil.which(argv[0]) is None:
        print(f"luthien run: command not found: {argv[0]}", file=sys.stderr)
        return 127
    return subprocess.call(argv, env={**os.environ, **env})


def _policy(args: argparse.Namespace) -> int:
    from controlplane.policies import BUILTIN_POLICIES
    from controlplane.policy_file import PolicyFileError, load_policy_file
    from controlplane.policy_schema import policy_file_schema

    if args.policy_command == "list":
        width = max(map(len, BUILTIN_POLICIES))
        for name, cls in sorted(BUILTIN_POLICIES.items()):
            print(f"{name:<{width}}  {cls.description}")
        return 0
    if args.policy_command == "schema":
        print(json.dumps(policy_file_schema(), indent=2))
        return 0
    try:
        policy = load_policy_file(args.file)
    except PolicyFileError as exc:
        print(f"luthien: {exc}", file=sys.stderr)
        return 1
    print(f"{args.file}: OK ({type(policy).__name__})")
    return 0


def _certs_trust(args: argparse.Namespace) -> int:
    """``luthien certs install|uninstall``: the CA certificate (never its key) in the system store."""
    from certs.install import ROOT_ENV, SYSTEM_ROOT, install, uninstall

    root = args.root or (Path(os.environ[ROOT_ENV]) if os.environ.get(ROOT_ENV) else SYSTEM_ROOT)
    cert = _ca_files(args).cert
    return (install if args.certs_command == "install" else uninstall)(cert, root=root)


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    if args.command in ("up", "proxy"):
        return _serve(args, with_dashboard=args.command == "up")
    if args.command == "dashboard":
        return _dashboard(args)
    if args.command == "controlplane":
        return _control_plane(args)
    if args.command == "policy":
        return _policy(args)
    if args.command == "doctor":
        from luthien.doctor import doctor

        return doctor(_data_dir(args), args.proxy, args.control_plane)
    if args.command == "certs" and args.certs_command in ("install", "uninstall"):
        return _certs_trust(args)
    if args.command == "certs":
        env, files = _client_env(args)
        print(shell_exports(env).rstrip("\n") if args.certs_command == "env" else files.cert)
        return 0
    return _run(args)
