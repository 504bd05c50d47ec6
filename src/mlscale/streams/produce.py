"""Appending a file of events of any size (``mlscale stream produce``): JSON lines streamed in chunks.

Why chunks and line numbers: a file of millions of events must not be held in memory twice, and a bad
line in the middle must leave a state the user can reason about. Every line before a bad one is
appended (chunks are appended in order, the pending one before stopping), nothing from it on, and the
error names the line, so ``tail -n +LINE`` resumes exactly there: nothing lost, nothing twice.

A JSON array (or ``{"events": [...]}``) is also read, whole, and appended in the same chunks.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import BinaryIO

import msgspec

from mlscale.errors import InvalidInput
from mlscale.streams.broker import AppendIncomplete, Broker
from mlscale.streams.ingest import check_topic

CHUNK = 10_000


class ProduceError(InvalidInput):
    """A bad line or element: ``appended`` events before it are in the topic, none after."""

    def __init__(self, message: str, appended: int) -> None:
        super().__init__(message)
        self.appended = appended


def produce(
    broker: Broker,
    topic: str,
    source: BinaryIO,
    chunk: int = CHUNK,
    on_progress: Callable[[int], None] | None = None,
) -> int:
    """Append the events of ``source`` (JSON lines, or one JSON array) to ``topic``; returns how many.

    ``on_progress(bytes_read)`` is called after each chunk with the bytes consumed so far.
    """
    check_topic(topic)
    first = source.peek(1)[:1] if hasattr(source, "peek") else b""
    while first in (b" ", b"\t", b"\r", b"\n"):
        source.read(1)
        first = source.peek(1)[:1]
    if first in (b"[", b"{") and _is_array(source, first):
        return _produce_array(broker, topic, source.read(), chunk, on_progress)
    appended = done = 0
    pending: list[dict] = []
    first = 1  # line number of pending's first event
    decode = msgspec.json.decode

    def flush(before: int) -> None:
        nonlocal appended, pending, first
        _append_chunk(broker, topic, pending, first, before, appended)
        appended += len(pending)
        pending, first = [], before

    for lineno, line in enumerate(source, 1):
        done += len(line)
        if not line.strip():
            continue
        try:
            event = decode(line)
        except msgspec.DecodeError as exc:
            reason = f"not valid JSON ({exc})"
        else:
            if isinstance(event, dict):
                pending.append(event)
                if len(pending) >= chunk:
                    flush(lineno + 1)
                    if on_progress:
                        on_progress(done)
                continue
            reason = f"a JSON {type(event).__name__}, not an object"
        if pending:
            flush(lineno)
        raise ProduceError(
            f"line {lineno}: {reason}; appended the {appended} events before it to {topic!r}, "
            f"none from line {lineno} on (resume with: tail -n +{lineno} FILE)",
            appended,
        )
    if pending:
        flush(lineno + 1)
    if on_progress:
        on_progress(done)
    if not appended:
        raise ProduceError("no events in the input", 0)
    return appended


def _append_chunk(broker: Broker, topic: str, events: list[dict], first: int, end: int, before: int) -> None:
    """Append lines first..end-1; the call is named by its first line, so a broker that deduplicates
    publishes (NATS) stores only what is missing when the same file is produced again."""
    try:
        broker.append(topic, events, call_id=f"produce:line:{first}")
    except AppendIncomplete as exc:
        raise ProduceError(
            f"lines {first}-{end - 1}: {exc}; the {before} events before line {first} are in {topic!r}",
            before + exc.appended,
        ) from None


def _is_array(source: BinaryIO, first: bytes) -> bool:
    """An array, or the ``{"events": [...]}`` body, rather than JSON lines starting with an object."""
    if first == b"[":
        return True
    head = source.peek(64)[:64].lstrip(b"{ \t\r\n")
    return head.startswith(b'"events"')


def _produce_array(
    broker: Broker, topic: str, raw: bytes, chunk: int, on_progress: Callable[[int], None] | None
) -> int:
    try:
        body = msgspec.json.decode(raw)
    except msgspec.DecodeError as exc:
        raise ProduceError(f"input is neither a JSON array nor JSON lines: {exc}", 0) from None
    if isinstance(body, dict):
        body = body.get("events") if set(body) == {"events"} else None
    if not isinstance(body, list) or not body:
        raise ProduceError('expected JSON lines, a JSON list of events or {"events": [...]}', 0)
    # Checked whole first: an array has no line numbers to resume from, so it is all or nothing.
    for i, event in enumerate(body):
        if not isinstance(event, dict):
            raise ProduceError(f"event {i} is a {type(event).__name__}, not a JSON object; appended none", 0)
    for start in range(0, len(body), chunk):
        broker.append(topic, body[start : start + chunk])
        if on_progress:
            on_progress(len(raw) * min(start + chunk, len(body)) // len(body))
    return len(body)
