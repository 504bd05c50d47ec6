"""Build caches from CacheSettings, sharing one L2 store connection per URL."""

from __future__ import annotations

from pathlib import Path

from mlscale.cache.features import CachedKeyValue
from mlscale.cache.settings import CacheSettings, ModelCacheSettings
from mlscale.cache.tiered import PredictionCache
from mlscale.storage import KeyValue, open_store

# SQLite's page cache per connection of a prediction cache's shared tier: SQLite's own default.
# Why not a feature store's 64 MiB: every new answer is an insert at a random key, so each writing
# thread's page cache fills up to its limit as the file grows (a long-running server's memory grew
# ~10 MiB a minute with several threads at 64 MiB each, and at 8 MiB each was still filling after 20
# minutes), while reads go through the memory map and the in-process tier answers the hot keys. At
# 2 MiB a worker's bound is 14 MiB (the event loop and 6 executor threads), reached in minutes.
L2_SQLITE_PAGE_CACHE_KIB = 2 * 1024


class Caches:
    """The caches of one worker process: ``caches.for_model("iris")`` -> PredictionCache or None."""

    def __init__(self, settings: CacheSettings, *, root: Path | str | None = None) -> None:
        self.settings = settings
        self.root = root
        self._stores: dict[str, KeyValue] = {}
        self._caches: dict[str, PredictionCache | None] = {}

    def store(self, url: str) -> KeyValue:
        """The L2 store for ``url``, opened once."""
        if url not in self._stores:
            self._stores[url] = open_store(
                url, root=self.root, timeout=self.settings.l2_timeout, sqlite_page_cache_kib=L2_SQLITE_PAGE_CACHE_KIB
            )
        return self._stores[url]

    def for_model(self, name: str, override: ModelCacheSettings | None = None) -> PredictionCache | None:
        """The model's prediction cache, or None when caching is off for it."""
        if name not in self._caches:
            resolved = self.settings.for_model(name, override)
            self._caches[name] = (
                PredictionCache(
                    l1_max_bytes=resolved.l1_max_bytes,
                    ttl=resolved.ttl,
                    l2=self.store(resolved.l2) if resolved.l2 else None,
                    l2_timeout=self.settings.l2_timeout,
                    l2_retry_after=self.settings.l2_retry_after,
                )
                if resolved.enabled
                else None
            )
        return self._caches[name]

    def cached(self, name: str) -> PredictionCache | None:
        """The model's prediction cache if one was built, without building one."""
        return self._caches.get(name)

    def features(self, store: KeyValue) -> CachedKeyValue:
        """The feature cache in front of an online store."""
        return CachedKeyValue(store, ttl=self.settings.feature_ttl, l1_max_bytes=self.settings.feature_l1_max_bytes)

    def close(self) -> None:
        for store in self._stores.values():
            store.close()
        self._stores.clear()
