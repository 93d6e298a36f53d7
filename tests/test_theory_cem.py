"""theory.cem: the smoothing identity, the exact/sampled CE simulators, drift of a neutral coordinate."""
import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from scipy import stats

import theory.cem as cem
from theory.convergence import geometric_rate

K = 4.0  # standard errors allowed
NO_DEADLINE = settings(deadline=None)  # timing on a shared 2-core box is not a property
QUALITY = np.linspace(0.0, 1.0, 20)


def residual(ds, alpha):
    p, q = ds.p_E.values, ds.q_E.values
    return cem.identity_residual(p[:-1], q[:-1], p[1:], alpha)


# --- the update and the identity -----------------------------------------------------------

@settings(max_examples=60, deadline=None)
@given(st.integers(2, 12), st.floats(0.0, 1.0), st.integers(0, 2**32 - 1))
def test_identity_holds_for_every_set(k, alpha, seed):
    rng = np.random.default_rng(seed)
    pi, q = rng.dirichlet(np.ones(k)), rng.dirichlet(np.ones(k))
    in_e = rng.random(k) < 0.5
    nxt = cem.smoothed_update(pi, q, alpha)
    p_t, q_t, p_next = (cem.elite_probability(v, in_e) for v in (pi, q, nxt))
    assert 1 - p_next == pytest.approx(alpha * (1 - q_t) + (1 - alpha) * (1 - p_t), abs=1e-12)
    assert abs(cem.identity_residual(p_t, q_t, p_next, alpha)) < 1e-12
    assert nxt.sum() == pytest.approx(1.0, abs=1e-12) and np.all(nxt >= 0)
    if abs(q_t - p_t) > 1e-6:
        assert cem.implied_alpha(p_t, q_t, p_next) == pytest.approx(alpha, abs=1e-6)


def test_update_rejects_bad_input():
    with pytest.raises(ValueError, match="alpha"):
        cem.smoothed_update([0.5, 0.5], [1.0, 0.0], 1.5)
    with pytest.raises(ValueError, match="sum to 1"):
        cem.smoothed_update([0.5, 0.6], [1.0, 0.0], 0.1)
    with pytest.raises(ValueError, match="shape"):
        cem.smoothed_update([0.5, 0.5], [1.0, 0.0, 0.0], 0.1)
    with pytest.raises(ValueError, match="rho"):
        cem.elite_count(10, 0.0)
    with pytest.raises(ValueError, match="outside"):
        cem.elite_frequencies([[0, 3]], [2, 3])
    with pytest.raises(ValueError, match="snr"):
        cem.simulate_categorical_exact(QUALITY, 0.2, 0.1, 3, snr=0.0)
    assert np.isnan(cem.elite_share_in_set([]))
    assert np.isnan(cem.implied_alpha(0.5, 0.5, 0.5))


def test_elite_selection_counts_ties_and_nan():
    assert [cem.elite_count(n, 0.1) for n in (0, 1, 10, 11, 50)] == [0, 1, 1, 2, 5]
    assert cem.elite_count(15, 0.2) == 3  # 0.2 * 15 is 3.0000000000000004 in floating point
    idx = cem.elite_indices([np.nan, 3.0, 1.0, np.nan, 2.0, 0.0], 0.5)
    assert idx.tolist() == [1, 4]  # 2 elites of the 4 scored, NaN never chosen
    # Equal scores: each of 4 tied candidates is an elite half the time.
    rng = np.random.default_rng(0)
    reps = 4000
    counts = np.zeros(4)
    for _ in range(reps):
        counts[cem.elite_indices(np.zeros(4), 0.5, rng)] += 1
    assert np.all(np.abs(counts / reps - 0.5) < K * np.sqrt(0.25 / reps))


def test_population_elites_match_a_large_sample():
    rng = np.random.default_rng(1)
    pi = rng.dirichlet(np.ones(QUALITY.size))
    rho, sd, n = 0.1, 0.3, 400_000
    q, gamma = cem.population_elites(pi, QUALITY, rho, sd)
    assert float(pi @ stats.norm.sf((gamma - QUALITY) / sd)) == pytest.approx(rho, abs=1e-12)
    items = rng.choice(QUALITY.size, n, p=pi)
    scores = QUALITY[items] + sd * rng.standard_normal(n)
    elite = items[np.argsort(-scores)[: int(rho * n)]]
    freq = np.bincount(elite, minlength=QUALITY.size) / elite.size
    assert np.all(np.abs(freq - q) < K * np.sqrt(q * (1 - q) / elite.size) + 1e-3)
    assert abs(np.quantile(scores, 1 - rho) - gamma) < 0.01


