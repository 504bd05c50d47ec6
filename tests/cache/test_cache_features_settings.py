"""The feature cache reads through to its store; [cache] settings resolve per model."""

from __future__ import annotations

import asyncio
import time

import pytest

from mlscale.cache import CachedKeyValue, Caches, CacheSettings, ModelCacheSettings, PredictionCache
from mlscale.config import parse_settings
from mlscale.errors import ConfigError
from mlscale.storage.redis_store import RedisKeyValue


@pytest.fixture
def backing(redis_url: str, prefix: bytes):
    store = RedisKeyValue(redis_url, prefix=prefix)
    yield store
    store.delete(list(store.scan()))
    store.close()


def test_feature_cache_serves_repeats_from_memory_until_its_short_ttl(backing: RedisKeyValue) -> None:
    backing.set_many({b"user:1": b"a", b"user:2": b"b"})
    cached = CachedKeyValue(backing, ttl=0.2)
    assert cached.get_many([b"user:1", b"user:2", b"user:3"]) == [b"a", b"b", None]
    backing.set_many({b"user:1": b"changed"})  # another process writes behind the cache's back
    assert cached.get(b"user:1") == b"a"
    deadline = time.monotonic() + 5
    while cached.get(b"user:1") != b"changed" and time.monotonic() < deadline:
        time.sleep(0.02)
    assert cached.get(b"user:1") == b"changed"


def test_feature_cache_writes_and_deletes_go_through(backing: RedisKeyValue) -> None:
    cached = CachedKeyValue(backing, ttl=60)
    cached.set_many({b"f": b"1"}, ttl=30)
    assert backing.get(b"f") == b"1" and cached.get(b"f") == b"1"
    assert cached.delete([b"f"]) == 1
    assert cached.get(b"f") is None and backing.get(b"f") is None

    async def async_path() -> list[bytes | None]:
        await cached.aset_many({b"g": b"2"})
        got = await cached.aget_many([b"g", b"h"])
        await backing.aclose()
        return got

    assert asyncio.run(async_path()) == [b"2", None]


def test_cache_settings_resolve_model_overrides_over_defaults() -> None:
    settings = parse_settings(
        {
            "cache": {
                "ttl": 120,
                "l2": "memory://",
                "models": {"iris": {"enabled": True, "l1_max_bytes": 1000}},
            }
        }
    ).cache
    iris = settings.for_model("iris")
    assert iris.enabled and iris.ttl == 120 and iris.l1_max_bytes == 1000 and iris.l2 == "memory://"
    assert not settings.for_model("wine").enabled
    assert settings.for_model("wine", ModelCacheSettings(enabled=True, ttl=5)).ttl == 5
    caches = Caches(settings)
    assert isinstance(caches.for_model("iris"), PredictionCache)
    assert caches.for_model("wine") is None
    assert caches.for_model("iris").l2.store is caches.store("memory://")


def test_unknown_cache_setting_is_a_config_error_naming_it() -> None:
    with pytest.raises(ConfigError, match="ttl_seconds"):
        parse_settings({"cache": {"ttl_seconds": 3}})
    assert CacheSettings().enabled is False


def test_a_sqlite_shared_tier_keeps_a_small_page_cache_per_thread(tmp_path) -> None:
    """Every new answer is an insert at a random key, so each thread's SQLite page cache fills to
    its limit as the file grows: the prediction cache's tier uses a small one, wherever it is used
    from, while a feature store opened directly keeps its large one."""
    import threading

    from mlscale.cache.factory import L2_SQLITE_PAGE_CACHE_KIB
    from mlscale.storage import open_store

    caches = Caches(CacheSettings(l2="sqlite:///cache.db"), root=tmp_path)
    store = caches.store("sqlite:///cache.db")
    sizes = []

    def page_cache_kib() -> None:
        store.set_many({threading.current_thread().name.encode(): b"v"}, ttl=60)
        sizes.append(-store._connection().execute("PRAGMA cache_size").fetchone()[0])

    page_cache_kib()
    worker = threading.Thread(target=page_cache_kib)
    worker.start()
    worker.join()
    assert sizes == [L2_SQLITE_PAGE_CACHE_KIB, L2_SQLITE_PAGE_CACHE_KIB]
    features = open_store("sqlite:///features.db", root=tmp_path)
    assert -features._connection().execute("PRAGMA cache_size").fetchone()[0] > L2_SQLITE_PAGE_CACHE_KIB
    caches.close()
    features.close()


def test_a_thread_that_ends_takes_its_sqlite_connection_with_it(tmp_path) -> None:
    """One connection per thread, closed when the thread ends: a caller whose threads come and go
    does not pile up connections, each holding its page cache, for the store's lifetime."""
    import gc
    import threading

    from mlscale.storage import open_store

    store = open_store("sqlite:///kv.db", root=tmp_path)
    for i in range(20):
        worker = threading.Thread(target=store.set_many, args=({b"k%d" % i: b"v"},), kwargs={"ttl": 60})
        worker.start()
        worker.join()
    gc.collect()
    assert len(store._connections) == 1  # the constructor's thread's, which is still running
    assert store.get_many([b"k%d" % i for i in range(20)]) == [b"v"] * 20
    store.close()
