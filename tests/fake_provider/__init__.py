"""A fake OpenAI / Anthropic / Gemini HTTP provider for tests.

Speaks the real wire formats of Chat Completions, Responses, Messages and Gemini's
generateContent (streaming and not) so the official SDKs, and anything proxying them, can be
tested offline. The reply is
chosen by a ``[scenario:NAME arg]`` marker in the last user message; see ``scenarios.py``; or a
test scripts the next answer byte for byte (``FakeProvider.script``). Every request is recorded
as it arrived: method, raw path, headers in order, body.
"""

from .scenarios import SCENARIOS
from .server import FakeProvider, RecordedRequest, ScriptedReply, matching

__all__ = ["SCENARIOS", "FakeProvider", "RecordedRequest", "ScriptedReply", "matching"]
