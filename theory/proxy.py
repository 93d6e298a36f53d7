"""Proxy reliability in closed form: SNR -> Pearson -> Spearman / Kendall, and back.

Model: a proxy score is ``S = Q + e`` with true quality ``Q`` and independent noise
``e``; ``SNR = var(Q) / var(e)``. When ``(S, Q)`` is bivariate normal the rank
correlations are functions of the latent Pearson correlation (the arcsin laws below).
Kendall's law holds for every elliptical law and every n; Spearman's only for the
normal and only as n -> infinity (Moran's finite-n expectation is given too).

All functions accept scalars or numpy arrays and broadcast; NaN propagates (an
undefined correlation stays undefined), values outside their domain raise ValueError.
"""
from __future__ import annotations

import numpy as np
from scipy import stats

from theory._checks import normal_quantile, scalar_or_array


def _as_correlation(r, name: str) -> np.ndarray:
    """Float array of correlations; refuse values outside [-1, 1] (NaN passes)."""
    r = np.asarray(r, dtype=float)
    if np.any(np.abs(r[~np.isnan(r)]) > 1.0):
        raise ValueError(f"{name} must lie in [-1, 1]; got {r[np.abs(r) > 1.0]!r}")
    return r


def _as_sample_size(n, minimum: int, what: str) -> np.ndarray:
    n = np.asarray(n, dtype=float)
    if np.any(~(n > minimum)) or np.any(n != np.floor(n)):
        raise ValueError(f"{what} needs an integer number of pairs n > {minimum}; got {n!r}")
    return n


def pearson_from_snr(snr):
    """Correlation of a noisy proxy with its noise-free value: ``rho_P = sqrt(SNR/(1+SNR))``.

    Classical test theory (Spearman 1904; Lord & Novick 1968, the reliability index):
    corr(Q + e, Q) = sd(Q)/sd(Q + e). ``SNR = inf`` gives 1.

    >>> round(pearson_from_snr(1.0), 4)
    0.7071
    >>> pearson_from_snr([0.0, np.inf]).tolist()
    [0.0, 1.0]
    """
    snr = np.asarray(snr, dtype=float)
    if np.any(snr[~np.isnan(snr)] < 0):
        raise ValueError(f"SNR is a variance ratio and must be >= 0; got {snr!r}")
    with np.errstate(invalid="ignore"):
        r = np.where(np.isinf(snr), 1.0, np.sqrt(snr / (1.0 + snr)))
    return scalar_or_array(r)


def spearman_from_pearson(r):
    """Spearman's rank correlation of a bivariate normal: ``rho_S = (6/pi) asin(rho/2)``.

    Pearson (1907); Kruskal (1958), eq. for the grade correlation. Exact only for the
    normal copula and as n -> infinity (see ``moran_expected_spearman`` for finite n).

    >>> round(spearman_from_pearson(0.5), 4)
    0.4826
    """
    r = _as_correlation(r, "Pearson correlation")
    return scalar_or_array(6.0 / np.pi * np.arcsin(r / 2.0))


def pearson_from_spearman(r_s):
    """Latent normal correlation implied by Spearman's: ``rho = 2 sin(pi rho_S / 6)``.

    Inverse of ``spearman_from_pearson`` (Pearson 1907; Kruskal 1958).

    >>> round(pearson_from_spearman(spearman_from_pearson(0.3)), 12)
    0.3
    """
    r_s = _as_correlation(r_s, "Spearman correlation")
    return scalar_or_array(2.0 * np.sin(np.pi * r_s / 6.0))


def kendall_from_pearson(r):
    """Kendall's tau of an elliptical law: ``tau = (2/pi) asin(rho)``.

    Greiner (1909), Kruskal (1958); holds for every elliptical distribution
    (Lindskog, McNeil & Schmock 2003) and, for the population tau, at every n.

    >>> round(kendall_from_pearson(0.5), 4)
    0.3333
    """
    r = _as_correlation(r, "Pearson correlation")
    return scalar_or_array(2.0 / np.pi * np.arcsin(r))


