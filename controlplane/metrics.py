"""Prometheus metrics the control plane owns: the recorder's state (read when scraped) and the
policy decisions it made. Each holder takes a ``CollectorRegistry`` of its own, never the global
one, so that several instances (and tests) in one process do not collide."""

from collections.abc import Iterator
from typing import TYPE_CHECKING, Any, Literal

from prometheus_client import CollectorRegistry, Counter, Gauge
from prometheus_client.core import GaugeMetricFamily
from prometheus_client.registry import Collector

from controlplane.models import ChunkVerdict, PolicyResult
from controlplane.recording.records import Decision
from controlplane.recording.writer import RecordWriter

if TYPE_CHECKING:  # a sidecar proxy counts decisions but runs no policy (and loads no LiteLLM)
    from controlplane.local import ControlPlaneLocal
    from controlplane.shadow import ShadowRunner


class RecordingCollector(Collector):
    """The recorder's queue, spool and database state, read from the writer at scrape time.
    ``destination`` names where the writer stores, in the help texts: a sidecar's recorder
    stores through its control plane, and its "database up" means the control plane answers."""

    def __init__(self, writer: RecordWriter, destination: str) -> None:
        self._writer = writer
        self._destination = destination

    def collect(self) -> Iterator[GaugeMetricFamily]:
        writer, destination = self._writer, self._destination
        yield GaugeMetricFamily(
            "luthien_recording_queue_depth", "Records waiting to be written", value=writer.queued
        )
        yield GaugeMetricFamily(
            "luthien_recording_spool_records",
            f"Records in the spool, waiting for {destination} to come back",
            value=writer.spooled,
        )
        yield GaugeMetricFamily(
            "luthien_recording_database_up",
            f"1 when the recorder's last write reached {destination}, else 0",
            value=1 if writer.database_ok else 0,
        )
        yield GaugeMetricFamily(
            "luthien_recording_stored_records",
            f"Records stored by {destination} since start",
            value=writer.stored,
        )
        yield GaugeMetricFamily(
            "luthien_recording_rejected_records",
            f"Records set aside in spool/rejected.jsonl since start: refused by {destination} or unreadable",
            value=writer.rejected,
        )


def register_recording_metrics(
    writer: RecordWriter, registry: CollectorRegistry, destination: str = "the database"
) -> None:
    registry.register(RecordingCollector(writer, destination))


def register_policy_stream_metrics(control_plane: "ControlPlaneLocal", registry: CollectorRegistry) -> None:
    """Streams whose policy state the control plane holds. Above the proxies' open streams for
    long, it means streams that ended were not released."""
    Gauge(
        "luthien_policy_streams_open", "Streams whose policy state is held now", registry=registry
    ).set_function(lambda: control_plane.open_streams)


class ShadowCollector(Collector):
    """The shadow's work, read at scrape time: calls it skipped mean it cannot keep up."""

    def __init__(self, shadow: "ShadowRunner") -> None:
        self._shadow = shadow

    def collect(self) -> Iterator[GaugeMetricFamily]:
        shadow = self._shadow
        yield GaugeMetricFamily(
            "luthien_shadow_queue_depth", "Finished calls waiting for the shadow policy", value=shadow.queued
        )
        yield GaugeMetricFamily(
            "luthien_shadow_replayed_calls",
            "Calls replayed under the shadow policy since start",
            value=shadow.replayed,
        )
        yield GaugeMetricFamily(
            "luthien_shadow_skipped_calls",
            "Calls the shadow skipped since start because its queue was full",
            value=shadow.skipped,
        )
        yield GaugeMetricFamily(
            "luthien_shadow_failed_calls",
            "Shadow replays that failed or could not be stored since start",
            value=shadow.failed,
        )


def register_shadow_metrics(shadow: "ShadowRunner", registry: CollectorRegistry) -> None:
    registry.register(ShadowCollector(shadow))


class PolicyDecisionMetrics:
    """Counts the decisions that said something (a block, or a reason), as a call's record keeps
    them: a removed tool call is ``allowed="false"``, ``block="tool_call_removed"``."""

    def __init__(self, registry: CollectorRegistry) -> None:
        self._decisions = Counter(
            "luthien_policy_decisions",
            "Policy decisions that blocked or gave a reason, by stage and what they blocked",
            ["stage", "allowed", "block"],
            registry=registry,
        )

    def count(self, decision: Decision) -> None:
        allowed = "true" if decision.allowed else "false"
        self._decisions.labels(decision.stage, allowed, decision.block or "none").inc()

    def observe(
        self, stage: Literal["request", "response", "stream"], result: PolicyResult[Any] | ChunkVerdict
    ) -> None:
        if result.reason is not None or not result.allowed:
            self.count(
                Decision(stage=stage, allowed=result.allowed, reason=result.reason, metadata=result.metadata)
            )
