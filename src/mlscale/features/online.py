"""Online store: the latest feature values per entity, in any KeyValue (memory, SQLite shards, Redis).

Layout, compiled once per view (see ``ViewLayout``): key = ``view:schemahash:`` + the entity's id
(decimal for ints, UTF-8 for strings; compound keys joined by 0x1f); value = one packed NumPy record
[event time µs, null bitmask, features]. A read of many entities over many views is one
``get_many``; decoding is one ``b"".join`` and one ``np.frombuffer`` per view, with missing keys
replaced by a prebuilt empty record, so the per-entity Python work is a list comprehension.
Values whose event time is older than the view's TTL come back as missing (OUTSIDE_MAX_AGE).
"""

from __future__ import annotations

import time
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import msgspec
import numpy as np

from mlscale.errors import InvalidInput
from mlscale.features.definitions import MISSING_TS, FeatureRepo, FeatureService, ViewLayout
from mlscale.storage.base import KeyValue

# Status codes per (entity, view); names as Feast reports them.
PRESENT, NOT_FOUND, OUTSIDE_MAX_AGE, NULL_VALUE = 0, 1, 2, 3
STATUS_NAMES = ("PRESENT", "NOT_FOUND", "OUTSIDE_MAX_AGE", "NULL_VALUE")
KEY_SEPARATOR = b"\x1f"


class _ViewRead:
    """One view's part of a read plan."""

    __slots__ = ("columns", "features", "fill", "join_keys", "layout", "names", "prefix", "str_prefix")

    def __init__(self, layout: ViewLayout, features: list[str], names: list[str]) -> None:
        self.layout = layout
        self.features = features
        self.names = names
        self.join_keys = layout.join_keys
        self.prefix = layout.prefix
        self.str_prefix = layout.prefix.decode()
        # Column indexes into the view's matrix; None when the request takes all, in order.
        wanted = [layout.features.index(f) for f in features]
        self.columns = None if wanted == list(range(len(layout.features))) else wanted
        kind = layout.record[features[0]].kind if features[0] not in layout.strings else "O"
        self.fill = np.nan if kind == "f" else 0


class ReadPlan:
    """A request's views, output names and join keys, compiled once and cached per request shape."""

    def __init__(self, repo: FeatureRepo, features: Any, full_names: bool) -> None:
        resolved = repo.resolve(features)
        names = iter(repo.output_names(resolved, full_names))
        self.views = [_ViewRead(repo.layouts[v], feats, [next(names) for _ in feats]) for v, feats in resolved]
        self.join_keys = sorted({k for v in self.views for k in v.join_keys})
        self.names = [n for v in self.views for n in v.names]
        # A plain list of ids is allowed when every view is keyed by the same single column.
        single = {v.join_keys for v in self.views}
        self.single_key = next(iter(single))[0] if len(single) == 1 and len(next(iter(single))) == 1 else None


class OnlineResult:
    """Per view: event times (µs since epoch), status codes, null bitmasks and, for views whose
    features share one dtype, the (n, k) ``matrices`` of values; ``values`` maps each output name
    to its column. Where an entity is missing or stale, floats are NaN and ints/bools 0, and
    ``status(name)`` says which (NULL_VALUE where the stored value itself was null).
    """

    __slots__ = ("_columns", "_plan", "event_ts", "matrices", "nulls", "statuses")

    def __init__(self, plan: ReadPlan) -> None:
        self._plan = plan
        # Columns of views stored as several dtypes; views with one dtype keep only their matrix,
        # and their columns are cut from it when ``values`` is first asked for (the HTTP response
        # reads the matrix directly, so a small read never builds ten one-element arrays).
        self._columns: dict[str, np.ndarray] = {}
        self.matrices: dict[str, np.ndarray] = {}
        self.event_ts: dict[str, np.ndarray] = {}
        self.statuses: dict[str, np.ndarray] = {}
        self.nulls: dict[str, np.ndarray] = {}

    @property
    def values(self) -> dict[str, np.ndarray]:
        """Each output name's column of values."""
        for view in self._plan.views:
            matrix = self.matrices.get(view.layout.view)
            if matrix is not None and view.names[0] not in self._columns:
                self._columns.update(zip(view.names, matrix.T.copy(), strict=True))
        return self._columns

    def status(self, name: str) -> np.ndarray:
        """Status codes of one output feature."""
        for view in self._plan.views:
            if name in view.names:
                status = self.statuses[view.layout.view]
                bit = np.uint64(1 << view.layout.features.index(view.features[view.names.index(name)]))
                null = (self.nulls[view.layout.view] & bit) != 0
                return np.where((status == PRESENT) & null, NULL_VALUE, status).astype(np.uint8)
        raise KeyError(name)


