from controlplane.policies.base import PolicyHandler


class NoOpPolicy(PolicyHandler):
    """Passes everything through untouched (the client sees the provider's exact bytes)."""

    description = "Passes every request, response and stream chunk through unchanged."
