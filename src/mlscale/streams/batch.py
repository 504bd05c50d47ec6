"""The batch side of a windowed feature: the same definition compiled to DuckDB SQL over Parquet events.

A backfill computes every window of the history at once and writes it as Parquet into the offline
folder (``<offline>/<feature>/backfill.parquet``), where training-set builders read it, and can load
the values into the online store with the same keys the stream processor writes. The SQL follows the
semantics in definitions.py to the letter (floor to milliseconds, floor-modulo window starts,
``last`` by greatest time then value, exact distinct counts, event times read from numbers in the
declared unit or RFC 3339 strings, duplicates by ``dedup_key`` dropped), so stream and batch give the
same numbers.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import msgspec

from mlscale.errors import InvalidInput
from mlscale.features.online import OnlineTarget
from mlscale.storage.base import KeyValue
from mlscale.streams.definitions import CompiledFeature, WindowedFeature


@dataclass(frozen=True)
class Dialect:
    """What differs between the SQL engines a backfill runs on; the query's shape is shared, so
    DuckDB and Spark compute the same windows by construction, not by two copies kept in step."""

    quote: str  # identifier quote: " in DuckDB, ` in Spark (where " starts a string)
    full_match: str  # {col} fully matches the pattern {pattern}
    epoch_us: str  # microseconds since the epoch of the timestamp {ts}
    to_timestamp: str  # an RFC 3339 string {col} (upper case) as a timestamp with its offset applied
    finite: str  # the double {x} is neither NaN nor infinite
    last: str  # the value {x} of the row with the greatest (time {t}, value {x})
    steps: str  # a relation of one column j holding 0 .. {k} - 1
    backslash_escapes: bool = False  # a backslash in a string literal escapes (Spark), or is itself

    def literal(self, text: str) -> str:
        """``text`` as the inside of a single-quoted SQL string."""
        if self.backslash_escapes:
            return text.replace("\\", "\\\\").replace("'", "\\'")
        return text.replace("'", "''")

    def q(self, name: str) -> str:
        return self.quote + name.replace(self.quote, self.quote * 2) + self.quote


DUCKDB = Dialect(
    quote='"',
    full_match="regexp_full_match({col}, '{pattern}')",
    epoch_us="epoch_us({ts})",
    to_timestamp="TRY_CAST({col} AS TIMESTAMPTZ)",
    finite="isfinite({x})",
    last="arg_max({x}, [CAST({t} AS DOUBLE), {x}])",
    steps="(SELECT unnest(range({k})) AS j)",
)
SPARK = Dialect(
    quote="`",
    full_match="{col} RLIKE '{pattern}'",
    epoch_us="unix_micros({ts})",
    to_timestamp="try_cast({col} AS TIMESTAMP)",
    finite="NOT isnan({x}) AND abs({x}) != double('inf')",
    last="max_by({x}, struct(CAST({t} AS DOUBLE), {x}))",
    steps="(SELECT explode(sequence(0, {k} - 1)) AS j)",
    backslash_escapes=True,
)


def _agg_sql(f: CompiledFeature, d: Dialect) -> list[str]:
    out = []
    for a in f.aggregations:
        x = f"CAST(v_{_col(f, a.field)} AS DOUBLE)" if a.field else ""
        expr = {
            "count": "count(*)",
            "sum": f"sum({x})",
            "mean": f"sum({x}) / count(*)",
            "min": f"min({x})",
            "max": f"max({x})",
            "last": d.last.format(x=x, t="t"),
            "distinct_count": f"count(DISTINCT v_{_col(f, a.field)})" if a.field else "",
        }[a.fn]
        out.append(f"{expr} AS {d.q(a.output)}")
    return out


def _col(f: CompiledFeature, name: str | None) -> int:
    fields = list(dict.fromkeys([*f.numeric_fields, *f.distinct_fields]))
    return fields.index(name)


# What msgspec reads as an RFC 3339 datetime (DuckDB alone would also take a bare date).
_RFC3339 = r"^\d{4}-\d{2}-\d{2}[Tt ]\d{2}:\d{2}:\d{2}(\.\d+)?([Zz]|[+-]\d{2}:?\d{2})?$"


def _time_sql(f: CompiledFeature, time_type: str, d: Dialect) -> str:
    """Milliseconds (floored, BIGINT) of the event-time column, NULL where it is no valid time."""
    col = d.q(f.event_time)
    if time_type == "string":
        # Naive strings are UTC: compute() sets the session time zone to UTC.
        ts = d.to_timestamp.format(col=f"upper({col})")
        return (
            f"CASE WHEN {d.full_match.format(col=col, pattern=d.literal(_RFC3339))} "
            f"THEN CAST(floor({d.epoch_us.format(ts=ts)} / 1000) AS BIGINT) END"
        )
    if time_type == "timestamp":
        return f"CAST(floor({d.epoch_us.format(ts=col)} / 1000) AS BIGINT)"
    x = f"CAST({col} AS DOUBLE)"
    ms = {"s": f"{x} * 1000", "ms": x}.get(f.time_unit, f"CASE WHEN abs({x}) >= 1e11 THEN {x} ELSE {x} * 1000 END")
    return f"CASE WHEN {d.finite.format(x=ms)} AND abs({ms}) < 1e17 THEN CAST(floor({ms}) AS BIGINT) END"


# Columns an archived topic carries (stream/archive.py) that give log order among duplicates.
LOG_ORDER = ("_partition", "_offset")


def source_shape(f: CompiledFeature, columns: dict[str, str]) -> tuple[str, tuple[str, ...]]:
    """(time_type, order) for ``feature_sql`` from the source's column types (any engine's names):
    how the event time is stored, and which log-order columns it has."""
    kind = columns.get(f.event_time, "double").lower()
    time_type = "string" if kind in ("varchar", "string") else "timestamp" if kind.startswith("timestamp") else "number"
    return time_type, tuple(c for c in LOG_ORDER if c in columns)


def feature_sql(
    feature: WindowedFeature | CompiledFeature,
    source: str = "events",
    time_type: str = "number",
    order: tuple[str, ...] = (),
    dialect: Dialect = DUCKDB,
) -> str:
    """SQL computing every window of ``feature`` over the relation ``source`` (a table or a scan).

    ``time_type`` is how the event-time column is stored: "number" (epoch in the feature's unit),
    "string" (RFC 3339) or "timestamp". ``order`` names the columns giving log order (the archive's
    ``_partition``, ``_offset``): among duplicates at the same event time the first in the log is
    kept, as the stream keeps the first it reads. ``dialect``: the engine the SQL is for.
    """
    f = feature.compile() if isinstance(feature, WindowedFeature) else feature
    d = dialect
    _q = d.q
    fields = list(dict.fromkeys([*f.numeric_fields, *f.distinct_fields]))
    value_cols = "".join(f", {_q(name)} AS v_{i}" for i, name in enumerate(fields))
    not_null = "".join(f" AND {_q(name)} IS NOT NULL" for name in fields)
    key_col = f", {_q(f.dedup_key)} AS k" if f.dedup_key else ""
    key_not_null = f" AND {_q(f.dedup_key)} IS NOT NULL" if f.dedup_key else ""
    order_cols = "".join(f", {_q(c)} AS o_{i}" for i, c in enumerate(order)) if f.dedup_key else ""
    raw = (
        f"SELECT {_q(f.entity_key)} AS e, {_time_sql(f, time_type, d)} AS t"
        f"{value_cols}{key_col}{order_cols} FROM {source} WHERE {_q(f.entity_key)} IS NOT NULL"
        f" AND {_q(f.event_time)} IS NOT NULL{not_null}{key_not_null}"
    )
    if f.dedup_key:
        # A duplicate is within dedup_horizon of the previous event with its key: the stream keeps
        # the greatest time seen per key and compares with it, which is the same on ordered input.
        by = "t" + "".join(f", o_{i}" for i in range(len(order)))
        ev = (
            f"SELECT * FROM (SELECT *, lag(t) OVER (PARTITION BY e, k ORDER BY {by}) AS prev_t "
            f"FROM ({raw}) AS raw WHERE t IS NOT NULL) AS keyed "
            f"WHERE prev_t IS NULL OR t - prev_t > {f.dedup_horizon_ms}"
        )
    else:
        ev = f"SELECT * FROM ({raw}) AS raw WHERE t IS NOT NULL"
    aggs = ", ".join(_agg_sql(f, d))
    if f.window == "tumbling":
        size = f.size_ms
        return (
            f"WITH ev AS ({ev}), w AS (SELECT *, t - (((t % {size}) + {size}) % {size}) AS ws FROM ev) "
            f"SELECT e, ws AS window_start, ws + {size} AS window_end, {aggs} FROM w GROUP BY e, ws"
        )
    if f.window == "hopping":
        size, slide = f.size_ms, f.slide_ms
        k = size // slide
        return (
            f"WITH ev AS ({ev}), "
            f"b AS (SELECT *, t - (((t % {slide}) + {slide}) % {slide}) AS base FROM ev), "
            f"w AS (SELECT *, base - j * {slide} AS ws FROM b CROSS JOIN {d.steps.format(k=k)} AS steps) "
            f"SELECT e, ws AS window_start, ws + {size} AS window_end, {aggs} FROM w GROUP BY e, ws"
        )
    gap = f.gap_ms
    return (
        f"WITH ev AS ({ev}), "
        f"o AS (SELECT *, CASE WHEN t - lag(t) OVER (PARTITION BY e ORDER BY t) <= {gap} "
        f"THEN 0 ELSE 1 END AS new_session FROM ev), "
        f"s AS (SELECT *, sum(new_session) OVER (PARTITION BY e ORDER BY t ROWS UNBOUNDED PRECEDING) AS sid "
        f"FROM o) "
        f"SELECT e, min(t) AS window_start, max(t) + {gap} AS window_end, {aggs} FROM s GROUP BY e, sid"
    )


def compute(feature: WindowedFeature | CompiledFeature, events: str | Path, con=None):
    """All windows of ``feature`` over Parquet events (a file, folder or glob) as a PyArrow table."""
    import duckdb

    f = feature.compile() if isinstance(feature, WindowedFeature) else feature
    path = Path(events)
    pattern = str(path / "**" / "*.parquet") if path.is_dir() else str(events)
    con = con or duckdb.connect()
    con.execute("SET TimeZone = 'UTC'")
    scan = "read_parquet(" + "'" + pattern.replace("'", "''") + "'" + ", union_by_name=true)"
    try:
        described = {r[0]: str(r[1]) for r in con.sql(f"DESCRIBE SELECT * FROM {scan}").fetchall()}
        time_type, order = source_shape(f, described)
        sql = feature_sql(f, scan, time_type=time_type, order=order)
        return con.sql(sql + " ORDER BY e, window_start").to_arrow_table()
    except duckdb.Error as exc:
        raise InvalidInput(f"backfill of {f.name}: {exc}".splitlines()[0]) from None


# Windows written to the online store per call of set_many by a backfill (per task on Spark).
ONLINE_CHUNK_ROWS = 5_000


def backfill(
    feature: WindowedFeature | CompiledFeature,
    events: str | Path,
    offline_dir: str | Path,
    online: KeyValue | OnlineTarget | None = None,
    spark: Any = None,
) -> Path:
    """Compute the feature over the event history, write it to ``offline_dir/<name>/backfill.parquet``;
    optionally load ``online`` (an open store, or where one lives). With a SparkSession ``spark`` the
    executors compute the windows and write them (batch_spark.py): the Parquet path is then a folder
    of part files, which Parquet readers read as one table, and the online store must be given as an
    OnlineTarget, which the executors open."""
    import shutil

    import pyarrow.parquet as pq

    f = feature.compile() if isinstance(feature, WindowedFeature) else feature
    out = Path(offline_dir) / f.name / "backfill.parquet"
    out.parent.mkdir(parents=True, exist_ok=True)
    if spark is not None:
        from mlscale.streams import batch_spark

        if online is not None and not isinstance(online, OnlineTarget):
            raise InvalidInput("a Spark backfill writes the online store from its executors: give an OnlineTarget")
        batch_spark.backfill(f, events, out, spark, online)
        return out
    table = compute(f, events)
    if out.is_dir():  # a Spark backfill's folder: this engine writes one file in its place
        shutil.rmtree(out)
    pq.write_table(table.rename_columns([f.entity_key, *table.column_names[1:]]), out)
    if online is not None:
        kv = online.open_kv() if isinstance(online, OnlineTarget) else online
        try:
            # In chunks: one dict per window for the whole history held at once cost more memory
            # than the history's Arrow table itself (1.6 GiB for 1.8M windows).
            for chunk in table.to_batches(max_chunksize=ONLINE_CHUNK_ROWS):
                kv.set_many(dict(online_items(f, chunk.to_pylist())), ttl=f.ttl_s)
        finally:
            if kv is not online:
                kv.close()
    return out


def online_items(f: CompiledFeature, rows: Iterable[dict]) -> Iterable[tuple[bytes, bytes]]:
    """Rows of a backfill as the (key, value) pairs the stream processor writes."""
    enc = msgspec.json.Encoder()
    names = ["window_start", "window_end", *f.outputs]
    for row in rows:
        yield f.online_key(row["e"], row["window_start"]), enc.encode({n: row[n] for n in names})


def write_events(events: list[dict], path: str | Path) -> Path:
    """Events as a Parquet file (the offline copy of a topic); used by demos, tests and the archiver."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    pq.write_table(pa.Table.from_pylist(events), path)
    return path
