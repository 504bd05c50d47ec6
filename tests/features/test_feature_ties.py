"""Same-time corrections: among rows of one entity at one event time, one row wins by a fixed rule
(the greatest created time, then the greatest feature values), in training sets and in the online
store alike, whatever the file order or DuckDB's threads.

The property test checks both stores against a brute-force reference written in plain Python from
the rule as the README states it, on data drawn to hit the edges: many ties, rows with and without a
created time, nulls in every feature type and in join keys, TTL edges (an event exactly TTL old
counts), unknown and null entities, repeated entity rows, timestamps tz-aware and naive in s / ms /
us / ns.
"""

from __future__ import annotations

import tempfile
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from mlscale.features.definitions import Entity, FeatureRepo, FeatureView
from mlscale.features.materialize import materialize
from mlscale.features.offline import OfflineStore
from mlscale.features.online import OnlineStore, OnlineTarget
from mlscale.features.serving import features_request
from mlscale.storage import open_store

BASE_S = 1_704_067_200  # 2024-01-01T00:00:00Z
FEATURES = {"i": "int64", "x": "float64", "s": "string", "b": "bool"}
UNITS = {"s": 1, "ms": 1_000, "us": 1_000_000, "ns": 1_000_000_000}


def _rank(value: object) -> tuple:
    # The rule's order for one column: a null below any value.
    return (0,) if value is None else (1, value)


def reference(rows: list[dict], entity_id: int | None, at_s: int, ttl_s: int, created: bool) -> dict | None:
    """The winning source row for one entity row, by brute force over every row."""
    if entity_id is None:
        return None
    candidates = [
        r for r in rows if r["id"] == entity_id and r["ts"] <= at_s and (ttl_s == 0 or r["ts"] >= at_s - ttl_s)
    ]
    if not candidates:
        return None
    return max(
        candidates,
        key=lambda r: (r["ts"], *([_rank(r["created"])] if created else []), *(_rank(r[f]) for f in FEATURES)),
    )


def _stamps(seconds: list[int | None], unit: str, tz: str | None) -> pa.Array:
    values = [None if s is None else (BASE_S + s) * UNITS[unit] for s in seconds]
    return pa.array(values, pa.int64()).cast(pa.timestamp(unit, tz))


def write_source(path: Path, rows: list[dict], unit: str, tz: str | None) -> None:
    table = pa.table(
        {
            "driver_id": pa.array([r["id"] for r in rows], pa.int64()),
            "event_timestamp": _stamps([r["ts"] for r in rows], unit, tz),
            "created": _stamps([r["created"] for r in rows], "us", tz),
            "i": pa.array([r["i"] for r in rows], pa.int64()),
            "x": pa.array([r["x"] for r in rows], pa.float64()),
            "s": pa.array([r["s"] for r in rows], pa.string()),
            "b": pa.array([r["b"] for r in rows], pa.bool_()),
        }
    )
    pq.write_table(table, path)


def make_repo(source: Path, ttl_s: int, created: bool) -> FeatureRepo:
    driver = Entity(name="driver", join_key="driver_id")
    view = FeatureView(
        name="stats",
        entities=[driver],
        source=str(source),
        ttl=ttl_s,
        features=FEATURES,
        created_timestamp_field="created" if created else "",
    )
    return FeatureRepo([driver], [view])


# Few distinct values everywhere, so ties (and ties of ties) are the common case.
_row = st.fixed_dictionaries(
    {
        "id": st.none() | st.integers(0, 3),
        "ts": st.sampled_from([0, 60, 120, 300]),
        "created": st.none() | st.sampled_from([0, 30, 90]),
        "i": st.none() | st.integers(-2, 2) | st.just(2**53 + 1),
        "x": st.none() | st.sampled_from([-1.5, 0.0, 0.25, 1e300]),
        "s": st.none() | st.sampled_from(["", "a", "b", "é", "ä"]),
        "b": st.none() | st.booleans(),
    }
)
# Entity-row times on and around the source times and their TTL edges.
_when = st.builds(lambda t, d: t + d, st.sampled_from([0, 60, 120, 300, 360, 420]), st.sampled_from([-1, 0, 1]))


