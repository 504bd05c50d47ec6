"""Evidently 0.7.23's whole job as a user runs it: read both Parquet files, DataDriftPreset, write HTML.

Run as its own process inside Evidently's venv; bench/drift/run.py times the process from start to exit.
"""

from __future__ import annotations

import sys

import pandas as pd
from evidently import Report
from evidently.presets import DataDriftPreset


def main() -> None:
    ref_path, cur_path, out_path = sys.argv[1:4]
    reference, current = pd.read_parquet(ref_path), pd.read_parquet(cur_path)
    Report([DataDriftPreset()]).run(current, reference).save_html(out_path)


if __name__ == "__main__":
    main()
