"""Reference profiles of tables too big for one host, computed on Spark: ``profile_parquet``'s profile
with the scans and aggregations on the executors and only small results on the driver.

Sources: a Parquet file, folder or glob (local, or any URL Spark reads: ``s3a://``, ``hdfs://``), or
a catalog table as ``table:NAME`` (``spark.table``). The session is ``spark_session``'s (the active
one, else one on ``master`` with ``config``, as the Spark offline engine builds it).

At most five jobs, each one scan of the table:
1. one aggregation: rows; per column non-null and finite counts, min, max, mean, population
   deviation, and a HyperLogLog distinct estimate (5 % error);
2. only for strings whose estimated distinct share is between 0.4 and 0.6: exact distinct
   counts, so text / cat is decided as on exact counts;
3. value counts (``GROUPING SETS``, one shuffle) of the categorical columns and of numeric columns
   that may have few values (estimate at most ``SMALL_DISTINCT``); the driver receives one row
   per distinct value, as the Arrow path holds one entry per category;
4. the values of numeric columns with at most ``max_sample`` finite values (at most that many
   each), which ``profile_column`` profiles on the driver exactly as the Arrow path does;
5. for longer numeric columns, ``max_sample`` mid-point quantiles with ``percentile_approx`` at
   accuracy ``max_sample`` (Greenwald-Khanna: rank error at most 1/``max_sample``, deterministic).

What equals the Arrow path (``profile_parquet`` on the same rows):
- exactly: column order, kinds (see below), counts, categories and their counts, min, max,
  ``n_unique``, few-value counts, ``exact``; for columns of at most ``max_sample`` values
  everything, the sorted sample and mean and deviation bit for bit;
- to floating-point rounding (relative 1e-9): mean and deviation of longer columns (Spark sums in
  another order than the batch-by-batch merge);
- statistically: the sample of longer columns. Both are ``max_sample`` quantiles of the column
  within a rank error of order 1/``max_sample`` (KLL's is randomised and depends on reading order,
  Greenwald-Khanna's is deterministic), so they are not equal value for value but each is within
  that rank error of the exact quantiles, and the drift tests give the same verdicts.

Kinds not given are inferred with ``infer_kind``'s rule over the whole table (the Arrow path
applies it to the first batch; they agree when the first batch is like the rest): floats num;
integers num when they have nulls (Arrow reads them as floats), else cat with at most 10 distinct
values and num with more; booleans and decimals cat; strings text when more than half of the
non-null values are distinct, else cat; dates and timestamps (and Parquet nanosecond timestamps,
which Spark reads as longs, on a local disk) datetime. Other Spark types (binary, arrays, maps,
structs) are refused unless given kind text; times given kind num or cat are refused (the Arrow
path would take them as their string forms, which depend on the session time zone here).
"""

from __future__ import annotations

import glob
from pathlib import Path
from typing import Any

import numpy as np

from mlscale.errors import ConfigError, InvalidInput
from mlscale.monitoring.drift.profile import (
    DEFAULT_MAX_SAMPLE,
    INTEGER_CATEGORIES_MAX,
    KINDS,
    MAX_VALUE_COUNTS,
    ColumnProfile,
    ReferenceProfile,
    clean_categorical,
    profile_column,
)

TABLE_PREFIX = "table:"
# Numeric columns whose distinct estimate is at most this get exact value counts (the estimate's
# error at such counts is far below the factor 4 to MAX_VALUE_COUNTS).
SMALL_DISTINCT = 4 * MAX_VALUE_COUNTS
# HyperLogLog relative standard deviation of the distinct estimates (Spark's default; 0.01 made
# the first pass four times slower, its buffers growing with 1/rsd**2).
DISTINCT_RSD = 0.05
# Strings whose estimated distinct count is within this share of their values of one half (four
# standard deviations of the estimate) are counted exactly.
TEXT_MARGIN = 0.1

_FLOATS = ("float", "double")
_INTEGERS = ("tinyint", "smallint", "int", "bigint")
_TIMES = ("timestamp", "timestamp_ntz", "date")


def _ident(name: str) -> str:
    return "`" + name.replace("`", "``") + "`"


def _pyspark() -> None:
    try:
        import pyspark  # noqa: F401
    except ImportError:
        raise ConfigError(
            'a Spark profile needs PySpark: pip install "mlscale[spark]" (and Java 17 or newer)'
        ) from None


