"""OpenTelemetry tracing shared by the data plane and the control plane.

Spans are made through the OpenTelemetry API; they are recorded and exported only when the
process has configured an SDK tracer provider (see ``luthien/telemetry.py``). W3C trace context
travels with every call from the proxy to a remote control plane, so both sides' spans share one
trace, and a trace an agent started (a ``traceparent`` header) is continued.
"""

from collections.abc import Mapping

from opentelemetry import propagate, trace
from opentelemetry.context import Context

tracer = trace.get_tracer("luthien")

CALL_ID = "luthien.call_id"


def context_from(headers: Mapping[str, str]) -> Context:
    """The trace context a request carries (an empty one when it carries none)."""
    return propagate.extract({k.lower(): v for k, v in headers.items()})


def trace_headers() -> dict[str, str]:
    """Headers that carry the current trace context to the next hop."""
    carrier: dict[str, str] = {}
    propagate.inject(carrier)
    return carrier
