"""The offline engine: what the feature store asks of the batch side, whichever engine runs it.

Two engines satisfy it: DuckDB (``OfflineStore``, embedded, the default) and Spark
(``SparkOfflineStore``, for sources in a data lake and work spread over a cluster). Both give the
same answers row by row: the same point-in-time rule, TTL, tie rule and conditional online write.
``[features] offline_engine`` picks one; ``open_offline_engine`` builds it.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from datetime import datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol

if TYPE_CHECKING:
    import pyarrow as pa

    from mlscale.features.definitions import FeatureRepo, FeatureService
    from mlscale.features.materialize import Progress
    from mlscale.features.online import OnlineStore
    from mlscale.features.settings import FeaturesSettings


class OfflineEngine(Protocol):
    """Training sets and materialization over the views' sources."""

    repo: FeatureRepo
    # "duckdb" or "spark", as in [features] offline_engine.
    name: str

    def validate_sources(self) -> None:
        """Check every view's source has its keys, timestamps and features with usable types
        (ConfigError naming the view and the column otherwise)."""

    def get_historical_features(
        self,
        entity_df: Any,
        features: str | FeatureService | Sequence[str],
        *,
        timestamp_field: str = "event_timestamp",
        full_feature_names: bool = False,
    ) -> pa.Table:
        """Point-in-time-correct training set: the entity frame's columns, then the features, rows
        in input order with duplicates kept."""

    def materialize(
        self,
        online: OnlineStore,
        *,
        end: datetime,
        start: datetime | None = None,
        views: Sequence[str] | None = None,
        starts: dict[str, datetime | None] | None = None,
        chunk_rows: int = 100_000,
        progress: Progress | None = None,
        on_view_done: Callable[[str, datetime], None] | None = None,
    ) -> dict[str, int]:
        """Write the newest row per entity in (start, end] of each view into ``online`` with the
        conditional write (a stored newer record wins); rows written per view."""


def open_offline_engine(repo: FeatureRepo, settings: FeaturesSettings, root: str | Path) -> OfflineEngine:
    """The engine ``settings.offline_engine`` names, over ``repo`` with paths relative to ``root``."""
    if settings.offline_engine == "spark":
        from mlscale.features.spark import SparkOfflineStore, spark_session

        session = spark_session(settings.spark_master, settings.spark_config)
        return SparkOfflineStore(repo, root, session=session)
    from mlscale.features.offline import OfflineStore

    return OfflineStore(repo, root)
