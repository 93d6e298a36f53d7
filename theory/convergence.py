"""Convergence diagnostics: proportions, geometric rate of p_t(E), monotone trends of gamma_t.

The CE claims tested here: ``1 - p_t(E)`` shrinks geometrically with rate ``1 - alpha``
(only when ``q_t(E) = 1``, see ``theory.cem``), and the elite threshold ``gamma_t`` rises
monotonically (a design property of MRAS-style updates, not a theorem of plain CEM).
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from scipy import stats

from theory._checks import check_level, normal_quantile, scalar_or_array


def wilson_interval(k, n, level: float = 0.95):
    """Wilson score interval for a binomial proportion k/n (Wilson 1927, JASA 22:209).

    ``(p + z^2/(2n) -+ z sqrt(p(1-p)/n + z^2/(4n^2))) / (1 + z^2/n)`` with ``p = k/n``.
    Vectorised over k and n; n = 0 gives (nan, nan). Returns ``(lo, hi)``.

    >>> lo, hi = wilson_interval(8, 10)
    >>> round(lo, 3), round(hi, 3)
    (0.49, 0.943)
    >>> wilson_interval([0, 10], 10)[0].tolist()
    [0.0, 0.7224672001371107]
    """
    z = normal_quantile(level)
    k = np.asarray(k, dtype=float)
    n = np.asarray(n, dtype=float)
    if np.any((k < 0) | (k > n)) or np.any(n < 0):
        raise ValueError(f"need 0 <= k <= n for a proportion; got k={k!r}, n={n!r}")
    if np.any(k != np.floor(k)) or np.any(n != np.floor(n)):
        raise ValueError(f"k and n must be counts (integers); got k={k!r}, n={n!r}")
    with np.errstate(invalid="ignore", divide="ignore"):
        p = k / n
        denom = 1.0 + z**2 / n
        centre = (p + z**2 / (2.0 * n)) / denom
        half = z / denom * np.sqrt(p * (1.0 - p) / n + z**2 / (4.0 * n**2))
    # The bounds at k = 0 and k = n are exactly 0 and 1; avoid rounding just inside them.
    lo = np.where(k == 0, 0.0, np.clip(centre - half, 0.0, 1.0))
    hi = np.where(k == n, 1.0, np.clip(centre + half, 0.0, 1.0))
    lo, hi = np.where(n == 0, np.nan, lo), np.where(n == 0, np.nan, hi)
    return scalar_or_array(lo), scalar_or_array(hi)


@dataclass(frozen=True)
class GeometricRate:
    """Fit of ``1 - p_t = c * kappa^t``: kappa with its CI and the rate the theory predicts."""

    kappa: float
    ci_low: float
    ci_high: float
    slope: float
    slope_se: float
    intercept: float
    n_points: int
    expected: float
    consistent: bool
    level: float


def geometric_rate(p_series, alpha=None, t=None, level: float = 0.95) -> GeometricRate:
    """Geometric contraction rate of ``1 - p_t(E)``: OLS of ``log(1 - p_t)`` on t.

    Under mixture smoothing with ``q_t(E) = 1``, ``1 - p_{t+1} = (1 - alpha)(1 - p_t)``
    (see ``theory.cem``), so the slope is ``log(1 - alpha)``; ``kappa = exp(slope)`` with
    the t-interval ``exp(slope -+ t_{n-2} se)``. With ``alpha`` given, ``expected = 1 - alpha``
    and ``consistent`` says whether it lies in the interval (an exact fit, se = 0, is
    compared to 1e-9). When ``q_t(E) < 1`` the law is not geometric toward 0 (it levels off
    at ``1 - p* = 1 - q``); a kappa well above ``1 - alpha`` is then the signature of a noisy
    proxy, not a slow update. Points with ``p_t = 1`` (log of 0) and NaN are dropped;
    at least 3 points must remain. ``t`` defaults to 0, 1, 2, ...

    >>> p = 1 - 0.6 * 0.8 ** np.arange(10)
    >>> fit = geometric_rate(p, alpha=0.2)
    >>> round(fit.kappa, 12), fit.consistent
    (0.8, True)
    """
    p = np.asarray(p_series, dtype=float)
    t = np.arange(p.size, dtype=float) if t is None else np.asarray(t, dtype=float)
    if p.ndim != 1 or t.shape != p.shape:
        raise ValueError(f"p_series and t must be 1-D of equal length; got {p.shape} and {t.shape}")
    if np.any((p < 0) | (p > 1)):
        raise ValueError("p_series holds probabilities and must lie in [0, 1]")
    keep = ~np.isnan(p) & (p < 1.0)
    if keep.sum() < 3:
        raise ValueError(
            f"need at least 3 points with p_t < 1 to fit a rate; got {int(keep.sum())}"
        )
    fit = stats.linregress(t[keep], np.log1p(-p[keep]))
    df = int(keep.sum()) - 2
    half = stats.t.ppf(0.5 + check_level(level) / 2.0, df) * fit.stderr if df > 0 else np.inf
    kappa = float(np.exp(fit.slope))
    lo, hi = float(np.exp(fit.slope - half)), float(np.exp(fit.slope + half))
    expected = np.nan if alpha is None else 1.0 - float(alpha)
    consistent = bool(lo - 1e-9 <= expected <= hi + 1e-9)
    return GeometricRate(
        kappa=kappa, ci_low=lo, ci_high=hi, slope=float(fit.slope), slope_se=float(fit.stderr),
        intercept=float(fit.intercept), n_points=int(keep.sum()), expected=expected,
        consistent=consistent, level=float(level),
    )


@dataclass(frozen=True)
class PageTrend:
    """Page's L test across replicate runs (rows) over ordered cycles (columns)."""

    statistic: float
    p_value: float
    method: str
    n_runs: int
    n_cycles: int
    direction: str