def pearson_from_kendall(tau):
    """Latent correlation implied by Kendall's tau: ``rho = sin(pi tau / 2)`` (Greiner 1909).

    >>> round(pearson_from_kendall(1 / 3), 4)
    0.5
    """
    tau = _as_correlation(tau, "Kendall tau")
    return scalar_or_array(np.sin(np.pi * tau / 2.0))


def spearman_from_snr(snr):
    """Proxy rank reliability from SNR: ``rho_S = (6/pi) asin(sqrt(SNR/(1+SNR)) / 2)``.

    The closed form of the LLM-NAS convergence paper (Adhikari, Timofte & Ignatov 2026,
    result 6): ``spearman_from_pearson(pearson_from_snr(snr))``.

    >>> round(spearman_from_snr(1.0), 3)
    0.69
    """
    return spearman_from_pearson(pearson_from_snr(snr))


def moran_expected_spearman(rho, n):
    """Finite-n expectation of Spearman's r_S for a bivariate normal sample of n pairs.

    ``E[r_S] = 6/(pi (n+1)) * (asin(rho) + (n-2) asin(rho/2))`` (Moran 1948). Tends to
    ``spearman_from_pearson(rho)`` as n -> infinity; at small n it is noticeably lower.

    >>> round(moran_expected_spearman(0.7, 10), 3)
    0.631
    """
    rho = _as_correlation(rho, "Pearson correlation")
    n = _as_sample_size(n, 1, "Moran's expectation")
    value = 6.0 / (np.pi * (n + 1.0)) * (np.arcsin(rho) + (n - 2.0) * np.arcsin(rho / 2.0))
    return scalar_or_array(value)


def _fisher_z_interval(r, se, z):
    """``tanh(atanh(r) -+ z * se)``; r = +-1 maps to the degenerate interval [r, r]."""
    with np.errstate(divide="ignore"):
        centre = np.arctanh(r)
    lo, hi = np.tanh(centre - z * se), np.tanh(centre + z * se)
    return scalar_or_array(lo), scalar_or_array(hi)


def pearson_ci(r, n, level: float = 0.95):
    """Fisher-z confidence interval for Pearson's r: ``tanh(atanh r -+ z / sqrt(n-3))``.

    Fisher (1921). Needs n > 3. Returns ``(lo, hi)``.

    >>> lo, hi = pearson_ci(0.5, 50)
    >>> round(lo, 3), round(hi, 3)
    (0.257, 0.683)
    """
    r = _as_correlation(r, "Pearson correlation")
    n = _as_sample_size(n, 3, "Pearson's Fisher-z interval")
    return _fisher_z_interval(r, 1.0 / np.sqrt(n - 3.0), normal_quantile(level))


def spearman_ci(r_s, n, level: float = 0.95):
    """Fisher-z interval for Spearman's r_S with the Bonett-Wright variance.

    ``var(atanh r_S) = (1 + r_S^2 / 2) / (n - 3)`` (Bonett & Wright 2000, Psychometrika
    65:23-28). Needs n > 3. Returns ``(lo, hi)``.

    >>> lo, hi = spearman_ci(0.5, 50)
    >>> round(lo, 3), round(hi, 3)
    (0.241, 0.692)
    """
    r_s = _as_correlation(r_s, "Spearman correlation")
    n = _as_sample_size(n, 3, "Spearman's Fisher-z interval")
    se = np.sqrt((1.0 + r_s**2 / 2.0) / (n - 3.0))
    return _fisher_z_interval(r_s, se, normal_quantile(level))


