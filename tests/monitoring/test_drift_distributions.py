"""The p-value distributions computed without scipy.stats equal scipy.stats' to 1e-9."""

from __future__ import annotations

import math
import subprocess
import sys

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from scipy import stats

from mlscale.monitoring.drift import distributions

TOL = 1e-9


@pytest.mark.parametrize(("n1", "n2"), [(5, 5), (40, 40), (300, 300), (7, 3), (120, 45), (800, 600), (1000, 9000)])
def test_exact_two_sample_ks_equals_scipy(n1, n2):
    rng = np.random.default_rng(n1 * n2)
    for shift in (0.0, 0.1, 0.3, 1.0, 3.0):
        a, b = rng.normal(0, 1, n1), rng.normal(shift, 1, n2)
        expected = stats.ks_2samp(a, b, method="exact")
        got = distributions.ks_2samp_exact(n1, n2, float(expected.statistic))
        assert got is not None and math.isclose(got, expected.pvalue, rel_tol=0, abs_tol=TOL), (shift, got)


def test_kolmogorov_sf_equals_scipy_on_every_branch():
    for n in (1, 2, 10, 60, 140, 141, 500, 1000, 20_000, 150_000):
        specials = [0.0, 0.2 / n, 0.7 / n, 1.5 / n, 0.99, 1.0, 1 - 1.0 / (2 * n)]
        for d in [*specials, *np.linspace(0.002, 0.6, 40).tolist()]:
            expected = float(stats.kstwo.sf(d, n))
            got = distributions.kolmogorov_sf(d, n)
            assert math.isclose(got, expected, rel_tol=0, abs_tol=TOL), (n, d, got, expected)


def test_chi_square_and_normal_equal_scipy():
    for dof in (1, 2, 4, 29):
        for stat in (0.0, 0.5, 3.0, 20.0, 80.0, math.inf):
            assert math.isclose(distributions.chi2_sf(stat, dof), stats.chi2.sf(stat, dof), abs_tol=TOL)
    for z in (-5.0, -1.96, 0.0, 0.3, 2.5, 9.0):
        expected = 2 * (1 - stats.norm.cdf(abs(z)))
        assert math.isclose(distributions.two_sided_normal_pvalue(z), expected, abs_tol=TOL)


def test_the_report_command_never_imports_scipy_stats(tmp_path):
    """The whole process of `mlscale monitor report` keeps scipy (0.9 s to import scipy.stats) and pandas out."""
    rng = np.random.default_rng(0)
    # 800 reference rows: KS by default; 12,000 current rows: its asymptotic distribution.
    for name, shift, rows in (("ref", 0.0, 800), ("cur", 0.2, 12_000)):
        table = pa.table(
            {
                "x": rng.normal(shift, 1, rows),
                "same": rng.normal(0, 1, rows),
                "n": rng.integers(0, 5, rows),
                "c": rng.choice(["a", "b", "c"], rows),
                "f": pa.array(rng.normal(0, 1, rows), mask=rng.random(rows) < 0.1),
                "b": rng.random(rows) < 0.3,
            }
        )
        pq.write_table(table, tmp_path / f"{name}.parquet")
    code = f"""
import sys
sys.argv = ["mlscale", "monitor", "report", r"{tmp_path}/ref.parquet", r"{tmp_path}/cur.parquet",
            "-o", r"{tmp_path}/r.html"]
from mlscale.cli import main
try:
    main()
except SystemExit as exc:
    assert not exc.code, exc.code
assert "scipy" not in sys.modules, "scipy was imported"
assert "pandas" not in sys.modules, "pandas was imported"
"""
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr[-2000:]
    assert "columns drifted" in done.stdout
