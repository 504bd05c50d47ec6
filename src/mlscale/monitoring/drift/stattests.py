"""The drift tests, each comparing a reference profile with a current column.

Numeric: Kolmogorov-Smirnov (p-value), Wasserstein distance normed by the reference's std, PSI,
Jensen-Shannon distance. Categorical (and few-valued numeric): chi-square (p-value), Z-test for two
values (p-value), PSI, Jensen-Shannon distance. The definitions follow Evidently's, so verdicts
agree with it, and the values agree with scipy.stats on the same data: binning for PSI and
Jensen-Shannon is Sturges' rule over reference and current together when the reference has more than
20 distinct values, and value counts otherwise; empty bins are floored for PSI as Evidently does.

Exact vs approximate: every test is exact when the profile holds the whole sorted reference column
(``ColumnProfile.exact``) or, for value-count tests, the exact counts. From a quantile sketch, the
Kolmogorov-Smirnov statistic, the Wasserstein distance and the Sturges histograms are computed from
the sketch's empirical distribution, an approximation to within about 1/max_sample in probability.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from mlscale.monitoring.drift import distributions
from mlscale.monitoring.drift.profile import ColumnProfile

# scipy's ks_2samp(method="auto") is exact up to this many values in the larger sample.
KS_EXACT_MAX_N = 10_000


@dataclass(frozen=True)
class StatTest:
    """A test's name, the column kinds it applies to, its default threshold and its direction."""

    name: str
    title: str
    kinds: tuple[str, ...]
    threshold: float
    # p-values drift when small; distances drift when large.
    is_pvalue: bool

    def drifted(self, value: float, threshold: float) -> bool:
        """The verdict, with the same comparison Evidently uses for this test."""
        if not math.isfinite(value):
            return False
        if self.is_pvalue:
            return value <= threshold if self.name == "ks" else value < threshold
        return value >= threshold


TESTS: dict[str, StatTest] = {
    t.name: t
    for t in (
        StatTest("ks", "K-S p-value", ("num",), 0.05, True),
        StatTest("wasserstein", "Wasserstein distance (normed)", ("num",), 0.1, False),
        StatTest("psi", "PSI", ("num", "cat"), 0.1, False),
        StatTest("jensenshannon", "Jensen-Shannon distance", ("num", "cat"), 0.1, False),
        StatTest("chisquare", "chi-square p-value", ("num", "cat"), 0.05, True),
        StatTest("z", "Z-test p-value", ("num", "cat"), 0.05, True),
    )
}


def default_test(profile: ColumnProfile, n_values: int) -> str:
    """The test Evidently would choose, by column kind, reference size and distinct values.

    ``n_values`` counts distinct values of reference and current together.
    """
    small = profile.count <= 1000
    if profile.kind == "num":
        if small:
            return "ks" if n_values > 5 else ("chisquare" if n_values > 2 else "z")
        return "wasserstein" if n_values > 5 else "jensenshannon"
    if small:
        return "chisquare" if n_values > 2 else "z"
    return "jensenshannon"


def distinct_values(profile: ColumnProfile, current: np.ndarray) -> int:
    """Distinct values of reference and current together (a lower bound of 21 is enough when many)."""
    if profile.values is None:
        return max(profile.n_unique, MANY)
    return int(np.union1d(profile.values, np.unique(current)).size)


MANY = 21


# --- numeric tests from sorted samples ---------------------------------------------------------


def ks_pvalue(profile: ColumnProfile, current_sorted: np.ndarray) -> tuple[float, float]:
    """Two-sided two-sample KS: (p-value, statistic), as scipy.stats.ks_2samp(method="auto")."""
    ref = profile.sample
    n1, n2 = profile.count, current_sorted.size
    if n2 == 0:
        return math.nan, math.nan
    points = np.concatenate((ref, current_sorted))
    cdf1 = np.searchsorted(ref, points, side="right") / ref.size
    cdf2 = np.searchsorted(current_sorted, points, side="right") / n2
    diffs = cdf1 - cdf2
    d = float(max(np.clip(-diffs.min(), 0, 1), diffs.max()))
    prob = distributions.ks_2samp_exact(n1, n2, d) if max(n1, n2) <= KS_EXACT_MAX_N else None
    if prob is None:
        big, small = sorted([float(n1), float(n2)], reverse=True)
        prob = distributions.kolmogorov_sf(d, int(np.round(big * small / (big + small))))
    return float(np.clip(prob, 0, 1)), d