def check_source(source: str) -> str:
    """A local path or glob that names something, made absolute (the executors' working folder is
    not the caller's); URLs and tables as they are (Spark says whether they exist)."""
    if source.startswith(TABLE_PREFIX) or "://" in source:
        return source
    if any(c in source for c in "*?["):
        if not glob.glob(source):
            raise InvalidInput(f"{source}: no file matches")
        return str(Path(source).absolute())
    if not Path(source).exists():
        raise InvalidInput(f"{source}: no such file or folder")
    return str(Path(source).resolve())


def read_source(spark: Any, source: str) -> tuple[Any, set[str]]:
    """The source as a DataFrame, and its columns stored as Parquet nanosecond timestamps."""
    from mlscale.features.spark.offline import nanosecond_columns

    if source.startswith(TABLE_PREFIX):
        name = source[len(TABLE_PREFIX) :].strip()
        try:
            return spark.table(name), set()
        except Exception as exc:  # AnalysisException and py4j errors
            raise InvalidInput(f"{source}: cannot read the table: {str(exc).splitlines()[0]}") from None
    source = check_source(source)
    try:
        frame = spark.read.parquet(source)
    except Exception as exc:
        raise InvalidInput(f"{source}: cannot read as parquet: {str(exc).splitlines()[0]}") from None
    return frame, nanosecond_columns(source)


def _type_class(spark_type: str, nanos: bool) -> str:
    """float, int, bool, decimal, string, time, null or other."""
    if nanos and spark_type == "bigint":
        return "time"
    if spark_type in _FLOATS:
        return "float"
    if spark_type in _INTEGERS:
        return "int"
    if spark_type == "boolean":
        return "bool"
    if spark_type.startswith("decimal"):
        return "decimal"
    if spark_type == "string":
        return "string"
    if spark_type in _TIMES:
        return "time"
    if spark_type == "void":
        return "null"
    return "other"


def _finite(column: Any, type_class: str) -> Any:
    """The column with NaN and infinities as null (what ``clean_numeric`` drops), original type."""
    from pyspark.sql import functions as F

    if type_class != "float":
        return column
    as_double = column.cast("double")
    return F.when(~F.isnan(as_double) & (F.abs(as_double) != float("inf")), column)


def _numpy(column: Any) -> np.ndarray:
    """An Arrow column without its nulls, as the Arrow path's NumPy array."""
    import pyarrow.compute as pc

    from mlscale.monitoring.drift.arrow_columns import column_to_numpy

    return column_to_numpy(pc.drop_null(column))


def profile_spark(
    source: str,
    categorical: list[str] | tuple[str, ...] = (),
    max_sample: int | None = DEFAULT_MAX_SAMPLE,
    kinds: dict[str, str] | None = None,
    *,
    session: Any = None,
    master: str = "local[2]",
    config: dict[str, str] | None = None,
) -> ReferenceProfile:
    """The reference profile of ``source`` computed on Spark (see the module for what equals the
    Arrow path's profile exactly and what only statistically)."""
    if max_sample is None:
        raise InvalidInput("a profile computed on Spark needs max_sample (keeping every value is what fit() does)")
    max_sample = int(max_sample)
    check_source(source)  # before starting a JVM for nothing
    _pyspark()
    from mlscale.features.spark.session import prepare, spark_session

    session = spark_session(master, config) if session is None else prepare(session)
    frame, nanos = read_source(session, source)
    return profile_frame(frame, categorical, max_sample, kinds, nanos=nanos, name=source)


