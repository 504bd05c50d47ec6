"""P-values of the drift tests from exact formulas, without importing scipy.

Importing ``scipy.stats`` costs about 0.9 s and ``scipy.special`` alone 0.25-0.5 s, more than a whole
drift report of 100,000 x 20 takes, so the command's path imports neither: chi-square from the
regularized incomplete gamma function (series and continued fraction), the normal from ``math.erfc``,
the exact two-sample Kolmogorov-Smirnov distribution by lattice-path counting (as
``scipy.stats.ks_2samp`` computes it), and the asymptotic one from the exact one-sided Smirnov sum
(Birnbaum-Tingey) where scipy uses ``special.smirnov``, Durbin's matrix where scipy uses it or
Pomeranz's recursion (both exact), and the Pelz-Good expansion where scipy uses that approximation.
Every value equals scipy.stats' to 1e-9 (tests/monitoring/test_drift_distributions.py).
"""

from __future__ import annotations

import math

import numpy as np

_EPS = 1e-16
_MAX_ITER = 10_000


def _gamma_q(a: float, x: float) -> float:
    """Regularized upper incomplete gamma Q(a, x) (Numerical Recipes' series / Lentz continued fraction)."""
    if math.isnan(x):
        return math.nan
    if x <= 0:
        return 1.0
    if math.isinf(x):
        return 0.0
    log_front = -x + a * math.log(x) - math.lgamma(a)
    if x < a + 1:  # series for P(a, x)
        term = total = 1.0 / a
        ap = a
        for _ in range(_MAX_ITER):
            ap += 1
            term *= x / ap
            total += term
            if abs(term) < abs(total) * _EPS:
                break
        return max(0.0, 1.0 - total * math.exp(log_front))
    tiny = 1e-300
    b = x + 1 - a
    c, d = 1 / tiny, 1 / b
    h = d
    for i in range(1, _MAX_ITER):
        an = -i * (i - a)
        b += 2
        d = an * d + b
        d = tiny if abs(d) < tiny else d
        c = b + an / c
        c = tiny if abs(c) < tiny else c
        d = 1 / d
        delta = d * c
        h *= delta
        if abs(delta - 1) < _EPS:
            break
    return math.exp(log_front) * h


def chi2_sf(statistic: float, dof: int) -> float:
    """Survival function of the chi-square distribution, as ``scipy.stats.chi2.sf``."""
    return _gamma_q(dof / 2.0, statistic / 2.0)


def two_sided_normal_pvalue(z: float) -> float:
    """``2 * (1 - Phi(|z|))``, as ``2 * (1 - scipy.stats.norm.cdf(abs(z)))``."""
    if math.isnan(z):
        return math.nan
    return 2 * (1 - 0.5 * math.erfc(-abs(z) / math.sqrt(2)))


def rel_entr(x: np.ndarray, y: np.ndarray) -> np.ndarray:
    """Elementwise x·log(x/y), 0 where x is 0 (scipy.special.rel_entr for the shares the tests pass)."""
    with np.errstate(divide="ignore", invalid="ignore"):
        out = np.where(x > 0, x * np.log(x / y), 0.0)
    return np.where((x > 0) & (y <= 0), np.inf, out)


def smirnov_sf(n: int, d: float) -> float:
    """One-sided Smirnov P(D+_n >= d), exact (Birnbaum-Tingey), as ``scipy.special.smirnov(n, d)``."""
    if d <= 0:
        return 1.0
    if d >= 1:
        return 0.0
    j = np.arange(0, math.floor(n * (1 - d)) + 1, dtype=np.float64)
    left = 1 - d - j / n
    keep = left > 0
    j, left = j[keep], left[keep]
    lgam = np.vectorize(math.lgamma, otypes=[np.float64])
    log_binom = math.lgamma(n + 1) - lgam(j + 1) - lgam(n - j + 1)
    logs = log_binom + (n - j) * np.log(left) + (j - 1) * np.log(d + j / n)
    return float(min(max(d * np.sum(np.exp(logs)), 0.0), 1.0))


