"""`mlscale features ...` end to end in a project folder, as a user runs it."""

from __future__ import annotations

import json
import subprocess
import sys
from contextlib import chdir

import pandas as pd
import pyarrow.parquet as pq

PROJECT = """
[features]
registry = "features/registry.db"
online_store = ["sqlite:///features/online/a.db", "sqlite:///features/online/b.db"]

[[features.entities]]
name = "driver"
join_key = "driver_id"

[[features.views]]
name = "driver_stats"
entities = ["driver"]
source = "data/driver_stats.parquet"
ttl = "3650d"
features = { conv_rate = "float32", acc_rate = "float32", trips = "int64" }

[[features.services]]
name = "driver_model"
features = ["driver_stats:conv_rate", "driver_stats:trips"]
"""


class Ran:
    def __init__(self, returncode: int, stdout: str, stderr: str) -> None:
        self.returncode, self.stdout, self.stderr = returncode, stdout, stderr


def run(folder, *args):
    """In-process, mapped like ``main()`` maps errors (the subprocess test below pins main itself)."""
    from click.testing import CliRunner

    from mlscale.cli import cli
    from mlscale.errors import MlscaleError

    with chdir(folder):
        result = CliRunner().invoke(cli, ["features", *args], standalone_mode=False)
    if isinstance(result.exception, MlscaleError):
        return Ran(2, result.output, f"error: {result.exception}\n")
    if result.exception is not None:
        raise result.exception
    return Ran(0, result.output, "")


def run_process(folder, *args):
    return subprocess.run(
        [sys.executable, "-m", "mlscale", "features", *args],
        cwd=folder,
        capture_output=True,
        text=True,
        timeout=60,
    )


def test_cli_apply_list_describe_materialize_get_and_training_set(tmp_path, make_frame):
    (tmp_path / "data").mkdir()
    frame = make_frame()
    frame.to_parquet(tmp_path / "data" / "driver_stats.parquet")
    (tmp_path / "mlscale.toml").write_text(PROJECT)

    applied = run(tmp_path, "apply")
    assert applied.returncode == 0, applied.stderr
    assert "added    view driver_stats" in applied.stdout
    listed = run(tmp_path, "list")
    assert "view     driver_stats [driver] 3 features" in listed.stdout and "never" in listed.stdout
    described = json.loads(run(tmp_path, "describe", "driver_stats").stdout)
    assert described["kind"] == "feature view" and described["materialized_until"] is None

    middle = frame.event_timestamp.sort_values().iloc[200]
    first = run(tmp_path, "materialize", "--end", middle.isoformat())
    assert first.returncode == 0, first.stderr
    second = run(tmp_path, "materialize", "--incremental", "--end", "2030-01-01")
    assert second.returncode == 0, second.stderr
    assert "driver_stats:" in second.stdout

    got = json.loads(run(tmp_path, "get", "--service", "driver_model", "--entity", "driver_id=3,12345").stdout)
    latest = frame.sort_values("event_timestamp").groupby("driver_id").tail(1).set_index("driver_id")
    assert got["results"][2]["values"] == [int(latest.trips[3]), None]
    assert got["results"][2]["statuses"] == ["PRESENT", "NOT_FOUND"]

    entities = pd.DataFrame({"driver_id": [3, 3, 4], "event_timestamp": [middle, middle, middle]})
    entities.to_parquet(tmp_path / "entities.parquet")
    built = run(
        tmp_path, "training-set", "--entities", "entities.parquet", "--service", "driver_model", "-o", "train.parquet"
    )
    assert built.returncode == 0, built.stderr
    table = pq.read_table(tmp_path / "train.parquet")
    assert table.column_names == ["driver_id", "event_timestamp", "conv_rate", "trips"]
    assert table.num_rows == 3


