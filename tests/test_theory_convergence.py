"""theory.convergence: Wilson interval, geometric-rate fit, monotone-trend tests."""
import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st

import theory.convergence as conv

K = 4.0  # standard errors allowed


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


@given(st.integers(1, 10_000), st.data())
def test_wilson_contains_the_estimate_and_narrows_with_level(n, data):
    k = data.draw(st.integers(0, n))
    lo, hi = conv.wilson_interval(k, n, 0.95)
    lo90, hi90 = conv.wilson_interval(k, n, 0.90)
    assert 0.0 <= lo <= k / n <= hi <= 1.0
    assert lo <= lo90 + 1e-12 and hi90 <= hi + 1e-12
