"""Offline store: DuckDB over the views' sources (Parquet, CSV or a query), for training sets and
for materialization.

Point-in-time joins are DuckDB ASOF LEFT JOINs: for each entity-frame row, the latest source row of
the same entity at or before the row's timestamp (never after), then blanked when older than the
view's TTL. Since the ASOF match is already the latest row, if it is too old every earlier one is
too, so the TTL check after the join is exact. Entity-frame rows are numbered before the join and
the result is ordered by that number: every row is kept, duplicates included, in input order.
An ASOF join picks any one of several rows at the same time, so each view's rows are first cut to
one per entity and event time by the tie rule (``tie_order``: greatest created time, then greatest
feature values), the same rule materialization uses: online and offline answers agree.
All timestamps are compared in UTC (timezone-aware ones are converted, naive ones taken as UTC).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import duckdb
import pyarrow as pa
import pyarrow.parquet as pq

from mlscale.errors import ConfigError, InvalidInput
from mlscale.features.definitions import STRING, FeatureRepo, FeatureService, FeatureView

_SQL_TYPES = {
    "float32": "FLOAT",
    "float64": "DOUBLE",
    "int32": "INTEGER",
    "int64": "BIGINT",
    "bool": "BOOLEAN",
    STRING: "VARCHAR",
}
_ROW = "__mlscale_row"
_ETS = "__mlscale_ts"
_CREATED = "__mlscale_created"


def _ident(name: str) -> str:
    return '"' + name.replace('"', '""') + '"'


def _literal(text: str) -> str:
    return "'" + text.replace("'", "''") + "'"


def arrow_table(relation: duckdb.DuckDBPyRelation) -> pa.Table:
    """A query's result as an Arrow table (the method's name changed in DuckDB 1.4)."""
    method = getattr(relation, "to_arrow_table", None) or relation.arrow
    return method()


def arrow_reader(relation: duckdb.DuckDBPyRelation, rows: int) -> pa.RecordBatchReader:
    """A query's result as a stream of Arrow batches of up to ``rows`` rows."""
    method = getattr(relation, "to_arrow_reader", None) or relation.fetch_arrow_reader
    return method(rows)


def _utc_timestamp_sql(column: str, sql_type: str | None) -> str:
    """SQL turning a source's event time into a UTC TIMESTAMP.

    A CAST from TIMESTAMP WITH TIME ZONE goes through ICU's calendar for every value (68 ms per
    million rows here); the instant's microseconds since the epoch give the same UTC wall time
    in 11 ms. Other types (TIMESTAMP, TIMESTAMP_NS, DATE) keep the CAST.
    """
    if sql_type == "TIMESTAMP WITH TIME ZONE":
        return f"make_timestamp(epoch_us({column}))"
    return f"CAST({column} AS TIMESTAMP)"


def _utc_naive(when: datetime) -> datetime:
    return when.astimezone(UTC).replace(tzinfo=None) if when.tzinfo else when


