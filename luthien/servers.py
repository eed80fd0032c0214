"""The long-running commands: the proxy (with its control plane in-process, or as a sidecar of a
remote one), the control-plane service and the dashboard. Each imports what it serves when it
starts: loading LiteLLM takes seconds, and the short commands do not need it."""

import argparse
import asyncio
import contextlib
import os
import socket
import sys
from collections.abc import AsyncIterator
from typing import TYPE_CHECKING

from certs import shell_exports
from luthien.options import ca_files, client_command, client_env, data_dir, env_list, policy_source

if TYPE_CHECKING:
    from prometheus_client import CollectorRegistry

    from addon.embedded import EmbeddedServer
    from addon.proxy import ProxyConfig
    from controlplane.access import Tokens
    from controlplane.local import ControlPlaneLocal
    from controlplane.policy_versions import PolicyKeeper, PolicyVersions
    from controlplane.shadow import ShadowRunner
    from dashboard.token import TokenSource
    from luthien.backends import Backends


def _share_redis_with_policies(redis_url: str | None) -> None:
    """Policies keep shared state (the judge's verdict cache) in the Redis of ``REDIS_URL``; a
    ``--redis-url`` flag must mean the same for them."""
    if redis_url:
        os.environ["REDIS_URL"] = redis_url


def _configure_logging(level: str, service: str) -> None:
    """Logging, and trace export when the ``OTEL_*`` variables ask for it."""
    from luthien.logs import configure_logging
    from luthien.telemetry import configure_tracing

    try:
        configure_tracing(service)
    except ValueError as exc:
        sys.exit(f"luthien: {exc}")
    # Only Luthien's own loggers go below WARNING: the others print headers, URLs and payloads.
    configure_logging(level)


def dashboard_token(args: argparse.Namespace) -> "TokenSource":
    """``LUTHIEN_DASHBOARD_TOKEN`` when set; otherwise the token kept in the data dir."""
    from dashboard.token import FixedToken, TokenFile, TokenFileError

    configured = os.environ.get("LUTHIEN_DASHBOARD_TOKEN")
    if configured:
        return FixedToken(configured)
    try:
        return TokenFile.in_dir(data_dir(args))
    except TokenFileError as exc:
        sys.exit(f"luthien: {exc}")


def control_plane_tokens() -> "Tokens":
    """The tokens the control plane accepts: ``LUTHIEN_CONTROL_PLANE_TOKEN`` (an admin) and the
    named ones of ``LUTHIEN_CONTROL_PLANE_TOKENS``; none stops the command."""
    from controlplane.access import Credential, TokenListError, Tokens, parse_tokens
    from controlplane.remote.server import SINGLE_TOKEN_NAME

    single = os.environ.get("LUTHIEN_CONTROL_PLANE_TOKEN", "")
    entries = [(Credential(name=SINGLE_TOKEN_NAME, role="admin"), single)] if single else []
    try:
        entries += parse_tokens(
            os.environ.get("LUTHIEN_CONTROL_PLANE_TOKENS", ""), "LUTHIEN_CONTROL_PLANE_TOKENS"
        )
    except TokenListError as exc:
        sys.exit(f"luthien controlplane: {exc}")
    if not entries:
        sys.exit(
            "luthien controlplane: set LUTHIEN_CONTROL_PLANE_TOKEN or LUTHIEN_CONTROL_PLANE_TOKENS "
            "(proxies present one)"
        )
    return Tokens(entries)


async def policed_control_plane(
    args: argparse.Namespace, backends: "Backends", shadow: "ShadowRunner"
) -> tuple["ControlPlaneLocal", "PolicyKeeper", "PolicyVersions"] | None:
    """A control plane on the active version of the configured source, saying which, its finished
    calls offered to ``shadow``; None (the problems printed) when the source is a policy file
    that cannot be used."""
    from controlplane.local import ControlPlaneLocal
    from controlplane.policies.noop import NoOpPolicy
    from controlplane.policy_file import PolicyFileError
    from controlplane.policy_versions import PolicyKeeper, PolicyVersions
    from controlplane.shadow import ShadowedRecorder

    source = policy_source(args)
    assert backends.writer is not None, "a control plane records"
    recorder = ShadowedRecorder(backends.writer, shadow)
    control_plane = ControlPlaneLocal(NoOpPolicy(), backends.bus, recorder)
    keeper = PolicyKeeper(control_plane, backends.storage, backends.nudge, source, args.policy, shadow)
    try:
        print(await keeper.start(), flush=True)
    except PolicyFileError as exc:
        print(f"luthien: {exc}", file=sys.stderr)
        return None
    return (
        control_plane,
        keeper,
        PolicyVersions(backends.storage, backends.nudge, source, args.policy, keeper),
    )


