"""Window state of one feature in one partition: event-time windows per entity, mergeable, snapshottable.

Tumbling and hopping windows are vectorised: a batch of events becomes (entity, window) slots through
one dict lookup per event, then every aggregation is a NumPy reduction per slot (bincount, reduceat,
lexsort). Session windows need the order of events to merge sessions, so they run a short Python loop
per event (they are the rare case).

Watermark: the greatest event time seen in the partition minus ``allowed_lateness``. An event older
than the watermark when it arrives is late (the caller dead-letters it); a window whose end is at or
before the watermark is final, written one last time and evicted from memory.
"""

from __future__ import annotations

from collections.abc import Callable
from itertools import repeat

import msgspec
import numpy as np

from mlscale.streams.decode import Columns
from mlscale.streams.definitions import CompiledFeature

_NO_TIME = np.iinfo(np.int64).min
_encode = msgspec.json.Encoder().encode


class _Base:
    """Watermark bookkeeping shared by the window kinds."""

    def __init__(self, feature: CompiledFeature) -> None:
        self.f = feature
        self.max_ts: int | None = None

    @property
    def watermark(self) -> int | None:
        return None if self.max_ts is None else self.max_ts - self.f.lateness_ms

    def admit(self, ts: np.ndarray) -> np.ndarray:
        """Which events are on time, advancing the watermark over the batch in arrival order."""
        if len(ts) == 0:
            return np.ones(0, dtype=bool)
        start = int(ts[0]) if self.max_ts is None else self.max_ts
        running = np.maximum(np.maximum.accumulate(ts), start)
        before = np.empty_like(running)
        before[0] = start
        before[1:] = running[:-1]
        self.max_ts = int(running[-1])
        return ts >= before - self.f.lateness_ms


