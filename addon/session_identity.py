"""Which session a call belongs to, from what the agent itself sends with every call.

- Claude Code sends ``x-claude-code-session-id``, and its session in ``metadata.user_id``:
  ``user_<hash>_account_<uuid>_session_<uuid>`` up to 2.1.77, from 2.1.78 on a JSON string
  ``{"device_id": …, "account_uuid": …, "session_id": …}``.
- Codex sends its session as the ``session-id`` header (0.169; older releases ``session_id``
  and ``conversation_id``).
- An app on the SDKs that names its end user (``user``, ``safety_identifier``, Anthropic's
  ``metadata.user_id``) has that user's calls as one session.

Only headers whose value names a session are read: a header that may carry a credential (say
``x-session-token``) is redacted when recorded, and never becomes a session id.
"""

import json
import re
from collections.abc import Mapping

from controlplane.credentials import scrub_credentials

#: In order of precedence; lower case.
SESSION_HEADERS = ("x-claude-code-session-id", "session_id", "session-id", "conversation_id")
_CLAUDE_CODE_USER = re.compile(r"user_[0-9a-f]*_account_[0-9a-f-]*_session_(?P<session>[0-9a-f-]+)")


def session_id(headers: Mapping[str, str], user_id: str | None) -> str | None:
    """The call's session: a session header, else the session in Claude Code's user id, else
    the SDK app's user. ``headers`` are keyed in lower case."""
    named = next((headers[name] for name in SESSION_HEADERS if headers.get(name)), None)
    found = named or (user_id and (claude_code_session(user_id) or user_id))
    # An id is a name, not a secret: should a client put a key there, it is not kept.
    return scrub_credentials(found) if found else None


def claude_code_session(user_id: str) -> str | None:
    """The session part of Claude Code's ``metadata.user_id`` (either form), if it is one."""
    if legacy := _CLAUDE_CODE_USER.fullmatch(user_id):
        return legacy["session"]
    if not user_id.startswith("{"):
        return None
    try:
        parsed = json.loads(user_id)
    except ValueError:
        return None
    session = parsed.get("session_id") if isinstance(parsed, dict) else None
    return session if isinstance(session, str) and session else None