@contextlib.asynccontextmanager
async def shadow_runner(backends: "Backends") -> AsyncIterator["ShadowRunner"]:
    """The shadow of a control plane (``controlplane.shadow``), running until the block ends."""
    from controlplane.shadow import ShadowRunner
    from luthien.shadow_process import ProcessReplay

    replayer = ProcessReplay(backends.storage)
    shadow = ShadowRunner(backends.storage, replayer)
    shadow.start()
    try:
        yield shadow
    finally:
        await shadow.close()
        replayer.close()


def dashboard_tokens() -> "Tokens":
    """The named tokens of ``LUTHIEN_DASHBOARD_TOKENS``, besides the dashboard token (an admin)."""
    from controlplane.access import TokenListError, Tokens, parse_tokens

    try:
        return Tokens(
            parse_tokens(
                os.environ.get("LUTHIEN_DASHBOARD_TOKENS", ""), "LUTHIEN_DASHBOARD_TOKENS", ("read", "admin")
            )
        )
    except TokenListError as exc:
        sys.exit(f"luthien: {exc}")


def login_link(host: str, port: int, token: "TokenSource") -> str:
    from dashboard.token import FixedToken

    base = f"http://{host}:{port}"
    if isinstance(token, FixedToken):  # the user's own secret: not printed
        return f"{base}/login?token=$LUTHIEN_DASHBOARD_TOKEN"
    return f"{base}/login?token={token.current()}"


def _announce_dashboard(host: str, port: int, token: "TokenSource") -> None:
    print(f"Luthien dashboard: {login_link(host, port, token)}", flush=True)