def test_cli_errors_are_one_line_with_exit_status_2(tmp_path, make_frame):
    (tmp_path / "data").mkdir()
    make_frame().drop(columns=["trips"]).to_parquet(tmp_path / "data" / "driver_stats.parquet")
    (tmp_path / "mlscale.toml").write_text(PROJECT)
    missing_column = run_process(tmp_path, "apply")
    assert missing_column.returncode == 2
    assert missing_column.stderr.strip().splitlines() == [
        "error: feature view 'driver_stats': feature column 'trips' not found in data/driver_stats.parquet "
        "(columns: driver_id, event_timestamp, conv_rate, acc_rate)"
    ]
    not_applied = run(tmp_path, "list")
    assert not_applied.returncode == 2 and "run `mlscale features apply`" in not_applied.stderr
    (tmp_path / "mlscale.toml").write_text(PROJECT.replace('entities = ["driver"]', 'entities = ["rider"]'))
    unknown = run(tmp_path, "apply")
    assert unknown.returncode == 2 and "unknown entity 'rider'" in unknown.stderr
    bad_time = run(tmp_path, "materialize", "--end", "yesterday")
    assert bad_time.returncode == 2 and "not an ISO date" in bad_time.stderr


def test_cli_corrections_win_by_created_time_and_int_features_keep_nulls_as_int64(tmp_path):
    (tmp_path / "data").mkdir()
    t = pd.Timestamp("2024-01-01T00:00:00Z")
    pd.DataFrame(
        {
            "driver_id": [1, 1, 1, 2],
            "event_timestamp": [t, t, t, t],
            # The correction (written last) is neither the first nor the last row of the file.
            "written_at": [t, t + pd.Timedelta(hours=2), t + pd.Timedelta(hours=1), t],
            "conv_rate": [0.125, 0.75, 0.875, 0.5],
            "acc_rate": [0.125, 0.75, 0.875, 0.5],
            "trips": pd.array([3, 2**53 + 1, 9, None], dtype="Int64"),
        }
    ).to_parquet(tmp_path / "data" / "driver_stats.parquet")
    project = PROJECT.replace('ttl = "3650d"', 'ttl = "3650d"\ncreated_timestamp_field = "written_at"')
    (tmp_path / "mlscale.toml").write_text(project)
    assert run(tmp_path, "apply").returncode == 0
    pd.DataFrame({"driver_id": [1, 2, 3], "event_timestamp": [t, t, t]}).to_parquet(tmp_path / "entities.parquet")
    built = run(tmp_path, "training-set", "--entities", "entities.parquet", "--service", "driver_model", "-o", "t.pq")
    assert built.returncode == 0, built.stderr
    train = pd.read_parquet(tmp_path / "t.pq")
    assert str(train.trips.dtype) == "Int64"
    assert train.trips.tolist()[0] == 2**53 + 1 and train.trips.isna().tolist() == [False, True, True]
    assert train.conv_rate.tolist()[0] == 0.75

    assert run(tmp_path, "materialize", "--end", "2024-01-02").returncode == 0
    got = json.loads(run(tmp_path, "get", "--service", "driver_model", "--entity", "driver_id=1,2,3").stdout)
    assert got["results"][2]["values"] == [2**53 + 1, None, None]
    assert got["results"][2]["statuses"] == ["PRESENT", "NULL_VALUE", "NOT_FOUND"]


def test_cli_names_a_feature_column_gone_since_apply_and_its_file(tmp_path, make_frame):
    (tmp_path / "data").mkdir()
    frame = make_frame()
    frame.to_parquet(tmp_path / "data" / "driver_stats.parquet")
    (tmp_path / "mlscale.toml").write_text(PROJECT)
    assert run(tmp_path, "apply").returncode == 0
    frame.head(3)[["driver_id", "event_timestamp"]].to_parquet(tmp_path / "entities.parquet")
    frame.drop(columns=["trips"]).to_parquet(tmp_path / "data" / "driver_stats.parquet")
    for args in (
        ("training-set", "--entities", "entities.parquet", "--service", "driver_model", "-o", "t.parquet"),
        ("materialize", "--end", "2030-01-01"),
    ):
        done = run_process(tmp_path, *args)
        assert done.returncode == 2, done.stderr
        lines = done.stderr.strip().splitlines()
        assert len(lines) == 1 and "Binder" not in lines[0], lines
        assert lines[0].startswith(
            "error: feature view 'driver_stats': feature column 'trips' not found in data/driver_stats.parquet "
            "(it was there at `mlscale features apply`"
        ), lines[0]
