"""Reading windowed features back from the online store: the key layout lives here and in windows.py only.

Serving asks "what is spend_1m for user 42 now?": that is the window containing ``at`` (for hopping
windows, the newest one containing it). Session windows are keyed by their start, which a reader
cannot know, so they are read by prefix scan.

A value is an 8-byte header, the writer's version (the partition's epoch, little-endian int64,
what ``KeyValue.set_many_if_newer`` compares), then the JSON of the window. ``decode_value`` also
reads values written before the header existed (JSON alone).
"""

from __future__ import annotations

import time

import msgspec

from mlscale.errors import InvalidInput
from mlscale.storage.base import KeyValue
from mlscale.streams.definitions import CompiledFeature, WindowedFeature

_HEADER = 8


def value_header(version: int) -> bytes:
    """The bytes a writer with ``version`` puts before each value."""
    return version.to_bytes(_HEADER, "little", signed=True)


def decode_value(raw: bytes) -> dict:
    """The window of a stored value (with or without the version header)."""
    # The JSON always starts with '{"window_start"', so a value whose 9th byte is '{' has a header.
    return msgspec.json.decode(memoryview(raw)[_HEADER:] if raw[_HEADER : _HEADER + 1] == b"{" else raw)


def window_start(feature: CompiledFeature, at_ms: int) -> int:
    """Start of the window containing ``at_ms`` (the newest one for hopping windows)."""
    step = feature.slide_ms if feature.window == "hopping" else feature.size_ms
    return at_ms - at_ms % step


def online_values(
    store: KeyValue, feature: WindowedFeature | CompiledFeature, entities: list, at: float | None = None
) -> list[dict | None]:
    """Current window values of ``entities`` at ``at`` (epoch seconds, default now); None if no events."""
    f = feature.compile() if isinstance(feature, WindowedFeature) else feature
    if f.window == "session":
        raise InvalidInput(f"{f.name}: session windows are keyed by their start; use sessions() to scan")
    at_ms = int(((time.time() if at is None else at) * 1000) // 1)
    start = window_start(f, at_ms)
    raw = store.get_many([f.online_key(e, start) for e in entities])
    return [decode_value(v) if v is not None else None for v in raw]


def sessions(store: KeyValue, feature: WindowedFeature | CompiledFeature, entity) -> list[dict]:
    """All session windows of one entity still in the store, oldest first."""
    f = feature.compile() if isinstance(feature, WindowedFeature) else feature
    keys = sorted(store.scan(f"{f.name}|{entity}|".encode()), key=lambda k: int(k.rsplit(b"|", 1)[1]))
    return [decode_value(v) for v in store.get_many(keys) if v is not None]


def window_rows(store: KeyValue, feature: WindowedFeature | CompiledFeature, entity: object = None) -> list[dict]:
    """Every window of ``feature`` held in the online store (of one entity if given), as rows
    ``{entity_key, window_start, window_end, <outputs>}`` sorted by entity then start.

    Entities come back as the strings of the keys (the key layout does not keep their type).
    """
    f = feature.compile() if isinstance(feature, WindowedFeature) else feature
    prefix = f"{f.name}|" if entity is None else f"{f.name}|{entity}|"
    keys = list(store.scan(prefix.encode()))
    rows = []
    skip = len(f.name) + 1
    for key, raw in zip(keys, store.get_many(keys), strict=True):
        if raw is None:  # expired between the scan and the read
            continue
        who = key.decode("utf-8", "replace")[skip:].rsplit("|", 1)[0]
        if entity is not None and who != str(entity):  # "a|b" also starts with "a|"
            continue
        rows.append({f.entity_key: who, **decode_value(raw)})
    rows.sort(key=lambda r: (r[f.entity_key], r["window_start"]))
    return rows
