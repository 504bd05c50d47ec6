"""Online store: packed records over a KeyValue, one get_many per read, TTL and missing handling."""

from __future__ import annotations

from collections.abc import Sequence
from datetime import UTC, datetime, timedelta

import numpy as np
import pandas as pd
import pytest

from mlscale.errors import InvalidInput, NotFound
from mlscale.features.definitions import Entity, FeatureRepo, FeatureView
from mlscale.features.materialize import materialize
from mlscale.features.offline import OfflineStore
from mlscale.features.online import NOT_FOUND, OUTSIDE_MAX_AGE, PRESENT, OnlineStore, get_online_features
from mlscale.storage.base import KeyValue
from mlscale.storage.memory import MemoryKeyValue


class CountingKeyValue(MemoryKeyValue):
    """A memory store that counts get_many calls (to pin down one round trip per read)."""

    def __init__(self) -> None:
        super().__init__()
        self.get_calls = 0

    def get_many(self, keys: Sequence[bytes]) -> list[bytes | None]:
        self.get_calls += 1
        return super().get_many(keys)


def latest_per_driver(frame: pd.DataFrame, end: datetime) -> pd.DataFrame:
    rows = frame[frame.event_timestamp <= end]
    return rows.sort_values("event_timestamp").groupby("driver_id").tail(1).set_index("driver_id")


def make_online(repo: FeatureRepo, kv: KeyValue, now: datetime) -> OnlineStore:
    return OnlineStore(kv, repo, clock=lambda: now.timestamp())


def test_online_read_returns_latest_values_and_event_times(repo, driver_data, t0):
    _, frame = driver_data
    end = t0 + timedelta(days=10)
    kv = CountingKeyValue()
    online = make_online(repo, kv, now=end)
    materialize(repo, OfflineStore(repo), online, end=end)
    want = latest_per_driver(frame, end)
    ids = [int(i) for i in want.index]
    kv.get_calls = 0
    out = get_online_features(online, ["driver_stats:*", "driver_rates:conv_rate"], ids, full_names=True)
    assert kv.get_calls == 1  # two views, many entities: one round trip
    np.testing.assert_array_equal(out["driver_stats__conv_rate"], want.conv_rate.to_numpy("float32"))
    np.testing.assert_array_equal(out["driver_stats__trips"], want.trips.to_numpy("int64"))
    np.testing.assert_array_equal(out["driver_rates__conv_rate"], want.conv_rate.to_numpy("float32"))
    stamps = out["driver_stats__event_timestamp"]
    np.testing.assert_array_equal(stamps, want.event_timestamp.dt.tz_convert(None).to_numpy("datetime64[us]"))
    assert (out["driver_stats__status"] == PRESENT).all()


