"""Drift tests agree with scipy.stats on the same data, and the default choice follows Evidently."""

from __future__ import annotations

import numpy as np
import pytest
from scipy import stats
from scipy.spatial import distance

from mlscale.errors import InvalidInput
from mlscale.monitoring.drift import DriftDetector, ReferenceProfile

TOL = 1e-6


def _sturges_shares(a: np.ndarray, b: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    edges = np.histogram_bin_edges(np.concatenate([a, b]), bins="sturges")
    return np.histogram(a, edges)[0] / a.size, np.histogram(b, edges)[0] / b.size


@pytest.mark.parametrize(("n_ref", "n_cur"), [(300, 200), (900, 1000), (12_000, 9_000)])
def test_ks_pvalue_matches_scipy_exact_and_asymptotic(n_ref, n_cur):
    rng = np.random.default_rng(n_ref)
    ref = {f"c{i}": rng.normal(0, 1, n_ref) for i in range(4)}
    cur = {f"c{i}": rng.normal(0.05 * i, 1 + 0.1 * i, n_cur) for i in range(4)}
    result = DriftDetector(test="ks").fit(ref).score(cur)
    for col in result.columns:
        expected = stats.ks_2samp(ref[col.column], cur[col.column]).pvalue
        assert col.value == pytest.approx(expected, abs=TOL)
        assert col.drifted == (expected <= 0.05)


def test_ks_with_ties_matches_scipy():
    rng = np.random.default_rng(1)
    ref = {"x": rng.integers(0, 30, 700).astype(float)}
    cur = {"x": rng.integers(2, 32, 500).astype(float)}
    value = DriftDetector(test="ks").fit(ref).score(cur).columns[0].value
    assert value == pytest.approx(stats.ks_2samp(ref["x"], cur["x"]).pvalue, abs=TOL)


@pytest.mark.parametrize(("n_ref", "n_cur"), [(5000, 5000), (4000, 3001), (2500, 7777)])
def test_wasserstein_normed_matches_scipy(n_ref, n_cur):
    rng = np.random.default_rng(n_cur)
    ref = {"a": rng.normal(3, 2, n_ref), "b": rng.exponential(1, n_ref), "c": rng.integers(0, 50, n_ref) * 1.0}
    cur = {"a": rng.normal(3.3, 2, n_cur), "b": rng.exponential(1.2, n_cur), "c": rng.integers(0, 60, n_cur) * 1.0}
    result = DriftDetector().fit(ref).score(cur)
    for col in result.columns:
        assert col.test == "wasserstein"
        expected = stats.wasserstein_distance(ref[col.column], cur[col.column]) / np.std(ref[col.column])
        assert col.value == pytest.approx(expected, abs=TOL)
        assert col.exact


def test_jensenshannon_and_psi_match_their_definitions_on_sturges_bins():
    rng = np.random.default_rng(2)
    ref, cur = {"x": rng.normal(0, 1, 3000)}, {"x": rng.normal(0.4, 1.2, 2000)}
    p, q = _sturges_shares(ref["x"], cur["x"])
    js = DriftDetector(test="jensenshannon").fit(ref).score(cur).columns[0]
    assert js.value == pytest.approx(distance.jensenshannon(p, q), abs=TOL)
    assert js.drifted == (js.value >= 0.1)
    psi = DriftDetector(test="psi").fit(ref).score(cur).columns[0]
    floor = lambda s: np.where(s == 0, 0.0001 if s[s > 0].min() > 0.0001 else s[s > 0].min() / 1e6, s)  # noqa: E731
    p, q = floor(p), floor(q)
    assert psi.value == pytest.approx(np.sum((p - q) * np.log(p / q)), abs=TOL)
    assert psi.value > 0.1 and psi.drifted


def test_chisquare_matches_scipy_on_categories():
    rng = np.random.default_rng(3)
    ref = {"city": rng.choice(["ams", "ber", "par", "rom"], 800, p=[0.4, 0.3, 0.2, 0.1])}
    cur = {"city": rng.choice(["ams", "ber", "par", "rom"], 600, p=[0.3, 0.3, 0.25, 0.15])}
    col = DriftDetector().fit(ref).score(cur).columns[0]
    assert col.test == "chisquare" and col.kind == "cat"
    keys = ["ams", "ber", "par", "rom"]
    observed = [np.sum(cur["city"] == k) for k in keys]
    expected = [np.sum(ref["city"] == k) * 600 / 800 for k in keys]
    assert col.value == pytest.approx(stats.chisquare(observed, expected).pvalue, abs=TOL)
    assert col.drifted == (col.value < 0.05)


def test_default_tests_follow_evidently_by_kind_size_and_distinct_values():
    rng = np.random.default_rng(4)
    small = {
        "num": rng.normal(size=500),
        "few": rng.integers(0, 4, 500),
        "bin": rng.integers(0, 2, 500),
        "cat": rng.choice(["a", "b", "c"], 500),
        "cat2": rng.choice(["a", "b"], 500),
    }
    big = {k: np.resize(v, 5000) for k, v in small.items()}
    chosen_small = {c.column: c.test for c in DriftDetector().fit(small).score(small).columns}
    chosen_big = {c.column: c.test for c in DriftDetector().fit(big).score(big).columns}
    assert chosen_small == {"num": "ks", "few": "chisquare", "bin": "z", "cat": "chisquare", "cat2": "z"}
    assert chosen_big == {
        "num": "wasserstein",
        "few": "jensenshannon",
        "bin": "jensenshannon",
        "cat": "jensenshannon",
        "cat2": "jensenshannon",
    }


def test_dataset_drift_is_the_share_of_drifted_columns():
    rng = np.random.default_rng(5)
    ref = {f"c{i}": rng.normal(0, 1, 4000) for i in range(4)}
    cur = {f"c{i}": rng.normal(1.0 if i < 2 else 0.0, 1, 4000) for i in range(4)}
    result = DriftDetector().fit(ref).score(cur)
    assert [c.drifted for c in result.columns] == [True, True, False, False]
    assert result.share == 0.5 and result.drifted
    assert not DriftDetector(drift_share=0.75).fit(ref).score(cur).drifted
    data = result.to_dict()
    assert data["columns"][0]["reference"]["counts"] and len(data["columns"][0]["current"]["bins"]) == 21


def test_overrides_of_test_and_threshold_apply_per_column():
    rng = np.random.default_rng(6)
    ref, cur = (
        {"a": rng.normal(0, 1, 3000), "b": rng.normal(0, 1, 3000)},
        {"a": rng.normal(0.05, 1, 3000), "b": rng.normal(0.05, 1, 3000)},
    )
    result = DriftDetector(tests={"a": "ks"}, thresholds={"b": 0.01}).fit(ref).score(cur)
    a, b = result.columns
    assert a.test == "ks" and a.threshold == 0.05
    assert b.test == "wasserstein" and b.threshold == 0.01 and b.drifted == (b.value >= 0.01)


def test_profile_round_trips_through_a_file_and_sketch_is_marked_approximate(tmp_path):
    rng = np.random.default_rng(7)
    ref, cur = (
        {"x": rng.normal(0, 1, 50_000), "c": rng.choice(["u", "v", "w"], 50_000)},
        {"x": rng.normal(0.2, 1, 20_000), "c": rng.choice(["u", "v", "w"], 20_000)},
    )
    exact = DriftDetector().fit(ref)
    exact.profile_.save(tmp_path / "ref.npz")
    loaded = DriftDetector().fit(ReferenceProfile.load(tmp_path / "ref.npz"))
    assert loaded.score(cur).to_dict() == exact.score(cur).to_dict()
    sketched = DriftDetector(max_sample=2000).fit(ref).score(cur).columns[0]
    truth = stats.wasserstein_distance(ref["x"], cur["x"]) / np.std(ref["x"])
    assert not sketched.exact and sketched.value == pytest.approx(truth, abs=0.01)


def test_bad_inputs_are_clear_errors(tmp_path):
    detector = DriftDetector()
    with pytest.raises(InvalidInput, match="not fitted"):
        detector.score({"x": [1.0]})
    with pytest.raises(InvalidInput, match="unknown drift test"):
        DriftDetector(test="magic")
    detector.fit({"x": np.arange(10.0), "c": np.array(list("abababcccc"))})
    with pytest.raises(InvalidInput, match="no column 'x'"):
        detector.score({"c": np.array(["a"])})
    with pytest.raises(InvalidInput, match="does not apply"):
        DriftDetector(test="wasserstein").fit({"c": np.array(list("aabbcc"))}).score({"c": np.array(list("ab"))})
    (tmp_path / "junk.npz").write_bytes(b"not a profile")
    from mlscale.errors import ConfigError

    with pytest.raises(ConfigError, match="not a reference profile"):
        ReferenceProfile.load(tmp_path / "junk.npz")
