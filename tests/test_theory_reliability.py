"""theory.reliability: ICC(1)/SNR estimators recover simulated truth with honest intervals."""
import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

import theory.proxy as proxy
import theory.reliability as rel

K = 4.0  # standard errors allowed
NO_DEADLINE = settings(deadline=None)  # timing on a shared 2-core box is not a property


def replicates(rng, snr, n, k):
    """(n, k) proxy scores: architecture effect with variance snr, unit seed noise; and the truth."""
    truth = np.sqrt(snr) * rng.standard_normal((n, 1))
    return truth + rng.standard_normal((n, k)), truth[:, 0]


def icc_se(icc, n, k):
    """Large-sample SE of the ANOVA ICC(1) (Fisher 1925; Donner 1986, balanced design)."""
    return np.sqrt(2 * (1 - icc) ** 2 * (1 + (k - 1) * icc) ** 2 / (k * (k - 1) * (n - 1)))


@pytest.mark.parametrize("snr", [0.25, 1.0, 4.0])
def test_icc_recovers_the_simulated_snr(snr):
    n, k = 3000, 3
    scores, _ = replicates(np.random.default_rng(int(snr * 4)), snr, n, k)
    r = rel.icc1(scores)
    truth = snr / (1 + snr)
    assert abs(r.icc - truth) < K * icc_se(truth, n, k)
    # At large n the F-based interval has the width of the normal-theory one.
    half_width = 1.959964 * icc_se(r.icc, n, k)
    assert (r.ci_high - r.ci_low) / 2 == pytest.approx(half_width, rel=0.02)
    assert r.ci_low < r.icc < r.ci_high and r.snr_ci_low < r.snr < r.snr_ci_high
    assert r.snr == pytest.approx(r.icc / (1 - r.icc))
    assert (r.n, r.k, r.n_obs, r.method) == (n, 3.0, n * k, "anova")
    assert r.f == r.f_stat > 1 and r.p_value < 1e-6


def test_icc_interval_coverage_is_near_nominal():
    # Few architectures, many replicates: the two F quantiles differ (swapped df cover ~0.80).
    reps, n, k, snr, level = 1000, 8, 10, 1.0, 0.9
    rng = np.random.default_rng(42)
    truth = snr / (1 + snr)
    hits = 0
    for _ in range(reps):
        r = rel.icc1(replicates(rng, snr, n, k)[0], level=level)
        hits += r.ci_low <= truth <= r.ci_high
    assert abs(hits / reps - level) < K * np.sqrt(level * (1 - level) / reps)


def test_icc_with_missing_replicates_uses_k0():
    rng = np.random.default_rng(3)
    scores, _ = replicates(rng, 1.0, 2000, 4)
    scores[rng.random(scores.shape) < 0.3] = np.nan
    scores[:5] = np.nan  # architectures never scored are ignored
    r = rel.icc1(scores)
    sizes = np.sum(~np.isnan(scores), axis=1)
    sizes = sizes[sizes > 0]
    big_n = sizes.sum()
    assert r.k == pytest.approx((big_n - np.sum(sizes**2) / big_n) / (len(sizes) - 1))
    assert r.n == len(sizes) and r.n_obs == big_n
    assert abs(r.icc - 0.5) < K * icc_se(0.5, r.n, r.k)


def test_icc_matches_a_hand_computed_anova():
    scores = np.array([[1.0, 1.2], [2.0, 2.2], [3.0, 2.6], [4.0, 4.4]])
    ms_b = 2 * np.sum((scores.mean(1) - scores.mean()) ** 2) / 3
    ms_w = np.sum((scores - scores.mean(1, keepdims=True)) ** 2) / 4
    r = rel.icc1(scores)
    assert r.f_stat == pytest.approx(ms_b / ms_w)
    assert r.icc == pytest.approx((ms_b - ms_w) / (ms_b + ms_w))


def test_test_retest_and_truth_correlations_follow_the_model():
    n, snr = 200_000, 1.5
    scores, truth = replicates(np.random.default_rng(9), snr, n, 2)
    icc = snr / (1 + snr)
    retest = np.corrcoef(scores[:, 0], scores[:, 1])[0, 1]
    with_truth = np.corrcoef(scores[:, 0], truth)[0, 1]
    se = 1 / np.sqrt(n - 3)  # Fisher-z scale
    assert abs(np.arctanh(retest) - np.arctanh(icc)) < K * se
    assert abs(np.arctanh(with_truth) - np.arctanh(proxy.pearson_from_snr(snr))) < K * se


