"""Drift detection, mlscale vs Evidently 0.7.23, on the same generated data (N x 20 numeric columns).

Both sides compute drift on every column with their default tests (N > 1000 rows: Wasserstein
distance normed by the reference's std, threshold 0.1). Evidently runs in its own virtual
environment (.cache/bench-venvs/evidently, built by scripts/ensure-evidently.sh when missing) in a
subprocess; both sides read the same Parquet files and are timed on in-memory data (reading
excluded), median of a few runs.

    python bench/drift/run.py            # 100,000 x 20 and 1,000,000 x 20
    python bench/drift/run.py --quick    # 20,000 x 20, one run each: a check that it works

A second table times the whole job as a user runs it, each side one process from start to exit:
``mlscale monitor report ref.parquet cur.parquet -o report.html`` against Evidently reading both files,
running DataDriftPreset and writing its HTML (goal of issue 12: at least 20x).
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from mlscale.monitoring.drift import TESTS, DriftDetector

ROOT = Path(__file__).resolve().parents[2]
CACHE = ROOT / ".cache"
VENV = CACHE / "bench-venvs" / "evidently"
COLUMNS = 20
# Evidently's display names of its tests -> ours.
EVIDENTLY_NAMES = {
    "Wasserstein distance (normed)": "wasserstein",
    "K-S p_value": "ks",
    "PSI": "psi",
    "Jensen-Shannon distance": "jensenshannon",
    "chi-square p_value": "chisquare",
    "Z-test p_value": "z",
}


def peer_python() -> Path:
    """Evidently's interpreter, built by scripts/ensure-evidently.sh on first use (never in the project's venv)."""
    python = VENV / "bin" / "python"
    if not python.exists():
        subprocess.run(["bash", str(ROOT / "scripts" / "ensure-evidently.sh")], check=True)
    if not python.exists():
        raise SystemExit("Evidently's venv could not be built (see scripts/ensure-evidently.sh)")
    return python


def make_data(rows: int, folder: Path) -> tuple[Path, Path]:
    """Reference and current with the same seed each run: half the columns shifted (drift), half not."""
    folder.mkdir(parents=True, exist_ok=True)
    ref_path, cur_path = folder / f"ref-{rows}.parquet", folder / f"cur-{rows}.parquet"
    if ref_path.exists() and cur_path.exists():
        return ref_path, cur_path
    rng = np.random.default_rng(42)
    ref, cur = {}, {}
    for j in range(COLUMNS):
        scale = 1.0 + j % 5
        shift = 0.25 * scale if j % 2 == 0 else 0.0  # even columns drift by a quarter std
        if j % 3 == 0:
            ref[f"f{j}"] = rng.exponential(scale, rows)
            cur[f"f{j}"] = rng.exponential(scale, rows) + shift
        else:
            ref[f"f{j}"] = rng.normal(0, scale, rows)
            cur[f"f{j}"] = rng.normal(shift, scale, rows)
    pq.write_table(pa.table(ref), ref_path)
    pq.write_table(pa.table(cur), cur_path)
    return ref_path, cur_path


def run_ours(ref_path: Path, cur_path: Path, repeats: int) -> dict:
    ref = {k: np.asarray(v) for k, v in pq.read_table(ref_path).to_pydict().items()}
    cur = {k: np.asarray(v) for k, v in pq.read_table(cur_path).to_pydict().items()}
    total, score_only, result = [], [], None
    for _ in range(repeats):
        started = time.perf_counter()
        detector = DriftDetector(max_sample=None).fit(ref)  # exact: whole sorted reference kept
        fitted = time.perf_counter()
        result = detector.score(cur)
        done = time.perf_counter()
        total.append(done - started)
        score_only.append(done - fitted)
    columns = {c.column: {"method": c.test, "value": c.value, "drifted": c.drifted} for c in result.columns}
    return {"times": total, "score_times": score_only, "columns": columns, "share": result.share}


def run_peer(ref_path: Path, cur_path: Path, repeats: int) -> dict:
    runner = Path(__file__).with_name("evidently_runner.py")
    done = subprocess.run(
        [str(peer_python()), str(runner), str(ref_path), str(cur_path), str(repeats)],
        capture_output=True,
        text=True,
        env={**os.environ, "PYTHONWARNINGS": "ignore"},
    )
    if done.returncode != 0:
        raise SystemExit(f"evidently failed:\n{done.stderr[-2000:]}")
    return json.loads(done.stdout.strip().splitlines()[-1])


def whole_process(ref_path: Path, cur_path: Path, folder: Path) -> tuple[float, float]:
    """Seconds from process start to exit: mlscale's report command, then Evidently's whole job."""
    ours = [sys.executable, "-m", "mlscale", "monitor", "report", str(ref_path), str(cur_path)]
    ours += ["-o", str(folder / "mlscale-report.html")]
    theirs = [str(peer_python()), str(Path(__file__).with_name("evidently_whole.py")), str(ref_path), str(cur_path)]
    theirs += [str(folder / "evidently-report.html")]
    times = []
    for command in (ours, theirs):
        started = time.perf_counter()
        done = subprocess.run(command, capture_output=True, text=True, env={**os.environ, "PYTHONWARNINGS": "ignore"})
        times.append(time.perf_counter() - started)
        if done.returncode != 0:
            raise SystemExit(f"{command[0]} failed:\n{done.stderr[-2000:]}")
    return times[0], times[1]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="small data, one run: check it works")
    parser.add_argument("--rows", type=int, nargs="*", help="row counts (default 100000 1000000)")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--whole-rows", type=int, default=None, help="rows of the whole-process row (default 100000)")
    args = parser.parse_args()
    sizes = args.rows or ([20_000] if args.quick else [100_000, 1_000_000])
    repeats = 1 if args.quick else args.repeats
    print(f"machine: {os.cpu_count()} cores; median of {repeats} run(s); reading files excluded\n")
    print(
        "| rows x cols | Evidently 0.7.23 (s) | mlscale fit+score (s) | mlscale score (s) "
        "| speed-up (fit+score) | same tests and verdicts | max abs diff of values |"
    )
    print("|---|---|---|---|---|---|---|")
    for rows in sizes:
        ref_path, cur_path = make_data(rows, CACHE / "bench-data" / "drift")
        ours = run_ours(ref_path, cur_path, repeats)
        peer = run_peer(ref_path, cur_path, repeats)
        diffs, agree = [], True
        peer["columns"].pop("", None)  # the dataset's share
        for name, mine in ours["columns"].items():
            theirs = peer["columns"][name]
            diffs.append(abs(mine["value"] - theirs["value"]))
            test = EVIDENTLY_NAMES.get(theirs["method"])
            threshold = theirs["threshold"] if theirs["threshold"] is not None else TESTS[test].threshold
            # Same test chosen, and the same verdict from Evidently's value with its own comparison.
            agree &= test == mine["method"]
            agree &= mine["drifted"] == TESTS[test].drifted(theirs["value"], threshold)
        t_peer, t_ours = statistics.median(peer["times"]), statistics.median(ours["times"])
        t_score = statistics.median(ours["score_times"])
        print(
            f"| {rows:,} x {COLUMNS} | {t_peer:.3f} | {t_ours:.3f} | {t_score:.3f} | "
            f"{t_peer / t_ours:.1f}x | {'yes' if agree else 'NO'} | {max(diffs):.2e} |"
        )
    main_whole(args.whole_rows or (2_000 if args.quick else 100_000))


def main_whole(rows: int) -> None:
    folder = CACHE / "bench-data" / "drift"
    ref_path, cur_path = make_data(rows, folder)
    ours, theirs = whole_process(ref_path, cur_path, folder)
    print("\nwhole process, start to HTML written (one run each, same files):\n")
    print("| rows x cols | Evidently 0.7.23 (s) | mlscale monitor report (s) | speed-up |")
    print("|---|---|---|---|")
    print(f"| {rows:,} x {COLUMNS} | {theirs:.2f} | {ours:.2f} | {theirs / ours:.1f}x |")


if __name__ == "__main__":
    main()
