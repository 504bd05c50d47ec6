"""Stream backfills on Spark: the same windowed definitions give the same rows as the DuckDB
backfill (which the stream processor's tests check against the stream), row by row, for every window
kind, aggregation, duplicate rule and form of event time; and the CLI backfills on Spark when
[features] offline_engine = "spark"."""

from __future__ import annotations

import subprocess
import sys
import tempfile
from pathlib import Path

import msgspec
import pyarrow.parquet as pq
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from mlscale.errors import InvalidInput
from mlscale.storage import open_store
from mlscale.streams import batch_spark
from mlscale.streams.batch import compute, write_events
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


def _mlscale(*args: str, cwd: Path, input: bytes | None = None) -> subprocess.CompletedProcess:
    command = [str(Path(sys.executable).parent / "mlscale"), *args]
    return subprocess.run(command, cwd=cwd, input=input, capture_output=True, timeout=240)


def test_the_cli_backfills_an_archived_topic_with_retries_on_spark_as_on_duckdb(tmp_path):
    """Archived records carry their partition and offset: among retries at one time the first in
    the log is kept on both engines; the online store gets the same values."""
    config = (
        '[streams]\nbroker = "embedded:log.db"\nonline = "sqlite:///online.db"\npartitions = 3\n'
        "[[streams.features]]\n"
        'name = "spend"\nsource = "orders"\nentity_key = "user"\nsize = "10s"\nallowed_lateness = "1h"\n'
        'dedup_key = "id"\naggregations = ["count", "sum(amount)", "last(amount)"]\n'
    )
    for engine in ("duckdb", "spark"):
        (tmp_path / engine).mkdir()
        (tmp_path / engine / "mlscale.toml").write_text(
            config + f'[features]\noffline_engine = "{engine}"\nspark_config = {{"spark.ui.enabled" = "false"}}\n'
        )
    events = [{"id": i % 70, "user": f"u{i % 5}", "ts": 1000 + (i % 70) * 0.5, "amount": float(i)} for i in range(90)]
    lines = b"\n".join(msgspec.json.encode(e) for e in events)
    tables = {}
    for engine in ("duckdb", "spark"):
        folder = tmp_path / engine
        assert _mlscale("stream", "produce", "orders", cwd=folder, input=lines).returncode == 0
        archived = _mlscale("stream", "archive", "orders", "--out", "history", cwd=folder)
        assert archived.returncode == 0, archived.stderr
        filled = _mlscale("stream", "backfill", "--events", "history", "--online", cwd=folder)
        assert filled.returncode == 0, filled.stderr
        tables[engine] = pq.read_table(folder / "offline" / "spend" / "backfill.parquet").to_pylist()
    assert tables["spark"] == tables["duckdb"]
    assert sum(r["count"] for r in tables["spark"]) == 70  # 20 retries dropped
    online = {}
    for engine in ("duckdb", "spark"):
        store = open_store("sqlite:///online.db", root=tmp_path / engine)
        online[engine] = {key: store.get(key) for key in store.scan(b"spend|")}
        store.close()
    assert len(online["spark"]) == len(tables["spark"]) and online["spark"] == online["duckdb"]
