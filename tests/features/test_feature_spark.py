"""The Spark offline engine gives the DuckDB engine's answers: training sets equal row by row on data
full of same-time corrections, read from a folder of files and a glob; materialization from the
executors, then `mlscale features get`, equal to DuckDB's; clear errors for what cannot work."""

from __future__ import annotations

import json
import uuid

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from test_feature_cli import run
from test_feature_ties import _ties_repo, corrections

from mlscale.config import parse_settings
from mlscale.errors import ConfigError, InvalidInput
from mlscale.features.offline import OfflineStore
from mlscale.features.online import OnlineStore, OnlineTarget


@pytest.fixture
def spark_store(spark):
    from mlscale.features.spark import SparkOfflineStore

    return lambda repo, root=".": SparkOfflineStore(repo, root, session=spark)


def test_training_sets_equal_duckdb_row_by_row_from_a_folder_and_a_glob(tmp_path, spark_store):
    frame = corrections(n_entities=300, seed=5)
    frame.to_parquet(tmp_path / "all.parquet")
    # The same rows shuffled over four files with nanosecond times (pandas' old default).
    parts = tmp_path / "parts"
    parts.mkdir()
    shuffled = frame.sample(frac=1, random_state=2)
    shuffled["event_timestamp"] = shuffled.event_timestamp.astype("datetime64[ns, UTC]")
    for i in range(4):
        shuffled.iloc[i::4].to_parquet(parts / f"part-{i}.parquet")
    rng = np.random.default_rng(4)
    when = pd.Timestamp("2024-01-01", tz="UTC") + pd.to_timedelta(rng.integers(-3600, 4 * 86400, 3_000), unit="s")
    entities = pd.DataFrame(
        {
            # Known and unknown ids, repeated rows, a tenth on exact source times.
            "driver_id": np.concatenate([rng.integers(0, 320, 3_000), frame.driver_id.to_numpy()[:300]]),
            "event_timestamp": pd.concat([pd.Series(when), frame.event_timestamp[:300]], ignore_index=True),
            "label": np.arange(3_300) % 2 == 0,
        }
    )
    # Each source shape once, without and with the created time (a Spark run takes seconds here).
    for created, source in ((False, f"{parts}/"), (True, parts / "part-*.parquet")):
        duck = OfflineStore(_ties_repo(tmp_path / "all.parquet", created))
        want = duck.get_historical_features(entities, ["stats:*"])
        got = spark_store(_ties_repo(source, created)).get_historical_features(entities, ["stats:*"])
        assert got.schema.equals(want.schema), (source, created)
        assert got.equals(want), (source, created)
    assert want.column("trips").null_count > 0 and want.column("rate").null_count > 0


def test_a_spark_dataframe_of_entity_rows_gets_the_training_set_duckdb_gives(tmp_path, spark, spark_store):
    frame = corrections(n_entities=200, seed=3)
    frame.to_parquet(tmp_path / "stats.parquet")
    repo = _ties_repo(tmp_path / "stats.parquet", created=True)
    rng = np.random.default_rng(8)
    entities = pa.table(
        {
            "label": pa.array(np.arange(2_000), pa.int64()),
            "driver_id": pa.array(rng.integers(0, 220, 2_000), pa.int64()),
            "event_timestamp": pa.array(
                (1_704_067_200 + rng.integers(0, 4 * 86400, 2_000)) * 1_000_000, pa.int64()
            ).cast(pa.timestamp("us", "UTC")),
        }
    )
    want = OfflineStore(repo).get_historical_features(entities, ["stats:*"])
    engine = spark_store(repo)
    lazy = engine.historical_frame(spark.createDataFrame(entities), ["stats:*"])
    got = lazy.toArrow().sort_by("label")
    assert got.column_names == want.column_names
    for name in ("label", "driver_id", "trips", "rate"):
        assert got.column(name).to_pylist() == want.column(name).to_pylist(), name
    with pytest.raises(InvalidInput, match="no timestamp column 'when'"):
        engine.historical_frame(spark.createDataFrame(entities), ["stats:*"], timestamp_field="when")