def page_trend_test(data, direction: str = "increasing", method: str = "auto") -> PageTrend:
    """Page's test for an ordered trend across columns, blocked by rows.

    ``L = sum_j j R_j`` where ``R_j`` is the sum over runs of the within-run rank of cycle j
    (Page 1963, JASA 58:216). Rows are replicate runs, columns cycles in time order;
    ``direction="decreasing"`` tests the reverse order. ``method`` is "auto", "exact" or
    "asymptotic" (normal approximation), as in ``scipy.stats.page_trend_test``, which
    computes the p-value. Needs >= 2 runs and >= 3 cycles, no NaN.

    >>> r = page_trend_test([[1, 2, 3, 4], [1, 3, 2, 4], [0, 1, 2, 5]])
    >>> r.statistic, round(r.p_value, 4)
    (89.0, 0.0007)
    """
    data = np.asarray(data, dtype=float)
    if data.ndim != 2 or data.shape[0] < 2 or data.shape[1] < 3:
        raise ValueError(
            f"Page's test needs a 2-D array of >= 2 runs (rows) x >= 3 cycles (columns); got {data.shape}"
        )
    if np.any(np.isnan(data)):
        raise ValueError("Page's test cannot rank NaN: drop or truncate cycles missing in some run")
    if direction not in ("increasing", "decreasing"):
        raise ValueError(f"direction must be 'increasing' or 'decreasing'; got {direction!r}")
    ordered = data if direction == "increasing" else data[:, ::-1]
    res = stats.page_trend_test(ordered, method=method)
    return PageTrend(
        statistic=float(res.statistic), p_value=float(res.pvalue), method=str(res.method),
        n_runs=data.shape[0], n_cycles=data.shape[1], direction=direction,
    )


@dataclass(frozen=True)
class TheilSen:
    """Theil-Sen slope with its distribution-free confidence interval."""

    slope: float
    intercept: float
    ci_low: float
    ci_high: float
    n: int
    level: float


def theil_sen_slope(y, x=None, level: float = 0.95) -> TheilSen:
    """Median of pairwise slopes ``median_{i<j} (y_j - y_i)/(x_j - x_i)`` (Theil 1950; Sen 1968).

    The interval inverts Kendall's tau test (Sen 1968), computed by
    ``scipy.stats.theilslopes``. NaN points are dropped; at least 3 must remain.

    >>> r = theil_sen_slope([0.1, 0.3, 0.2, 0.5, 0.6, 0.8])
    >>> round(r.slope, 3), r.ci_low > 0
    (0.133, True)
    """
    y = np.asarray(y, dtype=float)
    x = np.arange(y.size, dtype=float) if x is None else np.asarray(x, dtype=float)
    if y.ndim != 1 or x.shape != y.shape:
        raise ValueError(f"y and x must be 1-D of equal length; got {y.shape} and {x.shape}")
    keep = ~(np.isnan(y) | np.isnan(x))
    if keep.sum() < 3:
        raise ValueError(f"Theil-Sen needs at least 3 non-NaN points; got {int(keep.sum())}")
    res = stats.theilslopes(y[keep], x[keep], alpha=check_level(level))
    return TheilSen(
        slope=float(res.slope), intercept=float(res.intercept), ci_low=float(res.low_slope),
        ci_high=float(res.high_slope), n=int(keep.sum()), level=float(level),
    )


def trend_verdict(y, x=None, level: float = 0.95) -> str:
    """"increasing", "decreasing" or "no trend": whether the Theil-Sen CI excludes 0.

    >>> trend_verdict([1, 2, 2, 3, 4, 4, 5, 6])
    'increasing'
    """
    r = theil_sen_slope(y, x, level)
    if r.ci_low > 0:
        return "increasing"
    if r.ci_high < 0:
        return "decreasing"
    return "no trend"


def decrease_count(series, tol: float = 0.0) -> int:
    """Number of steps with ``s_{t+1} < s_t - tol``: 0 for a monotone non-decreasing series.

    The direct check of a monotone elite threshold (MRAS keeps gamma_t monotone by
    construction, Hu, Fu & Marcus 2007; plain CEM does not). NaN steps are not counted.

    >>> decrease_count([0.1, 0.2, 0.15, 0.3, 0.3])
    1
    """
    s = np.asarray(series, dtype=float)
    if s.ndim != 1:
        raise ValueError(f"series must be 1-D; got shape {s.shape}")
    return int(np.sum(np.diff(s) < -float(tol)))
