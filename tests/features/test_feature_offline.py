"""Point-in-time training sets: never from the future, within the TTL, every entity row kept."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import numpy as np
import pandas as pd
import pyarrow as pa
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from mlscale.errors import InvalidInput
from mlscale.features.offline import OfflineStore


def brute_force(features: pd.DataFrame, entities: pd.DataFrame, ttl: timedelta, cols: list[str]) -> pd.DataFrame:
    """For each entity row: the latest feature row at or before its time, within the TTL."""
    rows = []
    for _, row in entities.iterrows():
        match = features[(features.driver_id == row.driver_id) & (features.event_timestamp <= row.event_timestamp)]
        if ttl:
            match = match[match.event_timestamp >= row.event_timestamp - ttl]
        if len(match):
            best = match.loc[match.event_timestamp.idxmax()]
            rows.append([best[c] for c in cols])
        else:
            rows.append([None] * len(cols))
    return pd.DataFrame(rows, columns=cols)


BASE = datetime(2024, 1, 1, tzinfo=UTC)


_pit_cases = given(
    feature_rows=st.lists(
        st.tuples(st.integers(0, 4), st.integers(0, 500), st.floats(-1e6, 1e6, width=32)),
        min_size=0,
        max_size=40,
        unique_by=lambda r: (r[0], r[1]),
    ),
    entity_rows=st.lists(st.tuples(st.integers(0, 5), st.integers(-20, 520)), min_size=1, max_size=30),
    ttl_minutes=st.sampled_from([0, 1, 30, 120]),
)


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@_pit_cases
def test_training_set_matches_brute_force_point_in_time_join(
    tmp_path_factory, make_repo, feature_rows, entity_rows, ttl_minutes
):
    check_against_brute_force(OfflineStore, tmp_path_factory, make_repo, feature_rows, entity_rows, ttl_minutes)


# Spark takes about a second a training set, so it gets fewer examples of the same property.
@settings(max_examples=5, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@_pit_cases
def test_spark_training_set_matches_brute_force_point_in_time_join(
    tmp_path_factory, make_repo, spark, feature_rows, entity_rows, ttl_minutes
):
    from mlscale.features.spark import SparkOfflineStore

    def engine(repo):
        return SparkOfflineStore(repo, session=spark)

    check_against_brute_force(engine, tmp_path_factory, make_repo, feature_rows, entity_rows, ttl_minutes)


def check_against_brute_force(engine, tmp_path_factory, make_repo, feature_rows, entity_rows, ttl_minutes) -> None:
    folder = tmp_path_factory.mktemp("pit")
    features = pd.DataFrame(
        {
            "driver_id": pd.Series([r[0] for r in feature_rows], dtype="int64"),
            "event_timestamp": pd.Series(
                [BASE + timedelta(minutes=r[1]) for r in feature_rows], dtype="datetime64[us, UTC]"
            ),
            "conv_rate": pd.Series([r[2] for r in feature_rows], dtype="float32"),
            "acc_rate": pd.Series([r[1] / 7 for r in feature_rows], dtype="float32"),
            "trips": pd.Series([r[1] for r in feature_rows], dtype="int64"),
        }
    )
    features.to_parquet(folder / "f.parquet")
    ttl = timedelta(minutes=ttl_minutes)
    repo = make_repo(folder / "f.parquet", ttl=ttl)
    entities = pd.DataFrame(
        {
            "driver_id": pd.Series([r[0] for r in entity_rows], dtype="int64"),
            "event_timestamp": pd.Series(
                [BASE + timedelta(minutes=r[1]) for r in entity_rows], dtype="datetime64[us, UTC]"
            ),
        }
    )
    got = engine(repo).get_historical_features(entities, ["driver_stats:*"]).to_pandas()
    want = brute_force(features, entities, ttl, ["conv_rate", "acc_rate", "trips"])
    # Every entity row comes back, in order, with its own key and time.
    assert got.driver_id.tolist() == entities.driver_id.tolist()
    assert (got.event_timestamp == entities.event_timestamp).all()
    for col in ("conv_rate", "acc_rate", "trips"):
        assert got[col].isna().tolist() == want[col].isna().tolist(), col
        present = ~want[col].isna()
        np.testing.assert_array_equal(got[col][present].to_numpy(float), want[col][present].to_numpy(float))


def test_duplicate_entity_rows_are_kept_in_input_order(repo, driver_data, offline_engine):
    _, frame = driver_data
    when = frame.event_timestamp.max()
    entities = pd.DataFrame({"driver_id": [3, 1, 3, 3, 1], "event_timestamp": [when] * 5})
    got = offline_engine(repo).get_historical_features(entities, "driver_model").to_pandas()
    assert got.driver_id.tolist() == [3, 1, 3, 3, 1]
    assert got.conv_rate[0] == got.conv_rate[2] == got.conv_rate[3]
    assert got.conv_rate[1] == got.conv_rate[4]


def test_values_older_than_ttl_are_null_and_future_rows_never_used(tmp_path, make_repo, offline_engine):
    features = pd.DataFrame(
        {
            "driver_id": [1, 1],
            "event_timestamp": pd.to_datetime([BASE, BASE + timedelta(days=5)]),
            "conv_rate": np.array([0.25, 0.75], "float32"),
            "acc_rate": np.array([0.5, 0.5], "float32"),
            "trips": [1, 2],
        }
    )
    features.to_parquet(tmp_path / "f.parquet")
    repo = make_repo(tmp_path / "f.parquet", ttl="1d")
    entities = pd.DataFrame(
        {
            "driver_id": [1, 1, 1, 1],
            "event_timestamp": pd.to_datetime(
                [
                    BASE - timedelta(seconds=1),  # before any row
                    BASE + timedelta(hours=23),  # within ttl of the first row
                    BASE + timedelta(days=3),  # first row too old, second one in the future
                    BASE + timedelta(days=5),  # exactly at the second row
                ]
            ),
        }
    )
    got = offline_engine(repo).get_historical_features(entities, ["driver_stats:conv_rate"]).to_pandas()
    assert got.conv_rate.isna().tolist() == [True, False, True, False]
    assert got.conv_rate[1] == 0.25 and got.conv_rate[3] == 0.75


@pytest.mark.parametrize("unit", ["s", "ms", "us", "ns"])
def test_timezone_aware_and_naive_entity_times_mean_utc(repo, driver_data, unit, offline_engine):
    _, frame = driver_data
    when = frame.event_timestamp.sort_values().iloc[len(frame) // 2]
    naive = pd.DataFrame({"driver_id": [1, 2], "event_timestamp": [when.tz_convert(None)] * 2})
    times = pd.DatetimeIndex([when.tz_convert("Asia/Tokyo")] * 2).as_unit(unit)
    other_zone = pd.DataFrame({"driver_id": [1, 2], "event_timestamp": times})
    store = offline_engine(repo)
    a = store.get_historical_features(naive, "driver_model").to_pandas()
    b = store.get_historical_features(other_zone, "driver_model").to_pandas()
    assert a.conv_rate.tolist() == b.conv_rate.tolist()
    assert a.conv_rate.notna().any()


def test_results_as_arrow_pandas_and_parquet_and_full_names(repo, driver_data, tmp_path, offline_engine):
    _, _frame = driver_data
    entities = pa.table({"driver_id": [1, 2], "event_timestamp": pa.array([BASE + timedelta(days=9)] * 2)})
    table = offline_engine(repo).get_historical_features(
        entities, ["driver_stats:conv_rate", "driver_rates:conv_rate"], full_feature_names=True
    )
    assert table.column_names == ["driver_id", "event_timestamp", "driver_stats__conv_rate", "driver_rates__conv_rate"]
    assert table.column("driver_stats__conv_rate").to_pylist() == table.column("driver_rates__conv_rate").to_pylist()
    entities.to_pandas().to_parquet(tmp_path / "e.parquet")
    from_file = offline_engine(repo).get_historical_features(tmp_path / "e.parquet", ["driver_stats:trips"])
    assert from_file.num_rows == 2


def test_same_feature_name_from_two_views_needs_full_names(repo, offline_engine):
    entities = pd.DataFrame({"driver_id": [1], "event_timestamp": [BASE]})
    with pytest.raises(InvalidInput, match="full feature names"):
        offline_engine(repo).get_historical_features(entities, ["driver_stats:conv_rate", "driver_rates:conv_rate"])


@pytest.mark.parametrize(
    ("frame", "message"),
    [
        (pd.DataFrame({"event_timestamp": [BASE]}), "no join key column 'driver_id'"),
        (pd.DataFrame({"driver_id": [1]}), "no timestamp column 'event_timestamp'"),
        (pd.DataFrame({"driver_id": [1], "event_timestamp": ["2024-01-01"]}), "not a timestamp"),
        (pd.DataFrame({"driver_id": ["a"], "event_timestamp": [BASE]}), "entity 'driver' is int64"),
        (
            pd.DataFrame({"driver_id": [1], "event_timestamp": [pd.NaT]}, dtype="datetime64[us]").assign(driver_id=[1]),
            "null timestamps",
        ),
        (pd.DataFrame({"driver_id": [1], "event_timestamp": [BASE], "conv_rate": [0.1]}), "already has columns"),
    ],
)
def test_bad_entity_frames_are_rejected_clearly(repo, frame, message, offline_engine):
    with pytest.raises(InvalidInput, match=message):
        offline_engine(repo).get_historical_features(frame, "driver_model")
