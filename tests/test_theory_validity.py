"""theory.validity: token-error models against simulated token chains; MLE and ratio intervals."""
import math

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

import theory.validity as val

K = 4.0  # standard errors allowed
NO_DEADLINE = settings(deadline=None)  # timing on a shared 2-core box is not a property


def markov_valid(rng, lengths, eps_first, eps, eps_burst):
    """Simulate token error chains token by token; valid = no error among the first L tokens."""
    n, top = lengths.size, int(lengths.max())
    error = rng.random(n) < eps_first
    ever = error.copy()
    for pos in range(1, top):
        stay_wrong = rng.random(n) < eps_burst
        go_wrong = rng.random(n) < eps
        error = np.where(error, stay_wrong, go_wrong)
        ever |= error & (pos < lengths)
    return ~ever


def test_markov_formula_matches_simulated_chains_whatever_the_bursts():
    rng = np.random.default_rng(0)
    n, length = 40_000, 60
    for burst in (0.05, 0.9):  # burstiness of errors does not change P(valid)
        valid = markov_valid(rng, np.full(n, length), 0.1, 0.01, burst)
        expected = val.valid_probability_markov(length, 0.1, 0.01)
        assert abs(valid.mean() - expected) < K * math.sqrt(expected * (1 - expected) / n)
    # With eps_first = eps the Markov model is the independent one.
    assert val.valid_probability_markov(60, 0.01, 0.01) == pytest.approx(val.valid_probability_independent(60, 0.01))


def test_independent_fit_recovers_eps_and_its_interval_covers():
    rng = np.random.default_rng(1)
    eps, reps, n, level = 0.004, 400, 400, 0.8
    hits = 0
    for _ in range(reps):
        lengths = rng.integers(20, 400, n)
        valid = rng.random(n) < (1 - eps) ** lengths
        lo, hi = val.fit_token_error(lengths, valid).eps_ci(level)
        hits += lo <= eps <= hi
    assert abs(hits / reps - level) < K * math.sqrt(level * (1 - level) / reps)


def test_markov_fit_recovers_both_parameters_from_chains():
    rng = np.random.default_rng(2)
    n = 20_000
    lengths = rng.integers(10, 300, n)
    valid = markov_valid(rng, lengths, 0.15, 0.003, 0.5)
    fit = val.fit_token_error(lengths, valid, model="markov")
    se_first, se_h = np.sqrt(np.diag(fit.cov))
    assert abs(fit.hazards[0] + math.log(1 - 0.15)) < K * se_first
    assert abs(fit.hazards[1] + math.log(1 - 0.003)) < K * se_h
    # The independent model, forced on the same data, fits worse by far more than one parameter.
    indep = val.fit_token_error(lengths, valid)
    assert fit.loglik - indep.loglik > 10


def test_mle_is_the_likelihood_maximum():
    rng = np.random.default_rng(3)
    lengths = rng.integers(5, 200, 300)
    valid = rng.random(300) < 0.98 ** lengths
    fit = val.fit_token_error(lengths, valid)
    grid = np.linspace(0.001, 0.06, 20_001)
    p = (1 - grid[:, None]) ** lengths
    ll = np.sum(np.where(valid, np.log(p), np.log1p(-p)), axis=1)
    assert fit.eps == pytest.approx(grid[ll.argmax()], abs=5e-6)
    assert fit.loglik == pytest.approx(ll.max(), abs=1e-6)


def test_predicted_ratio_matches_a_measured_one_when_the_model_is_true():
    rng = np.random.default_rng(4)
    eps, n = 0.005, 6000
    len_delta, len_full = rng.integers(20, 80, n), rng.integers(150, 400, n)
    valid_delta = rng.random(n) < (1 - eps) ** len_delta
    valid_full = rng.random(n) < (1 - eps) ** len_full
    fit = val.fit_token_error(np.concatenate([len_delta, len_full]), np.concatenate([valid_delta, valid_full]))
    pred, p_lo, p_hi = val.predicted_valid_ratio(fit, len_delta, len_full)
    meas, m_lo, m_hi = val.measured_valid_ratio(valid_delta, valid_full)
    se_pred = math.log(p_hi / p_lo) / (2 * 1.959964)
    se_meas = math.log(m_hi / m_lo) / (2 * 1.959964)
    assert abs(math.log(pred / meas)) < K * math.hypot(se_pred, se_meas)
    # The ratio averages probabilities over lengths (not the probability at the mean length).
    manual = np.mean((1 - fit.eps) ** len_delta) / np.mean((1 - fit.eps) ** len_full)
    assert pred == pytest.approx(manual, rel=1e-12)
    assert pred != pytest.approx((1 - fit.eps) ** (len_delta.mean() - len_full.mean()), rel=1e-3)