def kendall_ci(tau, n, level: float = 0.95):
    """Fisher-z interval for Kendall's tau with Fieller's variance.

    ``var(atanh tau) = 0.437 / (n - 4)`` (Fieller, Hartley & Pearson 1957,
    Biometrika 44:470-481). Needs n > 4. Returns ``(lo, hi)``.

    >>> lo, hi = kendall_ci(0.35, 50)
    >>> round(lo, 3), round(hi, 3)
    (0.173, 0.505)
    """
    tau = _as_correlation(tau, "Kendall tau")
    n = _as_sample_size(n, 4, "Kendall's Fisher-z interval")
    return _fisher_z_interval(tau, np.sqrt(0.437 / (n - 4.0)), normal_quantile(level))


def copula_check(r_s, tau) -> dict:
    """Compare the latent correlations implied by Spearman's and by Kendall's statistics.

    Under a normal copula ``2 sin(pi r_S / 6)`` (Pearson 1907) and ``sin(pi tau / 2)``
    (Greiner 1909) estimate the same rho; a systematic difference says the proxy/retest
    dependence is not normal, so the arcsin law for Spearman should not be trusted.
    Returns ``{"copula_from_spearman", "copula_from_kendall", "difference"}``
    (difference = from Spearman - from Kendall).

    >>> c = copula_check(0.4826, 1 / 3)
    >>> round(c["copula_from_spearman"], 3), round(c["copula_from_kendall"], 3)
    (0.5, 0.5)
    """
    from_spearman = np.asarray(pearson_from_spearman(r_s))
    from_kendall = np.asarray(pearson_from_kendall(tau))
    return {
        "copula_from_spearman": scalar_or_array(from_spearman),
        "copula_from_kendall": scalar_or_array(from_kendall),
        "difference": scalar_or_array(from_spearman - from_kendall),
    }


def max_arcsin_gap():
    """Largest gap between rho and its Spearman image, ``max_rho (rho - (6/pi) asin(rho/2))``.

    Setting the derivative ``1 - (3/pi) / sqrt(1 - rho^2/4)`` to zero gives
    ``rho* = 2 sqrt(1 - 9/pi^2)``. Returns ``(rho*, gap)``.

    >>> rho, gap = max_arcsin_gap()
    >>> round(rho, 3), round(gap, 4)
    (0.594, 0.0181)
    """
    rho = 2.0 * np.sqrt(1.0 - 9.0 / np.pi**2)
    return float(rho), float(rho - spearman_from_pearson(rho))


def pairs_to_distinguish_arcsin(rho, alpha: float = 0.05, power: float = 0.8):
    """Pairs n needed to tell ``rho_S = (6/pi) asin(rho/2)`` from ``rho_S = rho``.

    Two-sided z-test on the Fisher scale with the Bonett-Wright variance
    ``(1 + rho_S^2/2)/(n-3)``: ``n = 3 + (1 + rho_S^2/2) (z_{1-alpha/2} + z_power)^2 / d^2``
    with ``d = atanh(rho) - atanh(rho_S)``. At the largest gap (rho ~ 0.594) this is
    about 10^4 pairs. Returned as a float (round up for a design); inf at rho = 0.

    >>> round(pairs_to_distinguish_arcsin(0.594), -2)
    12100.0
    """
    rho = _as_correlation(rho, "Pearson correlation")
    if np.any(np.abs(rho) >= 1.0):
        raise ValueError("rho must lie strictly inside (-1, 1): at +-1 the two laws agree")
    if not (0.0 < alpha < 1.0 and 0.0 < power < 1.0):
        raise ValueError(f"alpha and power must lie in (0, 1); got alpha={alpha}, power={power}")
    rho_s = np.asarray(spearman_from_pearson(rho))
    d = np.arctanh(rho) - np.arctanh(rho_s)
    z = stats.norm.ppf(1.0 - alpha / 2.0) + stats.norm.ppf(power)
    with np.errstate(divide="ignore"):
        n = 3.0 + (1.0 + rho_s**2 / 2.0) * z**2 / d**2
    return scalar_or_array(n)
