"""String features: declared, materialized, read online on every backend, in training sets and in
the POST /v1/features answer, with nulls, staleness and missing entities handled as for numbers."""

from __future__ import annotations

import uuid
from datetime import timedelta

import numpy as np
import pandas as pd
import pytest

from mlscale.errors import ConfigError, InvalidInput
from mlscale.features.definitions import Entity, FeatureRepo, FeatureService, FeatureView
from mlscale.features.materialize import materialize
from mlscale.features.offline import OfflineStore
from mlscale.features.online import NOT_FOUND, OUTSIDE_MAX_AGE, PRESENT, OnlineStore
from mlscale.features.serving import FeatureEnricher, features_request
from mlscale.storage import open_store
from mlscale.storage.memory import MemoryKeyValue

CITIES = ["Lisboa", "Zürich", "東京", "", "São Paulo"]


@pytest.fixture
def profile_data(tmp_path, make_frame):
    """Driver rows with a city (some null) and a vehicle beside the numeric features."""
    frame = make_frame(n_rows=300, n_drivers=15, seed=3)
    rng = np.random.default_rng(4)
    city = np.asarray(CITIES, dtype=object)[rng.integers(0, len(CITIES), len(frame))]
    city[rng.random(len(frame)) < 0.2] = None
    frame["city"] = pd.Series(city, dtype=object)
    frame["vehicle"] = [f"car-{i}" for i in range(len(frame))]
    path = tmp_path / "profiles.parquet"
    frame.to_parquet(path)
    return path, frame


def profile_repo(source, ttl="2d") -> FeatureRepo:
    driver = Entity(name="driver", join_key="driver_id")
    view = FeatureView(
        name="profile",
        entities=[driver],
        source=str(source),
        ttl=ttl,
        features={"conv_rate": "float32", "city": "string", "trips": "int64", "vehicle": "string"},
    )
    numeric = FeatureService(name="numeric", features=["profile:conv_rate", "profile:trips"])
    everything = FeatureService(name="everything", features=["profile:*"])
    return FeatureRepo([driver], [view], [numeric, everything])


def latest_rows(frame: pd.DataFrame, end) -> pd.DataFrame:
    upto = frame[frame.event_timestamp <= pd.Timestamp(end)]
    return upto.sort_values("event_timestamp").groupby("driver_id").tail(1).set_index("driver_id")


@pytest.fixture
def redis_kv(redis_url):
    store = open_store(f"{redis_url}?prefix=mlscale-test-strings-{uuid.uuid4().hex[:8]}:")
    yield store
    store.delete(list(store.scan()))
    store.close()


def test_string_features_round_trip_online_with_nulls_staleness_and_missing(profile_data, tmp_path, redis_kv, t0):
    path, frame = profile_data
    repo = profile_repo(path)
    end = t0 + timedelta(days=7)
    now = t0 + timedelta(days=8)  # some drivers fresh, some past the 2-day TTL
    want = latest_rows(frame, end)
    ids = [*sorted(want.index.tolist()), 999]
    answers = []
    for kv in (MemoryKeyValue(), open_store([f"sqlite:///{tmp_path}/s-{i}.db" for i in range(3)]), redis_kv):
        online = OnlineStore(kv, repo, clock=lambda: now.timestamp())
        materialize(repo, OfflineStore(repo), online, end=end, chunk_rows=7)
        result = online.read("everything", ids)
        status = result.statuses["profile"]
        assert status[-1] == NOT_FOUND and {PRESENT, OUTSIDE_MAX_AGE} <= set(status.tolist())
        city, vehicle = result.values["city"].tolist(), result.values["vehicle"].tolist()
        for row, entity in enumerate(ids[:-1]):
            if status[row] != PRESENT:
                assert city[row] is None and vehicle[row] is None  # stale comes back missing
                continue
            expected_city = want.city[entity]
            assert city[row] == (None if pd.isna(expected_city) else expected_city)
            assert vehicle[row] == want.vehicle[entity]
            assert result.values["trips"][row] == want.trips[entity]
        assert city[-1] is None
        answers.append((city, vehicle, status.tolist()))
    assert answers[0] == answers[1] == answers[2]