def test_stale_values_come_back_missing_not_old(repo, driver_data, t0):
    _, frame = driver_data
    end = t0 + timedelta(days=10)
    kv = MemoryKeyValue()
    materialize(repo, OfflineStore(repo), make_online(repo, kv, end), end=end)
    want = latest_per_driver(frame, end)
    # Ten days later every value is older than the 2-day TTL.
    late = make_online(repo, kv, now=end + timedelta(days=10))
    ids = [int(i) for i in want.index]
    result = late.read("driver_model", [*ids, 10000])
    assert result.statuses["driver_rates"].tolist() == [OUTSIDE_MAX_AGE] * len(ids) + [NOT_FOUND]
    assert np.isnan(result.values["conv_rate"]).all()
    # With "now" two days after the median latest row, rows at or after that median are fresh.
    pivot = want.event_timestamp.sort_values().iloc[len(want) // 2].to_pydatetime()
    edge = make_online(repo, kv, now=pivot + timedelta(days=2))
    status = edge.read("driver_model", ids).statuses["driver_rates"]
    fresh = (want.event_timestamp >= pivot).to_numpy()
    assert 0 < fresh.sum() < len(fresh)
    assert status.tolist() == np.where(fresh, PRESENT, OUTSIDE_MAX_AGE).tolist()


def test_entity_keys_compound_and_string(tmp_path):
    frame = pd.DataFrame(
        {
            "city": ["paris", "paris", "oslo"],
            "driver_id": [1, 2, 1],
            "event_timestamp": pd.to_datetime(["2024-01-01", "2024-01-01", "2024-01-02"], utc=True),
            "surge": [1.5, 2.0, 1.1],
            "busy": [True, False, True],
        }
    )
    frame.to_parquet(tmp_path / "surge.parquet")
    city = Entity(name="city", dtype="string")
    driver = Entity(name="driver", join_key="driver_id")
    view = FeatureView(
        name="surge",
        entities=[city, driver],
        source=str(tmp_path / "surge.parquet"),
        features={"surge": "float64", "busy": "bool"},
    )
    repo = FeatureRepo([city, driver], [view])
    online = OnlineStore(MemoryKeyValue(), repo)
    materialize(repo, OfflineStore(repo), online, end=datetime(2024, 2, 1, tzinfo=UTC))
    out = get_online_features(online, ["surge:*"], {"city": ["oslo", "paris", "rome"], "driver_id": [1, 2, 1]})
    assert out["surge"][:2].tolist() == [1.1, 2.0] and np.isnan(out["surge"][2])
    assert out["busy"].tolist() == [True, False, False]
    assert out["surge__status"].tolist() == [PRESENT, PRESENT, NOT_FOUND]
    with pytest.raises(InvalidInput, match="by join key"):
        online.read(["surge:*"], ["oslo"])


def test_null_source_values_are_reported_as_null(tmp_path, make_repo, t0):
    frame = pd.DataFrame(
        {
            "driver_id": [1, 2],
            "event_timestamp": [t0, t0],
            "conv_rate": [None, 0.5],
            "acc_rate": [0.1, 0.2],
            "trips": pd.array([None, 3], dtype="Int64"),
        }
    )
    frame.to_parquet(tmp_path / "f.parquet")
    repo = make_repo(tmp_path / "f.parquet", ttl=0)
    online = OnlineStore(MemoryKeyValue(), repo)
    materialize(repo, OfflineStore(repo), online, end=t0 + timedelta(days=1))
    result = online.read(["driver_stats:*"], [1, 2])
    assert result.status("conv_rate").tolist() == [3, PRESENT]
    assert result.status("trips").tolist() == [3, PRESENT]
    assert result.status("acc_rate").tolist() == [PRESENT, PRESENT]
    assert np.isnan(result.values["conv_rate"][0]) and result.values["trips"].tolist() == [0, 3]


def test_unknown_features_and_services_are_not_found(repo):
    online = OnlineStore(MemoryKeyValue(), repo)
    with pytest.raises(NotFound, match="unknown feature service"):
        online.read("nope", [1])
    with pytest.raises(NotFound, match="no feature 'speed'"):
        online.read(["driver_stats:speed"], [1])
    with pytest.raises(InvalidInput, match="view:feature"):
        online.read(["driver_stats"], [1])


def test_changed_view_schema_does_not_misread_old_records(driver_data, make_repo, t0):
    path, _ = driver_data
    repo = make_repo(path)
    kv = MemoryKeyValue()
    materialize(repo, OfflineStore(repo), OnlineStore(kv, repo), end=t0 + timedelta(days=10))
    changed = FeatureRepo(
        repo.entities.values(),
        [
            FeatureView(
                name="driver_stats",
                entities=["driver"],
                source=str(path),
                ttl="2d",
                features={"trips": "int64", "conv_rate": "float32"},
            )
        ],
    )
    result = OnlineStore(kv, changed, clock=lambda: (t0 + timedelta(days=10)).timestamp()).read(
        ["driver_stats:*"], [1, 2]
    )
    assert result.statuses["driver_stats"].tolist() == [NOT_FOUND, NOT_FOUND]


def test_records_are_compact(repo):
    # 8 bytes event time + 8 bytes null mask + 4 + 4 + 8 bytes of features.
    assert repo.layouts["driver_stats"].record.itemsize == 32


def test_empty_entity_list_reads_nothing(repo):
    out = get_online_features(OnlineStore(MemoryKeyValue(), repo), "driver_model", [])
    assert out["conv_rate"].shape == (0,)


def test_entity_ids_given_as_numpy_array(repo, t0):
    kv = MemoryKeyValue()
    online = OnlineStore(kv, repo, clock=lambda: (t0 + timedelta(days=10)).timestamp())
    materialize(repo, OfflineStore(repo), online, end=t0 + timedelta(days=10))
    a = online.read("driver_model", np.array([1, 2, 3])).values["conv_rate"]
    b = online.read("driver_model", [1, 2, 3]).values["conv_rate"]
    np.testing.assert_array_equal(a, b)
