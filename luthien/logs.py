"""Logging for the long-running commands: Luthien's own loggers at the level asked for, every
other logger at WARNING or above, whatever the level.

Below WARNING, libraries print what they handle: ``hpack`` every decoded HTTP/2 header
(``authorization: Bearer …``, the ``:path`` with its query string), ``websockets`` the handshake
(the control-plane token) and message payloads, ``httpx`` each URL with its query string,
``h2``/``mitmproxy``/``uvicorn``/LiteLLM their connections and requests. Luthien's own log lines
never hold a credential, at any level; so only they may go below WARNING. This is an allow-list,
not a list of loggers known to leak: a dependency added later, or one that sets its own
logger's level, still cannot print its debug lines.
"""

import logging

log = logging.getLogger(__name__)
#: The packages whose loggers follow ``--log-level``.
OWN_PACKAGES = frozenset({"addon", "controlplane", "dashboard", "luthien", "certs", "bench"})
#: The lowest level any other logger is shown at.
THIRD_PARTY_LEVEL = logging.WARNING
#: Third-party loggers with a handler of their own.
_OWN_HANDLER_LOGGERS = ("LiteLLM", "LiteLLM Router", "LiteLLM Proxy")
FORMAT = "%(asctime)s %(levelname)s %(name)s: %(message)s"


def own_logger(name: str) -> bool:
    return name.partition(".")[0] in OWN_PACKAGES


class ThirdPartyAtWarning(logging.Filter):
    """Drops a record below WARNING unless one of Luthien's own loggers made it. On the handler,
    so it also holds for a library that sets its own logger's level."""

    def filter(self, record: logging.LogRecord) -> bool:
        return record.levelno >= THIRD_PARTY_LEVEL or own_logger(record.name)


def configure_logging(level: str | int) -> None:
    """Luthien's loggers at ``level``; the root logger (so every other logger that sets no level
    of its own, which keeps their debug calls cheap) at ``level`` or WARNING, the higher; and the
    filter on the root's handlers, for the loggers that do set their own."""
    numeric = logging.getLevelName(level) if isinstance(level, str) else level
    if not isinstance(numeric, int):
        raise ValueError(f"unknown log level {level!r}")
    logging.basicConfig(level=max(numeric, THIRD_PARTY_LEVEL), format=FORMAT)
    root = logging.getLogger()
    root.setLevel(max(numeric, THIRD_PARTY_LEVEL))
    for handler in root.handlers:
        if not any(isinstance(f, ThirdPartyAtWarning) for f in handler.filters):
            handler.addFilter(ThirdPartyAtWarning())
    for package in OWN_PACKAGES:
        logging.getLogger(package).setLevel(numeric)
    # LiteLLM's loggers print through a handler of their own, which the filter above is not on
    # (and its debug switch sets their level): their level is the only cap that holds for them.
    for name in _OWN_HANDLER_LOGGERS:
        logging.getLogger(name).setLevel(max(numeric, THIRD_PARTY_LEVEL))
    log.debug("Luthien logs at %s; other libraries at WARNING and above", logging.getLevelName(numeric))
