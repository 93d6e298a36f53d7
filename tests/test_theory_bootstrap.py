"""theory.bootstrap: each resample's statistics equal those of the expanded data; the
linearised Kendall spreads like the exact one; bootstrap SEs match the normal theory."""
import numpy as np
import pytest
from scipy import stats

import theory.bootstrap as bt
import theory.reliability as rel
from theory import proxy


def normal_pairs(rng, n, rho, digits=None):
    z = rng.multivariate_normal([0, 0], [[1, rho], [rho, 1]], n)
    return (z[:, 0], z[:, 1]) if digits is None else (np.round(z[:, 0], digits), np.round(z[:, 1], digits))


def test_resample_statistics_equal_those_of_the_expanded_data():
    rng = np.random.default_rng(0)
    x, y = normal_pairs(rng, 120, 0.5, digits=1)  # rounded: many ties, as in real accuracies
    w = bt.resampling_counts(len(x), 30, rng)
    r, r_s = bt.weighted_pearson(x, y, w), bt.weighted_spearman(x, y, w)
    for b, counts in enumerate(w):
        xx, yy = np.repeat(x, counts), np.repeat(y, counts)
        assert r[b] == pytest.approx(np.corrcoef(xx, yy)[0, 1], abs=1e-12)
        assert r_s[b] == pytest.approx(stats.spearmanr(xx, yy).statistic, abs=1e-12)
        assert bt.weighted_midranks(x, counts[None])[0][counts > 0] == pytest.approx(
            stats.rankdata(xx)[np.cumsum(counts)[counts > 0] - 1])


def test_concordance_scores_match_the_pairwise_definition_with_ties():
    rng = np.random.default_rng(1)
    for n in (1, 2, 9, 200):
        x, y = normal_pairs(rng, n, -0.3, digits=1)
        brute = (np.sign(x[:, None] - x[None]) * np.sign(y[:, None] - y[None])).sum(axis=1)
        assert np.array_equal(bt.concordance_scores(x, y), brute)


def test_kendall_at_unit_weights_is_scipys_tau_b():
    rng = np.random.default_rng(2)
    x, y = normal_pairs(rng, 500, 0.7, digits=1)
    tau = bt.weighted_kendall_tau_b(x, y, np.ones((1, len(x))))[0]
    assert tau == pytest.approx(stats.kendalltau(x, y).statistic, abs=1e-12)


def test_linearised_kendall_spreads_like_the_exact_bootstrap():
    # The neglected quadratic term is O(n^-1/2) of the linear one per draw: at n = 400 the
    # draws correlate > 0.97 and the spread agrees within 5% (200 draws: SD of an SD ratio ~5%).
    rng = np.random.default_rng(3)
    x, y = normal_pairs(rng, 400, 0.6, digits=1)
    w = bt.resampling_counts(len(x), 200, rng)
    approx = bt.weighted_kendall_tau_b(x, y, w)
    exact = np.array([stats.kendalltau(np.repeat(x, c), np.repeat(y, c)).statistic for c in w])
    assert np.corrcoef(approx, exact)[0, 1] > 0.97
    assert approx.std() / exact.std() == pytest.approx(1.0, abs=0.05)
    assert abs(approx.mean() - exact.mean()) < 0.2 * exact.std()


@pytest.mark.parametrize("rho", [0.3, 0.8])
def test_bootstrap_standard_errors_match_normal_theory(rho):
    # Bootstrap SE of r_S vs the large-sample SE of a bivariate normal
    # (Bonett & Wright 2000: var atanh r_S = (1 + r_S^2/2)/(n - 3)); 400 draws give the SD
    # to ~3.5%, the approximation itself is good to a few percent at this n.
    rng = np.random.default_rng(int(rho * 10))
    n = 2000
    x, y = normal_pairs(rng, n, rho)
    w = bt.resampling_counts(n, 400, rng)
    r_s = stats.spearmanr(x, y).statistic
    se = np.sqrt((1 + r_s**2 / 2) / (n - 3)) * (1 - r_s**2)
    assert bt.weighted_spearman(x, y, w).std(ddof=1) == pytest.approx(se, rel=0.15)
    tau = stats.kendalltau(x, y).statistic
    se_tau = np.sqrt(0.437 / (n - 4)) * (1 - tau**2)  # Fieller, Hartley & Pearson 1957
    assert bt.weighted_kendall_tau_b(x, y, w).std(ddof=1) == pytest.approx(se_tau, rel=0.15)


def test_percentile_interval_refuses_a_bad_level():
    with pytest.raises(ValueError, match="level"):
        bt.percentile_interval([1.0, 2.0], level=95)


def test_resampling_counts_sum_to_n_and_are_uniform():
    rng = np.random.default_rng(4)
    w = bt.resampling_counts(50, 4000, rng)
    assert (w.sum(axis=1) == 50).all()
    # each count is Binomial(50, 1/50): mean 1, variance 0.98; 4000 rows: SE of the mean ~0.016
    assert abs(w.mean() - 1) < 4 * np.sqrt(0.98 / w.size)
    with pytest.raises(ValueError):
        bt.resampling_counts(0, 10, rng)


def test_cluster_counts_move_whole_clusters():
    rng = np.random.default_rng(6)
    labels = np.repeat(np.arange(40), 5)
    w = bt.cluster_resampling_counts(labels, 2000, rng)
    assert (w.reshape(2000, 40, 5) == w.reshape(2000, 40, 5)[:, :, :1]).all()
    assert (w.reshape(2000, 40, 5)[:, :, 0].sum(axis=1) == 40).all()  # m clusters drawn per row
    assert abs(w.mean() - 1) < 4 * np.sqrt(0.975 / (2000 * 40))


def test_arcsin_gap_is_zero_in_expectation_for_a_bivariate_normal():
    rng = np.random.default_rng(5)
    n, rho, reps = 200, 0.6, 400
    gaps = []
    for _ in range(reps):
        x, y = normal_pairs(rng, n, rho)
        gaps.append(rel.arcsin_gap(stats.spearmanr(x, y).statistic, np.corrcoef(x, y)[0, 1], n))
    gaps = np.array(gaps)
    assert abs(gaps.mean()) < 4 * gaps.std(ddof=1) / np.sqrt(reps)
    # against rho_S = r the mean gap is the arcsin law's -0.018 (at rho = 0.6)
    identity = proxy.spearman_from_pearson(rho) - rho
    assert identity == pytest.approx(-0.0181, abs=1e-4)


def test_pairs_to_resolve_scales_with_the_squared_ratio():
    assert rel.pairs_to_resolve(0.01, 0.01, 1000) == pytest.approx(4 * rel.pairs_to_resolve(0.02, 0.01, 1000))
    assert rel.pairs_to_resolve(0.0, 0.01, 1000) == np.inf
    with pytest.raises(ValueError, match="power"):
        rel.pairs_to_resolve(0.01, 0.01, 100, power=1.5)