_tie_cases = given(
    rows=st.lists(_row, max_size=30),
    entity_rows=st.lists(st.tuples(st.none() | st.integers(0, 5), _when), min_size=1, max_size=25),
    ttl_s=st.sampled_from([0, 60, 120]),
    created=st.booleans(),
    source_unit=st.sampled_from(list(UNITS)),
    source_tz=st.sampled_from([None, "UTC", "America/New_York"]),
    frame_unit=st.sampled_from(list(UNITS)),
    frame_tz=st.sampled_from([None, "UTC", "+05:30"]),
    end=_when,
)


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@_tie_cases
def test_training_set_and_online_store_match_a_brute_force_reference_on_ties(
    rows, entity_rows, ttl_s, created, source_unit, source_tz, frame_unit, frame_tz, end
):
    check_ties(
        OfflineStore, "memory://", rows, entity_rows, ttl_s, created, source_unit, source_tz, frame_unit, frame_tz, end
    )


# Spark takes a few seconds an example (a training set and a materialization), so fewer examples;
# its executors write the online store, so a SQLite file instead of memory.
@settings(
    max_examples=4, deadline=None, suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture]
)
@_tie_cases
def test_spark_training_set_and_online_store_match_a_brute_force_reference_on_ties(
    spark, rows, entity_rows, ttl_s, created, source_unit, source_tz, frame_unit, frame_tz, end
):
    from mlscale.features.spark import SparkOfflineStore

    def engine(repo):
        return SparkOfflineStore(repo, session=spark)

    check_ties(engine, "sqlite", rows, entity_rows, ttl_s, created, source_unit, source_tz, frame_unit, frame_tz, end)


def check_ties(engine, store, rows, entity_rows, ttl_s, created, source_unit, source_tz, frame_unit, frame_tz, end):
    with tempfile.TemporaryDirectory(prefix="mlscale-ties-") as folder:
        source = Path(folder) / "stats.parquet"
        write_source(source, rows, source_unit, source_tz)
        repo = make_repo(source, ttl_s, created)
        offline = engine(repo)

        frame = pa.table(
            {
                "driver_id": pa.array([e for e, _ in entity_rows], pa.int64()),
                "event_timestamp": _stamps([t for _, t in entity_rows], frame_unit, frame_tz),
            }
        )
        got = offline.get_historical_features(frame, ["stats:*"])
        assert got.column("driver_id").to_pylist() == [e for e, _ in entity_rows]
        for n, (entity_id, at) in enumerate(entity_rows):
            want = reference(rows, entity_id, at, ttl_s, created)
            for feature in FEATURES:
                assert got.column(feature)[n].as_py() == (None if want is None else want[feature]), (n, feature)

        # Online: materialize up to `end`, read at `end`, for every entity (and unknown ones).
        target = OnlineTarget("memory://" if store == "memory://" else f"sqlite:///{folder}/online.db")
        online = OnlineStore(target.open_kv(), repo, clock=lambda: float(BASE_S + end), target=target)
        offline.materialize(online, end=pd.Timestamp(BASE_S + end, unit="s", tz="UTC").to_pydatetime())
        ids = list(range(6))
        answer = features_request(online, {"features": ["stats:*"], "entities": {"driver_id": ids}})
        for j, feature in enumerate(FEATURES):
            values = answer["results"][1 + j]["values"]
            for entity_id, value in zip(ids, values, strict=True):
                want = reference(rows, entity_id, end, ttl_s, created)
                assert value == (None if want is None else want[feature]), (entity_id, feature)
        online.kv.close()