def test_measured_ratio_interval_coverage():
    rng = np.random.default_rng(5)
    reps, n, level = 1000, 200, 0.9
    hits = 0
    for _ in range(reps):
        r, lo, hi = val.measured_valid_ratio(rng.random(n) < 0.6, rng.random(n) < 0.4, level)
        hits += lo <= 1.5 <= hi
    assert abs(hits / reps - level) < K * math.sqrt(level * (1 - level) / reps)


def test_bad_input_is_refused():
    with pytest.raises(ValueError, match="no valid output"):
        val.fit_token_error([10, 20], [0, 0])
    with pytest.raises(ValueError, match="model"):
        val.fit_token_error([10, 20], [1, 0], model="hmm")
    with pytest.raises(ValueError, match="integer token counts"):
        val.fit_token_error([10, -1], [1, 0])
    with pytest.raises(ValueError, match="booleans"):
        val.fit_token_error([10, 20], [1, 2])
    with pytest.raises(ValueError, match="equal length"):
        val.fit_token_error([10, 20], [1])
    with pytest.raises(ValueError, match=r"\[0, 1\]"):
        val.valid_probability_independent(10, 1.5)
    with pytest.raises(ValueError, match=">= 1"):
        val.valid_probability_markov(0, 0.1, 0.1)
    all_valid = val.fit_token_error([10, 20, 30], [1, 1, 1])
    assert all_valid.eps == 0.0 and all_valid.loglik == 0.0 and np.all(np.isnan(all_valid.cov))
    assert val.measured_valid_ratio([0, 0, 1], [0, 0, 0])[0] == pytest.approx((1 / 3) / (0.5 / 3.5))


@NO_DEADLINE
@given(st.integers(0, 2000), st.integers(0, 2000), st.floats(0.0, 0.5))
def test_shorter_outputs_are_more_often_valid(a, b, eps):
    short, long_ = sorted((a, b))
    assert val.valid_probability_independent(short, eps) >= val.valid_probability_independent(long_, eps)
    assert val.valid_probability_markov(short + 1, 0.3, eps) >= val.valid_probability_markov(long_ + 1, 0.3, eps)


@NO_DEADLINE
@given(st.integers(0, 2**32 - 1))
def test_nested_models_markov_never_fits_worse(seed):
    rng = np.random.default_rng(seed)
    lengths = rng.integers(1, 300, 80)
    valid = rng.random(80) < rng.uniform(0.5, 1.0) * rng.uniform(0.98, 1.0) ** lengths
    if not valid.any() or valid.all():
        return
    indep = val.fit_token_error(lengths, valid)
    markov = val.fit_token_error(lengths, valid, model="markov")
    assert markov.loglik >= indep.loglik - 1e-7
    assert min(markov.hazards) >= 0 and 0 <= indep.eps < 1


def test_predicted_ratio_interval_coverage():
    rng = np.random.default_rng(7)
    eps, reps, n, level = 0.004, 300, 500, 0.8
    len_delta, len_full = rng.integers(20, 80, n), rng.integers(150, 400, n)
    lengths = np.concatenate([len_delta, len_full])
    truth = np.mean((1 - eps) ** len_delta) / np.mean((1 - eps) ** len_full)
    hits = 0
    for _ in range(reps):
        fit = val.fit_token_error(lengths, rng.random(2 * n) < (1 - eps) ** lengths)
        _, lo, hi = val.predicted_valid_ratio(fit, len_delta, len_full, level)
        hits += lo <= truth <= hi
    assert abs(hits / reps - level) < K * math.sqrt(level * (1 - level) / reps)
