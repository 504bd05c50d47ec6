"""The online store on real backends: SQLite shards, Redis and Redis Cluster give identical answers;
resharding keeps every value readable."""

from __future__ import annotations

import uuid
from datetime import timedelta

import numpy as np
import pytest

from mlscale.features.materialize import materialize
from mlscale.features.offline import OfflineStore
from mlscale.features.online import OnlineStore, get_online_features
from mlscale.storage import open_store
from mlscale.storage.reshard import Layout, reshard


def sqlite_shards(folder, n):
    return [f"sqlite:///{folder}/shard-{i}.db" for i in range(n)]


@pytest.fixture(params=["redis", "redis-cluster"])
def redis_store(request):
    url = request.getfixturevalue("redis_url" if request.param == "redis" else "redis_cluster_url")
    store = open_store(f"{url}?prefix=mlscale-test-features-{uuid.uuid4().hex[:8]}:")
    yield store
    store.delete(list(store.scan()))
    store.close()


def read_everything(repo, kv, now):
    online = OnlineStore(kv, repo, clock=lambda: now.timestamp())
    ids = list(range(-2, 25))  # every driver, plus some that do not exist
    return get_online_features(online, ["driver_stats:*", "driver_rates:*"], ids, full_names=True)


@pytest.mark.service
def test_redis_and_sqlite_shards_give_identical_results(repo, tmp_path, redis_store, t0):
    sqlite = open_store(sqlite_shards(tmp_path, 3))
    end = t0 + timedelta(days=7)
    for kv in (sqlite, redis_store):
        materialize(repo, OfflineStore(repo), OnlineStore(kv, repo), end=end, chunk_rows=6)
    now = t0 + timedelta(days=8)  # some values fresh, some past the 2-day TTL
    a = read_everything(repo, sqlite, now)
    b = read_everything(repo, redis_store, now)
    assert a.keys() == b.keys()
    for name in a:
        np.testing.assert_array_equal(a[name], b[name], err_msg=name)
    statuses = set(a["driver_stats__status"].tolist())
    assert statuses >= {0, 1, 2}  # present, not found and stale all exercised
    assert sorted(sqlite.scan()) == sorted(redis_store.scan())
    sqlite.close()


def test_resharding_sqlite_keeps_every_value_readable(repo, tmp_path, t0):
    before_spec, after_spec = sqlite_shards(tmp_path, 2), sqlite_shards(tmp_path, 3)
    before = open_store(before_spec)
    end = t0 + timedelta(days=9)
    materialize(repo, OfflineStore(repo), OnlineStore(before, repo), end=end)
    want = read_everything(repo, before, end)
    shards_before = {url: open_store(url) for url in before_spec}
    shards_after = {url: open_store(url) for url in after_spec}
    state = reshard(
        Layout.of(shards_before, vnodes=160, replicas=1),
        Layout.of(shards_after, vnodes=160, replicas=1),
        tmp_path / "reshard.json",
    )
    assert state.complete and state.moved > 0
    after = open_store(after_spec)
    got = read_everything(repo, after, end)
    for name in want:
        np.testing.assert_array_equal(got[name], want[name], err_msg=name)
    for store in [before, after, *shards_before.values(), *shards_after.values()]:
        store.close()
