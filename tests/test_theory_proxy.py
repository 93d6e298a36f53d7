"""theory.proxy: closed forms checked against seeded Monte Carlo and their own algebra.

Tolerances are K standard errors at the simulated sample size; each Monte Carlo test
also asserts that the tolerance is tight enough to reject the wrong law it guards.
"""
import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from scipy import stats

import theory.proxy as p

K = 4.0  # standard errors allowed: a false failure has probability ~6e-5 per check
NO_DEADLINE = settings(deadline=None)  # timing on a shared 2-core box is not a property


def bivariate_normal(rng, rho, size):
    """Samples of shape size + (2,) ... returned as x, y arrays of shape `size`."""
    x = rng.standard_normal(size)
    y = rho * x + np.sqrt(1.0 - rho**2) * rng.standard_normal(size)
    return x, y


def ranks(a):
    """Ranks 1..n along the last axis (continuous data: no ties)."""
    return np.argsort(np.argsort(a, axis=-1), axis=-1) + 1.0


def spearman_rows(x, y):
    n = x.shape[-1]
    d = ranks(x) - ranks(y)
    return 1.0 - 6.0 * np.sum(d**2, axis=-1) / (n * (n**2 - 1.0))


def kendall_rows(x, y):
    """Kendall's tau-a for each row, by all pairwise sign products (small n only)."""
    n = x.shape[-1]
    sx = np.sign(x[..., :, None] - x[..., None, :])
    sy = np.sign(y[..., :, None] - y[..., None, :])
    return np.sum(sx * sy, axis=(-1, -2)) / (n * (n - 1.0))


# --- closed forms: exact values -------------------------------------------------------

def test_spearman_from_snr_value_of_the_issue():
    assert p.spearman_from_snr(1.0) == pytest.approx(0.6902, abs=5e-5)


def test_moran_small_n_value_and_limit():
    assert p.moran_expected_spearman(0.7, 10) == pytest.approx(0.6313, abs=5e-5)
    assert p.spearman_from_pearson(0.7) == pytest.approx(0.6829, abs=5e-5)
    assert p.moran_expected_spearman(0.7, 10**7) == pytest.approx(p.spearman_from_pearson(0.7), abs=1e-6)


def test_max_gap_matches_a_grid_search():
    grid = np.linspace(0, 1, 200001)
    gaps = grid - p.spearman_from_pearson(grid)
    rho, gap = p.max_arcsin_gap()
    assert gap == pytest.approx(gaps.max(), abs=1e-9)
    assert rho == pytest.approx(grid[gaps.argmax()], abs=1e-4)
    assert gap == pytest.approx(0.018, abs=5e-4)


def test_vectorised_shapes():
    r = np.linspace(-0.9, 0.9, 7).reshape(7, 1)
    n = np.array([10, 50, 200])
    lo, hi = p.spearman_ci(r, n)
    assert lo.shape == hi.shape == (7, 3)
    assert np.all(lo < r) and np.all(r < hi)
    assert p.moran_expected_spearman(r, n).shape == (7, 3)
    c = p.copula_check(r, p.kendall_from_pearson(p.pearson_from_spearman(r)))
    np.testing.assert_allclose(c["difference"], 0.0, atol=1e-12)


def test_nan_propagates_and_bad_input_raises():
    assert np.isnan(p.spearman_from_pearson(np.nan))
    with pytest.raises(ValueError, match="SNR"):
        p.pearson_from_snr(-0.1)
    with pytest.raises(ValueError, match=r"\[-1, 1\]"):
        p.spearman_from_pearson(1.2)
    with pytest.raises(ValueError, match="n > 3"):
        p.pearson_ci(0.5, 3)
    with pytest.raises(ValueError, match="n > 4"):
        p.kendall_ci(0.5, 4)
    with pytest.raises(ValueError, match="level"):
        p.pearson_ci(0.5, 30, level=95)
    with pytest.raises(ValueError, match="integer"):
        p.moran_expected_spearman(0.5, 10.5)


# --- Monte Carlo ------------------------------------------------------------------------

@pytest.mark.parametrize("rho", [0.3, 0.6, 0.9])
def test_arcsin_laws_against_large_sample(rho):
    n = 200_000
    x, y = bivariate_normal(np.random.default_rng(int(rho * 100)), rho, n)
    r_s = stats.spearmanr(x, y).statistic
    tau = stats.kendalltau(x, y).statistic
    rho_s, tau_pred = p.spearman_from_pearson(rho), p.kendall_from_pearson(rho)
    # Delta-method SEs from the Fisher-z variances (Bonett-Wright, Fieller).
    se_s = (1 - rho_s**2) * np.sqrt((1 + rho_s**2 / 2) / (n - 3))
    se_t = (1 - tau_pred**2) * np.sqrt(0.437 / (n - 4))
    assert abs(r_s - rho_s) < K * se_s
    assert abs(tau - tau_pred) < K * se_t
    if rho == 0.6:  # near the largest gap: the test must reject rho_S = rho
        assert abs(rho - rho_s) > 2 * K * se_s


def test_moran_expectation_at_small_n_by_simulation():
    reps, n, rho = 40_000, 10, 0.7
    x, y = bivariate_normal(np.random.default_rng(7), rho, (reps, n))
    r_s = spearman_rows(x, y)
    se = r_s.std(ddof=1) / np.sqrt(reps)
    assert abs(r_s.mean() - p.moran_expected_spearman(rho, n)) < K * se
    assert abs(r_s.mean() - p.spearman_from_pearson(rho)) > 2 * K * se  # asymptote is wrong here
    # Kendall's sample tau is a U-statistic: unbiased for (2/pi) asin(rho) at every n.
    tau = kendall_rows(x, y)
    assert abs(tau.mean() - p.kendall_from_pearson(rho)) < K * tau.std(ddof=1) / np.sqrt(reps)


