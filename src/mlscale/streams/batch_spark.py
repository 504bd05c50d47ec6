"""The batch side of a windowed feature on Apache Spark: the backfill's SQL (batch.py) in Spark's dialect.

For event histories that live in a data lake too big for one host: the same query shape as the
DuckDB backfill, so the two engines compute the same windows (tests compare them row by row). The
events are read from a Parquet file, folder (recursively) or glob, or taken as a DataFrame. ``compute``
brings the windows back to the driver as Arrow, as the DuckDB backfill returns them (for tests and
small histories); ``backfill`` never does: the executors write the offline Parquet and the online
store themselves, so the windows of a history too big for one host never pass through the driver.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pyarrow as pa

from mlscale.errors import ConfigError, InvalidInput
from mlscale.features.online import OnlineTarget
from mlscale.streams.batch import ONLINE_CHUNK_ROWS, SPARK, feature_sql, source_shape
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


def backfill(
    feature: WindowedFeature | CompiledFeature,
    events: str | Path | Any,
    out: Path,
    spark: Any,
    online: OnlineTarget | None = None,
    chunk_rows: int = ONLINE_CHUNK_ROWS,
) -> None:
    """Write every window of ``feature`` from the executors: to ``out`` as a Parquet dataset (a
    folder of part files in entity and window order, the entity column named as in DuckDB's
    backfill), and with ``online`` into that online store, each task its own partitions in chunks
    of ``chunk_rows``. Why a target and not a store: an executor opens the store from its URL; an
    open connection cannot be shipped to it."""
    f = feature.compile() if isinstance(feature, WindowedFeature) else feature
    if online is not None and not online.shared:
        raise ConfigError(
            'offline_engine = "spark" writes the online store from its executors: it needs a store they '
            "can open (sqlite:// files they reach, or redis://), not memory://"
        )
    frame = windows(f, events, spark)
    try:
        if online is not None:
            # Cached: the online load and the Parquet write read the windows computed once.
            frame = frame.persist()
            frame.mapInArrow(_OnlineWriter(f, online, chunk_rows), "written long").collect()
        ordered = frame.orderBy("e", "window_start").withColumnRenamed("e", f.entity_key)
        ordered.write.mode("overwrite").parquet(str(out))
    except Exception as exc:  # raised when the query runs (a bad cast, a missing column)
        raise InvalidInput(f"backfill of {f.name}: {str(exc).splitlines()[0]}") from None
    finally:
        if online is not None:
            frame.unpersist()


class _OnlineWriter:
    """What each task runs over its partition of the windows (pickled to the executors): the same
    keys and values as the stream processor writes, in chunks."""

    def __init__(self, feature: CompiledFeature, target: OnlineTarget, chunk_rows: int) -> None:
        self.feature = feature
        self.target = target
        self.chunk_rows = max(1, chunk_rows)

    def __call__(self, batches: Iterator[pa.RecordBatch]) -> Iterator[pa.RecordBatch]:
        from mlscale.streams.batch import online_items

        kv = self.target.open_kv()
        written = 0
        try:
            for batch in batches:
                for start in range(0, batch.num_rows, self.chunk_rows):
                    rows = batch.slice(start, self.chunk_rows).to_pylist()
                    kv.set_many(dict(online_items(self.feature, rows)), ttl=self.feature.ttl_s)
                    written += len(rows)
        finally:
            kv.close()
        yield pa.RecordBatch.from_pydict({"written": pa.array([written], pa.int64())})