def profile_frame(
    frame: Any,
    categorical: list[str] | tuple[str, ...] = (),
    max_sample: int = DEFAULT_MAX_SAMPLE,
    kinds: dict[str, str] | None = None,
    *,
    nanos: set[str] = frozenset(),
    name: str = "the reference",
) -> ReferenceProfile:
    """The reference profile of a Spark DataFrame (``profile_spark`` reads the source into one)."""
    from pyspark.sql import functions as F

    names = list(frame.columns)
    if not names:
        raise InvalidInput(f"{name}: has no columns")
    kinds = {**{c: "cat" for c in categorical}, **(kinds or {})}
    unknown = [c for c in kinds if c not in names]
    if unknown:
        raise InvalidInput(f"a kind is set for column {unknown[0]!r}, which the reference does not have")
    for column, kind in kinds.items():
        if kind not in KINDS:
            raise InvalidInput(f"column {column!r}: unknown kind {kind!r}; known: {', '.join(KINDS)}")
    types = {f.name: _type_class(f.dataType.simpleString(), f.name in nanos) for f in frame.schema.fields}
    for column in names:
        given = kinds.get(column)
        if types[column] == "other" and given != "text":
            raise InvalidInput(f"column {column!r}: Spark type cannot be profiled; give it kind text to count it")
        if types[column] == "time" and given in ("num", "cat"):
            raise InvalidInput(f"column {column!r} holds times: profile it as datetime or text")
        if given == "num" and types[column] in ("string", "null"):
            raise InvalidInput(f"column {column!r} is set to kind num but holds values that are not numbers")
    col = {c: F.col(_ident(c)) for c in names}
    fin = {c: _finite(col[c], types[c]) for c in names}
    numeric = [c for c in names if types[c] in ("float", "int", "bool", "decimal")]

    # 1. One aggregation for every column.
    aggs = [F.count(F.lit(1)).alias("rows")]
    for i, c in enumerate(names):
        aggs.append(F.count(col[c]).alias(f"n{i}"))
        if c in numeric:
            x = fin[c].cast("double")
            aggs += [
                F.count(x).alias(f"f{i}"),
                F.min(x).alias(f"lo{i}"),
                F.max(x).alias(f"hi{i}"),
                F.avg(x).alias(f"mean{i}"),
                F.stddev_pop(x).alias(f"std{i}"),
                F.approx_count_distinct(x, DISTINCT_RSD).alias(f"d{i}"),
            ]
        elif types[c] == "string" and c not in kinds:
            aggs.append(F.approx_count_distinct(col[c], DISTINCT_RSD).alias(f"d{i}"))
    first = frame.agg(*aggs).collect()[0].asDict()
    rows = int(first["rows"])
    if rows == 0:
        raise InvalidInput(f"{name}: has no rows")
    index = {c: i for i, c in enumerate(names)}

    def stat(key: str, c: str) -> Any:
        return first[f"{key}{index[c]}"]

    # Kinds: given, or inferred over the whole table; "pending" integers are decided by their
    # exact distinct count in step 3.
    kind_of: dict[str, str] = {}
    borderline = []
    for c in names:
        given, cls = kinds.get(c), types[c]
        if given:
            kind_of[c] = given
        elif cls == "float":
            kind_of[c] = "num"
        elif cls == "int":
            few = stat("n", c) == rows and stat("d", c) <= SMALL_DISTINCT
            kind_of[c] = "pending" if few else "num"
        elif cls in ("bool", "decimal", "null"):
            kind_of[c] = "cat"
        elif cls == "time":
            kind_of[c] = "datetime"
        else:  # string
            present, distinct = stat("n", c), stat("d", c)
            if present and abs(distinct - 0.5 * present) <= TEXT_MARGIN * present:
                borderline.append(c)
            kind_of[c] = "text" if present and distinct > 0.5 * present else "cat"
    # 2. Exact distinct counts for strings near the text / cat line.
    if borderline:
        exact = frame.agg(*[F.count_distinct(col[c]).alias(f"e{i}") for i, c in enumerate(borderline)]).collect()[0]
        for i, c in enumerate(borderline):
            kind_of[c] = "text" if exact[f"e{i}"] > 0.5 * stat("n", c) else "cat"

    # 3. Value counts of categorical columns and of numeric ones that may have few values.
    few_long = [
        c for c in names if kind_of[c] == "num" and stat("d", c) <= SMALL_DISTINCT and stat("f", c) > max_sample
    ]
    grouped = [c for c in names if kind_of[c] in ("cat", "pending") or c in few_long]
    found = _value_counts(frame, grouped, {c: fin[c] for c in grouped}) if grouped else {}
    for c in names:
        if kind_of[c] == "pending":
            kind_of[c] = "cat" if found[c][0].size <= INTEGER_CATEGORIES_MAX else "num"

    # 4. Numeric columns short enough to keep whole; 5. quantiles of the longer ones.
    short = [c for c in names if kind_of[c] == "num" and stat("f", c) <= max_sample]
    long = [c for c in names if kind_of[c] == "num" and stat("f", c) > max_sample]
    kept = _collect_values(frame, short, {c: fin[c] for c in short}) if short else {}
    quantiles = _quantiles(frame, long, {c: fin[c] for c in long}, max_sample) if long else {}

    columns = {}
    for c in names:
        kind = kind_of[c]
        if kind in ("text", "datetime"):
            columns[c] = ColumnProfile(c, kind, rows)
        elif kind == "cat":
            columns[c] = _categorical(c, *found[c])
        elif c in kept:
            columns[c] = profile_column(c, kept[c], "num", max_sample)
        else:
            values = counts = None
            n_unique = MAX_VALUE_COUNTS + 1
            if c in found and found[c][0].size <= MAX_VALUE_COUNTS:
                raw, counts = found[c]
                values = np.asarray(raw, dtype=np.float64)
                order = np.argsort(values, kind="stable")
                values, counts = values[order], counts[order]
                n_unique = int(values.size)
            columns[c] = ColumnProfile(
                c,
                "num",
                int(stat("f", c)),
                std=float(stat("std", c)),
                mean=float(stat("mean", c)),
                minimum=float(stat("lo", c)),
                maximum=float(stat("hi", c)),
                sample=quantiles[c],
                exact=False,
                n_unique=n_unique,
                values=values,
                counts=counts,
            )
    return ReferenceProfile(columns)


