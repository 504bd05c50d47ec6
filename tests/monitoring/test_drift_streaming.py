"""Reference profiles read in batches: the same profile as ``ReferenceProfile.fit`` on the whole
table while a column fits in ``max_sample``; past it, exact counts and moments, quantiles within the
sketch's rank error, the same drift verdicts, and a sketch whose size does not grow with the rows."""

from __future__ import annotations

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from drift_tables import feature_table, write_pair

from mlscale.errors import InvalidInput
from mlscale.monitoring.drift import DriftDetector, ReferenceProfile, as_columns
from mlscale.monitoring.drift.streaming import QuantileSketch, profile_parquet
from mlscale.monitoring.tables import read_table


def test_short_columns_give_exactly_the_whole_table_profile(tmp_path):
    ref, _ = write_pair(tmp_path, 3_000)
    whole = ReferenceProfile.fit(as_columns(read_table(ref)), max_sample=10_000)
    batched = profile_parquet(ref, max_sample=10_000, batch_rows=700)
    assert list(batched.columns) == list(whole.columns)
    for name, want in whole.columns.items():
        got = batched.columns[name]
        assert (got.kind, got.count, got.n_unique, got.exact) == (want.kind, want.count, want.n_unique, want.exact)
        np.testing.assert_array_equal(got.sample, want.sample, err_msg=name)
        assert got.value_counts() == want.value_counts(), name
        assert got.mean == want.mean and got.std == want.std, name


def test_long_columns_keep_exact_counts_and_moments_and_quantiles_within_the_sketch_error(tmp_path):
    rng = np.random.default_rng(3)
    rows = 120_000
    table = pa.table(
        {
            "amount": pa.array(rng.lognormal(3, 1, rows), mask=rng.random(rows) < 0.1),
            "few": rng.integers(0, 4, rows).astype(float),  # a numeric column with 4 values
            "city": rng.choice(["ams", "ber", "par"], rows),
        }
    )
    path = tmp_path / "long.parquet"
    pq.write_table(table, path, row_group_size=20_000)
    whole = ReferenceProfile.fit(as_columns(table), max_sample=None, kinds={"few": "num"})
    batched = profile_parquet(path, max_sample=2_000, batch_rows=5_000, kinds={"few": "num"})
    for name in ("amount", "few"):
        got, want = batched.columns[name], whole.columns[name]
        assert not got.exact and got.sample.size == 2_000
        assert got.count == want.count and (got.minimum, got.maximum) == (want.minimum, want.maximum)
        assert got.mean == pytest.approx(want.mean, rel=1e-9) and got.std == pytest.approx(want.std, rel=1e-9)
        # Rank error: how far each sketch quantile's ranks in the exact sorted column (an interval,
        # for repeated values) are from the rank it stands for.
        low = np.searchsorted(want.sample, got.sample, side="left") / want.sample.size
        high = np.searchsorted(want.sample, got.sample, side="right") / want.sample.size
        expected = (np.arange(2_000) + 0.5) / 2_000
        error = np.maximum(low - expected, expected - high).clip(0)
        assert error.max() < 0.02, name
    assert batched.columns["few"].value_counts() == whole.columns["few"].value_counts()
    assert batched.columns["amount"].n_unique > 20 and batched.columns["amount"].values is None
    assert batched.columns["city"].value_counts() == whole.columns["city"].value_counts()


def test_drift_verdicts_from_a_batched_profile_equal_the_whole_table_ones(tmp_path):
    rng = np.random.default_rng(11)
    ref = tmp_path / "ref.parquet"
    pq.write_table(feature_table(30_000, rng, drift=False), ref, row_group_size=4_000)
    reference = read_table(ref)
    for drift in (False, True):
        current = feature_table(5_000, rng, drift=drift)
        whole = DriftDetector(max_sample=5_000).fit(reference).score(current)
        batched = DriftDetector().fit(profile_parquet(ref, max_sample=5_000, batch_rows=3_000)).score(current)
        got = {c.column: c.drifted for c in batched.columns}
        want = {c.column: c.drifted for c in whole.columns}
        assert got == want and batched.drifted == whole.drifted
        assert (sum(want.values()) >= 3) == drift


