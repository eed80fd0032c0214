"""Assembles and runs the data plane: mitmproxy, its addons and the relay server."""

import asyncio
import gc
import logging
import signal
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from mitmproxy.options import Options
from mitmproxy.tools.dump import DumpMaster

from addon.endpoints import UnknownEndpoints
from addon.http1_trailers import keep_http1_trailers
from addon.interceptor import ProviderInterceptor
from addon.metrics import ProxyMetrics
from addon.pipeline import Pipeline
from addon.provider_calls import ProviderCalls
from addon.provider_profiles import DEFAULT_PROFILES, ProviderHosts
from addon.relay_server import RelayServer
from addon.upstream import DEFAULT_UPSTREAM_TIMEOUT, Upstream
from controlplane.interface import PolicingService

log = logging.getLogger(__name__)

#: On SIGTERM, once calls in progress had their grace period, the ones cut get this long to be
#: recorded (each is, as it winds down).
_RECORDING_GRACE = 5.0


@dataclass(frozen=True)
class ProxyConfig:
    listen_host: str
    listen_port: int
    mitmproxy_confdir: Path
    shutdown_grace: float  # on SIGTERM, how long calls in progress may take to finish
    provider_hosts: ProviderHosts = field(default_factory=lambda: ProviderHosts.parse(DEFAULT_PROFILES))
    upstreams: dict[str, str] = field(default_factory=dict)
    upstream_timeout: float = DEFAULT_UPSTREAM_TIMEOUT
    unknown_endpoints: UnknownEndpoints = UnknownEndpoints.FORWARD


class _Ready:
    """Calls back once mitmproxy is listening."""

    def __init__(self, on_ready: Callable[[], None]) -> None:
        self._on_ready = on_ready

    def running(self) -> None:
        self._on_ready()


class _FreezeStartup:
    """Once the proxy is up, what start-up built (modules, LiteLLM's tables, the policies) is
    moved out of the garbage collector's view: a full collection would otherwise walk it all
    again, a pause of hundreds of milliseconds in some call's p99."""

    def running(self) -> None:
        gc.collect()
        gc.freeze()


async def run_proxy(
    config: ProxyConfig,
    control_plane: PolicingService,
    on_ready: Callable[[], None],
    metrics: ProxyMetrics | None = None,
) -> None:
    keep_http1_trailers()
    upstream = Upstream(config.upstreams, config.upstream_timeout)
    pipeline = Pipeline(control_plane, upstream, metrics, config.unknown_endpoints, config.provider_hosts)
    relay = RelayServer()
    await relay.start()
    calls = ProviderCalls(pipeline, relay)
    options = Options(
        listen_host=config.listen_host,
        listen_port=config.listen_port,
        confdir=str(config.mitmproxy_confdir),
    )
    master = DumpMaster(options, with_termlog=False, with_dumper=False)
    master.addons.add(
        ProviderInterceptor(config.provider_hosts),
        calls,
        _FreezeStartup(),
        _Ready(on_ready),
    )
    options.update(
        allow_hosts=[config.provider_hosts.allow_pattern()],
        # lazy: a CONNECT does not dial the destination; provider flows are answered by Luthien.
        connection_strategy="lazy",
        upstream_cert=False,
    )
    stopping = asyncio.Event()
    loop = asyncio.get_running_loop()
    for signum in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(signum, stopping.set)
    running = asyncio.create_task(master.run())
    signalled = asyncio.create_task(stopping.wait())
    try:
        await asyncio.wait((running, signalled), return_when=asyncio.FIRST_COMPLETED)
        if stopping.is_set():
            await _drain(master, pipeline, config.shutdown_grace)
    finally:
        signalled.cancel()
        master.shutdown()
        await running
        calls.cancel_calls()  # cuts the calls still waiting for their answer,
        await relay.stop()  # and the streams still in progress
        if not await pipeline.drained(_RECORDING_GRACE):
            log.error("calls still in progress at exit were not recorded; their stand-ins will be")
        await upstream.aclose()


async def _drain(master: DumpMaster, pipeline: Pipeline, grace: float) -> None:
    """Stops accepting connections and lets the calls in progress finish, up to ``grace``."""
    await master.addons.get("proxyserver").servers.update([])
    log.info("stopping: no new connections; waiting up to %g s for calls in progress", grace)
    if not await pipeline.drained(grace):
        log.warning("calls still in progress after %g s are cut", grace)
    pipeline.stopping = True