@NO_DEADLINE
@given(st.integers(0, 2**32 - 1), st.floats(0.01, 0.99), st.sampled_from([0.0, 0.1, 1.0]))
def test_population_elites_tilt_toward_quality(seed, rho, sd):
    rng = np.random.default_rng(seed)
    quality = np.sort(rng.integers(0, 6, 8).astype(float))  # ties on purpose
    pi = rng.dirichlet(np.ones(8))
    q, gamma = cem.population_elites(pi, quality, rho, sd)
    assert q.sum() == pytest.approx(1.0) and np.all(q <= pi / rho + 1e-12)
    ratio = q / pi  # likelihood ratio q/pi is non-decreasing in quality and equal on ties
    assert np.all(np.diff(ratio) >= -1e-9)
    if sd == 0.0:
        assert np.all(q[quality < gamma] == 0) and np.all(q[quality > gamma] == pytest.approx(pi[quality > gamma] / rho))


def test_population_elites_boundary_is_robust_to_rounding():
    pi, quality = np.full(10, 0.1), np.arange(10.0)
    for k in range(1, 11):  # cumulative sums of 0.1 miss k/10 by a rounding error
        q, gamma = cem.population_elites(pi, quality, k / 10)
        assert gamma == 10 - k and np.count_nonzero(q) == k
        np.testing.assert_allclose(q[10 - k:], 1 / k)


def test_expected_best_against_monte_carlo():
    rng = np.random.default_rng(2)
    pi = rng.dirichlet(np.ones(QUALITY.size))
    draws = QUALITY[rng.choice(QUALITY.size, (50_000, 7), p=pi)].max(axis=1)
    se = draws.std() / np.sqrt(draws.size)
    assert abs(cem.expected_best(pi, QUALITY, 7) - draws.mean()) < K * se


# --- simulators -------------------------------------------------------------------------------

def test_noise_free_exact_ce_follows_the_geometric_law():
    alpha = 0.2
    ds = cem.simulate_categorical_exact(QUALITY, alpha, 0.1, 40)
    assert np.all(ds.q_E.values == 1.0)
    gap = 1 - ds.p_E.values
    np.testing.assert_allclose(gap[1:], (1 - alpha) * gap[:-1], rtol=1e-12, atol=1e-15)
    fit = geometric_rate(ds.p_E.values, alpha=alpha)
    assert fit.kappa == pytest.approx(1 - alpha, abs=1e-9) and fit.consistent
    assert np.all(np.diff(ds["mean"].values) > 0) and np.all(np.diff(ds.gamma.values) >= 0)
    assert ds.best.values[-1] == pytest.approx(1.0, abs=1e-6)


def test_noisy_exact_ce_has_q_below_one_and_the_identity_still_exact():
    alpha = 0.2
    ds = cem.simulate_categorical_exact(QUALITY, alpha, 0.1, 25, snr=1.0)
    assert np.all(ds.q_E.values < 1.0)
    assert np.max(np.abs(residual(ds, alpha))) < 1e-14
    p, q = ds.p_E.values, ds.q_E.values
    np.testing.assert_allclose(cem.implied_alpha(p[:-1], q[:-1], p[1:]), alpha, rtol=1e-9)
    # The pure geometric law overstates convergence: the fitted rate is slower than 1 - alpha.
    fit = geometric_rate(p, alpha=alpha)
    assert fit.ci_low > 1 - alpha and not fit.consistent
    assert np.all(1 - p[1:] > (1 - alpha) * (1 - p[:-1]))


def test_sampled_ce_tracks_the_exact_population_ce():
    alpha, rho, n, iters = 0.2, 0.1, 20_000, 15
    exact = cem.simulate_categorical_exact(QUALITY, alpha, rho, iters, snr=1.0)
    sampled = cem.simulate_categorical_sampled(QUALITY, alpha, rho, iters, n, snr=1.0, seed=3)
    assert np.max(np.abs(residual(sampled, alpha))) < 1e-12
    m = cem.elite_count(n, rho)
    # Each q_t has SE <= sqrt(1/(4m)); smoothing damps the error of p_t to alpha/sqrt(1-(1-alpha)^2) of it.
    sd_p = alpha * np.sqrt(0.25 / m) / np.sqrt(1 - (1 - alpha) ** 2)
    assert np.max(np.abs(sampled.p_E.values - exact.p_E.values)) < 5 * sd_p
    assert np.max(np.abs(sampled.gamma.values - exact.gamma.values)) < 0.05
    assert sampled.attrs["kind"] == "categorical_sampled" and sampled.probs.dims == ("iteration", "item")