def wasserstein_many(ref_sorted: np.ndarray, cur_sorted: np.ndarray) -> np.ndarray:
    """First Wasserstein distance of many columns at once: (n, k) and (m, k) sorted -> (k,).

    W1 is the area between the two quantile functions. Both are step functions with steps at i/n and
    j/m, so on the merged grid of those steps each interval pairs one reference value with one
    current value, and the grid is the same for every column: one gather per column, no per-column
    search, no sort of the reference (it is stored sorted).
    """
    n, m = ref_sorted.shape[0], cur_sorted.shape[0]
    g = math.gcd(n, m)
    step_ref, step_cur = m // g, n // g  # grid units per reference / current step
    grid = np.union1d(np.arange(1, n + 1, dtype=np.int64) * step_ref, np.arange(1, m + 1, dtype=np.int64) * step_cur)
    widths = np.diff(grid, prepend=0) / float(grid[-1])
    iu = (grid - 1) // step_ref  # index of the reference value on (grid[k-1], grid[k]]
    iv = (grid - 1) // step_cur
    out = np.empty(ref_sorted.shape[1])
    # A few columns at a time bounds the temporaries to about 64 MB.
    chunk = max(1, int(8_000_000 // max(grid.size, 1)))
    for start in range(0, ref_sorted.shape[1], chunk):
        stop = start + chunk
        gap = np.abs(ref_sorted[iu, start:stop] - cur_sorted[iv, start:stop])
        out[start:stop] = widths @ gap
    return out


# --- binned and value-count tests ----------------------------------------------------------------


def sturges_edges(low: float, high: float, total: int) -> np.ndarray:
    """np.histogram_bin_edges(data, "sturges") from the data's range and size alone."""
    if low == high:
        low, high = low - 0.5, high + 0.5
        return np.linspace(low, high, 2)
    width = (high - low) / (np.log2(total) + 1.0)
    bins = int(np.ceil((high - low) / width)) if width else 1
    return np.linspace(low, high, bins + 1)


def histogram_sorted(sorted_values: np.ndarray, edges: np.ndarray) -> np.ndarray:
    """np.histogram counts (last bin closed) of sorted values, by binary search."""
    bounds = np.concatenate(
        (
            np.searchsorted(sorted_values, edges[:-1], side="left"),
            [np.searchsorted(sorted_values, edges[-1], side="right")],
        )
    )
    return np.diff(bounds)


def binned(profile: ColumnProfile, current: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Reference and current shares per bin (Sturges) or per distinct value, as Evidently bins."""
    if profile.kind == "num" and profile.values is None:
        cur = np.sort(current)
        low = min(profile.minimum, float(cur[0]))
        high = max(profile.maximum, float(cur[-1]))
        edges = sturges_edges(low, high, profile.count + cur.size)
        ref_counts = histogram_sorted(profile.sample, edges) * (profile.count / profile.sample.size)
        return ref_counts / profile.count, histogram_sorted(cur, edges) / cur.size
    _keys, ref_counts, cur_counts = value_counts(profile, current)
    return ref_counts / profile.count, cur_counts / current.size


def value_counts(profile: ColumnProfile, current: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Union of distinct values with the reference's and the current's count of each."""
    cur_values, cur_counts = np.unique(current, return_counts=True)
    if profile.values is not None:
        ref_values, ref_counts = profile.values, profile.counts
    else:  # many-valued numeric column: the distinct values of its sample, scaled to the count
        ref_values, sample_counts = np.unique(profile.sample, return_counts=True)
        ref_counts = sample_counts * (profile.count / profile.sample.size)
    keys = np.union1d(ref_values, cur_values)
    ref = np.zeros(keys.size)
    cur = np.zeros(keys.size)
    ref[np.searchsorted(keys, ref_values)] = ref_counts
    cur[np.searchsorted(keys, cur_values)] = cur_counts
    return keys, ref, cur


def _floor_zeros(shares: np.ndarray) -> np.ndarray:
    """Evidently's floor for empty bins, so PSI's logarithm stays finite."""
    nonzero = shares[shares != 0]
    if nonzero.size == 0:
        return shares
    floor = nonzero.min() / 10**6 if nonzero.min() <= 0.0001 else 0.0001
    return np.where(shares == 0, floor, shares)


def psi(profile: ColumnProfile, current: np.ndarray) -> float:
    """Population stability index over Evidently's bins."""
    if current.size == 0:
        return math.nan
    ref, cur = binned(profile, current)
    ref, cur = _floor_zeros(ref), _floor_zeros(cur)
    return float(np.sum((ref - cur) * np.log(ref / cur)))


def jensenshannon(profile: ColumnProfile, current: np.ndarray) -> float:
    """Jensen-Shannon distance (natural log), as scipy.spatial.distance.jensenshannon."""
    if current.size == 0:
        return math.nan
    p, q = binned(profile, current)
    p, q = p / p.sum(), q / q.sum()
    mid = (p + q) / 2.0
    return float(np.sqrt(np.sum(distributions.rel_entr(p, mid) + distributions.rel_entr(q, mid)) / 2.0))


def chisquare(profile: ColumnProfile, current: np.ndarray) -> float:
    """Chi-square goodness of fit of current counts to reference shares (p-value), as Evidently."""
    if current.size == 0:
        return math.nan
    _, ref, cur = value_counts(profile, current)
    expected = ref * (current.size / profile.count)
    with np.errstate(divide="ignore", invalid="ignore"):
        statistic = float(np.sum((cur - expected) ** 2 / expected))
    return distributions.chi2_sf(statistic, ref.size - 1)


def ztest(profile: ColumnProfile, current: np.ndarray) -> float:
    """Two-proportion Z-test on a two-valued column (p-value), as Evidently."""
    if current.size == 0:
        return math.nan
    keys, ref, cur = value_counts(profile, current)
    if keys.size == 1:
        return 1.0
    # Share of values other than the first (smallest) key, in each sample.
    p1 = 1.0 - ref[0] / profile.count
    p2 = 1.0 - cur[0] / current.size
    n1, n2 = profile.count, current.size
    pooled = (p1 * n1 + p2 * n2) / (n1 + n2)
    with np.errstate(divide="ignore", invalid="ignore"):
        z = (p1 - p2) / np.sqrt(pooled * (1 - pooled) * (1.0 / n1 + 1.0 / n2))
    return distributions.two_sided_normal_pvalue(float(z))