class TimeWindowState(_Base):
    """Tumbling or hopping windows in growable NumPy columns, one slot per (entity, window start).

    Slots are found through one dict per window start (entity -> slot): a batch rarely spans more
    than two starts, so the lookup is one C-level ``map`` over the batch's entities, with no tuple
    built per event.
    """

    def __init__(self, feature: CompiledFeature, capacity: int = 1024) -> None:
        super().__init__(feature)
        self.slots: dict[int, dict[object, int]] = {}
        self.free: list[int] = []
        self.cap = 0
        self.count = np.zeros(0, np.int64)
        self.start = np.zeros(0, np.int64)
        self.entity = np.empty(0, dtype=object)
        fields = feature.numeric_fields
        self.sums = {f: np.zeros(0) for f in fields}
        self.mins = {f: np.zeros(0) for f in fields}
        self.maxs = {f: np.zeros(0) for f in fields}
        self.last_ts = {f: np.zeros(0, np.int64) for f in fields}
        self.last_v = {f: np.zeros(0) for f in fields}
        self.sets: dict[str, list[set | None]] = {f: [] for f in feature.distinct_fields}
        self.dirty = np.zeros(0, dtype=bool)
        self._grow(capacity)

    # -- memory ----------------------------------------------------------------------------------
    def _grow(self, cap: int) -> None:
        old = self.cap

        def ext(a: np.ndarray, fill) -> np.ndarray:
            b = np.full(cap, fill, dtype=a.dtype)
            b[:old] = a
            return b

        self.count = ext(self.count, 0)
        self.start = ext(self.start, 0)
        self.entity = ext(self.entity, None)
        self.dirty = ext(self.dirty, False)
        for f in self.f.numeric_fields:
            self.sums[f] = ext(self.sums[f], 0.0)
            self.mins[f] = ext(self.mins[f], np.inf)
            self.maxs[f] = ext(self.maxs[f], -np.inf)
            self.last_ts[f] = ext(self.last_ts[f], _NO_TIME)
            self.last_v[f] = ext(self.last_v[f], -np.inf)
        for f in self.sets:
            self.sets[f].extend([None] * (cap - old))
        self.free.extend(range(cap - 1, old - 1, -1))
        self.cap = cap

    def _alloc_many(self, start: int, entities: list) -> None:
        """Give a slot to each of ``entities`` (duplicates allowed) in the window at ``start``."""
        new = list(dict.fromkeys(entities))
        while len(self.free) < len(new):
            self._grow(self.cap * 2)
        new_slots = self.free[len(self.free) - len(new) :]
        del self.free[len(self.free) - len(new) :]
        self.slots.setdefault(start, {}).update(zip(new, new_slots, strict=True))
        idx = np.asarray(new_slots, dtype=np.int64)
        self.start[idx] = start
        ents = np.empty(len(new), dtype=object)
        ents[:] = new
        self.entity[idx] = ents
        for f in self.sets:
            sets = self.sets[f]
            for s in new_slots:
                sets[s] = set()

    def _lookup(self, starts: np.ndarray, entities: list) -> np.ndarray:
        """Slot of each (entity, start), allocating the missing ones."""
        slots = np.empty(len(starts), dtype=np.int64)
        unique = np.unique(starts)
        every = np.empty(len(entities), dtype=object) if len(unique) > 1 else None
        if every is not None:
            every[:] = entities
        for start in unique.tolist():
            idx = None if every is None else np.flatnonzero(starts == start)
            ents = entities if idx is None else every[idx].tolist()
            table = self.slots.get(start) or {}
            found = np.fromiter(map(table.get, ents, repeat(-1)), dtype=np.int64, count=len(ents))
            missing = np.flatnonzero(found < 0)
            if len(missing):
                absent = [ents[i] for i in missing.tolist()]
                self._alloc_many(start, absent)
                table = self.slots[start]
                found[missing] = [table[e] for e in absent]
            if idx is None:
                slots[:] = found
            else:
                slots[idx] = found
        return slots

    def _release(self, slots: np.ndarray) -> None:
        for s, e in zip(self.start[slots].tolist(), self.entity[slots].tolist(), strict=True):
            table = self.slots[s]
            del table[e]
            if not table:
                del self.slots[s]
        for f in self.sets:
            sets = self.sets[f]
            for s in slots.tolist():
                sets[s] = None
        self.entity[slots] = None
        self.count[slots] = 0
        for f in self.f.numeric_fields:
            self.sums[f][slots] = 0.0
            self.mins[f][slots] = np.inf
            self.maxs[f][slots] = -np.inf
            self.last_ts[f][slots] = _NO_TIME
            self.last_v[f][slots] = -np.inf
        self.free.extend(slots.tolist())

    # -- the hot path ----------------------------------------------------------------------------
    def update(self, cols: Columns) -> None:
        """Add on-time events (columns already filtered by ``admit``)."""
        n = len(cols.ts_ms)
        if n == 0:
            return
        ts, ents = cols.ts_ms, cols.entities
        if self.f.window == "hopping":
            k = self.f.size_ms // self.f.slide_ms
            base = ts - ts % self.f.slide_ms
            starts = (base[:, None] - np.arange(k, dtype=np.int64) * self.f.slide_ms).ravel()
            rows = np.repeat(np.arange(n), k)
            ents = [ents[i] for i in rows.tolist()]
        else:
            starts = ts - ts % self.f.size_ms
            rows = None
        sl = self._lookup(starts, ents)
        touched, inv = np.unique(sl, return_inverse=True)
        self.count[touched] += np.bincount(inv, minlength=len(touched))
        self.dirty[touched] = True
        tsx = ts if rows is None else ts[rows]
        if self.f.numeric_fields:
            order = np.argsort(inv, kind="stable")
            bounds = np.r_[0, np.flatnonzero(np.diff(inv[order])) + 1]
        for f in self.f.numeric_fields:
            v = cols.numeric[f] if rows is None else cols.numeric[f][rows]
            self.sums[f][touched] += np.bincount(inv, weights=v, minlength=len(touched))
            vs = v[order]
            self.mins[f][touched] = np.minimum(self.mins[f][touched], np.minimum.reduceat(vs, bounds))
            self.maxs[f][touched] = np.maximum(self.maxs[f][touched], np.maximum.reduceat(vs, bounds))
            ranked = np.lexsort((v, tsx, inv))
            ends = np.r_[np.flatnonzero(np.diff(inv[ranked])), len(inv) - 1]
            cand_ts, cand_v = tsx[ranked][ends], v[ranked][ends]
            cur_ts, cur_v = self.last_ts[f][touched], self.last_v[f][touched]
            better = (cand_ts > cur_ts) | ((cand_ts == cur_ts) & (cand_v > cur_v))
            self.last_ts[f][touched] = np.where(better, cand_ts, cur_ts)
            self.last_v[f][touched] = np.where(better, cand_v, cur_v)
        for f in self.f.distinct_fields:
            values = cols.distinct[f] if rows is None else [cols.distinct[f][i] for i in rows.tolist()]
            sets = self.sets[f]
            for s, x in zip(sl.tolist(), values, strict=True):
                sets[s].add(x)

    def drain(self, header: bytes = b"") -> tuple[dict[bytes, bytes], list[bytes]]:
        """Online values of the windows changed since the last drain, each after ``header`` (the
        writer's version, see ``online.value_header``); evicts windows now final."""
        dirty = np.flatnonzero(self.dirty)
        self.dirty[dirty] = False
        puts = _render(self.f, dirty, self.entity, self.start, self._column, header)
        wm = self.watermark
        if wm is not None:
            used = self.count > 0
            closed = np.flatnonzero(used & (self.start + self.f.size_ms <= wm))
            if len(closed):
                self._release(closed)
        return puts, []

    def _column(self, agg, slots: np.ndarray) -> list:
        fn, f = agg.fn, agg.field
        if fn == "count":
            return self.count[slots].tolist()
        if fn == "sum":
            return self.sums[f][slots].tolist()
        if fn == "mean":
            return (self.sums[f][slots] / self.count[slots]).tolist()
        if fn == "min":
            return self.mins[f][slots].tolist()
        if fn == "max":
            return self.maxs[f][slots].tolist()
        if fn == "last":
            return self.last_v[f][slots].tolist()
        return [len(self.sets[f][s]) for s in slots.tolist()]

    def window_end(self, start: int) -> int:
        return start + self.f.size_ms

    # -- checkpoints -----------------------------------------------------------------------------
    def snapshot(self) -> bytes:
        live = np.flatnonzero(self.count > 0)
        data = {
            "max_ts": self.max_ts,
            "entities": self.entity[live].tolist(),
            "starts": self.start[live].tobytes(),
            "count": self.count[live].tobytes(),
            "num": {
                f: [a[f][live].tobytes() for a in (self.sums, self.mins, self.maxs, self.last_ts, self.last_v)]
                for f in self.f.numeric_fields
            },
            "sets": {f: [sorted(self.sets[f][s], key=repr) for s in live.tolist()] for f in self.sets},
        }
        return msgspec.msgpack.encode(data)

    def restore(self, blob: bytes) -> None:
        data = msgspec.msgpack.decode(blob)
        if "keys" in data:  # the layout before 2026-11-25: a list of [entity, start] pairs
            data["entities"] = [k[0] for k in data["keys"]]
            data["starts"] = np.asarray([k[1] for k in data["keys"]], dtype=np.int64).tobytes()
        entities = data["entities"]
        self.__init__(self.f, capacity=max(1024, 2 * len(entities)))  # type: ignore[misc]
        self.max_ts = data["max_ts"]
        if not entities:
            return
        slots = self._lookup(np.frombuffer(data["starts"], np.int64), entities)
        self.count[slots] = np.frombuffer(data["count"], np.int64)
        for f, (s, mn, mx, lt, lv) in data["num"].items():
            self.sums[f][slots] = np.frombuffer(s)
            self.mins[f][slots] = np.frombuffer(mn)
            self.maxs[f][slots] = np.frombuffer(mx)
            self.last_ts[f][slots] = np.frombuffer(lt, np.int64)
            self.last_v[f][slots] = np.frombuffer(lv)
        for f, lists in data["sets"].items():
            for s, values in zip(slots.tolist(), lists, strict=True):
                self.sets[f][s] = set(values)


