"""The Spark offline engine: the DuckDB engine's answers, computed by Spark over sources a cluster reads.

Point-in-time join without a range join: per view, the entity rows and the view's rows are put in
one frame, partitioned by join key and ordered by event time (view rows before entity rows at the
same time, so "at or before" holds; view rows at one time by the tie rule reversed, so the winner
comes last); each entity row takes the last view row seen before it (``last(..., ignorenulls)``
over the window), then the TTL blanks it when too old. That is one shuffle and sort per view,
linear in rows, with no pair of rows ever multiplied out, and the driver only sends the entity
frame and receives the finished training set.

Same rules as DuckDB (``mlscale.features.offline``): rows of one entity at one event time are cut
to one by the tie rule (greatest created time, then greatest feature values in declared order,
nulls lowest; Spark orders NaN above every number and strings by UTF-8 bytes, as DuckDB does);
event times are compared as UTC microseconds, computed without the session time zone (naive
times are UTC; nanoseconds round half away from zero, as DuckDB's cast does); a fractional value
cast to an integer feature rounds half away from zero, as DuckDB's does.

Sources: ``source`` is a Parquet file, folder or glob (or CSV) relative to the project folder or
any URL Spark reads (``s3a://``, ``hdfs://``); ``query`` is Spark SQL here (``SELECT * FROM
lake.events`` reads a catalog table).
"""

from __future__ import annotations

import glob
from collections.abc import Callable, Sequence
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from mlscale.errors import ConfigError, InvalidInput
from mlscale.features.definitions import STRING, FeatureRepo, FeatureService, FeatureView
from mlscale.features.offline import (
    _CREATED,
    _ETS,
    _PANDAS_INTS,
    _ROW,
    _as_table,
    check_entity_frame,
    check_source_types,
    nullable_integers,
)

_SIDE = "__mlscale_side"
_HIT = "__mlscale_hit"
_RANK = "__mlscale_rank"
# Spark SQL types of the declared feature types, and their Arrow types in a training set.
_SPARK_TYPES = {"float32": "float", "float64": "double", "int32": "int", "int64": "bigint", "bool": "boolean"}
_SPARK_TYPES[STRING] = "string"
_ARROW_TYPES = {
    "float32": pa.float32(),
    "float64": pa.float64(),
    "int32": pa.int32(),
    "int64": pa.int64(),
    "bool": pa.bool_(),
    STRING: pa.string(),
}
_INTEGERS = ("tinyint", "smallint", "int", "bigint")
_FRACTIONS = ("float", "double")


def _ident(name: str) -> str:
    return "`" + name.replace("`", "``") + "`"


def _type_name(dtype: Any) -> str:
    return dtype.simpleString()


