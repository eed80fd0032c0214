"""A fake OpenAI / Anthropic HTTP provider for tests.

Speaks the real wire formats of Chat Completions, Responses and Messages (streaming and
not) so the official SDKs, and anything proxying them, can be tested offline. The reply is
chosen by a ``[scenario:NAME arg]`` marker in the last user message; see ``scenarios.py``.
"""

from .scenarios import SCENARIOS
from .server import FakeProvider, RecordedRequest

__all__ = ["SCENARIOS", "FakeProvider", "RecordedRequest"]
