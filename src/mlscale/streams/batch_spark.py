"""The batch side of a windowed feature on Apache Spark: the backfill's SQL (batch.py) in Spark's dialect.

For event histories that live in a data lake too big for one host: the same query shape as the
DuckDB backfill, so the two engines compute the same windows (tests compare them row by row). The
events are read from a Parquet file, folder (recursively) or glob, or taken as a DataFrame; the result
comes back to the driver as Arrow, as the DuckDB backfill returns it, or is written by the executors
with ``write_spark`` when it is too big for the driver.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from mlscale.errors import InvalidInput
from mlscale.streams.batch import SPARK, feature_sql, source_shape
from mlscale.streams.definitions import CompiledFeature, WindowedFeature


def read_events(spark: Any, events: str | Path | Any) -> Any:
    """Parquet events (a file, a folder read recursively, a glob) as a DataFrame; a DataFrame as is."""
    if not isinstance(events, (str, Path)):
        return events
    path = Path(events)
    reader = spark.read.option("mergeSchema", "true")
    if path.is_dir():
        reader = reader.option("recursiveFileLookup", "true").option("pathGlobFilter", "*.parquet")
    try:
        return reader.parquet(str(events))
    except Exception as exc:  # Spark's AnalysisException and py4j errors have no common public base
        raise InvalidInput(f"cannot read events {str(events)!r}: {str(exc).splitlines()[0]}") from None


def windows(feature: WindowedFeature | CompiledFeature, events: str | Path | Any, spark: Any) -> Any:
    """Every window of ``feature`` over ``events`` as a Spark DataFrame (e, window_start, window_end,
    outputs...), computed by the executors."""
    f = feature.compile() if isinstance(feature, WindowedFeature) else feature
    frame = read_events(spark, events)
    # Parquet nanosecond timestamps are read as longs (see features/spark/session.py): numbers then.
    time_type, order = source_shape(f, {field.name: field.dataType.typeName() for field in frame.schema.fields})
    view = f"mlscale_events_{abs(hash((f.name, id(frame))))}"
    frame.createOrReplaceTempView(view)
    # Times written without an offset are UTC, as in the stream; the session's zone is bound when
    # the query is analysed (here), so a user's session gets its own zone back right after.
    zone = spark.conf.get("spark.sql.session.timeZone")
    spark.conf.set("spark.sql.session.timeZone", "UTC")
    try:
        return spark.sql(feature_sql(f, view, time_type=time_type, order=order, dialect=SPARK))
    except Exception as exc:
        raise InvalidInput(f"backfill of {f.name}: {str(exc).splitlines()[0]}") from None
    finally:
        spark.conf.set("spark.sql.session.timeZone", zone)


def compute(feature: WindowedFeature | CompiledFeature, events: str | Path | Any, spark: Any):
    """All windows of ``feature`` as a PyArrow table ordered by entity and window start, like
    ``mlscale.streams.batch.compute``."""
    f = feature.compile() if isinstance(feature, WindowedFeature) else feature
    frame = windows(f, events, spark)
    try:
        return frame.orderBy("e", "window_start").toArrow()
    except Exception as exc:  # raised when the query runs (a bad cast, a missing column)
        raise InvalidInput(f"backfill of {f.name}: {str(exc).splitlines()[0]}") from None