def test_string_features_in_the_http_answer_report_null_values(profile_data, t0):
    path, frame = profile_data
    repo = profile_repo(path)
    end = t0 + timedelta(days=10)
    online = OnlineStore(MemoryKeyValue(), repo, clock=lambda: end.timestamp())
    materialize(repo, OfflineStore(repo), online, end=end)
    want = latest_rows(frame, end)
    null_city = want.index[want.city.isna()].tolist()
    with_city = want.index[want.city.notna()].tolist()
    assert null_city and with_city, "the generated data must hold both"
    ids = [with_city[0], null_city[0], 999]
    out = features_request(online, {"feature_service": "everything", "entities": {"driver_id": ids}})
    names = out["metadata"]["feature_names"]
    city = out["results"][names.index("city")]
    assert city["values"] == [want.city[with_city[0]], None, None]
    assert city["statuses"] == ["PRESENT", "NULL_VALUE", "NOT_FOUND"]
    vehicle = out["results"][names.index("vehicle")]
    assert vehicle["values"][:2] == [want.vehicle[ids[0]], want.vehicle[ids[1]]]
    assert vehicle["statuses"] == ["PRESENT", "PRESENT", "NOT_FOUND"]


def test_a_newer_stored_record_keeps_its_strings_when_an_older_run_replays(profile_data, t0):
    path, _ = profile_data
    repo = profile_repo(path)
    kv = MemoryKeyValue()
    online = OnlineStore(kv, repo, clock=lambda: (t0 + timedelta(days=10)).timestamp())
    late, early = t0 + timedelta(days=10), t0 + timedelta(days=5)
    materialize(repo, OfflineStore(repo), online, end=late)
    before = {k: kv.get_many([k])[0] for k in kv.scan()}
    materialize(repo, OfflineStore(repo), online, end=early)
    assert {k: kv.get_many([k])[0] for k in kv.scan()} == before


def test_training_sets_carry_string_features_point_in_time(profile_data, t0):
    path, frame = profile_data
    repo = profile_repo(path, ttl="30d")
    entity = pd.DataFrame(
        {
            "driver_id": [int(frame.driver_id[0])] * 2,
            "event_timestamp": [pd.Timestamp(t0), pd.Timestamp(t0) + pd.Timedelta(days=11)],
        }
    )
    table = OfflineStore(repo).get_historical_features(entity, ["profile:city", "profile:vehicle"]).to_pandas()
    want = latest_rows(frame, t0 + timedelta(days=11)).loc[int(frame.driver_id[0])]
    assert pd.isna(table.vehicle[0])  # nothing before the first row's time
    assert table.vehicle[1] == want.vehicle
    assert (pd.isna(table.city[1]) and pd.isna(want.city)) or table.city[1] == want.city


def test_string_feature_over_a_numeric_column_is_a_clear_error(profile_data):
    path, _ = profile_data
    driver = Entity(name="driver", join_key="driver_id")
    view = FeatureView(name="bad", entities=[driver], source=str(path), features={"trips": "string"})
    repo = FeatureRepo([driver], [view])
    with pytest.raises(ConfigError, match=r"feature 'trips' is BIGINT .* cannot be string"):
        OfflineStore(repo).validate_source(view)
    with pytest.raises(ConfigError, match="bad type 'text'"):
        FeatureRepo([driver], [FeatureView(name="v", entities=[driver], source="x.parquet", features={"a": "text"})])


def test_a_model_cannot_be_enriched_with_string_features(profile_data, t0):
    path, _ = profile_data
    repo = profile_repo(path)
    online = OnlineStore(MemoryKeyValue(), repo)
    with pytest.raises(InvalidInput, match=r"string features \['city', 'vehicle'\]"):
        FeatureEnricher(online, "everything", "driver_id")
    assert FeatureEnricher(online, "numeric", "driver_id").names == ["conv_rate", "trips"]