class OfflineStore:
    """Runs the SQL that definitions compile to; ``root`` resolves relative source paths.

    The DuckDB offline engine (see ``mlscale.features.engine.OfflineEngine``).
    """

    name = "duckdb"

    def __init__(self, repo: FeatureRepo, root: str | Path = ".") -> None:
        self.repo = repo
        self.root = Path(root).resolve()

    def validate_sources(self) -> None:
        """Check every view's source (see ``validate_source``)."""
        conn = self.connect()
        try:
            for view in self.repo.views.values():
                self.validate_source(view, conn)
        finally:
            conn.close()

    def materialize(self, online: Any, **options: Any) -> dict[str, int]:
        """Newest rows per entity into ``online`` (see ``mlscale.features.materialize.materialize``)."""
        from mlscale.features.materialize import materialize

        return materialize(self.repo, self, online, **options)

    def connect(self) -> duckdb.DuckDBPyConnection:
        conn = duckdb.connect()
        conn.execute("SET TimeZone = 'UTC'")
        # Relative paths in sources and in user queries resolve against the project folder.
        conn.execute(f"SET file_search_path = {_literal(str(self.root))}")
        return conn

    # --- sources ------------------------------------------------------------------------------

    def source_sql(self, view: FeatureView) -> str:
        """A FROM-clause item reading the view's source."""
        if view.query:
            return f"({view.query})"
        path = Path(view.source)
        path = path if path.is_absolute() else self.root / path
        if view.source.endswith("/"):  # a folder of Parquet files, partition folders included
            return f"read_parquet({_literal(str(path / '**' / '*.parquet'))})"
        reader = "read_csv" if ".csv" in path.name.lower() else "read_parquet"
        return f"{reader}({_literal(str(path))})"

    def source_columns(self, view: FeatureView, conn: duckdb.DuckDBPyConnection | None = None) -> dict[str, str]:
        conn = conn or self.connect()
        try:
            rows = conn.execute(f"DESCRIBE SELECT * FROM {self.source_sql(view)}").fetchall()
        except duckdb.Error as exc:
            raise ConfigError(f"feature view {view.name!r}: cannot read its source: {exc}") from None
        return {row[0]: row[1] for row in rows}

    def validate_source(
        self, view: FeatureView, conn: duckdb.DuckDBPyConnection | None = None, *, since_apply: bool = False
    ) -> dict[str, str]:
        """Check the source has the join keys, timestamps and features, with usable types; its columns.

        ``since_apply``: the check runs before a query on applied definitions, so a missing column
        means the source changed after ``apply`` (said in the message, instead of DuckDB's binder error).
        """
        columns = self.source_columns(view, conn)
        later = " (it was there at `mlscale features apply`; fix the source or the view and apply again)"
        check_source_types(
            view,
            self.repo,
            columns,
            is_timestamp=lambda t: t.startswith("TIMESTAMP") or t == "DATE",
            key_fits=_compatible_key,
            feature_fits=lambda dtype, t: t == "VARCHAR" if dtype == STRING else _numeric(t),
            missing_note=later if since_apply else "",
        )
        return columns

    def rows_sql(self, view: FeatureView, columns: dict[str, str] | None = None) -> str:
        """Every usable source row, typed: join keys, ``__mlscale_ts`` (UTC TIMESTAMP),
        ``__mlscale_created`` (with a created timestamp field) and all features. Rows with a null
        join key or event time can never match an entity, so they are left out here.

        ``columns`` (the source's column types) lets TIMESTAMP WITH TIME ZONE columns skip the
        calendar conversion (see ``_utc_timestamp_sql``).
        """
        types = columns or {}
        keys = [_ident(self.repo.entities[e].join_key) for e in view.entities]
        ts = _ident(view.timestamp_field)
        cols = [*keys, f"{_utc_timestamp_sql(ts, types.get(view.timestamp_field))} AS {_ETS}"]
        if view.created_timestamp_field:
            created = view.created_timestamp_field
            cols.append(f"{_utc_timestamp_sql(_ident(created), types.get(created))} AS {_CREATED}")
        cols += [f"CAST({_ident(f.name)} AS {_SQL_TYPES[f.dtype]}) AS {_ident(f.name)}" for f in view.features]
        not_null = " AND ".join(f"{c} IS NOT NULL" for c in [*keys, ts])
        return f"SELECT {', '.join(cols)} FROM {self.source_sql(view)} WHERE {not_null}"

    def view_sql(
        self,
        view: FeatureView,
        features: Sequence[str] | None = None,
        conn: duckdb.DuckDBPyConnection | None = None,
    ) -> str:
        """The view's rows, one per entity and event time: join keys, ``__mlscale_ts`` and typed features.

        Among rows of one entity with the same event time the tie rule (``tie_order``) keeps one,
        always the same one, whatever the file order or DuckDB's threads. With ``conn`` the source
        is checked first (a column gone since ``apply`` is named, with the file).
        """
        by_name = {f.name: f for f in view.features}
        chosen = [by_name[n] for n in (features if features is not None else by_name)]
        columns = self.validate_source(view, conn, since_apply=True) if conn is not None else None
        keys = [_ident(self.repo.entities[e].join_key) for e in view.entities]
        cols = ", ".join([*keys, _ETS] + [_ident(f.name) for f in chosen])
        slot = ", ".join([*keys, _ETS])
        # Only (entity, time) slots holding several rows are ranked; the others pass through an anti
        # join, over rows read once (MATERIALIZED). CPU time of a 1M x 1M training set without ties,
        # ad-hoc (not a bench run): no tie rule 0.94-1.14 s, this 1.10 s, ranking every row 1.8-1.96 s.
        return (
            f"WITH rows AS MATERIALIZED ({self.rows_sql(view, columns)}), "
            f"tied AS (SELECT {slot} FROM rows GROUP BY ALL HAVING count(*) > 1) "
            f"SELECT {cols} FROM rows ANTI JOIN tied USING ({slot}) UNION ALL "
            f"(SELECT {cols} FROM rows SEMI JOIN tied USING ({slot}) "
            f"QUALIFY row_number() OVER (PARTITION BY {slot} ORDER BY {tie_order(view)}) = 1)"
        )

    # --- training sets ------------------------------------------------------------------------

    def get_historical_features(
        self,
        entity_df: Any,
        features: str | FeatureService | Sequence[str],
        *,
        timestamp_field: str = "event_timestamp",
        full_feature_names: bool = False,
    ) -> pa.Table:
        """Point-in-time-correct training set: the entity frame's columns, then the features.

        ``entity_df`` is a pandas DataFrame, an Arrow table or a Parquet/CSV path with the join keys
        and ``timestamp_field``. Rows come back in input order, duplicates kept; a feature is null
        where no row of its view is at or before the timestamp within the TTL.
        """
        table = _as_table(entity_df)
        resolved = self.repo.resolve(features)
        out_names = self.repo.output_names(resolved, full_feature_names)
        clash = set(out_names) & set(table.column_names)
        if clash:
            raise InvalidInput(f"entity frame already has columns named like features: {sorted(clash)}")
        self._check_entity_frame(table, resolved, timestamp_field)
        table = table.append_column(_ROW, pa.array(range(table.num_rows), pa.int64()))

        conn = self.connect()
        try:
            conn.register("entity_df", table)
            sql = self._training_sql(conn, table, resolved, out_names, timestamp_field)
            try:
                result = arrow_table(conn.sql(sql))
            except duckdb.Error as exc:
                raise InvalidInput(f"cannot build the training set: {exc}") from None
        finally:
            conn.close()
        types = [
            next(f.dtype for f in self.repo.views[view_name].features if f.name == feat)
            for view_name, feats in resolved
            for feat in feats
        ]
        ints = {name: dtype for name, dtype in zip(out_names, types, strict=True) if dtype in _PANDAS_INTS}
        return nullable_integers(result, ints)

    def _training_sql(
        self,
        conn: duckdb.DuckDBPyConnection,
        table: pa.Table,
        resolved: list,
        out_names: list[str],
        timestamp_field: str,
    ) -> str:
        """One ASOF LEFT JOIN per view against the registered ``entity_df``, in input order."""
        selects = [f"e.* EXCLUDE ({_ROW}, {_ETS})"]
        joins = []
        names = iter(out_names)
        for i, (view_name, feats) in enumerate(resolved):
            view = self.repo.views[view_name]
            alias = f"v{i}"
            keys = [self.repo.entities[e].join_key for e in view.entities]
            on = " AND ".join(f"e.{_ident(k)} = {alias}.{_ident(k)}" for k in keys)
            joins.append(
                f"ASOF LEFT JOIN ({self.view_sql(view, feats, conn)}) {alias} ON {on} AND e.{_ETS} >= {alias}.{_ETS}"
            )
            ttl_us = round(view.ttl * 1_000_000)
            for feat in feats:
                value = f"{alias}.{_ident(feat)}"
                if ttl_us:
                    value = f"CASE WHEN {alias}.{_ETS} >= e.{_ETS} - INTERVAL '{ttl_us} microseconds' THEN {value} END"
                selects.append(f"{value} AS {_ident(next(names))}")
        ts_type = table.schema.field(timestamp_field).type
        zoned = pa.types.is_timestamp(ts_type) and ts_type.tz is not None
        column = _ident(timestamp_field)
        if zoned and ts_type.unit != "us":
            # pandas' default datetime64[ns, UTC] arrives as TIMESTAMPTZ_NS, which epoch_us() refuses.
            column = f"CAST({column} AS TIMESTAMPTZ)"
        entity_ts = _utc_timestamp_sql(column, "TIMESTAMP WITH TIME ZONE" if zoned else None)
        return (
            f"SELECT {', '.join(selects)} FROM "
            f"(SELECT *, {entity_ts} AS {_ETS} FROM entity_df) e "
            f"{' '.join(joins)} ORDER BY e.{_ROW}"
        )

    def _check_entity_frame(self, table: pa.Table, resolved: list, timestamp_field: str) -> None:
        check_entity_frame(self.repo, table, resolved, timestamp_field)

    # --- materialization ----------------------------------------------------------------------

    def latest_rows(
        self,
        conn: duckdb.DuckDBPyConnection,
        view: FeatureView,
        start: datetime | None,
        end: datetime,
    ) -> int:
        """Fill temp table ``latest`` with the newest row per entity in (start, end]; row count.

        Rows at the newest time are ranked by the same tie rule as training sets (``tie_order``),
        so the online row is the one a training set at ``end`` returns.
        """
        columns = self.validate_source(view, conn, since_apply=True)
        keys = [_ident(self.repo.entities[e].join_key) for e in view.entities]
        where = [f"{_ETS} <= {_literal(_utc_naive(end).isoformat())}::TIMESTAMP"]
        if start is not None:
            where.append(f"{_ETS} > {_literal(_utc_naive(start).isoformat())}::TIMESTAMP")
        # The newest time per entity first (a hash aggregate), then only the rows at that time are
        # ranked: sorting every row by all its features for the tie-break cost 2.5x as much.
        same_entity = " AND ".join(f"src.{k} = newest.{k}" for k in keys)
        out = [f"src.{k}" for k in keys] + [f"src.{_ETS}"] + [f"src.{_ident(f.name)}" for f in view.features]
        conn.execute(
            f"CREATE OR REPLACE TEMP TABLE latest AS "
            f"WITH src AS (SELECT * FROM ({self.rows_sql(view, columns)}) WHERE {' AND '.join(where)}), "
            f"newest AS (SELECT {', '.join(keys)}, max({_ETS}) AS __newest FROM src GROUP BY ALL) "
            f"SELECT {', '.join(out)} FROM src SEMI JOIN newest ON {same_entity} AND src.{_ETS} = newest.__newest "
            f"QUALIFY row_number() OVER (PARTITION BY {', '.join(f'src.{k}' for k in keys)} "
            f"ORDER BY {tie_order(view, 'src.')}) = 1"
        )
        return conn.execute("SELECT count(*) FROM latest").fetchall()[0][0]


