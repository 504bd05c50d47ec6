"""The batch side of a windowed feature: the same definition compiled to DuckDB SQL over Parquet events.

A backfill computes every window of the history at once and writes it as Parquet into the offline
folder (``<offline>/<feature>/backfill.parquet``), where training-set builders read it, and can load
the values into the online store with the same keys the stream processor writes. The SQL follows the
semantics in definitions.py to the letter (floor to milliseconds, floor-modulo window starts,
``last`` by greatest time then value, exact distinct counts), so stream and batch give the same numbers.
"""

from __future__ import annotations

from collections.abc import Iterable
from pathlib import Path

import msgspec

from mlscale.errors import InvalidInput
from mlscale.storage.base import KeyValue
from mlscale.streams.definitions import CompiledFeature, WindowedFeature


def _q(name: str) -> str:
    return '"' + name.replace('"', '""') + '"'


def _agg_sql(f: CompiledFeature) -> list[str]:
    out = []
    for a in f.aggregations:
        x = f"CAST(v_{_col(f, a.field)} AS DOUBLE)" if a.field else ""
        expr = {
            "count": "count(*)",
            "sum": f"sum({x})",
            "mean": f"sum({x}) / count(*)",
            "min": f"min({x})",
            "max": f"max({x})",
            "last": f"arg_max({x}, [CAST(t AS DOUBLE), {x}])",
            "distinct_count": f"count(DISTINCT v_{_col(f, a.field)})" if a.field else "",
        }[a.fn]
        out.append(f"{expr} AS {_q(a.output)}")
    return out


def _col(f: CompiledFeature, name: str | None) -> int:
    fields = list(dict.fromkeys([*f.numeric_fields, *f.distinct_fields]))
    return fields.index(name)


def feature_sql(feature: WindowedFeature | CompiledFeature, source: str = "events") -> str:
    """SQL computing every window of ``feature`` over the relation ``source`` (a table or a scan)."""
    f = feature.compile() if isinstance(feature, WindowedFeature) else feature
    fields = list(dict.fromkeys([*f.numeric_fields, *f.distinct_fields]))
    value_cols = "".join(f", {_q(name)} AS v_{i}" for i, name in enumerate(fields))
    not_null = "".join(f" AND {_q(name)} IS NOT NULL" for name in fields)
    ev = (
        f"SELECT {_q(f.entity_key)} AS e, "
        f"CAST(floor(CAST({_q(f.event_time)} AS DOUBLE) * 1000) AS BIGINT) AS t"
        f"{value_cols} FROM {source} WHERE {_q(f.entity_key)} IS NOT NULL"
        f" AND {_q(f.event_time)} IS NOT NULL{not_null}"
    )
    aggs = ", ".join(_agg_sql(f))
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
            f"w AS (SELECT *, base - j * {slide} AS ws FROM b, (SELECT unnest(range({k})) AS j)) "
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
    scan = "read_parquet(" + "'" + pattern.replace("'", "''") + "'" + ", union_by_name=true)"
    try:
        return con.sql(feature_sql(f, scan) + " ORDER BY e, window_start").to_arrow_table()
    except duckdb.Error as exc:
        raise InvalidInput(f"backfill of {f.name}: {exc}".splitlines()[0]) from None


def backfill(
    feature: WindowedFeature | CompiledFeature,
    events: str | Path,
    offline_dir: str | Path,
    online: KeyValue | None = None,
) -> Path:
    """Compute the feature over the event history, write it under ``offline_dir``; optionally load online."""
    import pyarrow.parquet as pq

    f = feature.compile() if isinstance(feature, WindowedFeature) else feature
    table = compute(f, events)
    out = Path(offline_dir) / f.name / "backfill.parquet"
    out.parent.mkdir(parents=True, exist_ok=True)
    pq.write_table(table.rename_columns([f.entity_key, *table.column_names[1:]]), out)
    if online is not None:
        online.set_many(dict(online_items(f, table.to_pylist())), ttl=f.ttl_s)
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
