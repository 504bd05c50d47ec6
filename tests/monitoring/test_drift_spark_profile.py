"""Reference profiles computed on Spark equal the Arrow path's (``profile_parquet``) on the same rows:
exactly while a column fits in ``max_sample``; past it exact counts, extremes and value counts,
moments to rounding, quantiles within the rank error, and the same drift verdicts."""

from __future__ import annotations

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

pytest.importorskip("pyspark")

from mlscale.errors import ConfigError, InvalidInput
from mlscale.monitoring.drift import DriftDetector, ReferenceProfile
from mlscale.monitoring.drift.spark_profile import profile_spark
from mlscale.monitoring.drift.streaming import profile_parquet

pytestmark = pytest.mark.timeout(360)  # the first test also starts the JVM

ROWS = 50_000
FILES = 5


def reference_table(rows: int, rng: np.random.Generator, shift: float = 0.0) -> pa.Table:
    """A feature table as a lake holds it: nulls, NaN and infinities among floats, integer counts
    with and without nulls, flags, a string with many categories, ids, times in three forms."""
    amount = rng.lognormal(3 + shift, 1, rows)
    amount[rng.random(rows) < 0.02] = np.nan
    amount[rng.random(rows) < 0.001] = np.inf
    start = np.datetime64("2026-01-01T00:00:00", "us")
    times = start + rng.integers(0, 86_400 * 90, rows).astype("timedelta64[s]")
    products = [f"sku-{i:04d}" for i in range(400)]
    weights = rng.random(400) + np.linspace(0, 1 + shift, 400)
    return pa.table(
        {
            "amount": pa.array(amount, mask=rng.random(rows) < 0.1),
            "score": rng.normal(shift, 1, rows).astype(np.float32),
            "rating": rng.integers(1, 6, rows).astype(float),  # a numeric column with 5 values
            "visits": rng.integers(0, 60 + int(20 * shift), rows),  # integers, > 10 values: num
            "children": rng.integers(0, 4, rows),  # integers, 4 values: cat
            "age": pa.array(rng.integers(18, 80, rows), mask=rng.random(rows) < 0.05),  # nulls: num
            "active": rng.random(rows) < 0.5 + 0.2 * shift,
            "flag": pa.array(rng.random(rows) < 0.3, mask=rng.random(rows) < 0.1),
            "product": pa.array(rng.choice(products, rows, p=weights / weights.sum()), mask=rng.random(rows) < 0.05),
            "user_id": [f"u{i:08d}" for i in rng.permutation(rows)],  # text
            "seen_iso": np.datetime_as_string(times, unit="s"),  # ISO strings: text
            "seen": pa.array(times, pa.timestamp("us", tz="UTC")),
            "seen_ns": pa.array(times.astype("datetime64[ns]"), pa.timestamp("ns")),
            "empty": pa.nulls(rows, pa.float64()),
        }
    )


@pytest.fixture(scope="module")
def lake(tmp_path_factory):
    """The same rows as one file (the Arrow path reads one) and as a folder of ``FILES`` parts."""
    root = tmp_path_factory.mktemp("lake")
    table = reference_table(ROWS, np.random.default_rng(5))
    pq.write_table(table, root / "whole.parquet", row_group_size=8_192)
    folder = root / "parts"
    folder.mkdir()
    step = ROWS // FILES
    for i in range(FILES):
        pq.write_table(table.slice(i * step, step), folder / f"part-{i}.parquet")
    return root


def _same_exactly(got: ReferenceProfile, want: ReferenceProfile) -> None:
    assert list(got.columns) == list(want.columns)
    for name, w in want.columns.items():
        g = got.columns[name]
        assert (g.kind, g.count, g.n_unique, g.exact) == (w.kind, w.count, w.n_unique, w.exact), name
        assert (g.minimum, g.maximum) == (w.minimum, w.maximum), name
        assert g.value_counts() == w.value_counts(), name


