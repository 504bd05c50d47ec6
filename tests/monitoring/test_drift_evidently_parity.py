"""`mlscale monitor report --json` on a real-shaped table agrees with Evidently 0.7.23, column by column.

Evidently runs in its own venv (scripts/ensure-evidently.sh builds it; `make test` calls it). Same
test chosen, same verdict, value within 1e-6, same dataset share. Evidently raises on a column that is
all null in current, so its run leaves that column out; mlscale reports it empty, leaves it out of
the share and warns.
"""

from __future__ import annotations

import json
import math
import os
import subprocess
import sys
from pathlib import Path

import pytest
from drift_tables import EMPTY_IN_CURRENT, write_pair

from mlscale.cli import main
from mlscale.monitoring.drift import TESTS

ROOT = Path(__file__).resolve().parents[2]
EVIDENTLY_PYTHON = ROOT / ".cache" / "bench-venvs" / "evidently" / "bin" / "python"
RUNNER = ROOT / "bench" / "drift" / "evidently_runner.py"
NAMES = {
    "Wasserstein distance (normed)": "wasserstein",
    "K-S p_value": "ks",
    "PSI": "psi",
    "Jensen-Shannon distance": "jensenshannon",
    "chi-square p_value": "chisquare",
    "Z-test p_value": "z",
}


def _evidently(ref: Path, cur: Path) -> dict:
    done = subprocess.run(
        [str(EVIDENTLY_PYTHON), str(RUNNER), str(ref), str(cur), "1", EMPTY_IN_CURRENT],
        capture_output=True,
        text=True,
        timeout=300,
        env={**os.environ, "PYTHONWARNINGS": "ignore"},
    )
    assert done.returncode == 0, done.stderr[-2000:]
    return json.loads(done.stdout.strip().splitlines()[-1])["columns"]


def _mlscale(monkeypatch, capsys, *args: str) -> tuple[int, str, str]:
    monkeypatch.setattr(sys, "argv", ["mlscale", *args])
    capsys.readouterr()
    try:
        main()
        code = 0
    except SystemExit as exc:
        code = exc.code or 0
    out, err = capsys.readouterr()
    return code, out, err


@pytest.mark.skipif(
    not EVIDENTLY_PYTHON.exists(),
    reason="Evidently's venv is missing (make test builds it: scripts/ensure-evidently.sh)",
)
@pytest.mark.parametrize("rows", [800, 50_000])
def test_report_json_matches_evidently_column_by_column(rows, tmp_path, monkeypatch, capsys):
    ref, cur = write_pair(tmp_path, rows)
    out = tmp_path / "verdict.json"
    code, stdout, stderr = _mlscale(
        monkeypatch, capsys, "monitor", "report", str(ref), str(cur), "-o", str(tmp_path / "r.html"), "--json", str(out)
    )
    assert code == 0, stderr
    assert stderr.strip().splitlines() == [
        f"warning: empty column (all null) left out of the dataset share: {EMPTY_IN_CURRENT}"
    ]
    ours = json.loads(out.read_text())
    theirs = _evidently(ref, cur)
    dataset = theirs.pop("")
    by_name = {c["column"]: c for c in ours["columns"]}
    gone = by_name.pop(EMPTY_IN_CURRENT)
    assert gone["empty"] and not gone["drifted"] and gone["value"] is None and "empty" in gone["reason"]
    assert sorted(by_name) == sorted(theirs)
    for name, mine in by_name.items():
        peer = theirs[name]
        assert mine["test"] == NAMES[peer["method"]], name
        assert mine["threshold"] == peer["threshold"], name
        assert math.isclose(mine["value"], peer["value"], rel_tol=0, abs_tol=1e-6), (name, mine, peer)
        assert not mine["empty"] and mine["reason"] is None
        # Evidently's per-column verdict: its value against its threshold, with its comparison.
        assert mine["drifted"] == TESTS[mine["test"]].drifted(peer["value"], peer["threshold"]), name
    assert ours["drifted_columns"] == dataset["count"]
    assert ours["share"] == pytest.approx(dataset["share"], abs=1e-12)
    assert ours["scored_columns"] == len(theirs) and ours["empty_columns"] == [EMPTY_IN_CURRENT]
    kinds = {c["column"]: c["kind"] for c in ours["columns"]}
    assert kinds["visits_few"] == kinds["flag"] == kinds["const_int"] == kinds["active"] == "cat"
    assert kinds["visits"] == kinds["age"] == kinds["rating"] == "num"
    assert f"{ours['drifted_columns']}/{ours['scored_columns']} columns drifted" in stdout
