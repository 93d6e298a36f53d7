"""Convergence diagnostics: proportions, geometric rate of p_t(E), monotone trends of gamma_t.

The CE claims tested here: ``1 - p_t(E)`` shrinks geometrically with rate ``1 - alpha``
(only when ``q_t(E) = 1``, see ``theory.cem``), and the elite threshold ``gamma_t`` rises
monotonically (a design property of MRAS-style updates, not a theorem of plain CEM).
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from scipy import stats

from theory._checks import normal_quantile, scalar_or_array


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
