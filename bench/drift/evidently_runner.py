"""Runs Evidently's DataDriftPreset on the benchmark's Parquet files, inside Evidently's own venv.

Prints one JSON line: the run times and, per column, the test, value and verdict Evidently reports.
Kept apart from mlscale (it imports nothing from it) so the peer runs in its own environment.
"""

from __future__ import annotations

import json
import sys
import time

import pandas as pd
from evidently import Report
from evidently.presets import DataDriftPreset


def per_column(snapshot) -> dict:
    """Column -> (method, value, threshold) from the snapshot's ValueDrift metrics; "" -> the dataset's
    drifted count and share (DriftedColumnsCount)."""
    out = {}
    for item in snapshot.dict()["metrics"]:
        config = item.get("config", {})
        if config.get("type", "").endswith("DriftedColumnsCount"):
            out[""] = item["value"]
        elif config.get("type", "").endswith("ValueDrift"):
            out[config["column"]] = {
                "method": config.get("method"),
                "value": item["value"],
                "threshold": config.get("threshold"),
            }
    return out


def main() -> None:
    """Arguments: REFERENCE CURRENT REPEATS [COLUMN...], the columns left out of Evidently's run."""
    ref_path, cur_path, repeats, drop = sys.argv[1], sys.argv[2], int(sys.argv[3]), sys.argv[4:]
    reference = pd.read_parquet(ref_path).drop(columns=drop)
    current = pd.read_parquet(cur_path).drop(columns=drop)
    times, snapshot = [], None
    for _ in range(repeats):
        started = time.perf_counter()
        snapshot = Report([DataDriftPreset()]).run(current, reference)
        times.append(time.perf_counter() - started)
    print(json.dumps({"times": times, "columns": per_column(snapshot)}))


if __name__ == "__main__":
    main()