class OnlineTarget(msgspec.Struct, frozen=True):
    """Where an online store lives, as data: its store spec (one URL or shard URLs) and the project
    folder relative SQLite paths resolve against. Another process (a Spark executor) opens the same
    store from it; an open KeyValue cannot be shipped there."""

    spec: str | list[str]
    root: str = "."

    def open_kv(self) -> KeyValue:
        from pathlib import Path

        from mlscale.storage import open_store

        for url in [self.spec] if isinstance(self.spec, str) else self.spec:
            if url.startswith("sqlite:///") and not url.startswith("sqlite:////"):
                (Path(self.root) / url[len("sqlite:///") :]).resolve().parent.mkdir(parents=True, exist_ok=True)
        return open_store(self.spec, root=self.root)

    @property
    def shared(self) -> bool:
        """Whether other processes see what one writes (not so for memory://)."""
        urls = [self.spec] if isinstance(self.spec, str) else self.spec
        return not any(u.split("=", 1)[-1].strip().startswith("memory://") for u in urls) and bool(urls)


class OnlineStore:
    """Reads and writes packed feature records in ``kv`` following ``repo``'s layouts.

    ``target`` says how to open the same store elsewhere (engines that write from many processes);
    None when ``kv`` was built in code.
    """

    def __init__(
        self,
        kv: KeyValue,
        repo: FeatureRepo,
        clock: Callable[[], float] = time.time,
        target: OnlineTarget | None = None,
    ) -> None:
        self.kv = kv
        self.repo = repo
        self.clock = clock
        self.target = target
        self._plans: dict[Any, ReadPlan] = {}

    def plan(self, features: str | FeatureService | Sequence[str], full_names: bool = False) -> ReadPlan:
        # A list (the common spelling) is looked up as a tuple: a TypeError per read cost a microsecond.
        try:
            return self._plans[tuple(features) if isinstance(features, list) else features, full_names]
        except (KeyError, TypeError):
            pass
        key = (
            features.name
            if isinstance(features, FeatureService)
            else features
            if isinstance(features, str)
            else tuple(features),
            full_names,
        )
        plan = self._plans.get(key)
        if plan is None:
            plan = self._plans[key] = ReadPlan(self.repo, features, full_names)
        if isinstance(features, str):
            self._plans[features, full_names] = plan
        return plan

    def read(
        self,
        features: str | FeatureService | Sequence[str],
        entity_ids: Sequence | np.ndarray | Mapping[str, Sequence | np.ndarray],
        *,
        full_names: bool = False,
    ) -> OnlineResult:
        """Features of many entities over many views with one ``get_many``."""
        plan = self.plan(features, full_names)
        keys, n = _request_keys(plan, entity_ids)
        return self._decode(plan, self.kv.get_many(keys), n)

    async def aread(
        self,
        features: str | FeatureService | Sequence[str],
        entity_ids: Sequence | np.ndarray | Mapping[str, Sequence | np.ndarray],
        *,
        full_names: bool = False,
    ) -> OnlineResult:
        """``read`` for event-loop callers: the store's ``aget_many`` when it has one."""
        plan = self.plan(features, full_names)
        keys, n = _request_keys(plan, entity_ids)
        aget_many = getattr(self.kv, "aget_many", None)
        values = await aget_many(keys) if aget_many is not None else self.kv.get_many(keys)
        return self._decode(plan, values, n)

    def _decode(self, plan: ReadPlan, values: list[bytes | None], n: int) -> OnlineResult:
        views = plan.views
        now_us = int(self.clock() * 1_000_000)
        result = OnlineResult(plan)
        for i, view in enumerate(views):
            layout = view.layout
            empty = layout.empty
            chunk = values if len(views) == 1 else values[i * n : (i + 1) * n]
            if layout.strings:
                width = len(empty)
                strings = _string_columns(layout, chunk, width)
                chunk = [v[:width] if v is not None else None for v in chunk]
            buf = b"".join([v if v is not None else empty for v in chunk])
            records = np.frombuffer(buf, layout.matrix_record or layout.record)
            ts = records["__ts"]
            if n <= SMALL_READ:
                status, fix = _small_status(ts, now_us - layout.ttl_us if layout.ttl_us else None)
            else:
                status, fix = _status(ts, now_us - layout.ttl_us if layout.ttl_us else None)
            name = layout.view
            result.event_ts[name] = ts
            result.statuses[name] = status
            result.nulls[name] = records["__nulls"]
            if layout.matrix_record is not None:
                matrix = records["values"]
                matrix = matrix[:, view.columns] if view.columns is not None else matrix.copy()
                if fix is not None:
                    matrix[fix] = view.fill
                result.matrices[name] = matrix
            else:
                for feature, out_name in zip(view.features, view.names, strict=True):
                    if feature in layout.strings:
                        column = strings[layout.strings.index(feature)]
                        if fix is not None:
                            column[fix] = None
                    else:
                        column = records[feature].copy()
                        if fix is not None:
                            column[fix] = np.nan if column.dtype.kind == "f" else 0
                    result._columns[out_name] = column
        return result

    def write(
        self,
        view_name: str,
        keys: list[bytes],
        records: np.ndarray,
        tails: list[bytes] | None = None,
        *,
        keep_newer: bool = True,
    ) -> int:
        """Store packed ``records`` (the view's record dtype) under ``keys``; returns rows offered.

        ``tails``: for a view with string features, each row's MessagePack array of its strings.
        With ``keep_newer`` a stored record with a later event time is left alone, so replaying an
        older window (or a crashed run) can never move an entity back in time. A record starts with
        its event time, so it is its own version for the store's atomic ``set_many_if_newer``: a
        newer record written between a read and this write is kept too.
        """
        layout = self.repo.layouts[view_name]
        if records.dtype != layout.record:
            raise InvalidInput(f"records for {view_name!r} do not match its layout")
        if bool(layout.strings) != (tails is not None) or (tails is not None and len(tails) != len(keys)):
            raise InvalidInput(f"records for {view_name!r} need one string tail per row exactly when it has strings")
        if not keys:
            return 0
        width = layout.record.itemsize
        buf = records.tobytes()
        values = [buf[j : j + width] for j in range(0, len(buf), width)]
        if tails is not None:
            values = [v + t for v, t in zip(values, tails, strict=True)]
        items = dict(zip(keys, values, strict=True))
        if keep_newer:
            self.kv.set_many_if_newer(items, records["__ts"].tolist())
        else:
            self.kv.set_many(items)
        return len(keys)


