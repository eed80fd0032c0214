"""Rewriting the model's text, in whole responses and across stream chunks.

A stream delivers text in arbitrary pieces, so a phrase a policy looks for may start in one chunk
and end in the next. :class:`StreamingTextRewriter` holds back only the trailing text that might
still be the start of a match and emits the rest, rewritten, at once. :class:`PatternSet` is a
set of regular expressions (or literals) with their replacements that knows exactly how much
trailing text to hold back, using the ``regex`` package's partial matching.
:class:`StreamingTextPolicy` is a base class that runs a rewriter over a stream's chunks, keeping
a stream with nothing to rewrite byte-identical, and flushing what it holds before the finishing
chunk and at the end of the stream.
"""

from collections import Counter
from collections.abc import AsyncIterator, Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import regex

from controlplane.llm import ModelResponse, ModelResponseStream
from controlplane.models import (
    NormalizedRequest,
    PolicyResult,
    RequestMetadata,
    StreamingContext,
)
from controlplane.policies.base import ChunkResult, PolicyHandler
from controlplane.policies.chunks import chunk_text, field_of, finish_reason, text_chunk, with_text

#: A pure text transformation.
Transform = Callable[[str], str]
#: How many trailing characters of a text might still be the start of a match.
Holdback = Callable[[str], int]


class StreamingTextRewriter:
    """Applies ``transform`` to text that arrives in pieces.

    ``holdback(text)`` says how many trailing characters of ``text`` must wait for more text
    because a match might start there; everything before them is transformed and emitted.
    ``holdback`` must not cut through a match: the text before the cut must transform on its
    own exactly as it would as part of the whole.
    """

    def __init__(self, transform: Transform, holdback: Holdback | None = None) -> None:
        self.transform = transform
        self.holdback: Holdback = holdback or (lambda text: 0)
        #: Text received but not emitted yet.
        self.held = ""

    def cut(self, text: str) -> int:
        """Where ``text`` splits into what is safe to emit and what must wait."""
        return len(text) - max(0, min(len(text), self.holdback(text)))

    def feed(self, text: str) -> str:
        """Takes the next piece of text; returns what is safe to emit now, transformed."""
        buffer = self.held + text
        cut = self.cut(buffer)
        self.held = buffer[cut:]
        return self.transform(buffer[:cut]) if cut else ""

    def flush(self) -> str:
        """The text is over: returns what was held back, transformed."""
        held, self.held = self.held, ""
        return self.transform(held) if held else ""


# --- patterns ----------------------------------------------------------------------------------

#: What a rule puts in place of a match, and the label it is counted under; None rejects the
#: match (it is not one after all), and the search goes on after its first character.
Replacer = Callable[["regex.Match[str]"], tuple[str, str] | None]


def compile_pattern(
    pattern: str, *, literal: bool = False, ignore_case: bool = False
) -> "regex.Pattern[str]":
    """A ``regex`` pattern (raises ``regex.error`` when it does not compile)."""
    flags = regex.IGNORECASE if ignore_case else 0
    return regex.compile(regex.escape(pattern) if literal else pattern, flags)


@dataclass(frozen=True)
class Rule:
    """One pattern and what replaces its matches.

    ``fixed`` says a complete match can never grow with more text (a literal), so a match that
    ends exactly at the end of the text received so far need not be held back.
    """

    pattern: "regex.Pattern[str]"
    replace: Replacer
    fixed: bool = False


@dataclass
class _Found:
    match: "regex.Match[str]"
    index: int
    replacement: tuple[str, str] | None  # None: the match may still change with more text