def test_compound_and_string_keys_give_duckdbs_training_set_and_online_records(tmp_path, spark_store):
    from mlscale.features.definitions import Entity, FeatureRepo, FeatureView

    rng = np.random.default_rng(12)
    n = 3_000
    cities = np.array(["ams", "ber", "par", "zürich", ""])
    pd.DataFrame(
        {
            "city": cities[rng.integers(0, 5, n)],
            "shop": rng.integers(0, 30, n).astype("int64"),
            "ts": pd.Timestamp("2024-01-01", tz="UTC")
            + pd.to_timedelta(rng.integers(0, 3 * 86400, n) // 60, unit="min"),
            "sales": rng.integers(0, 3, n).astype("int32"),
            "busy": rng.random(n) < 0.5,
        }
    ).to_parquet(tmp_path / "sales.parquet")
    city, shop = Entity(name="city", dtype="string"), Entity(name="shop")
    view = FeatureView(
        name="sales",
        entities=[city, shop],
        source=str(tmp_path / "sales.parquet"),
        timestamp_field="ts",
        ttl="6h",
        features={"sales": "int32", "busy": "bool"},
    )
    repo = FeatureRepo([city, shop], [view])
    entities = pd.DataFrame(
        {
            "city": cities[rng.integers(0, 5, 1_500)],
            "shop": rng.integers(0, 32, 1_500),
            "event_timestamp": pd.Timestamp("2024-01-01", tz="UTC")
            + pd.to_timedelta(rng.integers(0, 4 * 86400, 1_500), unit="s"),
        }
    )
    want = OfflineStore(repo).get_historical_features(entities, ["sales:*"])
    got = spark_store(repo).get_historical_features(entities, ["sales:*"])
    # The entity frame's own columns are passed through (DuckDB turns pandas' large strings into
    # strings on the way); values equal, features equal to the type.
    assert got.select(["sales", "busy"]).equals(want.select(["sales", "busy"]))
    for name in ("city", "shop", "event_timestamp"):
        assert got.column(name).to_pylist() == want.column(name).to_pylist(), name
    assert 0 < want.column("sales").null_count < want.num_rows
    end = pd.Timestamp("2024-01-02T12:00:00", tz="UTC").to_pydatetime()
    stored = []
    for engine, name in ((OfflineStore(repo), "duck"), (spark_store(repo), "spark")):
        target = OnlineTarget(f"sqlite:///{tmp_path}/{name}.db")
        online = OnlineStore(target.open_kv(), repo, target=target)
        engine.materialize(online, end=end, chunk_rows=64)
        keys = sorted(online.kv.scan())
        stored.append(list(zip(keys, online.kv.get_many(keys), strict=True)))
        online.kv.close()
    assert stored[0] == stored[1] and len(stored[0]) > 100


MATERIALIZE_PROJECT = """
[features]
offline_engine = "{engine}"
online_store = {online}

[[features.entities]]
name = "driver"
join_key = "driver_id"

[[features.views]]
name = "stats"
entities = ["driver"]
source = "data/stats.parquet"
created_timestamp_field = "created"
features = {{ trips = "int64", rate = "float64", tier = "string" }}
"""


def _project(folder, frame, engine, online):
    (folder / "data").mkdir(parents=True)
    frame.to_parquet(folder / "data" / "stats.parquet")
    (folder / "mlscale.toml").write_text(MATERIALIZE_PROJECT.format(engine=engine, online=json.dumps(online)))


def _stats_frame() -> pd.DataFrame:
    frame = corrections(n_entities=400, seed=9)
    frame["tier"] = np.where(frame.driver_id % 3 == 0, None, np.where(frame.rate > 0.5, "gold", "silvér"))
    return frame


def _get(folder, ids):
    got = run(folder, "get", "--feature", "stats:*", "--entity", "driver_id=" + ",".join(map(str, ids)))
    assert got.returncode == 0, got.stderr
    return json.loads(got.stdout)


def test_materialize_on_spark_then_features_get_equals_duckdb(tmp_path, spark):
    frame = _stats_frame()
    shards = ["sqlite:///online/a.db", "sqlite:///online/b.db"]
    _project(tmp_path / "duck", frame, "duckdb", shards)
    _project(tmp_path / "spark", frame, "spark", shards)
    ids = list(range(0, 420, 2))  # the last ones have no rows
    times = pd.Timestamp("2024-01-01", tz="UTC") + pd.to_timedelta(np.arange(len(ids)) * 1800, unit="s")
    pd.DataFrame({"driver_id": ids, "event_timestamp": times}).to_parquet(tmp_path / "entities.parquet")
    answers = {}
    for name in ("duck", "spark"):
        folder = tmp_path / name
        assert run(folder, "apply").returncode == 0
        # Two windows: the second run (incremental) writes newer rows over the first run's.
        first = run(folder, "materialize", "--end", "2024-01-02T06:00:00")
        assert first.returncode == 0, first.stderr
        second = run(folder, "materialize", "--incremental", "--end", "2024-01-03T12:00:00")
        assert second.returncode == 0, second.stderr
        answers[name] = _get(folder, ids)
        built = run(
            folder, "training-set", "--entities", "../entities.parquet", "--feature", "stats:*", "-o", "t.parquet"
        )
        assert built.returncode == 0, built.stderr
        assert run(folder, "list").stdout.count("materialized to 2024-01-03T12:00:00") == 1
    # No TTL, so the answers do not depend on when they are read.
    duck, spark_answer = answers["duck"], answers["spark"]
    assert duck["metadata"] == spark_answer["metadata"]
    for a, b in zip(duck["results"], spark_answer["results"], strict=True):
        assert a == b
    trained = [pq.read_table(tmp_path / name / "t.parquet") for name in ("duck", "spark")]
    assert trained[0].equals(trained[1]) and trained[0].column("tier").null_count < trained[0].num_rows
    values = duck["results"][1]["values"]
    assert values[-1] is None and sum(v is not None for v in values) > 50


def test_rerunning_an_older_window_on_spark_never_moves_an_entity_back(tmp_path, spark_store):
    frame = _stats_frame()
    frame.to_parquet(tmp_path / "stats.parquet")
    repo = _ties_repo(tmp_path / "stats.parquet", created=True)
    target = OnlineTarget([f"sqlite:///{tmp_path}/a.db", f"sqlite:///{tmp_path}/b.db"])
    online = OnlineStore(target.open_kv(), repo, clock=lambda: 1.0e10, target=target)
    engine = spark_store(repo)
    late = pd.Timestamp("2024-01-03T12:00:00", tz="UTC").to_pydatetime()
    early = pd.Timestamp("2024-01-01T12:00:00", tz="UTC").to_pydatetime()
    written = engine.materialize(online, end=late, chunk_rows=100)
    assert written["stats"] == frame[frame.event_timestamp <= late].driver_id.nunique()
    before = sorted((k, online.kv.get_many([k])[0]) for k in online.kv.scan())
    engine.materialize(online, end=early, chunk_rows=100)
    after = sorted((k, online.kv.get_many([k])[0]) for k in online.kv.scan())
    assert after == before
    online.kv.close()


@pytest.mark.service
def test_materialize_on_spark_into_redis_equals_duckdb_into_sqlite(tmp_path, spark_store, redis_url):
    frame = _stats_frame()
    frame.to_parquet(tmp_path / "stats.parquet")
    repo = _ties_repo(tmp_path / "stats.parquet", created=True)
    end = pd.Timestamp("2024-01-02T18:00:00", tz="UTC")
    redis = OnlineTarget(f"{redis_url}?prefix=mlscale-test-spark-{uuid.uuid4().hex[:8]}:")
    sqlite = OnlineTarget(f"sqlite:///{tmp_path}/online.db")
    stores = {}
    for engine, target in ((spark_store(repo), redis), (OfflineStore(repo), sqlite)):
        online = OnlineStore(target.open_kv(), repo, clock=end.timestamp, target=target)
        engine.materialize(online, end=end.to_pydatetime())
        stores[engine.name] = online
    keys = sorted(stores["duckdb"].kv.scan())
    try:
        assert len(keys) > 300
        assert sorted(stores["spark"].kv.scan()) == keys
        assert stores["spark"].kv.get_many(keys) == stores["duckdb"].kv.get_many(keys)
    finally:
        stores["spark"].kv.delete(list(stores["spark"].kv.scan()))
        for online in stores.values():
            online.kv.close()


def test_spark_engine_refuses_what_it_cannot_do_with_clear_errors(tmp_path, spark_store):
    frame = _stats_frame()
    frame.to_parquet(tmp_path / "stats.parquet")
    repo = _ties_repo(tmp_path / "stats.parquet", created=True)
    engine = spark_store(repo)
    memory = OnlineTarget("memory://")
    online = OnlineStore(memory.open_kv(), repo, target=memory)
    with pytest.raises(ConfigError, match="not memory://"):
        engine.materialize(online, end=pd.Timestamp("2024-02-01", tz="UTC").to_pydatetime())
    frame.drop(columns=["rate"]).to_parquet(tmp_path / "stats.parquet")
    with pytest.raises(ConfigError, match="feature column 'rate' not found"):
        engine.validate_sources()
    frame.assign(event_timestamp=frame.event_timestamp.astype("int64")).to_parquet(tmp_path / "stats.parquet")
    with pytest.raises(ConfigError, match=r"timestamp column 'event_timestamp' is bigint .* not a timestamp"):
        engine.validate_sources()
    missing = spark_store(_ties_repo(tmp_path / "nowhere" / "*.parquet", created=False))
    with pytest.raises(ConfigError, match="cannot read its source"):
        missing.get_historical_features(
            pa.table({"driver_id": [1], "event_timestamp": pa.array([0], pa.timestamp("s"))}), ["stats:*"]
        )


def test_offline_engine_setting_picks_the_engine_and_rejects_unknown_ones(tmp_path, spark):
    from mlscale.features.engine import open_offline_engine
    from mlscale.features.spark import SparkOfflineStore

    repo = _ties_repo(tmp_path / "stats.parquet", created=False)
    default = parse_settings({}, root=tmp_path)
    assert default.features.offline_engine == "duckdb" and default.features.spark_master == "local[2]"
    assert isinstance(open_offline_engine(repo, default.features, tmp_path), OfflineStore)
    chosen = parse_settings({"features": {"offline_engine": "spark"}}, root=tmp_path)
    assert isinstance(open_offline_engine(repo, chosen.features, tmp_path), SparkOfflineStore)
    with pytest.raises(ConfigError, match="offline_engine must be one of duckdb, spark, not 'flink'"):
        parse_settings({"features": {"offline_engine": "flink"}}, root=tmp_path)