def test_spark_profile_of_a_folder_equals_the_arrow_profile_exactly(spark, lake):
    want = profile_parquet(lake / "whole.parquet")
    got = profile_spark(str(lake / "parts"), session=spark)
    _same_exactly(got, want)
    kinds = {name: col.kind for name, col in got.columns.items()}
    assert kinds == {
        "amount": "num",
        "score": "num",
        "rating": "num",
        "visits": "num",
        "children": "cat",
        "age": "num",
        "active": "cat",
        "flag": "cat",
        "product": "cat",
        "user_id": "text",
        "seen_iso": "text",
        "seen": "datetime",
        "seen_ns": "datetime",
        "empty": "num",
    }
    for name, w in want.columns.items():  # every column fits in max_sample: bit for bit
        g = got.columns[name]
        np.testing.assert_array_equal(g.sample, w.sample, err_msg=name)
        assert (g.mean, g.std) == (w.mean, w.std), name
    assert (
        got.columns["amount"].count
        == np.isfinite(pq.read_table(lake / "whole.parquet")["amount"].to_numpy(zero_copy_only=False)).sum()
    )
    assert got.columns["product"].n_unique > 300 and got.columns["empty"].count == 0


def _rank_error(sample: np.ndarray, exact_sorted: np.ndarray) -> float:
    """How far each quantile's ranks in the sorted column (an interval, for ties) are from the rank
    it stands for, at worst."""
    low = np.searchsorted(exact_sorted, sample, side="left") / exact_sorted.size
    high = np.searchsorted(exact_sorted, sample, side="right") / exact_sorted.size
    expected = (np.arange(sample.size) + 0.5) / sample.size
    return float(np.maximum(low - expected, expected - high).clip(0).max())


def test_long_columns_from_a_glob_equal_in_counts_and_statistically_in_quantiles(spark, lake):
    k = 2_000
    want = profile_parquet(lake / "whole.parquet", max_sample=k, batch_rows=8_192)
    got = profile_spark(str(lake / "parts" / "part-*.parquet"), max_sample=k, session=spark)
    _same_exactly(got, want)
    whole = ReferenceProfile.fit(
        {
            n: pq.read_table(lake / "whole.parquet")[n].to_numpy(zero_copy_only=False)
            for n in ("amount", "score", "visits")
        },
        max_sample=None,
        kinds={"visits": "num"},
    )
    for name in ("amount", "score", "rating", "visits", "age"):
        g, w = got.columns[name], want.columns[name]
        assert not g.exact and g.sample.size == k, name
        assert g.mean == pytest.approx(w.mean, rel=1e-9) and g.std == pytest.approx(w.std, rel=1e-9), name
        assert np.all(np.diff(g.sample) >= 0), name
    assert len(got.columns["rating"].value_counts()) == 5 and got.columns["amount"].values is None
    for name in ("amount", "score", "visits"):
        exact_sorted = whole.columns[name].sample
        # Greenwald-Khanna at accuracy k: rank error at most 1/k; KLL's within a few times that.
        assert _rank_error(got.columns[name].sample, exact_sorted) <= 1 / k + 1e-12, name
        assert _rank_error(want.columns[name].sample, exact_sorted) < 0.02, name


def test_drift_verdicts_from_spark_and_arrow_profiles_agree(spark, lake):
    want = profile_parquet(lake / "whole.parquet", max_sample=2_000, batch_rows=8_192)
    got = profile_spark(str(lake / "parts"), max_sample=2_000, session=spark)
    rng = np.random.default_rng(9)
    for shift in (0.0, 0.5):
        current = reference_table(5_000, rng, shift)
        a = DriftDetector().fit(want).score(current)
        b = DriftDetector().fit(got).score(current)
        assert {c.column: c.drifted for c in b.columns} == {c.column: c.drifted for c in a.columns}
        assert b.drifted == a.drifted
        assert (sum(c.drifted for c in b.columns) >= 3) == (shift > 0)


def test_a_catalog_table_and_given_kinds(spark, lake):
    spark.read.parquet(str(lake / "parts")).createOrReplaceTempView("reference_rows")
    # A table's nanosecond timestamps reach Spark as longs with no file footer to tell: given here.
    kinds = {"children": "num", "visits": "cat", "user_id": "cat", "rating": "cat", "seen_ns": "datetime"}
    want = profile_parquet(lake / "whole.parquet", max_sample=5_000, kinds=kinds)
    got = profile_spark("table:reference_rows", max_sample=5_000, kinds=kinds, session=spark)
    _same_exactly(got, want)
    assert got.columns["user_id"].kind == "cat" and got.columns["user_id"].n_unique == ROWS
    assert set(got.columns["rating"].value_counts()) == {"1", "2", "3", "4", "5"}
    assert got.columns["children"].kind == "num" and not got.columns["children"].exact
    assert list(got.columns["children"].value_counts()) == [0.0, 1.0, 2.0, 3.0]