class PatternSet:
    """Replaces the matches of several rules in one left-to-right pass.

    At each point the earliest match wins; of matches starting at the same place, the longest,
    then the rule listed first. Replaced text is not searched again. Zero-length matches are
    ignored.
    """

    def __init__(self, rules: Sequence[Rule]) -> None:
        self.rules = list(rules)

    def sub(self, text: str, counts: Counter[str] | None = None) -> str:
        """``text`` with every match replaced; adds one per replacement to ``counts[label]``."""
        out: list[str] = []
        pos = 0
        cache: dict[int, _Found | None] = {}
        while (found := self._next(text, pos, cache, partial=False)) is not None:
            assert found.replacement is not None
            replacement, label = found.replacement
            out += [text[pos : found.match.start()], replacement]
            if counts is not None:
                counts[label] += 1
            pos = found.match.end()
        if not out:
            return text
        out.append(text[pos:])
        return "".join(out)

    def holdback(self, text: str) -> int:
        """How many trailing characters of ``text`` might belong to a match that more text could
        complete, change or extend: all text before them can be replaced on its own."""
        pos = 0
        cache: dict[int, _Found | None] = {}
        while (found := self._next(text, pos, cache, partial=True)) is not None:
            if found.replacement is None:
                return len(text) - found.match.start()
            pos = found.match.end()
        return 0

    def rewriter(self, counts: Counter[str] | None = None) -> StreamingTextRewriter:
        """A streaming rewriter for these rules, counting replacements in ``counts``."""
        return StreamingTextRewriter(lambda text: self.sub(text, counts), self.holdback)

    def _next(self, text: str, pos: int, cache: dict[int, _Found | None], *, partial: bool) -> _Found | None:
        candidates = []
        for index, rule in enumerate(self.rules):
            if index not in cache or ((old := cache[index]) is not None and old.match.start() < pos):
                cache[index] = self._first(index, rule, text, pos, partial)
            found = cache[index]
            if found is not None:
                candidates.append(found)
        if not candidates:
            return None
        start = min(found.match.start() for found in candidates)
        at_start = [found for found in candidates if found.match.start() == start]
        undecided = [found for found in at_start if found.replacement is None]
        if undecided:
            return undecided[0]
        return max(at_start, key=lambda found: (found.match.end(), -found.index))

    @staticmethod
    def _first(index: int, rule: Rule, text: str, pos: int, partial: bool) -> _Found | None:
        while pos <= len(text):
            match = rule.pattern.search(text, pos, partial=partial)
            if match is None:
                return None
            if match.partial or (partial and match.end() == len(text) and not rule.fixed):
                return _Found(match, index, None)
            if match.end() > match.start() and (replacement := rule.replace(match)) is not None:
                return _Found(match, index, replacement)
            pos = match.start() + 1
        return None


# --- requests ----------------------------------------------------------------------------------

_TEXT_PART_TYPES = frozenset({"text", "input_text", "output_text"})


#: Top-level fields whose strings are names, not text: never rewritten.
_NAMED_FIELDS = frozenset({"model", "messages"})
#: Keys whose string values are names (types, roles, ids), not text.
_NAME_KEYS = frozenset({"type", "role", "id", "call_id", "tool_call_id", "tool_use_id", "name"})
#: A message's tool calls: JSON arguments, rewritten (if at all) by the ``arguments`` transform.
_MESSAGE_CALLS = frozenset({"tool_calls", "function_call"})


def rewrite_request_texts(
    request: NormalizedRequest,
    rewrite: Transform,
    arguments: Transform | None = None,
) -> NormalizedRequest | None:
    """A copy of ``request`` with every text passed through ``rewrite``: each message text
    (string content and text parts, in every role: system, user, assistant, tool results; every
    other string of a message but its names and tool calls, such as an assistant's reasoning),
    and every string of the other fields (tools, ``extra_body``, ``unmapped_text``...) that is not a
    name. If given, every assistant tool call's arguments go through ``arguments``. Returns None
    when nothing changed. Only string values change, so Luthien can map the result onto the
    provider's body.
    """
    new = dict(request)
    messages = request.get("messages")
    if isinstance(messages, list):
        rewritten = [_rewrite_message(m, rewrite, arguments) for m in messages]
        if any(a is not b for a, b in zip(rewritten, messages, strict=True)):
            new["messages"] = rewritten
    for key, value in request.items():
        if key not in _NAMED_FIELDS:
            new[key] = _rewrite_strings(value, rewrite)
    if all(new[key] is request[key] for key in request):
        return None
    return new


def _rewrite_strings(node: Any, rewrite: Transform) -> Any:
    """``node`` with its strings (but names) rewritten; the same object when nothing changed."""
    if isinstance(node, str):
        new = rewrite(node)
        return node if new == node else new
    if isinstance(node, list):
        items = [_rewrite_strings(item, rewrite) for item in node]
        return node if all(a is b for a, b in zip(items, node, strict=True)) else items
    if isinstance(node, dict):
        values = {k: v if k in _NAME_KEYS else _rewrite_strings(v, rewrite) for k, v in node.items()}
        return node if all(values[k] is node[k] for k in node) else values
    return node


def _rewrite_message(message: Any, rewrite: Transform, arguments: Transform | None) -> Any:
    if not isinstance(message, dict):
        return message
    new = message
    content = message.get("content")
    new_content = _rewrite_content(content, rewrite)
    if new_content is not content:
        new = {**new, "content": new_content}
    # Every other string of the message but its names (an assistant's reasoning, its thinking
    # blocks, what a format adds): text a provider reads is text a policy rewrites.
    for key, value in message.items():
        if key not in _NAME_KEYS and key not in _MESSAGE_CALLS and key != "content":
            new_value = _rewrite_strings(value, rewrite)
            if new_value is not value:
                new = {**new, key: new_value}
    if arguments is not None:
        calls = message.get("tool_calls")
        if isinstance(calls, list):
            new_calls = [_rewrite_call(call, arguments) for call in calls]
            if any(a is not b for a, b in zip(new_calls, calls, strict=True)):
                new = {**new, "tool_calls": new_calls}
        legacy = message.get("function_call")
        new_legacy = _rewrite_function(legacy, arguments)
        if new_legacy is not legacy:
            new = {**new, "function_call": new_legacy}
    return new


