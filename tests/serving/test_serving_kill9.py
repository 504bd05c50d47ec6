"""Kill -9 soak, shortened (bench/soak/run.py runs it at full length): the server, the stream
processor and the drift monitor are SIGKILLed at random moments under inference and event load and
restarted; afterwards the payload log's Parquet files are readable (half-written ones quarantined and
counted), SQLite files pass integrity_check, no acknowledged event is missing, the online windows count
every event of the log exactly once, and the drift monitor runs again on what it left."""

from __future__ import annotations

import importlib.util
import os
import subprocess
import sys
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq

from mlscale.monitoring.payload_recovery import QUARANTINE, quarantine_orphans

_SOAK = Path(__file__).resolve().parents[2] / "bench" / "soak" / "run.py"
_spec = importlib.util.spec_from_file_location("mlscale_bench_soak", _SOAK)
soak = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(soak)


def test_server_killed_at_random_loses_nothing_acknowledged(tmp_path: Path) -> None:
    report = soak.run_soak(tmp_path, seconds=15, workers=1, seed=14)
    assert report["kills"] >= 4
    assert report["answered"] > 0 and report["events_acknowledged"] > 0
    assert report["events_missing"] == [], report
    assert report["payload_log"]["unreadable"] == [], report
    assert report["payload_log"]["tmp_left"] == [], report
    assert report["payload_log"]["readable"] + report["payload_log"]["quarantined"] > 0, report
    assert report["sqlite_integrity"] == dict.fromkeys(["cache.db", "checkpoints.db", "online.db", "streams.db"], "ok")
    # The stream processor, killed too, still counted every event of the log exactly once.
    assert report["stream_kills"] >= 2 and report["stream_windows"]["windows"] > 0, report
    assert report["stream_windows"]["wrong"] == [], report
    # The drift monitor, killed too, left a state file that parses and runs again.
    assert report["monitor_once_exit"] == 0, report
    assert report["ok"], report


def test_only_files_of_dead_writers_are_quarantined(tmp_path: Path) -> None:
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    folder = tmp_path / "iris"
    folder.mkdir()
    orphan = folder / f"iris-1700000000000-{dead.pid}-1.parquet.tmp"
    orphan.write_bytes(b"PAR1 half a file")
    live = folder / f"iris-1700000000000-{os.getpid()}-2.parquet.tmp"
    live.write_bytes(b"PAR1 still being written")
    finished = folder / f"iris-1700000000000-{dead.pid}-0.parquet"
    pq.write_table(pa.table({"x": [1.0]}), finished)
    assert quarantine_orphans(tmp_path) == 1
    assert not orphan.exists() and (tmp_path / QUARANTINE / "iris" / orphan.name).exists()
    assert live.exists() and finished.exists()
    assert quarantine_orphans(tmp_path) == 0  # the quarantine itself is not swept again
