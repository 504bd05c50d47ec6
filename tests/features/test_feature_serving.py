"""Serving glue: POST /v1/features semantics and model-input enrichment."""

from __future__ import annotations

from datetime import timedelta

import numpy as np
import pytest

from mlscale.errors import InvalidInput, NotFound
from mlscale.features.materialize import materialize
from mlscale.features.offline import OfflineStore
from mlscale.features.online import OnlineStore
from mlscale.features.serving import FeatureEnricher, features_request
from mlscale.storage.memory import MemoryKeyValue


@pytest.fixture
def online(repo, driver_data, t0):
    end = t0 + timedelta(days=10)
    store = OnlineStore(MemoryKeyValue(), repo, clock=lambda: end.timestamp())
    materialize(repo, OfflineStore(repo), store, end=end)
    return store


def test_features_request_returns_values_statuses_and_times(online, driver_data):
    _, frame = driver_data
    latest = frame.sort_values("event_timestamp").groupby("driver_id").tail(1).set_index("driver_id")
    body = {"feature_service": "driver_model", "entities": {"driver_id": [3, 999]}}
    out = features_request(online, body)
    assert out["metadata"]["feature_names"] == ["driver_id", "conv_rate", "acc_rate"]
    ids, conv, _acc = out["results"]
    assert ids["values"] == [3, 999]
    assert conv["values"][0] == pytest.approx(float(latest.conv_rate[3])) and conv["values"][1] is None
    assert conv["statuses"] == ["PRESENT", "NOT_FOUND"]
    stamp = latest.event_timestamp[3].strftime("%Y-%m-%dT%H:%M:%SZ")
    assert conv["event_timestamps"] == [stamp, None]
    refs = features_request(online, {"features": ["driver_stats:trips"], "entities": {"driver_id": [3]}})
    assert refs["results"][1]["values"] == [int(latest.trips[3])]


def test_small_and_large_reads_render_the_same_answer_per_entity(online, driver_data):
    """Reads of a handful of entities take a plain-Python path; larger ones a NumPy path. Each entity's
    values, statuses and times must not depend on which path served it."""
    _, frame = driver_data
    ids = [*sorted(frame.driver_id.unique().tolist())[:12], 999]
    body = {"features": ["driver_stats:conv_rate", "driver_stats:trips"], "entities": {"driver_id": ids}}
    large = features_request(online, body)
    for row, entity in enumerate(ids):
        small = features_request(online, {**body, "entities": {"driver_id": [entity]}})
        for got, want in zip(small["results"], large["results"], strict=True):
            assert got["values"] == [want["values"][row]]
            assert got["statuses"] == [want["statuses"][row]]
            assert got["event_timestamps"] == [want["event_timestamps"][row]]
    assert large["results"][1]["statuses"][-1] == "NOT_FOUND"
    assert all(isinstance(s, str) for s in large["results"][1]["event_timestamps"][:-1])


@pytest.mark.parametrize(
    ("body", "error", "message"),
    [
        ([], InvalidInput, "JSON object"),
        ({"entities": {"driver_id": [1]}}, InvalidInput, "exactly one of"),
        ({"features": [], "entities": {"driver_id": [1]}}, InvalidInput, "non-empty list"),
        ({"feature_service": "driver_model"}, InvalidInput, '"entities" must be'),
        ({"feature_service": "driver_model", "entities": {"driver_id": 1}}, InvalidInput, "must be a list"),
        ({"feature_service": "driver_model", "entities": {"driver_id": ["a"]}}, InvalidInput, "integers"),
        ({"feature_service": "driver_model", "entities": {"driver_id": [True]}}, InvalidInput, "integers"),
        ({"feature_service": "driver_model", "entities": {"rider_id": [1]}}, InvalidInput, "not used"),
        ({"feature_service": "driver_model", "entities": {"driver_id": [1]}, "x": 1}, InvalidInput, "unknown"),
        ({"feature_service": "nope", "entities": {"driver_id": [1]}}, NotFound, "unknown feature service"),
        ({"features": ["driver_stats:nope"], "entities": {"driver_id": [1]}}, NotFound, "no feature 'nope'"),
        ({"features": ["ghost:a"], "entities": {"driver_id": [1]}}, NotFound, "unknown feature view"),
    ],
)
def test_bad_feature_requests_raise_typed_errors(online, body, error, message):
    with pytest.raises(error, match=message):
        features_request(online, body)