def test_pbil_identity_per_coordinate_and_convergence():
    alpha = 0.3
    values = [np.array([0.0, 0.5, 1.0])] * 5
    ds = cem.simulate_pbil(values, alpha, 0.2, 40, 60, neutral_choices=3, seed=5)
    p_opt, q_opt = ds.p_opt.values, ds.q_opt.values
    np.testing.assert_allclose(p_opt[1:], alpha * q_opt[:-1] + (1 - alpha) * p_opt[:-1], atol=1e-12)
    np.testing.assert_allclose(ds.marginals.sum("choice").values, 1.0, atol=1e-12)
    assert ds.p_E.values[0] < 0.5 < ds.p_E.values[-1]
    assert ds["mean"].values[0] == 2.5 and ds["mean"].values[-1] == pytest.approx(5.0, abs=1e-3)
    # E is exact: at P_0 uniform it is the share of configurations with quality >= gamma_ref.
    grid = np.array(np.meshgrid(*values, indexing="ij")).sum(axis=0)
    assert ds.p_E.values[0] == pytest.approx(np.mean(grid >= ds.attrs["gamma_ref"]))
    assert ds.neutral_probs.shape == (40, 3) and ds.attrs["neutral_coord"] == 5


def test_pbil_noisy_score_puts_elites_outside_e():
    ds = cem.simulate_pbil([[0.0, 1.0]] * 6, 0.2, 0.2, 10, 200, snr=0.5, seed=2)
    assert ds.q_E.values[0] < 1.0 and np.all(ds.q_E.values[:3] < 1.0)


def test_neutral_coordinate_drifts_at_the_wright_fisher_rate():
    runs, iters, alpha, rho, n = 200, 20, 0.5, 0.25, 20
    m = cem.elite_count(n, rho)
    diversity = np.empty((runs, iters))
    first = np.empty((runs, iters))
    for r in range(runs):
        ds = cem.simulate_pbil([[0.0, 1.0, 2.0]], alpha, rho, iters, n, snr=1.0, seed=100 + r)
        diversity[r], first[r] = ds.neutral_diversity.values, ds.neutral_probs.values[:, 0]
    t = np.arange(iters)
    expected = cem.expected_neutral_diversity(0.5, alpha, m, t)
    se = diversity.std(axis=0, ddof=1) / np.sqrt(runs)
    assert np.all(np.abs(diversity.mean(axis=0) - expected)[1:] < K * se[1:])
    # Drift, not selection: the neutral marginal is a martingale around its start.
    se_first = first.std(axis=0, ddof=1)[-1] / np.sqrt(runs)
    assert abs(first[:, -1].mean() - 0.5) < K * se_first
    assert expected[-1] < 0.5 * 0.4  # and diversity is visibly lost after 20 iterations


def test_pbil_rejects_bad_coordinates():
    with pytest.raises(ValueError, match="at least 2 choices"):
        cem.simulate_pbil([[1.0]], 0.2, 0.2, 3, 10)
    with pytest.raises(ValueError, match="configurations"):
        cem.simulate_pbil([np.arange(4.0)] * 12, 0.2, 0.2, 3, 10)
    with pytest.raises(ValueError, match="zeros past"):
        cem.simulate_pbil([[0.0, 1.0]], 0.2, 0.2, 3, 10, neutral_choices=3,
                          probs0=[[0.4, 0.3, 0.3], [0.2, 0.3, 0.5]])


def test_simulations_round_trip_through_netcdf(tmp_path):
    import xarray as xr

    for ds in (cem.simulate_categorical_exact(QUALITY, 0.2, 0.1, 5, snr=2.0),
               cem.simulate_pbil([[0.0, 1.0]] * 3, 0.2, 0.2, 5, 20, seed=1)):
        path = tmp_path / f"{ds.attrs['kind']}.nc"
        ds.to_netcdf(path)
        back = xr.load_dataset(path)
        xr.testing.assert_identical(back, ds)
        assert back.p_E.attrs["description"].startswith("p_t(E)")
