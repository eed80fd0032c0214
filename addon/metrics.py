"""The proxy's Prometheus metrics: every finished call, by host, model and outcome, with its
latency and time to first byte; the streams open now; the policy decisions calls carried.

A ``ProxyMetrics`` owns a ``CollectorRegistry`` of its own (not the global one), so several
instances in a process, and tests, never collide; ``luthien proxy --metrics-port`` serves it."""

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

from addon.call_trace import CallTrace
from controlplane.credentials import scrub_credentials
from controlplane.metrics import PolicyDecisionMetrics

#: From a cached answer (5 ms) to a long agentic stream (5 min), in seconds.
LATENCY_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120, 300)
#: Distinct model labels kept; any model seen after these is counted as ``other``.
MAX_MODELS = 100


class ProxyMetrics:
    def __init__(self, registry: CollectorRegistry | None = None, max_models: int = MAX_MODELS) -> None:
        self.registry = registry if registry is not None else CollectorRegistry()
        self._max_models = max_models
        self._models: set[str] = set()
        self.calls = Counter(
            "luthien_calls",
            "Calls that went through the proxy, by provider host, model and outcome",
            ["host", "model", "outcome"],
            registry=self.registry,
        )
        self.duration = Histogram(
            "luthien_call_duration_seconds",
            "From the client's request to the last byte of the response",
            ["host"],
            buckets=LATENCY_BUCKETS,
            registry=self.registry,
        )
        self.ttfb = Histogram(
            "luthien_time_to_first_byte_seconds",
            "From the client's request to the provider's first byte",
            ["host"],
            buckets=LATENCY_BUCKETS,
            registry=self.registry,
        )
        self.open_streams = Gauge(
            "luthien_open_streams", "Streamed responses being relayed now", registry=self.registry
        )
        self.unpoliced = Counter(
            "luthien_unpoliced_calls",
            "Calls let through without policy (fail-open while the control plane was unreachable)",
            registry=self.registry,
        )
        self.decisions = PolicyDecisionMetrics(self.registry)

    def stream_opened(self) -> None:
        self.open_streams.inc()

    def stream_closed(self) -> None:
        self.open_streams.dec()

    def call_finished(self, trace: CallTrace) -> None:
        host = trace.metadata.host
        self.calls.labels(host, self._model(trace.metadata.model), trace.outcome.value).inc()
        self.duration.labels(host).observe(trace.duration_ms / 1000)
        if trace.ttfb_ms is not None:
            self.ttfb.labels(host).observe(trace.ttfb_ms / 1000)
        if trace.unpoliced:
            self.unpoliced.inc()
        for decision in trace.decisions:
            self.decisions.count(decision)

    def _model(self, model: str | None) -> str:
        """The model's name as a label, with the number of distinct labels capped. The client
        names the model, and ``/metrics`` is unauthenticated: a key-shaped name is scrubbed."""
        if not model:
            return "none"
        model = scrub_credentials(model)
        if model in self._models:
            return model
        if len(self._models) >= self._max_models:
            return "other"
        self._models.add(model)
        return model