def corrections(n_entities: int = 2_000, seed: int = 7) -> pd.DataFrame:
    """Rows with many same-time corrections: about a third of (entity, time) slots hold 2-4 rows,
    written at different created times; one entity holds a tenth of the rows."""
    rng = np.random.default_rng(seed)
    slots = 12_000
    ids = rng.integers(0, n_entities, slots)
    ids[: slots // 10] = 0
    times = pd.Timestamp("2024-01-01", tz="UTC") + pd.to_timedelta(rng.integers(0, 3 * 86400, slots), unit="s")
    copies = np.where(rng.random(slots) < 0.3, rng.integers(2, 5, slots), 1)
    n = int(copies.sum())
    frame = pd.DataFrame(
        {
            "driver_id": np.repeat(ids, copies).astype("int64"),
            "event_timestamp": np.repeat(times, copies),
            "created": pd.Timestamp("2024-02-01", tz="UTC") + pd.to_timedelta(rng.permutation(n), unit="s"),
            "trips": pd.array(rng.integers(0, 5, n), dtype="Int64"),
            "rate": rng.integers(0, 4, n) / 4,
        }
    )
    frame.loc[rng.random(n) < 0.1, "trips"] = pd.NA
    return frame


def _latest_by_pandas(frame: pd.DataFrame, end: pd.Timestamp) -> pd.DataFrame:
    """The newest row per entity up to ``end``, the greatest created time winning ties (pandas)."""
    upto = frame[frame.event_timestamp <= end]
    return upto.sort_values(["event_timestamp", "created"]).groupby("driver_id").tail(1).set_index("driver_id")


def _ties_repo(source: Path, created: bool) -> FeatureRepo:
    driver = Entity(name="driver", join_key="driver_id")
    view = FeatureView(
        name="stats",
        entities=[driver],
        source=str(source),
        features={"trips": "int64", "rate": "float64"},
        created_timestamp_field="created" if created else "",
    )
    return FeatureRepo([driver], [view])


def test_training_sets_are_the_same_on_every_run_and_every_file_order(tmp_path):
    frame = corrections()
    tied = frame.duplicated(["driver_id", "event_timestamp"], keep=False)
    assert tied.sum() > 5_000  # the data has what the test is about
    frame.to_parquet(tmp_path / "a.parquet")
    frame.sample(frac=1, random_state=3).to_parquet(tmp_path / "b.parquet", row_group_size=997)
    # Entity rows on every source row's time, then random ones (some ids without rows).
    rng = np.random.default_rng(1)
    more = pd.Timestamp("2024-01-01", tz="UTC") + pd.to_timedelta(rng.integers(0, 4 * 86400, 5_000), unit="s")
    entities = pd.DataFrame(
        {
            "driver_id": np.concatenate([frame.driver_id.to_numpy(), rng.integers(0, 2_100, 5_000)]),
            "event_timestamp": pd.concat([frame.event_timestamp, pd.Series(more)], ignore_index=True),
        }
    )
    for created in (False, True):
        runs = [
            OfflineStore(_ties_repo(tmp_path / name, created)).get_historical_features(entities, ["stats:*"])
            for name in ("a.parquet", "a.parquet", "b.parquet")
        ]
        assert runs[0].equals(runs[1]) and runs[0].equals(runs[2]), f"created={created}"
    # With the created time, each row is the latest correction (checked by pandas on the entity rows
    # that sit exactly on a source row's time).
    got = runs[0].to_pandas()
    on_rows = got.iloc[: len(frame)]
    want = frame.sort_values("created").groupby(["driver_id", "event_timestamp"]).tail(1)
    slots = list(zip(frame.driver_id, frame.event_timestamp, strict=True))
    want = want.set_index(["driver_id", "event_timestamp"]).loc[slots]
    assert on_rows.trips.astype("float64").fillna(-1).tolist() == want.trips.astype("float64").fillna(-1).tolist()
    assert on_rows.rate.tolist() == want.rate.tolist()


def test_materialized_rows_are_the_rows_a_training_set_returns_at_the_end_time(tmp_path):
    frame = corrections(seed=11)
    frame.to_parquet(tmp_path / "stats.parquet")
    end = pd.Timestamp("2024-01-02T12:00:00", tz="UTC")
    ids = np.arange(2_050)  # the last 50 have no rows
    for created in (False, True):
        repo = _ties_repo(tmp_path / "stats.parquet", created)
        offline = OfflineStore(repo)
        online = OnlineStore(open_store(f"sqlite:///{tmp_path}/online-{created}.db"), repo, clock=end.timestamp)
        materialize(repo, offline, online, end=end.to_pydatetime())
        answer = features_request(online, {"features": ["stats:*"], "entities": {"driver_id": ids.tolist()}})
        training = offline.get_historical_features(
            pd.DataFrame({"driver_id": ids, "event_timestamp": end}), ["stats:*"]
        ).to_pandas()
        for j, name in enumerate(("trips", "rate")):
            theirs = [None if pd.isna(v) else v for v in training[name].tolist()]
            assert answer["results"][1 + j]["values"] == theirs, f"{name}, created={created}"
        online.kv.close()
    # With the created time, both equal the newest correction (pandas, independently).
    want = _latest_by_pandas(frame, end)
    have = training.set_index("driver_id").loc[want.index]
    assert have.rate.tolist() == want.rate.tolist()
    assert have.trips.astype("float64").fillna(-1).tolist() == want.trips.astype("float64").fillna(-1).tolist()