def _render(
    f: CompiledFeature,
    slots: np.ndarray,
    entity: np.ndarray,
    start: np.ndarray,
    column: Callable[..., list],
    header: bytes = b"",
) -> dict[bytes, bytes]:
    """``header`` + JSON ``{"window_start", "window_end", <outputs>}``, keyed ``name|entity|start``.

    A msgspec Struct per feature instead of a dict per window: this runs once per changed window,
    about once per event, and a Struct encodes several times faster than a dict.
    """
    if len(slots) == 0:
        return {}
    starts = start[slots].tolist()
    key_list = zip(entity[slots].tolist(), starts, strict=True)
    size = f.size_ms
    cols = [starts, [s + size for s in starts], *(column(a, slots) for a in f.aggregations)]
    value = _value_type(f.name, tuple(f.outputs))
    key_template = f.name.replace("%", "%%") + "|%s|%d"
    return {
        (key_template % k).encode(): header + _encode(value(*row))
        for k, row in zip(key_list, zip(*cols, strict=True), strict=True)
    }


_VALUE_TYPES: dict[tuple, type] = {}


def _value_type(name: str, outputs: tuple[str, ...]) -> type:
    key = (name, outputs)
    if key not in _VALUE_TYPES:
        fields = ["window_start", "window_end", *(f"o{i}" for i in range(len(outputs)))]
        rename = {f"o{i}": out for i, out in enumerate(outputs)}
        _VALUE_TYPES[key] = msgspec.defstruct("WindowValue", fields, rename=rename)
    return _VALUE_TYPES[key]


class _Session:
    __slots__ = ("count", "end", "last", "maxs", "mins", "old_starts", "sets", "start", "sums")

    def __init__(self, t: int, f: CompiledFeature) -> None:
        self.start = self.end = t
        self.count = 0
        self.sums = dict.fromkeys(f.numeric_fields, 0.0)
        self.mins = dict.fromkeys(f.numeric_fields, float("inf"))
        self.maxs = dict.fromkeys(f.numeric_fields, float("-inf"))
        self.last = {x: (_NO_TIME, float("-inf")) for x in f.numeric_fields}
        self.sets: dict[str, set] = {x: set() for x in f.distinct_fields}
        self.old_starts: list[int] = []

    def absorb(self, other: _Session) -> None:
        self.start, self.end = min(self.start, other.start), max(self.end, other.end)
        self.count += other.count
        for x in self.sums:
            self.sums[x] += other.sums[x]
            self.mins[x] = min(self.mins[x], other.mins[x])
            self.maxs[x] = max(self.maxs[x], other.maxs[x])
            self.last[x] = max(self.last[x], other.last[x])
        for x in self.sets:
            self.sets[x] |= other.sets[x]


