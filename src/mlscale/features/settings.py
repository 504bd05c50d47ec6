"""The ``[features]`` section of mlscale.toml: where the registry and the stores live, and the
definitions themselves in their TOML shape.

Kept free of heavy imports (config.py imports it); the definitions here are compiled into the one
internal form by :mod:`mlscale.features.definitions`, exactly as Python-declared ones are.
"""

from __future__ import annotations

import msgspec

OFFLINE_ENGINES = ("duckdb", "spark")


class EntityConfig(msgspec.Struct, kw_only=True, forbid_unknown_fields=True):
    """``[[features.entities]]``: a business object features are keyed by (driver, customer...)."""

    name: str
    # Column holding the entity's id in sources and entity frames; defaults to the entity's name.
    join_key: str = ""
    # int64 or string.
    dtype: str = "int64"
    description: str = ""


class FeatureViewConfig(msgspec.Struct, kw_only=True, forbid_unknown_fields=True):
    """``[[features.views]]``: features read from one source, keyed by entities, stamped with time."""

    name: str
    entities: list[str]
    # A Parquet or CSV file (or glob), or a folder of Parquet files written with a final "/",
    # relative to the project folder; or a query (DuckDB SQL; Spark SQL with offline_engine = "spark").
    source: str = ""
    query: str = ""
    timestamp_field: str = "event_timestamp"
    # Optional column of when each row was written: among rows of one entity with equal event time,
    # the greatest created time wins. Without it (or on equal created times) the row with the
    # greatest feature values, compared in declared order with nulls lowest, wins.
    created_timestamp_field: str = ""
    # Seconds, or a string such as "90s", "15m", "2h", "7d"; 0 means values never go stale.
    ttl: float | str = 0
    # feature name -> type (float32, float64, int32, int64, bool), in the order models see them.
    features: dict[str, str] = msgspec.field(default_factory=dict)
    description: str = ""


class FeatureServiceConfig(msgspec.Struct, kw_only=True, forbid_unknown_fields=True):
    """``[[features.services]]``: the named set of features one model uses ("view:feature" or "view:*")."""

    name: str
    features: list[str]
    description: str = ""


class FeaturesSettings(msgspec.Struct, kw_only=True, forbid_unknown_fields=True):
    """The feature store: registry, online store and definitions."""

    # A SQLite file (embedded) or a PostgreSQL DSN ("postgresql://...").
    registry: str = "features/registry.db"
    # Online store: one URL or several (sharded by consistent hashing), as mlscale.storage opens them:
    # "memory://", "sqlite:///features/online.db", "redis://host:6379/0", "redis+cluster://host:6379".
    online_store: str | list[str] = msgspec.field(
        default_factory=lambda: [f"sqlite:///features/online/shard-{i}.db" for i in range(4)]
    )
    # Optional file with more definitions: a features TOML (same shape as this section) or a Python
    # module whose top-level Entity / FeatureView / FeatureService objects are collected.
    definitions: str = ""
    # Rows per chunk when materializing.
    chunk_rows: int = 100_000
    # Engine of training sets and materialization: "duckdb" (embedded, one host) or "spark"
    # (PySpark, the `spark` extra: sources in a data lake, work spread over a cluster).
    offline_engine: str = "duckdb"
    # Spark master when offline_engine = "spark": "local[2]", "spark://host:7077", "k8s://https://...".
    # A SparkSession already active in the process is used as it is.
    spark_master: str = "local[2]"
    # Extra Spark settings for the session mlscale builds, e.g. {"spark.executor.memory" = "8g"}.
    spark_config: dict[str, str] = msgspec.field(default_factory=dict)
    entities: list[EntityConfig] = msgspec.field(default_factory=list)
    views: list[FeatureViewConfig] = msgspec.field(default_factory=list)
    services: list[FeatureServiceConfig] = msgspec.field(default_factory=list)

    def __post_init__(self) -> None:
        if self.offline_engine not in OFFLINE_ENGINES:
            raise ValueError(
                f"features.offline_engine must be one of {', '.join(OFFLINE_ENGINES)}, not {self.offline_engine!r}"
            )
        if not self.spark_master:
            raise ValueError("features.spark_master must not be empty (e.g. local[2] or spark://host:7077)")