def _proxy_config(args: argparse.Namespace) -> tuple["ProxyConfig", dict[str, str]]:
    from addon.endpoints import UnknownEndpoints
    from addon.provider_profiles import DEFAULT_PROFILES, ProviderHosts
    from addon.proxy import ProxyConfig
    from addon.upstream import parse_upstreams

    # Before anything is made (the CA): a host Luthien cannot police stops start-up.
    hosts = ProviderHosts.parse(args.provider_host or env_list("LUTHIEN_PROVIDER_HOSTS") or DEFAULT_PROFILES)
    files = ca_files(args)
    env = client_env(args, files)
    config = ProxyConfig(
        listen_host=args.host,
        listen_port=args.port,
        mitmproxy_confdir=files.mitmproxy_confdir,
        provider_hosts=hosts,
        upstreams=parse_upstreams(args.upstream),
        upstream_timeout=args.upstream_timeout,
        unknown_endpoints=UnknownEndpoints(args.unknown_endpoints),
        shutdown_grace=args.shutdown_grace,
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
    print(f"Policy: {policing}; intercepting {', '.join(config.provider_hosts.names())}", flush=True)


def serve_proxy(args: argparse.Namespace, with_dashboard: bool) -> int:
    from addon.embedded import EmbeddedServer
    from addon.metrics import ProxyMetrics
    from addon.proxy import run_proxy
    from controlplane.metrics import (
        register_policy_stream_metrics,
        register_recording_metrics,
        register_shadow_metrics,
    )
    from dashboard.app import create_app, end_live_streams
    from formats.policing import Policing
    from luthien.backends import open_backends
    from luthien.dry_run import DryRun

    _configure_logging(args.log_level, "luthien-proxy")
    _share_redis_with_policies(args.redis_url)
    policy_source(args)
    try:
        config, env = _proxy_config(args)
    except ValueError as exc:
        print(f"luthien: {exc}", file=sys.stderr)
        return 2
    token = dashboard_token(args) if with_dashboard else None
    named = dashboard_tokens() if with_dashboard else None

    async def serve() -> int:
        async with (
            open_backends(args.database_url, args.redis_url, data_dir(args), record=True) as backends,
            shadow_runner(backends) as shadow,
        ):
            if (policed := await policed_control_plane(args, backends, shadow)) is None:
                return 2
            control_plane, keeper, versions = policed
            watcher = asyncio.create_task(keeper.run())
            metrics = ProxyMetrics()
            register_policy_stream_metrics(control_plane, metrics.registry)
            register_shadow_metrics(shadow, metrics.registry)
            if backends.writer is not None:
                register_recording_metrics(backends.writer, metrics.registry)
            metrics_server = _metrics_server(args, metrics.registry)
            if metrics_server is not None:
                await metrics_server.start()
            dashboard = None
            if token is not None:
                app = create_app(backends.storage, backends.bus, token, named, versions, DryRun())
                dashboard = EmbeddedServer(app, args.dashboard_host, args.dashboard_port)
                await dashboard.start()

            def ready() -> None:
                _proxy_ready(args, config, type(control_plane.policy).__name__)
                if dashboard is not None and token is not None:
                    _announce_dashboard(args.dashboard_host, dashboard.port, token)
                    print("Point your agent at it with:\n" + shell_exports(env).rstrip("\n"), flush=True)
                    print(
                        f"or run it through Luthien directly: {client_command(args, 'run', '-- claude')}",
                        flush=True,
                    )

            try:
                await run_proxy(config, Policing(control_plane), ready, metrics)
            finally:
                watcher.cancel()
                if dashboard is not None:
                    end_live_streams(app)
                    await dashboard.stop()
                if metrics_server is not None:
                    await metrics_server.stop()
        return 0

    return asyncio.run(serve())


def serve_sidecar(args: argparse.Namespace) -> int:
    """``luthien proxy --control-plane URL``: policies, recording and activity are remote, so
    none of the in-process control plane, storage or dashboard is loaded, nor LiteLLM: the
    control plane normalises the bodies this proxy sends as they are."""
    from addon.metrics import ProxyMetrics
    from addon.proxy import run_proxy
    from controlplane.metrics import register_recording_metrics
    from controlplane.recording.spool import Spool
    from controlplane.remote.client import ControlPlaneHTTP

    _configure_logging(args.log_level, "luthien-proxy")

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
        spool = Spool(data_dir(args) / "spool")
        control_plane = ControlPlaneHTTP(args.control_plane, token, spool, fail_open=args.fail_open)
        control_plane.start()
        mode = "fail open" if args.fail_open else "fail closed"
        metrics = ProxyMetrics()
        # The sidecar's own spool, under the same names as a database recorder's, so the same alerts see it.
        register_recording_metrics(control_plane.recorder, metrics.registry, "the control plane")
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


def serve_control_plane(args: argparse.Namespace) -> int:
    import uvicorn

    from controlplane.remote.server import create_control_plane_app
    from formats.policing import Policing
    from luthien.backends import open_backends

    _configure_logging(args.log_level, "luthien-controlplane")
    tokens = control_plane_tokens()
    _share_redis_with_policies(args.redis_url)
    policy_source(args)

    async def serve() -> int:
        async with (
            open_backends(args.database_url, args.redis_url, data_dir(args), record=True) as backends,
            shadow_runner(backends) as shadow,
        ):
            if (policed := await policed_control_plane(args, backends, shadow)) is None:
                return 2
            control_plane, keeper, versions = policed
            watcher = asyncio.create_task(keeper.run())
            app = create_control_plane_app(
                control_plane,
                Policing(control_plane),
                backends.storage,
                tokens,
                backends.writer,
                versions,
                shadow,
            )
            # No access log: request lines say nothing the activity bus does not, at a cost per call.
            config = uvicorn.Config(
                app, host=args.host, port=args.port, log_level="warning", access_log=False
            )
            print(f"Luthien control plane listening on http://{args.host}:{args.port}", flush=True)
            try:
                await uvicorn.Server(config).serve()
            finally:
                watcher.cancel()
        return 0

    return asyncio.run(serve())


def serve_dashboard(args: argparse.Namespace) -> int:
    import uvicorn

    from controlplane.policy_versions import PolicyVersions
    from dashboard.app import create_app, end_live_streams
    from luthien.backends import open_backends
    from luthien.dry_run import DryRun

    _configure_logging(args.log_level, "luthien-dashboard")
    token = dashboard_token(args)
    named = dashboard_tokens()
    source = policy_source(args)

    async def serve() -> None:
        async with open_backends(args.database_url, args.redis_url, data_dir(args), record=False) as backends:
            if args.redis_url is None:
                print("No REDIS_URL: the live monitor shows only this process's events (none).", flush=True)
            # Changes are nudged to the control planes, which enforce them; this process only stores them.
            versions = PolicyVersions(backends.storage, backends.nudge, source, args.policy)
            app = create_app(backends.storage, backends.bus, token, named, versions, DryRun())
            config = uvicorn.Config(
                # No access log: the login link carries the token.
                app,
                host=args.dashboard_host,
                port=args.dashboard_port,
                log_level="warning",
                access_log=False,
            )

            class DashboardServer(uvicorn.Server):
                async def shutdown(self, sockets: list[socket.socket] | None = None) -> None:
                    end_live_streams(app)  # an open monitor tab must not hold the shutdown
                    await super().shutdown(sockets)

            server = DashboardServer(config)
            _announce_dashboard(args.dashboard_host, args.dashboard_port, token)
            await server.serve()

    asyncio.run(serve())
    return 0
