"""Who may do what: named tokens with roles, for the control-plane API and the dashboard alike.

A credential is known by its name (recorded with every policy change); the token itself is only
ever compared, never stored, logged or echoed. Roles are ordered, each allowing what the one
before allows: ``read`` (see calls, the policy and its history), ``proxy`` (also police calls
and send records and activity: what a sidecar does), ``admin`` (also change the policy).
"""

import secrets
from typing import Literal, get_args

from pydantic import BaseModel

Role = Literal["read", "proxy", "admin"]
ROLES: tuple[Role, ...] = get_args(Role)


class Credential(BaseModel):
    name: str
    role: Role

    def allows(self, needed: Role) -> bool:
        return ROLES.index(self.role) >= ROLES.index(needed)

    def refusal(self, needed: Role) -> str:
        """Why a request needing ``needed`` is refused (a 403's message): names, never tokens."""
        return f"the token {self.name!r} has the role {self.role}; this needs {needed}"


class TokenListError(ValueError):
    pass


class Tokens:
    """The tokens a service accepts, each with the credential it stands for."""

    def __init__(self, entries: list[tuple[Credential, str]]) -> None:
        self._entries = [(credential, token.encode()) for credential, token in entries]

    def __bool__(self) -> bool:
        return bool(self._entries)

    def who(self, given: str | None) -> Credential | None:
        if not given:
            return None
        given_bytes = given.encode()  # bytes: compare_digest refuses non-ASCII str
        found = None
        for credential, token in self._entries:  # every entry compared: the time says nothing
            if secrets.compare_digest(given_bytes, token):
                found = credential
        return found


def parse_tokens(text: str, variable: str, roles: tuple[Role, ...] = ROLES) -> list[tuple[Credential, str]]:
    """``NAME:ROLE:TOKEN`` entries, comma-separated (the format of ``variable``). An error names
    the entry by its position and name, never by its token."""
    entries: list[tuple[Credential, str]] = []
    for n, item in enumerate((part.strip() for part in text.split(",")), 1):
        if not item:
            continue
        name, _, rest = item.partition(":")
        role, _, token = rest.partition(":")
        if not (name and token):
            raise TokenListError(f"{variable}: entry {n} is not NAME:ROLE:TOKEN")
        if role not in roles:
            raise TokenListError(
                f"{variable}: entry {n} ({name}): role {role!r} is not one of {', '.join(roles)}"
            )
        if any(known.name == name for known, _ in entries):
            raise TokenListError(f"{variable}: entry {n}: the name {name!r} is given twice")
        entries.append((Credential.model_validate({"name": name, "role": role}), token))
    return entries