def check_entity_frame(repo: FeatureRepo, table: pa.Table, resolved: list, timestamp_field: str) -> None:
    """Reject an entity frame without the timestamp and join keys the views need, or with wrong types."""
    columns = dict(zip(table.column_names, table.schema.types, strict=True))
    if timestamp_field not in columns:
        raise InvalidInput(f"entity frame has no timestamp column {timestamp_field!r} (columns: {list(columns)})")
    ts_type = columns[timestamp_field]
    if not (pa.types.is_timestamp(ts_type) or pa.types.is_date(ts_type)):
        raise InvalidInput(f"entity frame column {timestamp_field!r} is {ts_type}, not a timestamp")
    if table.column(timestamp_field).null_count:
        raise InvalidInput(f"entity frame column {timestamp_field!r} has null timestamps")
    for view_name, _ in resolved:
        for entity_name in repo.views[view_name].entities:
            entity = repo.entities[entity_name]
            key = entity.join_key
            if key not in columns:
                raise InvalidInput(
                    f"entity frame has no join key column {key!r} needed by view {view_name!r} "
                    f"(columns: {list(columns)})"
                )
            is_int = pa.types.is_integer(columns[key])
            is_str = pa.types.is_string(columns[key]) or pa.types.is_large_string(columns[key])
            if (entity.dtype == "int64" and not is_int) or (entity.dtype == "string" and not is_str):
                raise InvalidInput(
                    f"entity frame column {key!r} is {columns[key]} but entity {entity.name!r} is {entity.dtype}"
                )


