"""Side-by-side line diffs of what a call looked like before and after policy.

Computed here rather than in the browser so that the page only lays out rows, and so that the
API gives the same answer to any client.
"""

import difflib
import json
from typing import Annotated, Any, Literal

from pydantic import BaseModel, Field

from controlplane.recording.records import CallRecord, Output, StoredEvent

#: Unchanged lines kept around each change when a long unchanged run is collapsed.
CONTEXT = 3


class Row(BaseModel):
    op: Literal["equal", "replace", "delete", "insert"]
    left: str | None
    right: str | None
    left_no: int | None
    right_no: int | None


class Skip(BaseModel):
    """Unchanged lines left out of the rows."""

    op: Literal["skip"] = "skip"
    count: int


class Diff(BaseModel):
    changed: bool
    rows: list[Annotated[Row | Skip, Field(discriminator="op")]]


class CallDiffs(BaseModel):
    request: Diff
    response: Diff
    output_text: Diff
    tool_calls: Diff


def call_diffs(call: CallRecord) -> CallDiffs:
    if call.original_events is not None or call.final_events is not None:
        response = diff_lines(_event_lines(call.original_events), _event_lines(call.final_events))
    else:
        response = diff_lines(_json_lines(call.original_response), _json_lines(call.final_response))
    return CallDiffs(
        request=diff_lines(_json_lines(call.original_request), _json_lines(call.final_request)),
        response=response,
        output_text=diff_lines(_text_lines(call.original_output), _text_lines(call.final_output)),
        tool_calls=diff_lines(_tool_lines(call.original_output), _tool_lines(call.final_output)),
    )


def diff_lines(left: list[str], right: list[str]) -> Diff:
    rows: list[Row] = []
    matcher = difflib.SequenceMatcher(a=left, b=right)
    for op, i1, i2, j1, j2 in matcher.get_opcodes():
        for k in range(max(i2 - i1, j2 - j1)):
            i, j = i1 + k, j1 + k
            has_left, has_right = i < i2, j < j2
            # A replace of unequal lengths pairs what it can; the rest is a plain delete or insert.
            row_op = op if has_left and has_right else ("delete" if has_left else "insert")
            rows.append(
                Row(
                    op=row_op,
                    left=left[i] if has_left else None,
                    right=right[j] if has_right else None,
                    left_no=i + 1 if has_left else None,
                    right_no=j + 1 if has_right else None,
                )
            )
    return Diff(changed=any(row.op != "equal" for row in rows), rows=_collapse(rows))


def _collapse(rows: list[Row]) -> list[Row | Skip]:
    """Replaces the middle of each long unchanged run with a ``Skip``, keeping ``CONTEXT`` lines
    next to each change (none at the very start or end, where there is no change to frame)."""
    out: list[Row | Skip] = []
    start = 0
    while start < len(rows):
        end = start
        while end < len(rows) and rows[end].op == "equal":
            end += 1
        if end == start:
            out.append(rows[start])
            start += 1
            continue
        head = CONTEXT if start > 0 else 0
        tail = CONTEXT if end < len(rows) else 0
        hidden = end - start - head - tail
        if hidden > 1:
            out += [*rows[start : start + head], Skip(count=hidden), *rows[end - tail : end]]
        else:
            out += rows[start:end]
        start = end
    return out


def _json_lines(body: Any) -> list[str]:
    if body is None:
        return []
    if isinstance(body, str):  # a body that was not JSON is stored as its text
        return body.splitlines()
    return json.dumps(body, indent=2, sort_keys=False, ensure_ascii=False).splitlines()


def _event_lines(events: list[StoredEvent] | None) -> list[str]:
    return [data if name is None else f"{name}: {data}" for name, data in events or []]


def _text_lines(output: Output | None) -> list[str]:
    return output.text.splitlines() if output else []


def _tool_lines(output: Output | None) -> list[str]:
    return [f"{call.name or '?'} {call.arguments}" for call in output.tool_calls] if output else []