class SparkOfflineStore:
    """Training sets and materialization on Spark (see ``mlscale.features.engine.OfflineEngine``).

    ``session`` is any SparkSession (``spark_session()`` builds one from the settings); ``root``
    resolves relative source paths.
    """

    name = "spark"

    def __init__(self, repo: FeatureRepo, root: str | Path = ".", *, session: Any) -> None:
        from mlscale.features.spark.session import prepare

        self.repo = repo
        self.root = Path(root).resolve()
        self.spark = prepare(session)

    # --- sources ------------------------------------------------------------------------------

    def _location(self, view: FeatureView) -> str:
        if "://" in view.source:
            return view.source
        path = Path(view.source)
        return str(path if path.is_absolute() else self.root / path)

    def read_source(self, view: FeatureView) -> Any:
        """The view's source as a Spark DataFrame."""
        what = f"feature view {view.name!r}"
        try:
            if view.query:
                return self.spark.sql(view.query)
            location = self._location(view)
            if ".csv" in Path(location).name.lower():
                return self.spark.read.csv(location, header=True, inferSchema=True)
            return self.spark.read.parquet(location)
        except Exception as exc:  # Spark's AnalysisException and py4j errors
            raise ConfigError(f"{what}: cannot read its source: {str(exc).splitlines()[0]}") from None

    def _nanosecond_columns(self, view: FeatureView) -> set[str]:
        """Columns stored as Parquet nanosecond timestamps (Spark reads them as longs); see
        :func:`nanosecond_columns`."""
        if view.query or "://" in view.source:
            return set()
        return nanosecond_columns(self._location(view))

    def validate_source(self, view: FeatureView, frame: Any = None) -> dict[str, str]:
        """Check the source has the join keys, timestamps and features, with usable types; its
        column types (Spark's names), nanosecond timestamp columns marked ``timestamp_ns``."""
        frame = frame if frame is not None else self.read_source(view)
        nanos = self._nanosecond_columns(view)
        columns = {
            f.name: (
                "timestamp_ns" if f.name in nanos and _type_name(f.dataType) == "bigint" else _type_name(f.dataType)
            )
            for f in frame.schema.fields
        }
        check_source_types(
            view,
            self.repo,
            columns,
            is_timestamp=lambda t: t in ("timestamp", "timestamp_ntz", "timestamp_ns", "date"),
            key_fits=lambda dtype, t: t in (_INTEGERS if dtype == "int64" else ("string",)),
            feature_fits=lambda dtype, t: t == "string" if dtype == STRING else _numeric_type(t),
            timestamp_hint=lambda t: (
                " (Parquet nanosecond timestamps reach Spark as bigint, and are recognized only in local "
                "files: write microsecond timestamps)"
                if t == "bigint" and (view.query or "://" in view.source)
                else ""
            ),
        )
        return columns

    def validate_sources(self) -> None:
        for view in self.repo.views.values():
            self.validate_source(view)

    def rows(self, view: FeatureView) -> Any:
        """Every usable source row, typed: join keys, ``__mlscale_ts`` (UTC µs since the epoch),
        ``__mlscale_created`` (with a created timestamp field) and all features; rows with a null
        join key or event time are left out (they can never match)."""
        from pyspark.sql import functions as F

        frame = self.read_source(view)
        types = self.validate_source(view, frame)
        keys = [self.repo.entities[e] for e in view.entities]
        cols = [
            F.col(_ident(k.join_key)).cast("bigint" if k.dtype == "int64" else "string").alias(k.join_key) for k in keys
        ]
        cols.append(_micros(view.timestamp_field, types[view.timestamp_field]).alias(_ETS))
        if view.created_timestamp_field:
            created = view.created_timestamp_field
            cols.append(_micros(created, types[created]).alias(_CREATED))
        for feature in view.features:
            value = F.col(_ident(feature.name))
            target = _SPARK_TYPES[feature.dtype]
            if target in _INTEGERS and (types[feature.name] in _FRACTIONS or types[feature.name].startswith("decimal")):
                value = F.round(value)  # HALF_UP: away from zero, as DuckDB's cast
            cols.append(value.cast(target).alias(feature.name))
        not_null = [F.col(_ident(k.join_key)).isNotNull() for k in keys] + [
            F.col(_ident(view.timestamp_field)).isNotNull()
        ]
        condition = not_null[0]
        for more in not_null[1:]:
            condition = condition & more
        return frame.where(condition).select(*cols)

    def tie_order(self, view: FeatureView) -> list:
        """Sort columns of one entity's rows at one event time: the first one wins (see offline.tie_order)."""
        from pyspark.sql import functions as F

        order = [F.col(_CREATED).desc_nulls_last()] if view.created_timestamp_field else []
        return order + [F.col(_ident(f.name)).desc_nulls_last() for f in view.features]

    # --- training sets ------------------------------------------------------------------------

    def get_historical_features(
        self,
        entity_df: Any,
        features: str | FeatureService | Sequence[str],
        *,
        timestamp_field: str = "event_timestamp",
        full_feature_names: bool = False,
    ) -> pa.Table:
        """Point-in-time-correct training set, as ``OfflineStore.get_historical_features``."""
        table = _as_table(entity_df)
        resolved = self.repo.resolve(features)
        out_names = self.repo.output_names(resolved, full_feature_names)
        clash = set(out_names) & set(table.column_names)
        if clash:
            raise InvalidInput(f"entity frame already has columns named like features: {sorted(clash)}")
        check_entity_frame(self.repo, table, resolved, timestamp_field)

        # Spark gets only what the join needs: row number, join keys (as the entities' types) and
        # the time as UTC microseconds; the user's columns stay as they are, on the driver.
        keys = sorted({self.repo.entities[e].join_key for v, _ in resolved for e in self.repo.views[v].entities})
        key_types = {k: self.repo.join_key_types[k] for k in keys}
        sent = pa.table(
            {
                _ROW: pa.array(range(table.num_rows), pa.int64()),
                **{k: table.column(k).cast(pa.int64() if t == "int64" else pa.string()) for k, t in key_types.items()},
                _ETS: utc_micros(table.column(timestamp_field)),
            }
        )
        entities = self.spark.createDataFrame(sent)
        try:
            joined = self.point_in_time(entities, resolved, out_names)
            result = joined.toArrow()
        except (ConfigError, InvalidInput):
            raise
        except Exception as exc:  # Spark errors (ANSI casts, files gone) as one line
            raise InvalidInput(f"cannot build the training set: {str(exc).splitlines()[0]}") from None
        result = result.take(pc.sort_indices(result.column(_ROW)))
        types = [
            next(f.dtype for f in self.repo.views[view_name].features if f.name == feat)
            for view_name, feats in resolved
            for feat in feats
        ]
        for name, dtype in zip(out_names, types, strict=True):
            table = table.append_column(name, result.column(name).cast(_ARROW_TYPES[dtype]))
        ints = {name: dtype for name, dtype in zip(out_names, types, strict=True) if dtype in _PANDAS_INTS}
        return nullable_integers(table, ints)

    def historical_frame(
        self,
        entity_df: Any,
        features: str | FeatureService | Sequence[str],
        *,
        timestamp_field: str = "event_timestamp",
        full_feature_names: bool = False,
    ) -> Any:
        """The training set of a Spark DataFrame of entity rows, as a Spark DataFrame (nothing is
        collected: write it with ``.write.parquet``). Its columns, then the features; same rules
        as ``get_historical_features``, but a DataFrame has no row order to keep, and an entity
        row with a null time gets null features instead of an error (checking costs a pass)."""
        from pyspark.sql import functions as F

        resolved = self.repo.resolve(features)
        out_names = self.repo.output_names(resolved, full_feature_names)
        types = {f.name: _type_name(f.dataType) for f in entity_df.schema.fields}
        clash = set(out_names) & set(types)
        if clash:
            raise InvalidInput(f"entity frame already has columns named like features: {sorted(clash)}")
        if timestamp_field not in types:
            raise InvalidInput(f"entity frame has no timestamp column {timestamp_field!r} (columns: {list(types)})")
        if types[timestamp_field] not in ("timestamp", "timestamp_ntz", "date"):
            raise InvalidInput(f"entity frame column {timestamp_field!r} is {types[timestamp_field]}, not a timestamp")
        keys = sorted({self.repo.entities[e].join_key for v, _ in resolved for e in self.repo.views[v].entities})
        for key in keys:
            dtype = self.repo.join_key_types[key]
            if key not in types:
                raise InvalidInput(f"entity frame has no join key column {key!r} (columns: {list(types)})")
            if types[key] not in (_INTEGERS if dtype == "int64" else ("string",)):
                raise InvalidInput(f"entity frame column {key!r} is {types[key]} but its entity is {dtype}")
        numbered = entity_df.withColumn(_ROW, F.monotonically_increasing_id())
        entities = numbered.select(
            _ROW,
            *[
                F.col(_ident(k)).cast("bigint" if self.repo.join_key_types[k] == "int64" else "string").alias(k)
                for k in keys
            ],
            _micros(timestamp_field, types[timestamp_field]).alias(_ETS),
        )
        found = self.point_in_time(entities, resolved, out_names)
        return numbered.join(found, on=_ROW, how="left").drop(_ROW)

    def point_in_time(self, entities: Any, resolved: list, out_names: list[str]) -> Any:
        """Spark DataFrame of ``__mlscale_row`` and the features, one row per row of ``entities``
        (a Spark DataFrame with ``__mlscale_row``, the join keys and ``__mlscale_ts``)."""
        from pyspark.sql import Window
        from pyspark.sql import functions as F

        names = iter(out_names)
        result = None
        for view_name, feats in resolved:
            view = self.repo.views[view_name]
            keys = [self.repo.entities[e].join_key for e in view.entities]
            # Same-time rows are not cut first (a second shuffle): they sort by the tie rule
            # reversed (ascending, nulls first), so the winner is the last one an entity row sees.
            # Both sides are built with all their columns in one select each, and the match's type
            # comes from the definitions: every DataFrame step is a round trip to the JVM and an
            # analysis, which dominated small training sets.
            dtypes = {f.name: _SPARK_TYPES[f.dtype] for f in view.features}
            hit_type = "struct<t:bigint," + ",".join(f"f{i}:{dtypes[f]}" for i, f in enumerate(feats)) + ">"
            tie_columns = ([_CREATED] if view.created_timestamp_field else []) + [f.name for f in view.features]
            hit = F.struct(F.col(_ETS).alias("t"), *[F.col(_ident(f)).alias(f"f{i}") for i, f in enumerate(feats)])
            side_rows = self.rows(view).select(
                *[_ident(k) for k in keys],
                _ETS,
                *[_ident(c) for c in tie_columns],
                F.lit(0).alias(_SIDE),
                F.lit(None).cast("bigint").alias(_ROW),
                hit.alias(_HIT),
            )
            side_entities = entities.select(
                *[_ident(k) for k in keys],
                _ETS,
                *[F.lit(None).cast(dtypes.get(c, "bigint")).alias(c) for c in tie_columns],
                F.lit(1).alias(_SIDE),
                _ROW,
                F.lit(None).cast(hit_type).alias(_HIT),
            )
            ties = [F.col(_ident(c)).asc_nulls_first() for c in tie_columns]
            window = (
                Window.partitionBy(*[_ident(k) for k in keys])
                .orderBy(F.col(_ETS), F.col(_SIDE), *ties)
                .rowsBetween(Window.unboundedPreceding, Window.currentRow)
            )
            last = F.last(_HIT, ignorenulls=True).over(window).alias("__mlscale_last")
            matched = side_rows.union(side_entities).select(_ROW, _ETS, _SIDE, last).where(F.col(_SIDE) == 1)
            found = F.col("__mlscale_last.t")
            ttl_us = round(view.ttl * 1_000_000)
            fresh = found >= F.col(_ETS) - F.lit(ttl_us) if ttl_us else found.isNotNull()
            picked = matched.select(
                _ROW,
                *[F.when(fresh, F.col(f"__mlscale_last.f{i}")).alias(next(names)) for i in range(len(feats))],
            )
            result = picked if result is None else result.join(picked, on=_ROW, how="inner")
        return result

    # --- materialization ----------------------------------------------------------------------

    def latest_rows(self, view: FeatureView, start: datetime | None, end: datetime) -> Any:
        """The newest row per entity in (start, end], ties ranked by the tie rule (as DuckDB's)."""
        from pyspark.sql import Window
        from pyspark.sql import functions as F

        keys = [self.repo.entities[e].join_key for e in view.entities]
        rows = self.rows(view).where(F.col(_ETS) <= F.lit(_epoch_us(end)))
        if start is not None:
            rows = rows.where(F.col(_ETS) > F.lit(_epoch_us(start)))
        newest = Window.partitionBy(*[_ident(k) for k in keys]).orderBy(F.col(_ETS).desc(), *self.tie_order(view))
        out = [*[_ident(k) for k in keys], _ETS, *[_ident(f.name) for f in view.features]]
        return rows.withColumn(_RANK, F.row_number().over(newest)).where(F.col(_RANK) == 1).select(*out)

    def materialize(
        self,
        online: Any,
        *,
        end: datetime,
        start: datetime | None = None,
        views: Sequence[str] | None = None,
        starts: dict[str, datetime | None] | None = None,
        chunk_rows: int = 100_000,
        progress: Callable[[str, int, int], None] | None = None,
        on_view_done: Callable[[str, datetime], None] | None = None,
    ) -> dict[str, int]:
        """Newest rows per entity written from the executors (see ``mlscale.features.spark.materialize``)."""
        from mlscale.features.spark.materialize import write_latest

        target = getattr(online, "target", None)
        if target is None or not target.shared:
            raise ConfigError(
                'offline_engine = "spark" writes the online store from its executors: it needs an online store '
                "they can open (sqlite:// files they reach, or redis://), not memory:// or a store built in code"
            )
        end = end if end.tzinfo else end.replace(tzinfo=UTC)
        written: dict[str, int] = {}
        for name in list(views) if views is not None else list(self.repo.views):
            view = self.repo.views[name]
            latest = self.latest_rows(view, (starts or {}).get(name, start), end)
            try:
                done = write_latest(latest, self.repo, name, target, chunk_rows)
            except Exception as exc:
                raise ConfigError(f"materializing {name!r} on Spark failed: {str(exc).splitlines()[0]}") from None
            if progress:
                progress(name, done, done)
            written[name] = done
            if on_view_done:
                on_view_done(name, end)
        return written