def _rewrite_content(content: Any, rewrite: Transform) -> Any:
    if isinstance(content, str):
        new = rewrite(content)
        return content if new == content else new
    if not isinstance(content, list):
        return content
    parts = []
    for part in content:
        text = part.get("text") if isinstance(part, dict) else None
        if isinstance(text, str) and part.get("type", "text") in _TEXT_PART_TYPES:
            new_text = rewrite(text)
            if new_text != text:
                part = {**part, "text": new_text}
        elif isinstance(part, dict):  # an image or a file: its URL is fetched by the provider
            part = _rewrite_strings(part, lambda value: value if _inline_data(value) else rewrite(value))
        parts.append(part)
    return content if all(a is b for a, b in zip(parts, content, strict=True)) else parts


def _inline_data(value: str) -> bool:
    """A base64 ``data:`` URL: a payload the provider decodes, never fetches nor reads as text,
    whose base64 may spell a key's shape by chance (and is long to search)."""
    return value.startswith("data:") and ";base64," in value[:128]


def _rewrite_call(call: Any, arguments: Transform) -> Any:
    if not isinstance(call, dict):
        return call
    function = call.get("function")
    new_function = _rewrite_function(function, arguments)
    return call if new_function is function else {**call, "function": new_function}


def _rewrite_function(function: Any, arguments: Transform) -> Any:
    if not isinstance(function, dict) or not isinstance(function.get("arguments"), str):
        return function
    new = arguments(function["arguments"])
    return function if new == function["arguments"] else {**function, "arguments": new}


# --- streams of chunks -------------------------------------------------------------------------


def _carries_more_than_text(chunk: ModelResponseStream) -> bool:
    """The chunk ends the text or carries something else (tool calls, reasoning, usage)."""
    if field_of(chunk, "usage") is not None:
        return True
    if not chunk.choices:
        return False
    delta = field_of(chunk.choices[0], "delta")
    return bool(
        finish_reason(chunk) is not None
        or field_of(delta, "tool_calls")
        or field_of(delta, "function_call")
        or field_of(delta, "reasoning_content") is not None
        or field_of(delta, "thinking_blocks")
        or field_of(delta, "audio")
    )


@dataclass
class ChunkTextRewriter:
    """Runs a :class:`StreamingTextRewriter` over a stream's chunks.

    Each call returns the chunks the client gets now. While nothing has been rewritten, held
    text stays in its original chunks (a chunk is held whole when a match might start in it),
    and when the text turns out not to match they are released unchanged, so the client gets
    the provider's exact bytes. Once text changes, held text is emitted as the next chunk's text.
    Held text is flushed before a chunk that ends the text or carries anything else (finish,
    tool calls, reasoning, usage), and by :meth:`finish` at the end of the stream.
    """

    rewriter: StreamingTextRewriter
    _pending: list[ModelResponseStream] = field(default_factory=list)  # original chunks of `held`
    _last: ModelResponseStream | None = None

    def process(self, chunk: ModelResponseStream) -> list[ModelResponseStream]:
        self._last = chunk
        text = chunk_text(chunk)
        if _carries_more_than_text(chunk):
            return self._flush_before(chunk, text)
        if not text:
            if self._pending:  # keeps its place behind the held chunks
                self._pending.append(chunk)
                return []
            return [chunk]
        held = self.rewriter.held
        buffer = held + text
        cut = self.rewriter.cut(buffer)
        released = buffer[:cut]
        out = self.rewriter.transform(released) if released else ""
        if out == released and (not held or self._pending):
            # Nothing changed: hold whole original chunks from the one the held text starts in.
            chunks = [*self._pending, chunk]
            keep, offset = len(chunks), len(buffer)
            position = 0
            for index, candidate in enumerate(chunks):
                end = position + len(chunk_text(candidate))
                if end > cut:
                    keep, offset = index, position
                    break
                position = end
            self._pending = chunks[keep:]
            self.rewriter.held = buffer[offset:]
            return chunks[:keep]
        emitted = self._textless_pending()
        self.rewriter.held = buffer[cut:]
        if out:
            emitted.append(with_text(chunk, out))
        return emitted

    def finish(self) -> list[ModelResponseStream]:
        """The stream ended: whatever is still held."""
        held = self.rewriter.held
        out = self.rewriter.flush()
        if not held or (out == held and self._pending):
            pending, self._pending = self._pending, []
            return pending
        emitted = self._textless_pending()
        if out and self._last is not None:
            emitted.append(text_chunk(self._last, out))
        return emitted

    def _flush_before(self, chunk: ModelResponseStream, text: str) -> list[ModelResponseStream]:
        held = self.rewriter.held
        self.rewriter.held = held + text
        out = self.rewriter.flush()
        if out == held + text and (not held or self._pending):
            pending, self._pending = self._pending, []
            return [*pending, chunk]
        emitted = self._textless_pending()
        if text:
            emitted.append(with_text(chunk, out))
        else:
            if out:
                emitted.append(text_chunk(chunk, out))
            emitted.append(chunk)
        return emitted

    def _textless_pending(self) -> list[ModelResponseStream]:
        """Drops the held chunks, whose text is being emitted rewritten; keeps any without text."""
        pending, self._pending = self._pending, []
        return [c for c in pending if not chunk_text(c)]