def test_enricher_builds_float32_model_input_in_service_order(online, driver_data):
    _, frame = driver_data
    latest = frame.sort_values("event_timestamp").groupby("driver_id").tail(1).set_index("driver_id")
    enricher = FeatureEnricher(online, "driver_model", "driver_id")
    x = enricher(np.array([[4], [2], [4]]))
    assert x.dtype == np.float32 and x.shape == (3, 2)
    np.testing.assert_array_equal(x[:, 0], latest.conv_rate[[4, 2, 4]].to_numpy("float32"))
    np.testing.assert_array_equal(x[:, 1], latest.acc_rate[[4, 2, 4]].to_numpy("float32"))


def test_enricher_missing_entities_error_or_take_declared_defaults(online):
    strict = FeatureEnricher(online, "driver_model", "driver_id")
    with pytest.raises(InvalidInput, match=r"driver_id=\[777\]"):
        strict([1, 777])
    lenient = FeatureEnricher(online, "driver_model", "driver_id", defaults={"conv_rate": -1.0, "acc_rate": 0.5})
    x = lenient([1, 777])
    assert x[1].tolist() == [-1.0, 0.5]
    np.testing.assert_array_equal(x[0], strict([1])[0])
    partial = FeatureEnricher(online, "driver_model", "driver_id", defaults={"conv_rate": 0.0})
    with pytest.raises(InvalidInput, match="acc_rate"):
        partial([777])
    with pytest.raises(InvalidInput, match="keyed by"):
        FeatureEnricher(online, "driver_model", "rider_id")
    with pytest.raises(InvalidInput, match="unknown features"):
        FeatureEnricher(online, "driver_model", "driver_id", defaults={"speed": 1.0})


def test_enricher_treats_stale_values_as_missing(repo, online, t0):
    later = OnlineStore(online.kv, repo, clock=lambda: (t0 + timedelta(days=30)).timestamp())
    with pytest.raises(InvalidInput, match="missing or stale"):
        FeatureEnricher(later, "driver_model", "driver_id")([1])
    assert FeatureEnricher(later, "driver_model", "driver_id", defaults=0.0)([1]).tolist() == [[0.0, 0.0]]


async def _aread(online):
    from mlscale.features.serving import afeatures_request

    return await afeatures_request(online, {"feature_service": "driver_model", "entities": {"driver_id": [1]}})


def test_async_request_matches_sync(online):
    import asyncio

    body = {"feature_service": "driver_model", "entities": {"driver_id": [1]}}
    assert asyncio.run(_aread(online)) == features_request(online, body)


def test_statuses_are_per_feature_null_stale_and_missing(tmp_path, make_frame, make_repo, t0):
    """A null value is NULL_VALUE for its feature only; stale and missing entities are so for all."""
    frame = make_frame()
    latest = frame.sort_values("event_timestamp").groupby("driver_id").tail(1)
    with_null = int(latest.driver_id.iloc[0])
    frame["conv_rate"] = frame.conv_rate.astype("object")
    frame.loc[latest.index[0], "conv_rate"] = None
    frame["conv_rate"] = frame.conv_rate.astype("float32")
    stale = int(latest.driver_id.iloc[1])
    frame = frame[(frame.driver_id != stale) | (frame.event_timestamp < t0 + timedelta(days=1))]
    path = tmp_path / "drivers.parquet"
    frame.to_parquet(path)
    repo = make_repo(path)
    end = t0 + timedelta(days=10)  # TTL 2 days: the stale driver's last row is 9 days old
    store = OnlineStore(MemoryKeyValue(), repo, clock=lambda: end.timestamp())
    materialize(repo, OfflineStore(repo), store, end=end)
    out = features_request(
        store, {"feature_service": "driver_model", "entities": {"driver_id": [with_null, stale, -5]}}
    )
    _ids, conv, acc = out["results"]
    assert conv["statuses"] == ["NULL_VALUE", "OUTSIDE_MAX_AGE", "NOT_FOUND"]
    assert conv["values"] == [None, None, None]
    assert acc["statuses"] == ["PRESENT", "OUTSIDE_MAX_AGE", "NOT_FOUND"]
    assert acc["values"][0] == pytest.approx(float(latest.acc_rate.iloc[0])) and acc["values"][1:] == [None, None]
    # the same codes as the per-feature accessor of the read itself
    result = store.read("driver_model", [with_null, stale, -5])
    assert conv["statuses"] == [
        ["PRESENT", "NOT_FOUND", "OUTSIDE_MAX_AGE", "NULL_VALUE"][c] for c in result.status("conv_rate")
    ]