@pytest.mark.parametrize("which", ["pearson", "spearman", "kendall"])
def test_interval_coverage_is_near_nominal(which):
    # rho = 0.9: where Bonett-Wright's (1 + r^2/2) matters (Pearson's 1/(n-3) covers ~0.92).
    reps, n, rho, level = 4000, 30, 0.9, 0.95
    x, y = bivariate_normal(np.random.default_rng(11), rho, (reps, n))
    if which == "pearson":
        est, truth, ci = np.array([np.corrcoef(a, b)[0, 1] for a, b in zip(x, y)]), rho, p.pearson_ci
    elif which == "spearman":
        est, truth, ci = spearman_rows(x, y), p.spearman_from_pearson(rho), p.spearman_ci
    else:
        est, truth, ci = kendall_rows(x, y), p.kendall_from_pearson(rho), p.kendall_ci
    lo, hi = ci(est, n, level)
    coverage = np.mean((lo <= truth) & (truth <= hi))
    assert abs(coverage - level) < K * np.sqrt(level * (1 - level) / reps)


def test_pairs_to_distinguish_gives_the_stated_power():
    rho, alpha, power = 0.594, 0.05, 0.8
    n = int(np.ceil(p.pairs_to_distinguish_arcsin(rho, alpha, power)))
    assert 10_000 < n < 15_000  # "about 10^4 pairs"
    reps = 300
    x, y = bivariate_normal(np.random.default_rng(3), rho, (reps, n))
    r_s = spearman_rows(x, y)
    z = (np.arctanh(r_s) - np.arctanh(rho)) / np.sqrt((1 + r_s**2 / 2) / (n - 3))
    rejected = np.mean(np.abs(z) > stats.norm.ppf(1 - alpha / 2))
    assert abs(rejected - power) < K * np.sqrt(power * (1 - power) / reps)


def test_copula_check_flags_a_non_normal_dependence():
    n = 4000
    rng = np.random.default_rng(5)
    # Normal copula: both routes give the same latent rho.
    x, y = bivariate_normal(rng, 0.5, n)
    c = p.copula_check(stats.spearmanr(x, y).statistic, stats.kendalltau(x, y).statistic)
    assert abs(c["difference"]) < 0.02
    # Mixture of comonotone (w) and independent (1-w) pairs: rho_S = w, tau = w(w+2)/3, so
    # the latent correlations differ by 2 sin(pi w/6) - sin(pi w(w+2)/6) = -0.091 at w=0.5.
    u = rng.random(n)
    v = np.where(rng.random(n) < 0.5, u, rng.random(n))
    c = p.copula_check(stats.spearmanr(u, v).statistic, stats.kendalltau(u, v).statistic)
    assert c["difference"] == pytest.approx(2 * np.sin(np.pi / 12) - np.sin(np.pi * 1.25 / 6), abs=0.03)
    assert c["difference"] < -0.05


# --- properties ---------------------------------------------------------------------------

corr = st.floats(-1.0, 1.0, allow_nan=False)


@NO_DEADLINE
@given(corr)
def test_inverses_round_trip(r):
    assert p.pearson_from_spearman(p.spearman_from_pearson(r)) == pytest.approx(r, abs=1e-12)
    assert p.pearson_from_kendall(p.kendall_from_pearson(r)) == pytest.approx(r, abs=1e-12)
    assert p.spearman_from_pearson(p.pearson_from_spearman(r)) == pytest.approx(r, abs=1e-12)


@NO_DEADLINE
@given(st.floats(0.0, 1.0), st.floats(0.0, 1.0))
def test_monotone_and_ordered(a, b):
    lo, hi = min(a, b), max(a, b)
    assert p.spearman_from_pearson(lo) <= p.spearman_from_pearson(hi)
    assert p.kendall_from_pearson(lo) <= p.kendall_from_pearson(hi)
    # For a positive normal dependence: tau <= rho_S <= rho.
    assert p.kendall_from_pearson(hi) <= p.spearman_from_pearson(hi) + 1e-15 <= hi + 2e-15


@NO_DEADLINE
@given(st.floats(0.0, 1e6), st.floats(0.0, 1e6))
def test_snr_maps_monotonically_into_unit_interval(a, b):
    lo, hi = min(a, b), max(a, b)
    assert 0.0 <= p.pearson_from_snr(lo) <= p.pearson_from_snr(hi) <= 1.0
    assert p.spearman_from_snr(lo) <= p.spearman_from_snr(hi)


@settings(max_examples=50, deadline=None)
@given(st.floats(0.01, 0.99), st.integers(2, 10_000))
def test_moran_rises_toward_the_asymptote(rho, n):
    assert p.moran_expected_spearman(rho, n) <= p.moran_expected_spearman(rho, n + 1) + 1e-15
    assert p.moran_expected_spearman(rho, n) <= p.spearman_from_pearson(rho) + 1e-15


@NO_DEADLINE
@given(corr, st.integers(5, 10_000))
def test_intervals_contain_the_estimate(r, n):
    for ci in (p.pearson_ci, p.spearman_ci, p.kendall_ci):
        lo, hi = ci(r, n)
        assert -1.0 <= lo <= r <= hi <= 1.0