def test_the_sketch_stays_under_three_k_values_whatever_the_rows():
    sketch = QuantileSketch(1_000)
    rng = np.random.default_rng(0)
    sizes = []
    for _ in range(200):
        sketch.add(rng.random(10_000))
        sizes.append(sketch.size)
    assert max(sizes) <= 3 * 1_000 + 2 * len(sketch.levels)
    assert sizes[-1] <= sizes[20] * 1.2  # 2M values in, no growth past the first 200k
    quantiles = sketch.quantiles(100)
    assert np.abs(quantiles - (np.arange(100) + 0.5) / 100).max() < 0.02


def test_bad_files_and_kinds_are_rejected_clearly(tmp_path):
    (tmp_path / "x.parquet").write_text("not parquet")
    with pytest.raises(InvalidInput, match="cannot read as parquet"):
        profile_parquet(tmp_path / "x.parquet")
    pq.write_table(pa.table({"a": [1.0, 2.0]}), tmp_path / "a.parquet")
    with pytest.raises(InvalidInput, match="column 'b', which the reference does not have"):
        profile_parquet(tmp_path / "a.parquet", kinds={"b": "num"})
    with pytest.raises(InvalidInput, match="unknown kind 'number'"):
        profile_parquet(tmp_path / "a.parquet", kinds={"a": "number"})


def test_cli_profile_in_batches_writes_the_same_profile(tmp_path):
    from click.testing import CliRunner

    from mlscale.cli import cli

    ref, _ = write_pair(tmp_path, 2_000)
    runner = CliRunner()
    whole = runner.invoke(cli, ["monitor", "profile", str(ref), "-o", str(tmp_path / "a.npz")])
    batched = runner.invoke(cli, ["monitor", "profile", str(ref), "-o", str(tmp_path / "b.npz"), "--batch-rows", "300"])
    assert whole.exit_code == 0 and batched.exit_code == 0, batched.output
    a, b = ReferenceProfile.load(tmp_path / "a.npz"), ReferenceProfile.load(tmp_path / "b.npz")
    for name, col in a.columns.items():
        np.testing.assert_array_equal(b.columns[name].sample, col.sample)
        assert b.columns[name].value_counts() == col.value_counts()
    read_table(ref).to_pandas().to_csv(tmp_path / "ref.csv", index=False)
    refused = runner.invoke(
        cli, ["monitor", "profile", str(tmp_path / "ref.csv"), "-o", str(tmp_path / "c.npz"), "--batch-rows", "300"]
    )
    assert refused.exit_code != 0 and "--batch-rows reads Parquet files" in str(refused.exception)


def _peak_rss_mib_of_profile(path) -> float:
    """Peak RSS of a fresh process that profiles ``path`` in batches (getrusage only grows)."""
    import subprocess
    import sys

    code = (
        "import resource; from mlscale.monitoring.drift.streaming import profile_parquet; "
        f"profile_parquet({str(path)!r}, max_sample=5000, batch_rows=8192); "
        "print(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024)"
    )
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120, check=True)
    return float(done.stdout.strip())


def test_memory_does_not_grow_with_the_rows(tmp_path):
    """4x the rows (100 MB more data) must not raise the peak: the reader holds one row group at a time.

    With pyarrow's pre_buffer on, iter_batches buffered the whole file and the peak grew with it."""
    rng = np.random.default_rng(3)
    paths = {}
    for rows in (200_000, 800_000):
        paths[rows] = tmp_path / f"t{rows}.parquet"
        with pq.ParquetWriter(paths[rows], pa.schema([(f"c{i}", pa.float64()) for i in range(16)])) as writer:
            for _ in range(rows // 50_000):
                block = {f"c{i}": rng.normal(size=50_000) for i in range(16)}
                writer.write_table(pa.table(block), row_group_size=50_000)
    small, large = _peak_rss_mib_of_profile(paths[200_000]), _peak_rss_mib_of_profile(paths[800_000])
    assert large - small < 40, (small, large)  # the extra 600,000 x 16 float64 = 73 MiB
