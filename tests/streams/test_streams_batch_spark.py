"""Stream backfills on Spark: the same windowed definitions give the same rows as the DuckDB
backfill (which the stream processor's tests check against the stream), row by row, for every window
kind, aggregation, duplicate rule and form of event time. The CLI on Spark (an archived topic with
retries, offline and online) is tested on a standalone Spark cluster: tests/cluster/test_cluster_spark.py."""

from __future__ import annotations

import tempfile
from pathlib import Path

import pyarrow.parquet as pq
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from mlscale.errors import ConfigError, InvalidInput
from mlscale.features.online import OnlineTarget
from mlscale.storage.memory import MemoryKeyValue
from mlscale.streams import batch, batch_spark
from mlscale.streams.batch import backfill, compute, write_events
from mlscale.streams.definitions import WindowedFeature

pytestmark = pytest.mark.timeout(360)  # the first Spark test also starts the JVM

AGGS = ["count", "sum(amount)", "mean(amount)", "min(amount)", "max(amount)", "last(amount)", "distinct_count(item)"]
T0_MS = 1_793_491_200_000  # 2026-11-01T00:00:00Z


def _feature(window: str, dedup_key: str | None = None) -> WindowedFeature:
    return WindowedFeature(
        name="f",
        source="ev",
        entity_key="user",
        window=window,
        size="10s",
        slide="2500ms" if window == "hopping" else None,
        gap="3s",
        aggregations=AGGS,
        dedup_key=dedup_key,
    )


@settings(max_examples=8, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(
    raw=st.lists(
        st.tuples(
            st.sampled_from(["a", "b", "c", "d"]),
            st.integers(0, 400),  # steps of 0.25 s: many window boundaries and ties
            st.integers(-50, 50),
            st.sampled_from(["x", "y", "z"]),
            st.integers(0, 30),  # ids: some repeat (client retries)
        ),
        min_size=1,
        max_size=150,
    ),
    window=st.sampled_from(["tumbling", "hopping", "session"]),
    dedup=st.booleans(),
)
def test_spark_backfill_equals_duckdb_row_by_row(tmp_path, spark, raw, window, dedup):
    events = [
        {"id": i, "user": u, "ts": 1_700_000_000 + t / 4, "amount": float(a), "item": it}
        for u, t, a, it, i in raw
    ]
    path = write_events(events, Path(tempfile.mkdtemp(dir=tmp_path)) / "events.parquet")
    feature = _feature(window, "id" if dedup else None)
    assert batch_spark.compute(feature, path, spark).to_pylist() == compute(feature, path).to_pylist()


TIMES = [
    "2026-11-01T00:00:05.250Z",
    "2026-11-01T05:30:05.250+05:30",
    "2026-11-01T05:30:05.250+0530",
    "2026-10-31T21:00:05.250-03:00",
    "2026-11-01T00:00:05.25",  # no offset: UTC
    "2026-11-01 00:00:05.250z",
    "2026-11-01t00:00:05.250Z",
]


def test_iso_times_in_every_form_land_in_the_same_window_and_non_times_are_skipped(tmp_path, spark):
    events = [{"user": f"u{i}", "ts": ts} for i, ts in enumerate([*TIMES, "yesterday", "2026-11-01", "1793491205"])]
    path = write_events(events, tmp_path / "e.parquet")
    feature = WindowedFeature(name="t", source="ev", entity_key="user", size="1s")
    rows = batch_spark.compute(feature, path, spark).to_pylist()
    assert {r["e"]: r["window_start"] for r in rows} == {f"u{i}": T0_MS + 5000 for i in range(len(TIMES))}
    assert rows == compute(feature, path).to_pylist()


def test_a_session_time_zone_other_than_utc_changes_nothing_and_is_left_as_it_was(tmp_path, spark):
    path = write_events([{"user": "u", "ts": "2026-11-01T00:00:05.25"}], tmp_path / "e.parquet")
    feature = WindowedFeature(name="t", source="ev", entity_key="user", size="1s")
    spark.conf.set("spark.sql.session.timeZone", "America/Sao_Paulo")
    try:
        assert [r["window_start"] for r in batch_spark.compute(feature, path, spark).to_pylist()] == [T0_MS + 5000]
        assert spark.conf.get("spark.sql.session.timeZone") == "America/Sao_Paulo"
    finally:
        spark.conf.set("spark.sql.session.timeZone", "UTC")


def test_a_missing_column_is_a_clear_error(tmp_path, spark):
    path = write_events([{"user": "u", "ts": 1.0}], tmp_path / "e.parquet")
    feature = WindowedFeature(name="spend", source="ev", entity_key="user", aggregations=["sum(amount)"])
    with pytest.raises(InvalidInput, match=r"backfill of spend: .*amount"):
        batch_spark.compute(feature, path, spark)
    with pytest.raises(InvalidInput, match="cannot read events"):
        batch_spark.compute(feature, tmp_path / "nowhere", spark)


def test_a_spark_backfill_is_written_by_the_executors_and_equals_duckdb_offline_and_online(
    tmp_path, spark, monkeypatch
):
    """Client retries and same-time events over 40 users: Spark's executors write the Parquet (a
    folder of part files) and the online store (a SQLite file they open from its URL); both equal
    what the DuckDB backfill writes, row by row and key by key (DuckDB's in chunks of 7 windows)."""
    monkeypatch.setattr(batch, "ONLINE_CHUNK_ROWS", 7)
    rows = [
        {"id": i % 300, "user": f"u{i % 300 % 40}", "ts": 1_700_000_000 + (i % 300) // 3, "amount": float(i % 300)}
        for i in range(360)  # 60 retries of ids already sent, and three events per second
    ]
    path = write_events(rows, tmp_path / "events.parquet")
    feature = WindowedFeature(
        name="spend",
        source="orders",
        entity_key="user",
        size="10s",
        dedup_key="id",
        aggregations=["count", "sum(amount)", "last(amount)"],
    )
    written = {}
    for engine in ("duckdb", "spark"):
        target = OnlineTarget(f"sqlite:///{engine}/online.db", str(tmp_path))
        on_spark = spark if engine == "spark" else None
        out = backfill(feature, path, tmp_path / engine / "offline", online=target, spark=on_spark)
        kv = target.open_kv()
        try:
            keys = sorted(kv.scan(b"spend|"))
            written[engine] = (pq.read_table(out).to_pylist(), dict(zip(keys, kv.get_many(keys), strict=True)))
        finally:
            kv.close()
        if engine == "spark":
            assert out.is_dir() and len(list(out.glob("part-*.parquet"))) >= 1
    assert written["spark"] == written["duckdb"]
    offline, online = written["spark"]
    assert sum(r["count"] for r in offline) == 300 and len(online) == len(offline)
    # DuckDB writes its file in place of a Spark folder, and a store only the driver sees is refused.
    again = backfill(feature, path, tmp_path / "spark" / "offline")
    assert again.is_file() and pq.read_table(again).to_pylist() == offline
    with pytest.raises(ConfigError, match="memory://"):
        backfill(feature, path, tmp_path / "m", online=OnlineTarget("memory://"), spark=spark)
    with pytest.raises(InvalidInput, match="OnlineTarget"):
        backfill(feature, path, tmp_path / "m", online=MemoryKeyValue(), spark=spark)
