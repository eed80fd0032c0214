"""Applies a policy's recording redaction to every string in a record before it is stored."""

from collections.abc import Callable
from typing import Any, cast

from controlplane.recording.records import Record


def _walk(node: Any, redact: Callable[[str], str]) -> Any:
    if isinstance(node, str):
        return redact(node)
    if isinstance(node, list):
        return [_walk(item, redact) for item in node]
    if isinstance(node, dict):
        return {key: _walk(value, redact) for key, value in node.items()}
    return node


def redact_record[R: Record](record: R, redact: Callable[[str], str]) -> R:
    """A copy of ``record`` with ``redact`` applied to every string value it holds."""
    # type(record) is R itself, which the union bound hides from the type checker.
    return cast(R, type(record).model_validate(_walk(record.model_dump(mode="json"), redact)))
