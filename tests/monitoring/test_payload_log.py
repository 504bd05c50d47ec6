"""The payload log keeps what it accepted, drops (and counts) instead of blocking, and rolls files."""

from __future__ import annotations

import subprocess
import sys
import textwrap
import time

import numpy as np
import pyarrow.parquet as pq
import pytest

from mlscale.monitoring.payload_log import PayloadLog
from mlscale.monitoring.payload_reader import PayloadReader, to_numpy_columns


def _batch(rows: int, start: int = 0) -> tuple[dict, dict]:
    x = np.arange(start * 3, (start + rows) * 3, dtype=np.float32).reshape(rows, 3)
    return {"x": x, "tag": np.array([f"t{start + i}" for i in range(rows)], dtype=object)}, {
        "score": np.arange(start, start + rows, dtype=np.float64)
    }


def test_close_writes_every_accepted_row_with_flattened_columns(tmp_path):
    log = PayloadLog(tmp_path, flush_interval=60)
    for i in range(0, 50, 5):
        log.record("iris", "2", *_batch(5, i))
    log.close()
    table = PayloadReader(tmp_path).window("iris", rows=1000)
    assert table.num_rows == 50 and log.counts["logged"] == 50
    assert table.column_names == ["model", "version", "timestamp", "x_0", "x_1", "x_2", "tag", "out_score"]
    cols = to_numpy_columns(table)
    np.testing.assert_array_equal(cols["out_score"], np.arange(50.0))
    np.testing.assert_array_equal(cols["x_2"], np.arange(50) * 3 + 2)
    assert cols["tag"][7] == "t7" and set(table.column("version").to_pylist()) == {"2"}


def test_full_buffer_drops_and_counts_without_blocking_or_raising(tmp_path):
    log = PayloadLog(tmp_path, max_buffer_records=10, flush_interval=3600)
    started = time.perf_counter()
    for i in range(8):
        log.record("m", "1", *_batch(2, 2 * i))
    log.record("m", "1", {"x": object()}, {})  # malformed: counted, never raised
    elapsed = time.perf_counter() - started
    assert log.counts["logged"] == 10 and log.counts["dropped"] == 7
    assert elapsed < 0.5
    log.close()
    assert PayloadReader(tmp_path).window("m", rows=100).num_rows == 10
    log.record("m", "1", *_batch(1))  # after close: dropped, not raised
    assert log.counts["dropped"] == 8


def test_sample_rate_per_model(tmp_path):
    log = PayloadLog(tmp_path, {"never": 0.0, "half": 0.5}, default_rate=1.0, flush_interval=3600)
    for i in range(400):
        for model in ("never", "half", "all"):
            log.record(model, "1", *_batch(1, i))
    log.close()
    reader = PayloadReader(tmp_path)
    assert reader.window("never", rows=10).num_rows == 0
    assert reader.window("all", rows=1000).num_rows == 400
    half = reader.window("half", rows=1000).num_rows
    assert 120 < half < 280
    assert log.counts["sampled_out"] == 400 + (400 - half)


def test_files_roll_by_size_and_by_time(tmp_path):
    log = PayloadLog(tmp_path / "size", roll_bytes=1, flush_interval=3600)
    for i in range(3):
        log.record("m", "1", *_batch(4, 4 * i))
        log._write_pass()  # one writer pass per batch, as the thread would over time
    log.close()
    files = PayloadReader(tmp_path / "size").files("m")
    assert len(files) == 3 and sum(pq.read_metadata(f).num_rows for f in files) == 12

    timed = PayloadLog(tmp_path / "time", roll_seconds=0.2, flush_interval=0.05)
    timed.record("m", "1", *_batch(3))
    reader = PayloadReader(tmp_path / "time")
    deadline = time.monotonic() + 10
    while not reader.files("m") and time.monotonic() < deadline:
        time.sleep(0.05)
    assert reader.window("m", seconds=60).num_rows == 3  # visible without close()
    assert not list((tmp_path / "time" / "m").glob("*.tmp"))
    timed.close()


def test_count_and_time_windows_pick_the_newest_rows(tmp_path):
    log = PayloadLog(tmp_path, flush_interval=3600)
    for i in range(6):
        log.record("m", "1", *_batch(10, 10 * i))
        log.flush()
    log.close()
    reader = PayloadReader(tmp_path)
    last = to_numpy_columns(reader.window("m", rows=25))["out_score"]
    np.testing.assert_array_equal(last, np.arange(35.0, 60.0))
    assert reader.window("m", seconds=3600).num_rows == 60
    assert reader.window("m", seconds=3600, now=time.time() + 7200).num_rows == 0
    with pytest.raises(Exception, match="rows or seconds"):
        reader.window("m")


def test_processes_sharing_a_directory_write_separate_files(tmp_path):
    script = textwrap.dedent(f"""
        import numpy as np
        from mlscale.monitoring.payload_log import PayloadLog
        log = PayloadLog({str(tmp_path)!r}, flush_interval=3600)
        for i in range(20):
            log.record("m", "1", {{"x": np.ones((2, 2))}}, {{"y": np.zeros(2)}})
        log.close()
    """)
    procs = [subprocess.Popen([sys.executable, "-c", script]) for _ in range(2)]
    assert [p.wait(timeout=60) for p in procs] == [0, 0]
    reader = PayloadReader(tmp_path)
    assert len(reader.files("m")) == 2
    assert reader.window("m", rows=1000).num_rows == 80


def test_payload_log_from_settings_uses_rates_and_folder(tmp_path):
    from mlscale.config import parse_settings
    from mlscale.monitoring.payload_log import payload_log_from_settings

    settings = parse_settings(
        {
            "monitoring": {
                "payload_log": {
                    "enabled": True,
                    "directory": "logs",
                    "sample_rate": 1.0,
                    "sample_rates": {"quiet": 0.0},
                }
            }
        },
        root=tmp_path,
    )
    assert payload_log_from_settings(parse_settings({}).monitoring.payload_log, settings.resolve) is None
    log = payload_log_from_settings(settings.monitoring.payload_log, settings.resolve)
    log.record("quiet", "1", *_batch(2))
    log.record("loud", "1", *_batch(2))
    log.close()
    reader = PayloadReader(tmp_path / "logs")
    assert reader.window("loud", rows=10).num_rows == 2 and reader.window("quiet", rows=10).num_rows == 0