@dataclass
class _StreamState:
    chunks: ChunkTextRewriter
    counts: Counter[str]
    reported: Counter[str] = field(default_factory=Counter)


class StreamingTextPolicy(PolicyHandler):
    """Base for policies that rewrite the model's streamed text.

    Subclasses implement :meth:`stream_rewriter` (a new rewriter per stream, or None to leave
    streams alone) and may implement :meth:`describe` to record what was changed.
    """

    def stream_rewriter(self, counts: Counter[str]) -> StreamingTextRewriter | None:
        """A rewriter for one stream; its transform adds what it changes to ``counts``."""
        return None

    def describe(self, counts: Counter[str]) -> tuple[str, dict[str, Any]] | None:
        """A reason and metadata for changes counted in ``counts`` (None: record nothing)."""
        return None

    def response_rewriter(self) -> Callable[[str, Counter[str]], str] | None:
        """How a complete (non-streaming) answer's text is rewritten; None leaves it alone."""
        return None

    async def apply_response_policy(
        self, response: ModelResponse, metadata: RequestMetadata
    ) -> PolicyResult[ModelResponse]:
        rewrite = self.response_rewriter()
        if rewrite is None:
            return PolicyResult.allow(response)
        counts: Counter[str] = Counter()
        for choice in response.choices:
            message = choice.message  # type: ignore[union-attr]
            if isinstance(message.content, str) and message.content:
                rewritten = rewrite(message.content, counts)
                if rewritten != message.content:
                    message.content = rewritten
        return self.allow_counted(response, counts)

    def allow_counted[T](self, value: T, counts: Counter[str]) -> PolicyResult[T]:
        """Allows ``value``, recording what ``counts`` says was changed."""
        described = self.describe(counts) if counts else None
        if described is None:
            return PolicyResult.allow(value)
        reason, metadata = described
        return PolicyResult.allow(value, reason, **metadata)

    async def apply_streaming_chunk_policy(
        self, chunk: ModelResponseStream, context: StreamingContext
    ) -> AsyncIterator[ChunkResult]:
        state = self._state(context)
        if state is None:
            yield PolicyResult.allow(chunk)
            return
        for result in self._results(state, state.chunks.process(chunk)):
            yield result

    async def on_stream_end(self, context: StreamingContext) -> AsyncIterator[ChunkResult]:
        state = self._state(context)
        if state is not None:
            for result in self._results(state, state.chunks.finish()):
                yield result

    def _state(self, context: StreamingContext) -> _StreamState | None:
        key = f"{type(self).__name__}.text_stream"
        if key not in context.policy_state:
            counts: Counter[str] = Counter()
            rewriter = self.stream_rewriter(counts)
            context.policy_state[key] = (
                None if rewriter is None else _StreamState(ChunkTextRewriter(rewriter), counts)
            )
        return context.policy_state[key]

    def _results(self, state: _StreamState, chunks: list[ModelResponseStream]) -> list[ChunkResult]:
        results: list[ChunkResult] = [PolicyResult.allow(chunk) for chunk in chunks]
        # Counts only grow: equal totals say nothing was replaced since the last report.
        new = state.counts - state.reported if state.counts.total() != state.reported.total() else None
        described = self.describe(new) if new else None
        if described is not None:
            state.reported = state.counts.copy()
            reason, metadata = described
            if results:
                results[-1] = PolicyResult.allow(results[-1].value, reason, **metadata)  # type: ignore[arg-type]
            else:  # the change removed all the text there was: record it all the same
                results.append(PolicyResult(value=None, reason=reason, metadata=metadata))
        return results