_encode_tail = msgspec.msgpack.Encoder().encode
_decode_tail = msgspec.msgpack.Decoder(list[str | None]).decode


def pack_string_tails(columns: Sequence[Sequence[str | None]]) -> list[bytes]:
    """Each row's strings (one column per string feature, in ``ViewLayout.strings`` order) as the
    MessagePack array that follows its fixed record; ``_string_columns`` reads it back."""
    return [_encode_tail(row) for row in zip(*columns, strict=True)]


def _string_columns(layout: ViewLayout, chunk: list[bytes | None], width: int) -> list[np.ndarray]:
    """The string features of a view's values as object columns (None where missing or null)."""
    count = len(layout.strings)
    rows = [_decode_tail(v[width:]) if v is not None and len(v) > width else [None] * count for v in chunk]
    columns = []
    for j in range(count):
        column = np.empty(len(rows), dtype=object)
        column[:] = [row[j] for row in rows]
        columns.append(column)
    return columns


# Up to this many entities a read classifies them in Python: for one entity, five NumPy calls on
# one-element arrays cost more than the whole key-value lookup (half of a 17 us read).
SMALL_READ = 8


def _status(ts: np.ndarray, oldest_us: int | None) -> tuple[np.ndarray, np.ndarray | None]:
    """Status codes, and the rows to blank (stale but present), or None when there are none."""
    missing = ts == MISSING_TS
    if oldest_us is None:
        return missing.view(np.uint8).copy(), None
    # MISSING_TS is older than any threshold, so stale covers missing too.
    stale = ts < oldest_us
    status = stale.view(np.uint8) * np.uint8(2) - missing.view(np.uint8)
    fix = stale ^ missing
    return status, (fix if fix.any() else None)