def nanosecond_columns(location: str) -> set[str]:
    """Columns a local Parquet file, folder or glob stores as nanosecond timestamps, which Spark
    reads as longs (``spark.sql.legacy.parquet.nanosAsLong``).

    Read from the footer of one file with PyArrow; remote sources give none (their long timestamp
    columns are refused or left as numbers by the callers).
    """
    if "://" in location:
        return set()
    files = sorted(glob.glob(location)) if any(c in location for c in "*?[") else [location]
    for file in files:
        path = Path(file)
        if path.is_dir():
            path = next((p for p in sorted(path.rglob("*")) if p.is_file() and not p.name.startswith((".", "_"))), path)
        if path.is_file():
            try:
                schema = pq.read_schema(path)
            except (OSError, pa.ArrowInvalid):
                return set()
            return {f.name for f in schema if pa.types.is_timestamp(f.type) and f.type.unit == "ns"}
    return set()


def _epoch_us(when: datetime) -> int:
    when = when if when.tzinfo else when.replace(tzinfo=UTC)
    delta = when - datetime(1970, 1, 1, tzinfo=UTC)
    return (delta.days * 86_400 + delta.seconds) * 1_000_000 + delta.microseconds


def _micros(column: str, spark_type: str) -> Any:
    """A source time column as UTC microseconds since the epoch, whatever the session's time zone."""
    from pyspark.sql import functions as F

    col = _ident(column)
    if spark_type == "timestamp":
        return F.expr(f"unix_micros({col})")
    if spark_type == "timestamp_ns":
        return F.expr(f"CASE WHEN {col} >= 0 THEN ({col} + 500) div 1000 ELSE -((-{col} + 500) div 1000) END")
    # timestamp_ntz and date: wall time taken as UTC, measured from the epoch's wall time.
    return F.expr(f"timestampdiff(MICROSECOND, TIMESTAMP_NTZ '1970-01-01 00:00:00', CAST({col} AS TIMESTAMP_NTZ))")


def utc_micros(column: pa.ChunkedArray) -> pa.Array:
    """An entity frame's time column as UTC µs since the epoch (naive times are UTC; dates are midnight).

    Arrow stores zoned times as UTC instants already; finer units round half away from zero.
    """
    kind = column.type
    if pa.types.is_date(kind):
        column = column.cast(pa.timestamp("s"))
        kind = column.type
    raw = column.cast(pa.timestamp(kind.unit, kind.tz)).cast(pa.int64())
    scale = {"s": 1_000_000, "ms": 1_000, "us": 1, "ns": None}[kind.unit]
    if scale is not None:
        return pc.multiply_checked(raw, scale)
    magnitude = pc.divide(pc.add(pc.abs(raw), 500), 1000)  # integer division: truncates
    return pc.if_else(pc.less(raw, 0), pc.negate(magnitude), magnitude)


def _numeric_type(spark_type: str) -> bool:
    """A Spark type a numeric feature can be read from (booleans count, as in DuckDB)."""
    return spark_type in (*_INTEGERS, *_FRACTIONS, "boolean") or spark_type.startswith("decimal")
