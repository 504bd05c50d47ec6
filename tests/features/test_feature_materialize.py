"""Materialization: newest row per entity up to --end, idempotent, crash-safe, incremental."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from datetime import UTC, datetime, timedelta

import numpy as np
import pandas as pd
import pytest

from mlscale.features.materialize import materialize
from mlscale.features.offline import OfflineStore
from mlscale.features.online import OnlineStore
from mlscale.storage.memory import MemoryKeyValue


class CrashingKeyValue(MemoryKeyValue):
    """Fails on the n-th set_many, as a process killed in the middle of a run would stop writing."""

    def __init__(self, fail_on: int) -> None:
        super().__init__()
        self.fail_on = fail_on
        self.writes = 0

    def set_many_if_newer(
        self, items: Mapping[bytes, bytes], versions: Sequence[int], ttl: float | None = None
    ) -> None:
        self.writes += 1
        if self.writes == self.fail_on:
            raise ConnectionError("store went away")
        super().set_many_if_newer(items, versions, ttl)


def snapshot(kv: MemoryKeyValue) -> dict[bytes, bytes]:
    return {k: kv.get(k) for k in sorted(kv.scan())}


def online_values(repo, kv, ids, now):
    result = OnlineStore(kv, repo, clock=lambda: now.timestamp()).read(["driver_stats:*"], ids)
    return result.values, result.event_ts["driver_stats"]


def test_materialize_writes_latest_row_per_entity_up_to_end(repo, driver_data, t0):
    _, frame = driver_data
    end = t0 + timedelta(days=6)
    kv = MemoryKeyValue()
    written = materialize(repo, OfflineStore(repo), OnlineStore(kv, repo), end=end, views=["driver_stats"])
    want = frame[frame.event_timestamp <= end].sort_values("event_timestamp").groupby("driver_id").tail(1)
    assert written == {"driver_stats": len(want)}
    values, ts = online_values(repo, kv, want.driver_id.tolist(), end)
    np.testing.assert_array_equal(values["trips"], want.trips.to_numpy())
    np.testing.assert_array_equal(ts, want.event_timestamp.dt.tz_convert(None).to_numpy("datetime64[us]").view("i8"))


def test_rerun_is_idempotent_and_an_older_end_never_moves_values_back(repo, t0):
    kv = MemoryKeyValue()
    late = t0 + timedelta(days=9)
    materialize(repo, OfflineStore(repo), OnlineStore(kv, repo), end=late, chunk_rows=7)
    first = snapshot(kv)
    materialize(repo, OfflineStore(repo), OnlineStore(kv, repo), end=late, chunk_rows=5)
    assert snapshot(kv) == first
    materialize(repo, OfflineStore(repo), OnlineStore(kv, repo), end=t0 + timedelta(days=3))
    assert snapshot(kv) == first


def test_crash_midway_then_rerun_gives_the_same_store(repo, t0):
    end = t0 + timedelta(days=9)
    clean = MemoryKeyValue()
    materialize(repo, OfflineStore(repo), OnlineStore(clean, repo), end=end, chunk_rows=4)
    crashing = CrashingKeyValue(fail_on=3)
    with pytest.raises(ConnectionError):
        materialize(repo, OfflineStore(repo), OnlineStore(crashing, repo), end=end, chunk_rows=4)
    assert 0 < len(snapshot(crashing)) < len(snapshot(clean))
    materialize(repo, OfflineStore(repo), OnlineStore(crashing, repo), end=end, chunk_rows=4)
    assert snapshot(crashing) == snapshot(clean)


def test_incremental_windows_add_up_to_one_full_run(repo, t0):
    full = MemoryKeyValue()
    end = t0 + timedelta(days=10)
    materialize(repo, OfflineStore(repo), OnlineStore(full, repo), end=end)
    steps = MemoryKeyValue()
    start = None
    for day in (2, 5, 10):
        stop = t0 + timedelta(days=day)
        materialize(repo, OfflineStore(repo), OnlineStore(steps, repo), start=start, end=stop)
        start = stop
    assert snapshot(steps) == snapshot(full)


def test_incremental_run_reads_only_rows_after_the_watermark(tmp_path, make_repo, t0):
    frame = pd.DataFrame(
        {
            "driver_id": [1, 2],
            "event_timestamp": [t0, t0 + timedelta(hours=1)],
            "conv_rate": np.array([0.1, 0.2], "float32"),
            "acc_rate": np.array([0.1, 0.2], "float32"),
            "trips": [1, 2],
        }
    )
    frame.to_parquet(tmp_path / "f.parquet")
    repo = make_repo(tmp_path / "f.parquet", ttl=0)
    kv = MemoryKeyValue()
    counts = materialize(
        repo, OfflineStore(repo), OnlineStore(kv, repo), end=t0 + timedelta(minutes=30), views=["driver_stats"]
    )
    assert counts == {"driver_stats": 1}
    counts = materialize(
        repo,
        OfflineStore(repo),
        OnlineStore(kv, repo),
        start=t0 + timedelta(minutes=30),
        end=datetime(2030, 1, 1, tzinfo=UTC),
        views=["driver_stats"],
    )
    assert counts == {"driver_stats": 1}
    values, _ = online_values(repo, kv, [1, 2], t0)
    assert values["trips"].tolist() == [1, 2]
