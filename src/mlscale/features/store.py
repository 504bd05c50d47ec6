"""A project's feature store: registry, offline store and online store wired from its settings.

The CLI and the server both start here: ``FeatureStore(settings)`` opens the registry; the applied
definitions, the offline engine (DuckDB, or Spark with ``offline_engine = "spark"``) and the online
KeyValue are opened on first use.
"""

from __future__ import annotations

from collections.abc import Sequence
from datetime import UTC, datetime
from typing import Any

import pyarrow as pa

from mlscale.config import Settings
from mlscale.errors import ConfigError
from mlscale.features.definitions import FeatureRepo, FeatureService
from mlscale.features.engine import OfflineEngine, open_offline_engine
from mlscale.features.loader import load_definitions
from mlscale.features.materialize import Progress
from mlscale.features.online import OnlineStore, OnlineTarget
from mlscale.features.registry import ApplyResult, Registry
from mlscale.storage.base import KeyValue


def open_online_kv(settings: Settings) -> KeyValue:
    """The online store's KeyValue from ``[features] online_store`` (relative paths: project folder)."""
    return online_target(settings).open_kv()


def online_target(settings: Settings) -> OnlineTarget:
    """The online store of ``[features] online_store`` as data other processes can open."""
    return OnlineTarget(settings.features.online_store, settings.root)


class FeatureStore:
    """Everything ``mlscale features ...`` and the server need, from one Settings."""

    def __init__(self, settings: Settings, kv: KeyValue | None = None) -> None:
        self.settings = settings
        target = settings.features.registry
        if not target.startswith(("postgresql://", "postgres://")):
            target = str(settings.resolve(target))
        self.registry = Registry(target)
        self._kv = kv
        self._repo: FeatureRepo | None = None
        self._online: OnlineStore | None = None
        self._offline: OfflineEngine | None = None

    @property
    def repo(self) -> FeatureRepo:
        if self._repo is None:
            self._repo = self.registry.load()
        return self._repo

    @property
    def offline(self) -> OfflineEngine:
        """The engine of ``[features] offline_engine`` (DuckDB unless "spark")."""
        if self._offline is None or self._offline.repo is not self.repo:
            self._offline = open_offline_engine(self.repo, self.settings.features, self.settings.root)
        return self._offline

    @property
    def online(self) -> OnlineStore:
        if self._online is None:
            # The store opened from the settings can be opened again elsewhere (Spark executors).
            target = online_target(self.settings) if self._kv is None else None
            kv = self._kv if self._kv is not None else open_online_kv(self.settings)
            self._kv = kv
            self._online = OnlineStore(kv, self.repo, target=target)
        return self._online

    def apply(self) -> ApplyResult:
        """Validate the project's definitions against their sources, then store them."""
        repo = load_definitions(self.settings)
        if not repo.views and not repo.entities:
            raise ConfigError("no feature definitions: add [[features.entities]] and [[features.views]]")
        open_offline_engine(repo, self.settings.features, self.settings.root).validate_sources()
        result = self.registry.apply(repo)
        self._repo, self._online = repo, None
        return result

    def materialize(
        self,
        *,
        start: datetime | None = None,
        end: datetime | None = None,
        incremental: bool = False,
        views: Sequence[str] | None = None,
        progress: Progress | None = None,
    ) -> dict[str, int]:
        """Offline to online: (start, end] or, incrementally, (each view's watermark, end]."""
        end = end or datetime.now(UTC)
        if start is not None and start >= end:
            raise ConfigError(f"--start {start.isoformat()} is not before --end {end.isoformat()}")
        names = list(views) if views else list(self.repo.views)
        for name in names:
            if name not in self.repo.views:
                raise ConfigError(f"unknown feature view {name!r}")
        starts = {name: self.registry.watermark(name) for name in names} if incremental else None

        # A non-incremental run moves the watermark only forward, never back over newer data.
        def done(view: str, when: datetime) -> None:
            current = self.registry.watermark(view)
            if current is None or when > current:
                self.registry.set_watermark(view, when)

        return self.offline.materialize(
            self.online,
            start=start,
            end=end,
            starts=starts,
            views=names,
            chunk_rows=self.settings.features.chunk_rows,
            progress=progress,
            on_view_done=done,
        )

    def training_set(
        self,
        entity_df: Any,
        features: str | FeatureService | Sequence[str],
        *,
        timestamp_field: str = "event_timestamp",
        full_feature_names: bool = False,
    ) -> pa.Table:
        """Point-in-time-correct features for each row of ``entity_df`` (see OfflineStore)."""
        return self.offline.get_historical_features(
            entity_df, features, timestamp_field=timestamp_field, full_feature_names=full_feature_names
        )

    def close(self) -> None:
        self.registry.close()
        if self._kv is not None:
            self._kv.close()

    def __enter__(self) -> FeatureStore:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()