def tie_order(view: FeatureView, qualifier: str = "") -> str:
    """ORDER BY of the rows of one entity at one event time: the first one wins.

    The greatest created time first (a row without one loses to a row with one); then, so that the
    answer never depends on file order or threads, the greatest feature values compared in declared
    order, a null below any value (DuckDB orders NaN above every number, strings by UTF-8 bytes).
    """
    parts = [f"{qualifier}{_CREATED} DESC NULLS LAST"] if view.created_timestamp_field else []
    parts += [f"{qualifier}{_ident(f.name)} DESC NULLS LAST" for f in view.features]
    return ", ".join(parts)


# Integer features as pandas' nullable types, so a missing value stays an integer column with <NA>.
_PANDAS_INTS = {"int32": "Int32", "int64": "Int64"}


def nullable_integers(table: pa.Table, columns: dict[str, str]) -> pa.Table:
    """``table`` with pandas metadata saying its integer feature ``columns`` are nullable integers.

    Arrow keeps int64 with nulls as is; only ``to_pandas`` would turn such a column into float64
    (and 2**53 + 1 into 2**53). The metadata rides along into Parquet, so ``pd.read_parquet`` of a
    training set written by the CLI gives ``Int64`` too. Other columns convert as Arrow's default.
    """
    if not columns:
        return table
    frame = table.slice(0, 0).to_pandas()
    frame = frame.astype({name: _PANDAS_INTS[dtype] for name, dtype in columns.items()})
    metadata = pa.Schema.from_pandas(frame, preserve_index=False).metadata
    return table.replace_schema_metadata({**(table.schema.metadata or {}), b"pandas": metadata[b"pandas"]})