def test_missing_sources_and_bad_kinds_are_one_clear_error(spark, lake, tmp_path):
    with pytest.raises(InvalidInput, match="no such file or folder"):
        profile_spark(str(tmp_path / "nowhere"), session=spark)
    with pytest.raises(InvalidInput, match="no file matches"):
        profile_spark(str(tmp_path / "*.parquet"), session=spark)
    with pytest.raises(InvalidInput, match="cannot read the table"):
        profile_spark("table:no_such_table", session=spark)
    (tmp_path / "bad.parquet").write_text("not parquet")
    with pytest.raises(InvalidInput, match="cannot read as parquet"):
        profile_spark(str(tmp_path / "bad.parquet"), session=spark)
    with pytest.raises(InvalidInput, match="column 'nope', which the reference does not have"):
        profile_spark(str(lake / "parts"), kinds={"nope": "num"}, session=spark)
    with pytest.raises(InvalidInput, match="holds times"):
        profile_spark(str(lake / "parts"), kinds={"seen": "num"}, session=spark)


def test_cli_profiles_on_spark(spark, lake, tmp_path, monkeypatch):
    from click.testing import CliRunner

    from mlscale.cli import cli

    runner = CliRunner()
    out = tmp_path / "ref.npz"
    done = runner.invoke(
        cli,
        ["monitor", "profile", str(lake / "parts"), "-o", str(out), "--engine", "spark", "--spark-master", "local[2]"],
    )
    assert done.exit_code == 0, done.output
    assert "profiled 14 columns (14 exact)" in done.output
    _same_exactly(ReferenceProfile.load(out), profile_parquet(lake / "whole.parquet"))

    missing = runner.invoke(cli, ["monitor", "profile", str(tmp_path / "nowhere"), "-o", str(out), "--engine", "spark"])
    assert missing.exit_code != 0 and "no such file or folder" in str(missing.exception)
    monkeypatch.setitem(__import__("sys").modules, "pyspark", None)  # as if PySpark were not installed
    absent = runner.invoke(cli, ["monitor", "profile", str(lake / "parts"), "-o", str(out), "--engine", "spark"])
    assert isinstance(absent.exception, ConfigError) and "needs PySpark" in str(absent.exception)


def test_cli_errors_exit_non_zero_with_one_line(lake, tmp_path):
    """Through the real entry point: a missing source is one line on stderr and exit status 2."""
    import subprocess
    import sys

    done = subprocess.run(
        [
            sys.executable,
            "-c",
            "from mlscale.cli import main; main()",
            "monitor",
            "profile",
            str(tmp_path / "nowhere"),
            "-o",
            str(tmp_path / "x.npz"),
            "--engine",
            "spark",
        ],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert done.returncode == 2
    assert done.stderr.strip().splitlines()[-1] == f"error: {tmp_path / 'nowhere'}: no such file or folder"


def test_strings_near_the_text_line_are_decided_on_exact_distinct_counts(spark, tmp_path):
    """52 % and 48 % distinct: within the estimate's error of one half, so counted exactly."""
    rows = 2_000
    rng = np.random.default_rng(2)

    def share(distinct: int) -> list[str]:
        values = [f"s{i}" for i in range(distinct)] + [f"s{i}" for i in rng.integers(0, distinct, rows - distinct)]
        return [values[i] for i in rng.permutation(rows)]

    path = tmp_path / "near.parquet"
    pq.write_table(pa.table({"above": share(1_040), "below": share(960)}), path)
    got = profile_spark(str(path), session=spark)
    want = profile_parquet(path)
    assert (got.columns["above"].kind, got.columns["below"].kind) == ("text", "cat")
    _same_exactly(got, want)
