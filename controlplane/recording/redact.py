"""Applies a policy's recording redaction to every string in a record before it is stored."""

from collections.abc import Callable
from typing import Any

from controlplane.recording.records import Record


def _walk(node: Any, redact: Callable[[str], str]) -> Any:
    if isinstance(node, str):
        return redact(node)
    if isinstance(node, list):
        return [_walk(item, redact) for item in node]
    if isinstance(node, dict):
        return {key: _walk(value, redact) for key, value in node.items()}
    return node


def redact_record(record: Record, redact: Callable[[str], str]) -> Record:
    """A copy of ``record`` with ``redact`` applied to every string value it holds."""
    return record.model_validate(_walk(record.model_dump(mode="json"), redact))