# DuckDB's integer column types: valid int64 entity keys, and numeric features.
_INTEGER_TYPES = ("TINYINT", "SMALLINT", "INTEGER", "BIGINT", "UTINYINT", "USMALLINT", "UINTEGER", "UBIGINT", "HUGEINT")


def _compatible_key(entity_dtype: str, sql_type: str) -> bool:
    if entity_dtype == "int64":
        return sql_type in _INTEGER_TYPES
    return sql_type == "VARCHAR"


def _numeric(sql_type: str) -> bool:
    return sql_type in ("BOOLEAN", "FLOAT", "DOUBLE", *_INTEGER_TYPES) or sql_type.startswith("DECIMAL")


def _as_table(entity_df: Any) -> pa.Table:
    if isinstance(entity_df, pa.Table):
        return entity_df
    if isinstance(entity_df, str | Path):
        path = Path(entity_df)
        if not path.exists():
            raise InvalidInput(f"entity frame file {path} does not exist")
        if path.suffix.lower() in (".parquet", ".pq"):
            return pq.read_table(path)
        if ".csv" in path.name.lower():
            conn = duckdb.connect()
            try:
                return arrow_table(conn.sql(f"SELECT * FROM read_csv({_literal(str(path))})"))
            finally:
                conn.close()
        raise InvalidInput(f"entity frame {path} must be a .parquet or .csv file")
    try:
        import pandas as pd
    except ImportError:  # pragma: no cover - pandas is a dependency
        pd = None
    if pd is not None and isinstance(entity_df, pd.DataFrame):
        return pa.Table.from_pandas(entity_df, preserve_index=False)
    raise InvalidInput(f"entity frame must be a pandas DataFrame, an Arrow table or a file, not {type(entity_df)}")


def check_source_types(
    view: FeatureView,
    repo: FeatureRepo,
    columns: dict[str, str],
    *,
    is_timestamp: Callable[[str], bool],
    key_fits: Callable[[str, str], bool],
    feature_fits: Callable[[str, str], bool],
    missing_note: str = "",
    timestamp_hint: Callable[[str], str] = lambda _type: "",
) -> None:
    """The source check both offline engines make, over ``columns`` (name -> the engine's type name):
    timestamps, join keys and features present with usable types, else a ConfigError naming the view
    and the column. The engines differ only in their type names, given as the predicates
    (``key_fits(entity dtype, type)``, ``feature_fits(feature dtype, type)``)."""
    what = f"feature view {view.name!r}"
    src = view.source or "its query"

    def need(column: str, role: str) -> str:
        if column not in columns:
            raise ConfigError(
                f"{what}: {role} column {column!r} not found in {src}{missing_note} (columns: {', '.join(columns)})"
            )
        return columns[column]

    stamps = [(view.timestamp_field, "timestamp")]
    if view.created_timestamp_field:
        stamps.append((view.created_timestamp_field, "created timestamp"))
    for column, role in stamps:
        ts_type = need(column, role)
        if not is_timestamp(ts_type):
            hint = timestamp_hint(ts_type)
            raise ConfigError(f"{what}: {role} column {column!r} is {ts_type} in {src}, not a timestamp{hint}")
    for entity_name in view.entities:
        entity = repo.entities[entity_name]
        key_type = need(entity.join_key, "join key")
        if not key_fits(entity.dtype, key_type):
            raise ConfigError(
                f"{what}: join key {entity.join_key!r} is {key_type} but entity {entity.name!r} is {entity.dtype}"
            )
    for feature in view.features:
        type_name = need(feature.name, "feature")
        if not feature_fits(feature.dtype, type_name):
            raise ConfigError(f"{what}: feature {feature.name!r} is {type_name} in {src}, cannot be {feature.dtype}")
