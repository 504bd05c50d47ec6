"""Event deduplication by a key the producer puts in each event (``dedup_key``): a client retry is dropped.

Why per (entity, key) and by event time: a retry resends the same event, so it has the entity and
event time of the first delivery. Keying on the entity keeps the state in the partition that owns
the entity (the batch backfill groups the same way, so both drop the same events), and expiring by
event time bounds memory by the span of ``dedup_horizon`` whatever the arrival rate.

Rule (shared with batch.py): an event is a duplicate when its (entity, key) was seen with an event
time within ``dedup_horizon`` of its own, where "seen" keeps the greatest event time of every
delivery of that key. On input in event-time order this is "within the horizon of the previous
delivery", which is what the backfill computes with ``lag()``.

Only on-time events are remembered (a late one is a dead letter, not "seen"). Copies of one event
share its event time and the watermark only grows, so the copies of a key are some on time, then
late ones: the first on-time copy counts and every later copy is a duplicate; if the first is
late, all are, and all are dead letters. The stream then counts exactly what the backfill of the
events it did not dead-letter counts.

Expiry: a key whose greatest time is more than the horizon before the watermark is forgotten. An
on-time event is at or after the watermark, so it is more than the horizon from any forgotten
time: expiry only turns a very late retry into a late dead letter instead of a duplicate.

The state is one msgpack blob per feature and partition, committed with the window state in the
same checkpoint transaction (so it holds across kill -9 and takeover).
"""

from __future__ import annotations

import msgspec
import numpy as np


class Deduplicator:
    """Seen (entity, key) -> greatest event time in ms, for one feature in one partition."""

    def __init__(self, horizon_ms: int) -> None:
        self.horizon_ms = horizon_ms
        self.seen: dict[tuple, int] = {}
        self._expired_at: int | None = None

    def duplicates(self, entities: list, keys: list, ts_ms: np.ndarray, on_time: np.ndarray) -> np.ndarray:
        """Which events are duplicates, in arrival order (a batch may repeat a key itself).

        Only on-time events are remembered: a late event is a dead letter, not "seen", so a key is
        dropped only after an on-time copy was counted. A duplicate is dropped even when it is late
        (a retry arriving after its window closed is a duplicate, not a dead letter).
        """
        seen, horizon = self.seen, self.horizon_ms
        dup = np.zeros(len(keys), dtype=bool)
        get = seen.get
        for i, (e, k, t, ok) in enumerate(zip(entities, keys, ts_ms.tolist(), on_time.tolist(), strict=True)):
            ident = (e, k)
            prev = get(ident)
            if prev is not None and abs(t - prev) <= horizon:
                dup[i] = True
                if t > prev:
                    seen[ident] = t
            elif ok:
                seen[ident] = t if prev is None else max(prev, t)
        return dup

    def expire(self, watermark: int | None) -> None:
        """Forget keys last seen more than the horizon before ``watermark``.

        A full pass, so it runs only once the watermark has moved half a horizon since the last:
        memory stays within about 1.5 horizons of keys.
        """
        if watermark is None:
            return
        if self._expired_at is not None and watermark - self._expired_at < max(self.horizon_ms // 2, 1):
            return
        self._expired_at = watermark
        cutoff = watermark - self.horizon_ms
        self.seen = {ident: t for ident, t in self.seen.items() if t >= cutoff}

    def snapshot(self) -> bytes:
        idents = list(self.seen)
        return msgspec.msgpack.encode(
            {
                "entities": [i[0] for i in idents],
                "keys": [i[1] for i in idents],
                "times": np.fromiter(self.seen.values(), np.int64, len(idents)).tobytes(),
            }
        )

    def restore(self, blob: bytes) -> None:
        data = msgspec.msgpack.decode(blob)
        times = np.frombuffer(data["times"], np.int64).tolist()
        self.seen = dict(zip(zip(data["entities"], data["keys"], strict=True), times, strict=True))
        self._expired_at = None


def state_name(feature: str) -> str:
    """Name of a feature's dedup blob among the checkpoint's state blobs (beside the window state)."""
    return f"{feature}#dedup"