def test_spearman_brown_and_attenuation_by_simulation():
    n, snr, k = 200_000, 0.5, 4
    rng = np.random.default_rng(13)
    a, truth = replicates(rng, snr, n, k)
    b = truth[:, None] + rng.standard_normal((n, k))
    icc = snr / (1 + snr)
    mean_retest = np.corrcoef(a.mean(1), b.mean(1))[0, 1]
    se = 1 / np.sqrt(n - 3)
    assert abs(np.arctanh(mean_retest) - np.arctanh(rel.spearman_brown(icc, k))) < K * se
    # Two single replicates: corrected for both reliabilities, the correlation of truths is 1.
    r_xy = np.corrcoef(a[:, 0], b[:, 0])[0, 1]
    assert rel.correct_attenuation(r_xy, icc, icc) == pytest.approx(1.0, abs=K * se * 4)


def test_mixedlm_equals_anova_on_balanced_data_and_handles_unbalanced():
    rng = np.random.default_rng(21)
    scores, _ = replicates(rng, 1.0, 80, 3)
    a, m = rel.icc1(scores), rel.icc1_mixedlm(scores)
    assert m.method == "reml" and np.isnan(m.f_stat)
    assert m.icc == pytest.approx(a.icc, abs=1e-4)  # REML = ANOVA for balanced, interior fits
    assert m.ci_low == pytest.approx(a.ci_low, abs=0.03) and m.ci_high == pytest.approx(a.ci_high, abs=0.03)
    big, _ = replicates(rng, 2.0, 250, 4)
    big[rng.random(big.shape) < 0.4] = np.nan
    m = rel.icc1_mixedlm(big)
    assert m.ci_low < 2 / 3 < m.ci_high
    assert m.snr == pytest.approx(m.var_between / m.var_within)


def test_mixedlm_at_the_boundary_reports_zero_lower_bound():
    scores = np.random.default_rng(1).standard_normal((40, 3))  # no architecture effect
    m = rel.icc1_mixedlm(scores)
    assert m.ci_low == 0.0 and m.icc < m.ci_high < 0.5


def test_degenerate_and_bad_input():
    same = rel.icc1([[1.0, 1.0], [2.0, 2.0], [3.0, 3.0]])
    assert same.icc == 1.0 and same.snr == np.inf and same.ci_low == 1.0
    with pytest.raises(ValueError, match="2-D"):
        rel.icc1([1.0, 2.0, 3.0])
    with pytest.raises(ValueError, match="at least 2 architectures"):
        rel.icc1([[1.0, 2.0], [np.nan, np.nan]])
    with pytest.raises(ValueError, match="2 or more replicates"):
        rel.icc1([[1.0, np.nan], [2.0, np.nan]])
    with pytest.raises(ValueError, match="inf"):
        rel.icc1([[1.0, np.inf], [2.0, 3.0]])
    with pytest.raises(ValueError, match=">= 1"):
        rel.spearman_brown(0.5, 0)
    with pytest.raises(ValueError, match="> 0"):
        rel.correct_attenuation(0.3, 0.0)


@NO_DEADLINE
@given(st.floats(-0.99, 0.99), st.integers(1, 50))
def test_spearman_brown_properties(icc, k):
    sb = rel.spearman_brown(icc, k)
    assert rel.spearman_brown(icc, 1) == pytest.approx(icc)
    if icc > 0:
        assert icc - 1e-12 <= sb <= rel.spearman_brown(icc, k + 1) + 1e-12 <= 1.0
        # SNR of the mean of k replicates is k times the single-replicate SNR.
        assert rel.snr_from_icc(sb) == pytest.approx(k * rel.snr_from_icc(icc), rel=1e-9)


@NO_DEADLINE
@given(st.floats(0.0, 1e6))
def test_snr_icc_round_trip(snr):
    assert rel.snr_from_icc(snr / (1 + snr)) == pytest.approx(snr, rel=1e-9, abs=1e-12)


def test_architectures_for_icc_width_give_that_width_in_simulation():
    # Bonett's n is a large-sample approximation: checked where n is large (51, 101); the
    # median width of 300 simulated studies has a sampling error of ~0.003 at these n.
    rng = np.random.default_rng(11)
    for rho, k in ((0.8, 2), (0.6, 3)):
        n = int(np.ceil(rel.architectures_for_icc_width(rho, k, 0.2)))
        widths = []
        for _ in range(300):
            scores = rng.normal(0, np.sqrt(rho), (n, 1)) + rng.normal(0, np.sqrt(1 - rho), (n, k))
            r = rel.icc1(scores)
            widths.append(r.ci_high - r.ci_low)
        assert abs(np.median(widths) - 0.2) < 0.02
    assert rel.architectures_for_icc_width(0.9, 2, 0.2) < rel.architectures_for_icc_width(0.9, 2, 0.1)
    with pytest.raises(ValueError, match="k must be >= 2"):
        rel.architectures_for_icc_width(0.5, 1, 0.2)
