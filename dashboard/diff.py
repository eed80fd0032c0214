"""Side-by-side line diffs of what a call looked like before and after policy.

Computed here rather than in the browser so that the page only lays out rows, and so that the
API gives the same answer to any client.
"""

import difflib
import json
import re
from typing import Annotated, Any, Literal

from pydantic import BaseModel, Field

from controlplane.chunks import without_none
from controlplane.recording.records import CallRecord, Output, StoredEvent

#: Unchanged lines kept around each change when a long unchanged run is collapsed.
CONTEXT = 3


#: Lines longer than this get no word-level diff (its cost grows with the square of the words).
MAX_WORD_DIFF_CHARS = 20_000
_WORDS = re.compile(r"\w+|\s+|[^\w\s]")


class Segment(BaseModel):
    """A piece of a changed line, and whether it differs from the other side."""

    text: str
    changed: bool


class Row(BaseModel):
    op: Literal["equal", "replace", "delete", "insert"]
    left: str | None
    right: str | None
    left_no: int | None
    right_no: int | None
    # A replaced line word by word (absent for other rows, and for very long lines); for a
    # stream event, its content as compared: keys sorted, null fields left out.
    left_parts: list[Segment] | None = None
    right_parts: list[Segment] | None = None


class Skip(BaseModel):
    """Unchanged lines left out of the rows."""

    op: Literal["skip"] = "skip"
    count: int


class Diff(BaseModel):
    changed: bool
    rows: list[Annotated[Row | Skip, Field(discriminator="op")]]
    #: The one side recorded when the other has nothing (a blocked request was never sent; the
    #: client's error came from Luthien, not the provider): that is not a change to show line by line.
    only: Literal["left", "right"] | None = None


class CallDiffs(BaseModel):
    request: Diff
    response: Diff
    output_text: Diff
    tool_calls: Diff


def call_diffs(call: CallRecord) -> CallDiffs:
    if call.original_events is not None or call.final_events is not None:
        original, final = call.original_events or [], call.final_events or []
        response = diff_lines(
            _event_lines(original),
            _event_lines(final),
            [_event_key(e) for e in original],
            [_event_key(e) for e in final],
        )
    else:
        response = diff_bodies(call.original_response, call.final_response)
    return CallDiffs(
        request=diff_bodies(call.original_request, call.final_request),
        response=response,
        output_text=diff_lines(_text_lines(call.original_output), _text_lines(call.final_output)),
        tool_calls=diff_lines(_tool_lines(call.original_output), _tool_lines(call.final_output)),
    )


def diff_bodies(left: Any, right: Any) -> Diff:
    if (left is None) != (right is None):
        return Diff(changed=False, rows=[], only="left" if right is None else "right")
    return diff_lines(_json_lines(left), _json_lines(right))


def diff_lines(
    left: list[str], right: list[str], left_keys: list[str] | None = None, right_keys: list[str] | None = None
) -> Diff:
    """Lines compared by their keys (by default the lines themselves) and shown as they are,
    except that a replaced line's words are those of its key: what differs in content."""
    rows: list[Row] = []
    left_keys, right_keys = left_keys or left, right_keys or right
    matcher = difflib.SequenceMatcher(a=left_keys, b=right_keys, autojunk=False)
    for op, i1, i2, j1, j2 in matcher.get_opcodes():
        for k in range(max(i2 - i1, j2 - j1)):
            i, j = i1 + k, j1 + k
            has_left, has_right = i < i2, j < j2
            # A replace of unequal lengths pairs what it can; the rest is a plain delete or insert.
            row_op = op if has_left and has_right else ("delete" if has_left else "insert")
            row = Row(
                op=row_op,
                left=left[i] if has_left else None,
                right=right[j] if has_right else None,
                left_no=i + 1 if has_left else None,
                right_no=j + 1 if has_right else None,
            )
            if row_op == "replace":
                row.left_parts, row.right_parts = word_diff(left_keys[i], right_keys[j])
            rows.append(row)
    return Diff(changed=any(row.op != "equal" for row in rows), rows=_collapse(rows))


def word_diff(left: str, right: str) -> tuple[list[Segment] | None, list[Segment] | None]:
    """Both lines cut into runs of words, spaces and punctuation that are the same on both sides
    or not; none for lines too long to compare this way."""
    if len(left) + len(right) > MAX_WORD_DIFF_CHARS:
        return None, None
    a, b = _WORDS.findall(left), _WORDS.findall(right)
    left_parts: list[Segment] = []
    right_parts: list[Segment] = []
    for op, i1, i2, j1, j2 in difflib.SequenceMatcher(a=a, b=b, autojunk=False).get_opcodes():
        _append(left_parts, "".join(a[i1:i2]), op != "equal")
        _append(right_parts, "".join(b[j1:j2]), op != "equal")
    return left_parts, right_parts


def _append(parts: list[Segment], text: str, changed: bool) -> None:
    if not text:
        return
    if parts and parts[-1].changed == changed:
        parts[-1].text += text
    else:
        parts.append(Segment(text=text, changed=changed))


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


def _event_lines(events: list[StoredEvent]) -> list[str]:
    return [data if name is None else f"{name}: {data}" for name, data in events]


def _event_key(event: StoredEvent) -> str:
    """What an event says, whatever its bytes: once a stream diverges, Luthien writes the events
    itself, and the same content comes out with its keys in another order and null fields left
    out. JSON data is compared without nulls and with sorted keys."""
    name, data = event
    try:
        content = json.loads(data)
    except ValueError:
        return f"{name}: {data}"
    return f"{name}: {json.dumps(without_none(content), sort_keys=True)}"


def _text_lines(output: Output | None) -> list[str]:
    return output.text.splitlines() if output else []


def _tool_lines(output: Output | None) -> list[str]:
    return [f"{call.name or '?'} {call.arguments}" for call in output.tool_calls] if output else []