class SessionState(_Base):
    """Session windows per entity: an event within ``gap`` of a session joins it (merging bridged ones)."""

    def __init__(self, feature: CompiledFeature) -> None:
        super().__init__(feature)
        self.by_entity: dict[object, list[_Session]] = {}
        self.dirty: dict[tuple, _Session] = {}
        self.deleted: set[tuple] = set()

    def update(self, cols: Columns) -> None:
        gap, f = self.f.gap_ms, self.f
        nums = [(x, cols.numeric[x].tolist()) for x in f.numeric_fields]
        dists = [(x, cols.distinct[x]) for x in f.distinct_fields]
        for i, (e, t) in enumerate(zip(cols.entities, cols.ts_ms.tolist(), strict=True)):
            sessions = self.by_entity.setdefault(e, [])
            hits = [s for s in sessions if s.start - gap <= t <= s.end + gap]
            if not hits:
                s = _Session(t, f)
                sessions.append(s)
            else:
                s = min(hits, key=lambda h: h.start)
                for other in hits:
                    if other is not s:
                        s.absorb(other)
                        sessions.remove(other)
                        self.deleted.add((e, other.start))
                        self.dirty.pop((e, id(other)), None)
                if t < s.start:
                    self.deleted.add((e, s.start))
                s.start, s.end = min(s.start, t), max(s.end, t)
            s.count += 1
            for x, vals in nums:
                v = vals[i]
                s.sums[x] += v
                s.mins[x] = min(s.mins[x], v)
                s.maxs[x] = max(s.maxs[x], v)
                s.last[x] = max(s.last[x], (t, v))
            for x, vals in dists:
                s.sets[x].add(vals[i])
            self.dirty[(e, id(s))] = s

    def drain(self, header: bytes = b"") -> tuple[dict[bytes, bytes], list[bytes]]:
        f = self.f
        names = ["window_start", "window_end", *f.outputs]
        puts: dict[bytes, bytes] = {}
        live = set()
        for (e, _), s in self.dirty.items():
            values = [s.start, s.end + f.gap_ms]
            for a in f.aggregations:
                values.append(_session_value(a, s))
            puts[f.online_key(e, s.start)] = header + _encode(dict(zip(names, values, strict=True)))
            live.add((e, s.start))
        deletes = [f.online_key(e, st) for e, st in self.deleted if (e, st) not in live]
        self.dirty.clear()
        self.deleted.clear()
        wm = self.watermark
        if wm is not None:
            for e in list(self.by_entity):
                kept = [s for s in self.by_entity[e] if s.end + f.gap_ms >= wm]
                if kept:
                    self.by_entity[e] = kept
                else:
                    del self.by_entity[e]
        return puts, deletes

    def snapshot(self) -> bytes:
        rows = []
        for e, sessions in self.by_entity.items():
            for s in sessions:
                rows.append(
                    [
                        e,
                        s.start,
                        s.end,
                        s.count,
                        s.sums,
                        s.mins,
                        s.maxs,
                        {x: list(v) for x, v in s.last.items()},
                        {x: sorted(v, key=repr) for x, v in s.sets.items()},
                    ]
                )
        return msgspec.msgpack.encode({"max_ts": self.max_ts, "sessions": rows})

    def restore(self, blob: bytes) -> None:
        data = msgspec.msgpack.decode(blob)
        self.__init__(self.f)  # type: ignore[misc]
        self.max_ts = data["max_ts"]
        for e, start, end, count, sums, mins, maxs, last, sets in data["sessions"]:
            s = _Session(start, self.f)
            s.end, s.count, s.sums, s.mins, s.maxs = end, count, sums, mins, maxs
            s.last = {x: tuple(v) for x, v in last.items()}
            s.sets = {x: set(v) for x, v in sets.items()}
            self.by_entity.setdefault(e, []).append(s)


def _session_value(a, s: _Session):
    if a.fn == "count":
        return s.count
    if a.fn == "sum":
        return s.sums[a.field]
    if a.fn == "mean":
        return s.sums[a.field] / s.count
    if a.fn == "min":
        return s.mins[a.field]
    if a.fn == "max":
        return s.maxs[a.field]
    if a.fn == "last":
        return s.last[a.field][1]
    return len(s.sets[a.field])


def new_state(feature: CompiledFeature) -> TimeWindowState | SessionState:
    return SessionState(feature) if feature.window == "session" else TimeWindowState(feature)