def _small_status(ts: np.ndarray, oldest_us: int | None) -> tuple[np.ndarray, np.ndarray | None]:
    """``_status`` for a handful of rows, in plain Python."""
    oldest = MISSING_TS if oldest_us is None else oldest_us
    codes = [NOT_FOUND if t == MISSING_TS else OUTSIDE_MAX_AGE if t < oldest else PRESENT for t in ts.tolist()]
    status = np.array(codes, dtype=np.uint8)
    if OUTSIDE_MAX_AGE not in codes:
        return status, None
    return status, status == OUTSIDE_MAX_AGE


def _entity_columns(plan: ReadPlan, entity_ids: Any) -> tuple[dict[str, list], int]:
    if isinstance(entity_ids, Mapping):
        columns = {}
        for key in plan.join_keys:
            if key not in entity_ids:
                raise InvalidInput(f"entities lack join key {key!r} (needed: {plan.join_keys})")
            ids = entity_ids[key]
            columns[key] = ids.tolist() if isinstance(ids, np.ndarray) else list(ids)
        lengths = {len(c) for c in columns.values()}
        if len(lengths) > 1:
            raise InvalidInput(f"entity key columns have different lengths: {sorted(lengths)}")
        return columns, lengths.pop()
    if plan.single_key is None:
        raise InvalidInput(f"these features need entities by join key: {plan.join_keys}")
    ids = entity_ids.tolist() if isinstance(entity_ids, np.ndarray) else entity_ids
    if isinstance(ids, str | bytes | int):
        raise InvalidInput("entity ids must be a list")
    return {plan.single_key: ids}, len(ids)


def _request_keys(plan: ReadPlan, entity_ids: Any) -> tuple[list[bytes], int]:
    columns, n = _entity_columns(plan, entity_ids)
    if len(plan.views) == 1:
        return _encode_keys(plan.views[0], columns), n
    keys: list[bytes] = []
    for view in plan.views:
        keys += _encode_keys(view, columns)
    return keys, n


def _encode_keys(view: _ViewRead, columns: dict[str, list]) -> list[bytes]:
    if len(view.join_keys) == 1:
        prefix = view.str_prefix
        return [f"{prefix}{x}".encode() for x in columns[view.join_keys[0]]]
    parts = zip(*[columns[k] for k in view.join_keys], strict=True)
    return [view.prefix + KEY_SEPARATOR.join(str(x).encode() for x in row) for row in parts]


def get_online_features(
    store: OnlineStore,
    service_or_features: str | FeatureService | Sequence[str],
    entity_ids: Sequence | np.ndarray | Mapping[str, Sequence | np.ndarray],
    *,
    full_names: bool = False,
) -> dict[str, np.ndarray]:
    """Online features as arrays: one per feature, plus per view ``<view>__event_timestamp``
    (datetime64[us], NaT where missing) and ``<view>__status`` (codes in ``STATUS_NAMES``)."""
    result = store.read(service_or_features, entity_ids, full_names=full_names)
    out = dict(result.values)
    for view, ts in result.event_ts.items():
        stamps = ts.view("datetime64[us]").copy()
        stamps[result.statuses[view] != PRESENT] = np.datetime64("NaT")
        out[f"{view}__event_timestamp"] = stamps
        out[f"{view}__status"] = result.statuses[view]
    return out