def _outside_square(n: int, h: int) -> float:
    """P(D_{n,n} >= h/n): the share of lattice paths leaving the band |x - y| < h (equal sizes).

    The alternating sum of binomial ratios is evaluated Horner-style from its innermost term, which
    avoids the cancellation of summing the terms directly.
    """
    total = 0.0
    for k in range(n // h, -1, -1):
        term = 1.0
        for j in range(h):
            term = (n - k * h - j) * term / (n + k * h + j + 1)
        total = term * (1.0 - total)
    return 2 * total


def _outside_band(m: int, n: int, g: int, h: int) -> float:
    """P(D_{m,n} >= h/lcm): the share of paths from (0,0) to (m,n) leaving the band |n'x - m'y| < h
    (n' = n/g, m' = m/g), among all C(m+n, n) lattice paths.

    For each point it keeps the share of the paths reaching it that have left the band (Viehmann 2021,
    arXiv:2102.08037): o(x, y) = (x·o(x-1, y) + y·o(x, y-1)) / (x + y), and 1 outside the band. The
    values stay in [0, 1] (no binomial coefficients to overflow) and a small p-value keeps its
    precision. Every point of one anti-diagonal x + y = s depends only on the previous one, so each
    diagonal is one vector operation: m + n of them instead of a Python loop over every point.
    """
    if m < n:
        m, n = n, m
    mg, ng = m // g, n // g
    k = mg + ng
    weights = np.arange(m + 1, dtype=np.float64)
    # out[x + 1] is o(x, s - x) on the latest diagonal s; out[0] pads x = -1 (its weight is 0).
    # Points outside the band stay 1, so only the band's points are computed on each diagonal.
    out = np.ones(m + 2)
    out[1] = 0.0  # the origin is inside the band
    prev_lo = 0
    for s in range(1, m + n + 1):
        # Inside the band: |k·x - mg·s| < h, within the grid x <= m, y = s - x <= n.
        lo = max(s - n, (mg * s - h) // k + 1, 0)
        hi = min(s, m, -(-(mg * s + h) // k) - 1)
        if hi < lo:
            return 1.0  # every path crosses this diagonal outside the band
        x = weights[lo : hi + 1]
        new = (x * out[lo : hi + 1] + (s - x) * out[lo + 1 : hi + 2]) / s
        out[prev_lo + 1 : lo + 1] = 1.0  # points the band has left behind are outside again
        out[lo + 1 : hi + 2] = new
        prev_lo = lo
    return float(out[m + 1])


def ks_2samp_exact(n1: int, n2: int, d: float) -> float | None:
    """Exact two-sided p-value of the two-sample KS statistic ``d``; None when it cannot be computed."""
    g = math.gcd(n1, n2)
    lcm = (n1 // g) * n2
    h = int(np.round(d * lcm))
    if h == 0:
        return 1.0
    try:
        with np.errstate(invalid="raise", over="raise"):
            prob = _outside_square(n1, h) if n1 == n2 else _outside_band(n1, n2, g, h)
    except (FloatingPointError, OverflowError, ZeroDivisionError):
        return None
    return prob if 0 <= prob <= 1 else None


def kolmogorov_sf(d: float, n: int) -> float:
    """P(D_n > d) of the one-sample two-sided KS statistic, as ``scipy.stats.kstwo.sf(d, n)``."""
    if d >= 1.0:
        return 0.0
    if d <= 0.0:
        return 1.0
    t = n * d
    if t <= 0.5:
        return 1.0
    if t <= 1.0:
        if n <= 140:
            cdf = float(np.prod(np.arange(1, n + 1) * (1.0 / n) * (2 * t - 1)))
        else:
            cdf = math.exp(math.lgamma(n + 1) - n * math.log(n) + n * math.log(2 * t - 1))
        return min(max(1.0 - cdf, 0.0), 1.0)
    if t >= n - 1:
        return min(max(2 * (1.0 - d) ** n, 0.0), 1.0)
    if d >= 0.5:
        return min(max(2 * smirnov_sf(n, d), 0.0), 1.0)
    nx2 = t * d
    if n <= 140:
        if nx2 > 4:
            return min(max(2 * smirnov_sf(n, d), 0.0), 1.0)
        # scipy uses Durbin's matrix up to n·d² = 0.754693 and Pomeranz's recursion above; both are
        # exact, so Durbin's matrix serves both ranges here.
        return min(max(1.0 - _kolmogorov_cdf_durbin(n, d), 0.0), 1.0)
    if nx2 >= 370.0:
        return 0.0
    if nx2 >= 2.2:
        return min(max(2 * smirnov_sf(n, d), 0.0), 1.0)
    if n <= 100_000 and n * d**1.5 <= 1.4:
        return min(max(1.0 - _kolmogorov_cdf_durbin(n, d), 0.0), 1.0)
    return min(max(_kolmogorov_sf_pelz_good(n, d), 0.0), 1.0)


def _kolmogorov_cdf_durbin(n: int, d: float) -> float:
    """P(D_n < d) exactly, by Durbin's matrix (Marsaglia, Tsang and Wang 2003, J. Stat. Software 8/18).

    With d = (k - h)/n, the probability is n!/n^n times the (k, k) entry of H^n for a (2k-1)-square
    matrix H of reciprocal factorials. The power is taken by squaring, rescaling by powers of two so
    nothing overflows, and the factor n!/n^n is applied in logarithms.
    """
    nd = n * d
    if nd <= 0.5:
        return 0.0
    k = math.ceil(nd)
    h = k - nd
    m = 2 * k - 1
    inv_fact = np.array([1.0 / math.factorial(i) if i < 171 else 0.0 for i in range(m + 1)])
    rows, cols = np.indices((m, m))
    lag = rows - cols + 1
    H = np.where(lag >= 0, inv_fact[np.clip(lag, 0, m)], 0.0)
    powers = np.arange(1, m + 1)
    first_col = (1.0 - h**powers) * inv_fact[powers]
    H[:, 0] = first_col
    H[-1, :] = first_col[::-1]
    H[-1, 0] = (1.0 - 2 * h**m + max(2 * h - 1, 0.0) ** m) * inv_fact[m]
    result, result_exp = np.eye(m), 0
    base, base_exp = H, 0
    e = n
    while e:
        if e & 1:
            result = result @ base
            result_exp += base_exp
            scale = math.frexp(float(np.abs(result).max()) or 1.0)[1]
            result, result_exp = np.ldexp(result, -scale), result_exp + scale
        e >>= 1
        if e:
            base = base @ base
            base_exp *= 2
            scale = math.frexp(float(np.abs(base).max()) or 1.0)[1]
            base, base_exp = np.ldexp(base, -scale), base_exp + scale
    entry = float(result[k - 1, k - 1])
    if entry <= 0:
        return 0.0
    log_p = math.log(entry) + result_exp * math.log(2) + math.lgamma(n + 1) - n * math.log(n)
    return min(math.exp(log_p), 1.0)


def _kolmogorov_sf_pelz_good(n: int, d: float) -> float:
    """P(D_n > d) by the Pelz-Good (1976) expansion K0 + K1/√n + K2/n + K3/n^1.5 in z = d·√n, with each
    K written in its small-z (theta function) form; scipy.stats.kstwo uses it in the same range."""
    z = math.sqrt(n) * d
    z2 = z * z
    if -(math.pi**2) / 8 / z2 < -708:
        return 1.0
    pi2, pi4, pi6 = math.pi**2, math.pi**4, math.pi**6
    top = math.ceil(16 * z / math.pi)
    odd = 2.0 * np.arange(1, top + 1) - 1  # m = 2k - 1
    m2 = odd**2
    weight = np.exp(-pi2 * m2 / (8 * z2))
    k0 = np.sum(weight)
    k1 = np.sum((-z2 + pi2 / 4 * m2) * weight)
    k2 = np.sum((6 * z**6 + 2 * z**4 + (2 * z**4 - 5 * z2) * pi2 / 4 * m2 + pi4 * (1 - 2 * z2) / 16 * m2**2) * weight)
    k3 = np.sum(
        (
            -30 * z**6
            - 90 * z**8
            + pi2 * (135 * z**4 - 96 * z**6) / 4 * m2
            + pi4 * (-60 * z2 + 212 * z**4) / 16 * m2**2
            + pi6 * (5 - 30 * z2) / 64 * m2**3
        )
        * weight
    )
    root = math.sqrt(2 * math.pi)
    k0, k1, k2, k3 = (root * k0 / z, root * k1 / (6 * z**4), root * k2 / (72 * z**7), root * k3 / (6480 * z**10))
    ks = np.arange(1, top + 1, dtype=np.float64)
    other = ks**2 * np.exp(-pi2 * ks**2 / (2 * z2))
    k2 += np.sum(other) * pi2 * root / (-36 * z**3)
    k3 += np.sum((3 * z2 - pi2 * ks**2) * other) * pi2 * root / (216 * z**6)
    return (1 - k0) - k1 / math.sqrt(n) - k2 / n - k3 / n**1.5
