"""Turns on trace export from the standard ``OTEL_*`` environment variables.

Spans are exported when ``OTEL_TRACES_EXPORTER`` is ``otlp`` or ``console``, or when an OTLP
endpoint is set (``OTEL_EXPORTER_OTLP_ENDPOINT`` / ``OTEL_EXPORTER_OTLP_TRACES_ENDPOINT``); the
exporter reads its own variables (endpoint, headers, protocol). Without any of them, tracing
costs nothing: the spans are the OpenTelemetry API's no-ops.
"""

import os

from opentelemetry import trace
from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter
from opentelemetry.sdk.resources import SERVICE_NAME, Resource
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import BatchSpanProcessor, ConsoleSpanExporter, SpanExporter

_ENDPOINTS = ("OTEL_EXPORTER_OTLP_ENDPOINT", "OTEL_EXPORTER_OTLP_TRACES_ENDPOINT")


def configure_tracing(service: str) -> str | None:
    """Installs a tracer provider for ``service`` (unless ``OTEL_SERVICE_NAME`` names it) and
    returns the exporter's name, or None when tracing is off."""
    default = "otlp" if any(os.environ.get(name) for name in _ENDPOINTS) else "none"
    name = os.environ.get("OTEL_TRACES_EXPORTER", default).strip().lower()
    if name == "none":
        return None
    if name not in ("otlp", "console"):
        raise ValueError(f"OTEL_TRACES_EXPORTER={name!r}: Luthien exports traces with otlp, console or none")
    exporter: SpanExporter = ConsoleSpanExporter() if name == "console" else OTLPSpanExporter()
    # Resource.create reads OTEL_SERVICE_NAME and OTEL_RESOURCE_ATTRIBUTES; attributes given here
    # would win over them, so the default name is given only when the variable is unset.
    named = bool(os.environ.get("OTEL_SERVICE_NAME"))
    provider = TracerProvider(resource=Resource.create({} if named else {SERVICE_NAME: service}))
    provider.add_span_processor(BatchSpanProcessor(exporter))
    trace.set_tracer_provider(provider)
    return name