def _value_counts(frame: Any, names: list[str], exprs: dict[str, Any]) -> dict[str, tuple[np.ndarray, np.ndarray]]:
    """Per column its distinct non-missing values (the Arrow path's NumPy dtype) and their counts,
    from one ``GROUPING SETS`` aggregation: each result row has one column set, the rest null."""
    import pyarrow.compute as pc
    from pyspark.sql import functions as F

    keys = [f"v{i}" for i in range(len(names))]
    table = (
        frame.select(*[exprs[c].alias(k) for c, k in zip(names, keys, strict=True)])
        .groupingSets([[k] for k in keys], *keys)
        .agg(F.count(F.lit(1)).alias("n"))
        .toArrow()
    )
    counts = table.column("n")
    out = {}
    for c, k in zip(names, keys, strict=True):
        present = pc.is_valid(table.column(k))
        values = _numpy(pc.filter(table.column(k), present))
        out[c] = (values, np.asarray(pc.filter(counts, present).to_numpy(), dtype=np.int64))
    return out


def _categorical(name: str, values: np.ndarray, counts: np.ndarray) -> ColumnProfile:
    """The categorical profile of distinct values and counts: labelled as ``clean_categorical``
    labels them (values were grouped by type, so 3 and 3.0 of one float column are one already)."""
    labels = clean_categorical(values)
    if labels.size != values.size:  # only missing values are dropped, and those were never grouped
        raise AssertionError(f"column {name!r}: labels lost values")
    merged: dict[str, int] = {}
    for label, count in zip(labels.tolist(), counts.tolist(), strict=True):
        merged[label] = merged.get(label, 0) + int(count)
    cats = np.array(sorted(merged), dtype=str)
    totals = np.array([merged[c] for c in cats.tolist()], dtype=np.int64)
    return ColumnProfile(name, "cat", int(totals.sum()), n_unique=int(cats.size), values=cats, counts=totals)


def _collect_values(frame: Any, names: list[str], exprs: dict[str, Any]) -> dict[str, np.ndarray]:
    """The finite values of columns with at most ``max_sample`` of them: the rows where any is set."""
    from functools import reduce

    keys = [f"v{i}" for i in range(len(names))]
    selected = frame.select(*[exprs[c].alias(k) for c, k in zip(names, keys, strict=True)])
    any_set = reduce(lambda a, b: a | b, [selected[k].isNotNull() for k in keys])
    table = selected.where(any_set).toArrow()
    return {c: _numpy(table.column(k)) for c, k in zip(names, keys, strict=True)}


def _quantiles(frame: Any, names: list[str], exprs: dict[str, Any], size: int) -> dict[str, np.ndarray]:
    """``size`` mid-point quantiles per column, ``percentile_approx`` at accuracy ``size``.

    The fractions go in as one string literal split and cast (a foldable expression): an array of
    100,000 literals took seconds to analyse."""
    from pyspark.sql import functions as F

    fractions = ",".join(repr((i + 0.5) / size) for i in range(size))
    percentages = F.split(F.lit(fractions), ",").cast("array<double>")
    aggs = [F.percentile_approx(exprs[c].cast("double"), percentages, size).alias(f"q{i}") for i, c in enumerate(names)]
    table = frame.agg(*aggs).toArrow()
    return {c: np.asarray(table.column(f"q{i}")[0].as_py(), dtype=np.float64) for i, c in enumerate(names)}
