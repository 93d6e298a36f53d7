"""theory.convergence: Wilson interval, geometric-rate fit, monotone-trend tests."""
import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

import theory.convergence as conv

K = 4.0  # standard errors allowed
NO_DEADLINE = settings(deadline=None)  # timing on a shared 2-core box is not a property


def test_wilson_matches_the_closed_form_and_coverage():
    lo, hi = conv.wilson_interval(8, 10)
    assert (lo, hi) == pytest.approx((0.4902, 0.9433), abs=5e-4)  # Newcombe (1998), table I style
    # Coverage over every outcome of Binomial(n, p), weighted exactly by its pmf.
    from scipy import stats

    n, p, level = 50, 0.3, 0.95
    k = np.arange(n + 1)
    lo, hi = conv.wilson_interval(k, n, level)
    coverage = np.sum(stats.binom.pmf(k, n, p) * ((lo <= p) & (p <= hi)))
    assert 0.93 < coverage < 0.97


def test_wilson_is_vectorised_and_handles_edges():
    lo, hi = conv.wilson_interval(np.array([[0, 5], [10, 0]]), np.array([10, 10]))
    assert lo.shape == (2, 2)
    assert lo[0, 0] == 0.0 and hi[1, 0] == 1.0
    assert np.all(np.isnan(conv.wilson_interval(0, 0)))
    with pytest.raises(ValueError, match="0 <= k <= n"):
        conv.wilson_interval(11, 10)
    with pytest.raises(ValueError, match="integers"):
        conv.wilson_interval(2.5, 10)


@NO_DEADLINE
@given(st.integers(1, 10_000), st.data())
def test_wilson_contains_the_estimate_and_narrows_with_level(n, data):
    k = data.draw(st.integers(0, n))
    lo, hi = conv.wilson_interval(k, n, 0.95)
    lo90, hi90 = conv.wilson_interval(k, n, 0.90)
    assert 0.0 <= lo <= k / n <= hi <= 1.0
    assert lo <= lo90 + 1e-12 and hi90 <= hi + 1e-12


# --- geometric rate ------------------------------------------------------------------------

def test_geometric_rate_exact_series_and_wrong_alpha():
    p = 1 - 0.7 * 0.85 ** np.arange(15)
    fit = conv.geometric_rate(p, alpha=0.15)
    assert fit.kappa == pytest.approx(0.85, abs=1e-12) and fit.consistent
    assert fit.n_points == 15 and fit.intercept == pytest.approx(np.log(0.7))
    assert not conv.geometric_rate(p, alpha=0.2).consistent
    # p_t = 1 cannot enter log(1 - p); it is dropped, not fitted as -inf.
    fit = conv.geometric_rate(np.append(p, 1.0), alpha=0.15)
    assert fit.n_points == 15 and fit.consistent


def test_geometric_rate_interval_coverage_with_noisy_log_residuals():
    reps, level, kappa = 800, 0.9, 0.8
    rng = np.random.default_rng(17)
    t = np.arange(5)  # few cycles: the t quantile (not the normal one) is what covers
    hits = 0
    for _ in range(reps):
        log_gap = np.log(0.3) + t * np.log(kappa) + 0.2 * rng.standard_normal(t.size)
        hits += conv.geometric_rate(1 - np.exp(log_gap), alpha=1 - kappa, level=level).consistent
    assert abs(hits / reps - level) < K * np.sqrt(level * (1 - level) / reps)


def test_geometric_rate_refuses_bad_input():
    with pytest.raises(ValueError, match="at least 3"):
        conv.geometric_rate([0.5, 1.0, 1.0, 1.0])
    with pytest.raises(ValueError, match=r"\[0, 1\]"):
        conv.geometric_rate([0.5, 1.5, 0.2])
    with pytest.raises(ValueError, match="equal length"):
        conv.geometric_rate([0.1, 0.2, 0.3], t=[0, 1])


# --- monotone trends -------------------------------------------------------------------------

def test_page_statistic_is_the_weighted_rank_sum():
    data = np.random.default_rng(2).standard_normal((4, 6))
    ranks = np.argsort(np.argsort(data, axis=1), axis=1) + 1
    expected_l = np.sum(np.arange(1, 7) * ranks.sum(axis=0))
    r = conv.page_trend_test(data)
    assert r.statistic == expected_l and (r.n_runs, r.n_cycles) == (4, 6)
    # Reversing the direction is the same as reversing the cycles.
    rev = conv.page_trend_test(data, direction="decreasing")
    assert rev.statistic == conv.page_trend_test(data[:, ::-1]).statistic


def test_page_size_and_power():
    reps, alpha = 400, 0.05
    rng = np.random.default_rng(8)
    null = [conv.page_trend_test(rng.standard_normal((5, 6))).p_value for _ in range(reps)]
    size = np.mean(np.array(null) < alpha)
    assert size < alpha + K * np.sqrt(alpha * (1 - alpha) / reps)
    trend = 0.5 * np.arange(6)
    power = np.mean([conv.page_trend_test(trend + rng.standard_normal((5, 6))).p_value < alpha
                     for _ in range(100)])
    assert power > 0.9
    down = conv.page_trend_test(-trend + rng.standard_normal((5, 6)), direction="decreasing")
    assert down.p_value < alpha
    with pytest.raises(ValueError, match=">= 2 runs"):
        conv.page_trend_test(np.ones((1, 5)))
    with pytest.raises(ValueError, match="NaN"):
        conv.page_trend_test([[1, 2, np.nan], [1, 2, 3]])


def test_theil_sen_recovers_slope_under_outliers_and_covers():
    rng = np.random.default_rng(4)
    x = np.arange(200.0)
    y = 0.03 * x + rng.standard_t(1, x.size)  # Cauchy noise ruins OLS, not Theil-Sen
    r = conv.theil_sen_slope(y, x)
    assert r.ci_low < 0.03 < r.ci_high and abs(r.slope - 0.03) < 0.01
    reps, level, n = 400, 0.9, 20
    hits = 0
    for _ in range(reps):
        res = conv.theil_sen_slope(0.5 * np.arange(n) + rng.standard_normal(n), level=level)
        hits += res.ci_low <= 0.5 <= res.ci_high
    assert abs(hits / reps - level) < K * np.sqrt(level * (1 - level) / reps)


def test_trend_verdict_and_decrease_count():
    rng = np.random.default_rng(6)
    t = np.arange(30.0)
    assert conv.trend_verdict(0.1 * t + 0.1 * rng.standard_normal(30)) == "increasing"
    assert conv.trend_verdict(-0.1 * t + 0.1 * rng.standard_normal(30)) == "decreasing"
    assert conv.trend_verdict(np.array([0.0, 1.0] * 15)) == "no trend"
    assert conv.trend_verdict([1.0, np.nan, 2.0, 3.0, 4.0, 5.0]) == "increasing"
    assert conv.decrease_count(np.maximum.accumulate(rng.standard_normal(50))) == 0
    assert conv.decrease_count([1.0, 0.999, 1.2], tol=0.01) == 0
    assert conv.decrease_count([3.0, 2.0, 1.0]) == 2
