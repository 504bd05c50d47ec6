"""Reading windowed features back from the online store: the key layout lives here and in windows.py only.

Serving asks "what is spend_1m for user 42 now?": that is the window containing ``at`` (for hopping
windows, the newest one containing it). Session windows are keyed by their start, which a reader
cannot know, so they are read by prefix scan.
"""

from __future__ import annotations

import time

import msgspec

from mlscale.errors import InvalidInput
from mlscale.storage.base import KeyValue
from mlscale.streams.definitions import CompiledFeature, WindowedFeature


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
    return [msgspec.json.decode(v) if v is not None else None for v in raw]


def sessions(store: KeyValue, feature: WindowedFeature | CompiledFeature, entity) -> list[dict]:
    """All session windows of one entity still in the store, oldest first."""
    f = feature.compile() if isinstance(feature, WindowedFeature) else feature
    keys = sorted(store.scan(f"{f.name}|{entity}|".encode()), key=lambda k: int(k.rsplit(b"|", 1)[1]))
    return [msgspec.json.decode(v) for v in store.get_many(keys) if v is not None]
