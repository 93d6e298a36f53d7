"""Proxy reliability from replicate runs: ICC(1), SNR, Spearman-Brown, attenuation.

Replicates are proxy scores of the same architecture under different seeds. The
one-way random-effects model ``y_ij = mu + a_i + e_ij`` with ``var(a) = s2_arch`` and
``var(e) = s2_noise`` gives ``ICC(1) = s2_arch / (s2_arch + s2_noise) = SNR / (1 + SNR)``;
the test-retest correlation of two replicates is ICC(1), and the correlation of one
replicate with the noise-free score is ``sqrt(ICC)`` (see ``theory.proxy``).

Between a proxy and a later score of the same configurations (a training curve's epoch 1
and its last epoch), the arcsin law is tested by its gap: the observed Spearman minus
Moran's finite-n expectation at the observed Pearson (``arcsin_gap``), and the pairs a
study needs to resolve a gap of that size (``pairs_to_resolve``).
"""
from __future__ import annotations

import math
import warnings
from dataclasses import dataclass

import numpy as np
from scipy import optimize, stats

from theory._checks import check_level, normal_quantile, scalar_or_array
from theory.proxy import moran_expected_spearman


@dataclass(frozen=True)
class ICCResult:
    """ICC(1) with its interval, the implied SNR and the variance components.

    ``k`` is the (effective) number of replicates per architecture: k0 of the unbalanced
    ANOVA for ``icc1``, the mean group size for ``icc1_mixedlm``. ``f_stat`` and
    ``p_value`` (F test of ICC = 0) are NaN for the likelihood method.
    """

    icc: float
    snr: float
    ci_low: float
    ci_high: float
    snr_ci_low: float
    snr_ci_high: float
    n: int
    k: float
    n_obs: int
    f_stat: float
    p_value: float
    var_between: float
    var_within: float
    level: float
    method: str

    @property
    def f(self) -> float:
        """The F statistic under its short name (as written in the team contract)."""
        return self.f_stat


def snr_from_icc(icc):
    """Signal-to-noise ratio from ICC(1): ``SNR = ICC / (1 - ICC)`` (inverse of ICC = SNR/(1+SNR)).

    A negative ICC estimate (between-architecture variance estimated below zero) gives a
    negative SNR estimate; ICC = 1 gives inf.

    >>> snr_from_icc(0.5)
    1.0
    """
    icc = np.asarray(icc, dtype=float)
    if np.any(icc[~np.isnan(icc)] > 1.0):
        raise ValueError(f"ICC cannot exceed 1; got {icc!r}")
    with np.errstate(divide="ignore"):
        snr = np.where(icc == 1.0, np.inf, icc / (1.0 - icc))
    return scalar_or_array(snr)


def _replicate_table(scores) -> np.ndarray:
    """The (n, k) score table without architectures that have no score, after checks."""
    scores = np.asarray(scores, dtype=float)
    if scores.ndim != 2:
        raise ValueError(
            f"scores must be a 2-D (n_architectures, k_replicates) array; got shape {scores.shape}"
        )
    if np.any(np.isinf(scores)):
        raise ValueError("scores contain inf; mark missing replicates with NaN instead")
    table = scores[np.any(~np.isnan(scores), axis=1)]
    if table.shape[0] < 2:
        raise ValueError("ICC needs at least 2 architectures with at least one score each")
    if np.sum(~np.isnan(table)) - table.shape[0] < 1:
        raise ValueError("ICC needs at least one architecture with 2 or more replicates")
    return table


def icc1(scores, level: float = 0.95) -> ICCResult:
    """One-way random-effects ICC(1) by ANOVA, with its F-based confidence interval.

    ``ICC = (MSB - MSW) / (MSB + (k0 - 1) MSW)``, ``F = MSB / MSW`` on
    ``(n - 1, N - n)`` degrees of freedom, and the interval
    ``F_L = F / F_{1-a/2}(n-1, N-n)``, ``F_U = F * F_{1-a/2}(N-n, n-1)``,
    ``ICC_{L,U} = (F_{L,U} - 1) / (F_{L,U} + k0 - 1)`` (Shrout & Fleiss 1979, ICC(1,1);
    McGraw & Wong 1996, case 1). For unbalanced replicates (NaN = missing) k is replaced by
    ``k0 = (N - sum n_i^2 / N) / (n - 1)`` (Snedecor & Cochran; Donner 1986), where the
    interval is approximate. ``scores`` is (n_architectures, k_replicates).

    >>> r = icc1([[1.0, 1.2], [2.0, 2.2], [3.0, 2.6], [4.0, 4.4]])
    >>> round(r.icc, 3), round(r.snr, 1), r.n, r.k
    (0.971, 33.4, 4, 2.0)
    """
    level = check_level(level)
    table = _replicate_table(scores)
    sizes = np.sum(~np.isnan(table), axis=1).astype(float)
    n, n_obs = table.shape[0], int(sizes.sum())
    means = np.nansum(table, axis=1) / sizes
    grand = np.nansum(table) / n_obs
    df_b, df_w = n - 1, n_obs - n
    ms_b = float(np.sum(sizes * (means - grand) ** 2) / df_b)
    ms_w = float(np.nansum((table - means[:, None]) ** 2) / df_w)
    k0 = float((n_obs - np.sum(sizes**2) / n_obs) / df_b)
    var_b, var_w = (ms_b - ms_w) / k0, ms_w

    if ms_w == 0.0:
        # Replicates agree exactly: noise-free proxy (or all scores equal: undefined).
        icc = 1.0 if ms_b > 0.0 else math.nan
        f_stat, p_value, lo, hi = math.inf, (0.0 if ms_b > 0 else math.nan), icc, icc
    else:
        f_stat = ms_b / ms_w
        p_value = float(stats.f.sf(f_stat, df_b, df_w))
        icc = (ms_b - ms_w) / (ms_b + (k0 - 1.0) * ms_w)
        tail = 0.5 + level / 2.0
        f_low = f_stat / stats.f.ppf(tail, df_b, df_w)
        f_high = f_stat * stats.f.ppf(tail, df_w, df_b)
        lo = (f_low - 1.0) / (f_low + k0 - 1.0)
        hi = (f_high - 1.0) / (f_high + k0 - 1.0)
    return ICCResult(
        icc=float(icc), snr=snr_from_icc(icc), ci_low=float(lo), ci_high=float(hi),
        snr_ci_low=snr_from_icc(lo), snr_ci_high=snr_from_icc(hi), n=n, k=k0, n_obs=n_obs,
        f_stat=float(f_stat), p_value=float(p_value), var_between=float(var_b),
        var_within=float(var_w), level=level, method="anova",
    )


def icc1_mixedlm(scores, level: float = 0.95, max_snr: float = 1e6) -> ICCResult:
    """ICC(1) from a REML random-intercept model (statsmodels MixedLM), for unbalanced data.

    Fits ``y_ij = mu + a_i + e_ij`` by REML; ``ICC = s2_a / (s2_a + s2_e)``. The interval is
    the profile-likelihood one: statsmodels profiles the residual variance out, so its
    log-likelihood is a function of ``lambda = s2_a / s2_e = SNR`` alone, and
    ``{lambda : 2 (l_max - l(lambda)) <= chi2_1(level)}`` (Wilks 1938; likelihood intervals
    for variance ratios as in Searle, Casella & McCulloch 1992) maps to ICC through
    ``lambda / (1 + lambda)``. SNR bounds beyond ``max_snr`` are reported as inf.
    ``scores`` is (n_architectures, k_replicates) with NaN for missing replicates.

    >>> r = icc1_mixedlm([[1.0, 1.2, np.nan], [2.0, 2.2, 1.9], [3.0, 2.6, np.nan], [4.0, 4.4, 4.1]])
    >>> round(r.icc, 2), r.n, r.n_obs
    (0.98, 4, 10)
    """
    from statsmodels.regression.mixed_linear_model import MixedLM, MixedLMParams

    level = check_level(level)
    table = _replicate_table(scores)
    observed = ~np.isnan(table)
    endog, labels = table[observed], np.nonzero(observed)[0]
    model = MixedLM(endog, np.ones((endog.size, 1)), groups=labels)
    with warnings.catch_warnings():
        # Boundary fits (s2_a = 0) warn; the profile below handles the boundary itself.
        warnings.simplefilter("ignore")
        fit = model.fit(reml=True)
        fe = np.asarray(fit.fe_params)

        def profile(lam: float) -> float:
            # lambda = 0 makes statsmodels invert a zero matrix: evaluate just inside.
            params = MixedLMParams.from_components(fe, cov_re=np.array([[max(lam, 1e-10)]]))
            return float(model.loglike(params, profile_fe=True))

        lam_hat = float(fit.cov_re.iloc[0, 0] if hasattr(fit.cov_re, "iloc") else fit.cov_re[0, 0])
        lam_hat = max(lam_hat / float(fit.scale), 0.0)
        l_max = max(profile(lam_hat), float(fit.llf))
        cut = l_max - stats.chi2.ppf(level, 1) / 2.0

        def excess(lam: float) -> float:
            return profile(lam) - cut

        lo = 0.0 if excess(0.0) >= 0 else optimize.brentq(excess, 0.0, lam_hat, xtol=1e-10)
        hi = max(lam_hat, 1e-3)
        while excess(hi) > 0 and hi < max_snr:
            hi *= 4.0
        hi = math.inf if excess(hi) > 0 else optimize.brentq(excess, lam_hat, hi, xtol=1e-10)

    def icc_of(lam: float) -> float:
        return 1.0 if math.isinf(lam) else lam / (1.0 + lam)

    return ICCResult(
        icc=icc_of(lam_hat), snr=lam_hat, ci_low=icc_of(lo), ci_high=icc_of(hi),
        snr_ci_low=float(lo), snr_ci_high=float(hi), n=table.shape[0],
        k=endog.size / table.shape[0], n_obs=int(endog.size), f_stat=math.nan,
        p_value=math.nan, var_between=lam_hat * float(fit.scale),
        var_within=float(fit.scale), level=level, method="reml",
    )


def spearman_brown(icc, k):
    """Reliability of the mean of k replicates: ``k ICC / (1 + (k - 1) ICC)``.

    Spearman (1910), Brown (1910). Equivalently the SNR is multiplied by k.

    >>> round(spearman_brown(0.5, 3), 3)
    0.75
    """
    icc = np.asarray(icc, dtype=float)
    k = np.asarray(k, dtype=float)
    if np.any(k < 1):
        raise ValueError(f"k is a number of replicates and must be >= 1; got {k!r}")
    if np.any(icc[~np.isnan(icc)] > 1.0):
        raise ValueError(f"ICC cannot exceed 1; got {icc!r}")
    out = k * icc / (1.0 + (k - 1.0) * icc)
    return scalar_or_array(out)


def correct_attenuation(r_xy, rel_x, rel_y=1.0):
    """Disattenuated correlation: ``r_xy / sqrt(rel_x rel_y)`` (Spearman 1904).

    ``rel_x``, ``rel_y`` are reliabilities (test-retest correlation / ICC) of the two
    measures; pass ``rel_y = 1`` for an error-free criterion. The result may exceed 1 in
    samples (sampling error); it is not clipped.

    >>> round(correct_attenuation(0.45, 0.81), 3)
    0.5
    """
    r_xy = np.asarray(r_xy, dtype=float)
    rel = np.asarray(rel_x, dtype=float) * np.asarray(rel_y, dtype=float)
    if np.any(~(rel > 0)):
        raise ValueError(f"reliabilities must be > 0 to correct attenuation; got {rel_x!r}, {rel_y!r}")
    out = r_xy / np.sqrt(rel)
    return scalar_or_array(out)


def architectures_for_icc_width(icc, k, width, level: float = 0.95):
    """Architectures n for an ICC(1) confidence interval of about ``width`` (full width).

    Bonett (2002, Statistics in Medicine 21:1331-1335, eq. 2):
    ``n = 1 + 8 z^2 (1 - ICC)^2 (1 + (k - 1) ICC)^2 / (k (k - 1) width^2)`` with k
    replicates per architecture and ``z`` the two-sided normal quantile of ``level``.
    Returned as a float (round up for a design). A CI of +-0.1 is width 0.2.

    >>> round(architectures_for_icc_width(0.9, 2, 0.2), 1), round(architectures_for_icc_width(0.7, 2, 0.2), 1)
    (14.9, 100.9)
    """
    level = check_level(level)
    icc = np.asarray(icc, dtype=float)
    k = np.asarray(k, dtype=float)
    width = np.asarray(width, dtype=float)
    if np.any(k < 2):
        raise ValueError(f"k must be >= 2 replicates per architecture for an ICC; got {k!r}")
    if np.any(~((icc >= 0) & (icc < 1))) or np.any(~(width > 0)):
        raise ValueError(f"need 0 <= ICC < 1 and width > 0; got ICC {icc!r}, width {width!r}")
    z = stats.norm.ppf(0.5 + level / 2.0)
    n = 1.0 + 8.0 * z**2 * (1.0 - icc) ** 2 * (1.0 + (k - 1.0) * icc) ** 2 / (k * (k - 1.0) * width**2)
    return scalar_or_array(n)


def arcsin_gap(r_s, r, n):
    """Observed Spearman minus the arcsin law's finite-n expectation at the observed Pearson.

    ``gap = r_S - E_n[r_S | rho = r]``, ``E_n[r_S] = 6/(pi (n+1)) (asin r + (n-2) asin(r/2))``
    (Moran 1948; ``theory.proxy.moran_expected_spearman``). Zero in expectation when
    (proxy, target) is bivariate normal; a ceiling or a skewed marginal lowers the Pearson
    more than the ranks and makes the gap positive.

    >>> round(arcsin_gap(0.6, 0.6, 1000), 4)
    0.0186
    """
    return scalar_or_array(np.asarray(r_s, dtype=float) - np.asarray(moran_expected_spearman(r, n)))


def pairs_to_resolve(effect, se, n, level: float = 0.95, power: float = 0.8):
    """Pairs needed before an effect of this size is told from zero, from its SE at n pairs.

    With ``se ~ 1/sqrt(n)`` a two-sided level-``level`` z-test reaches ``power`` at
    ``n* = n (z_{(1+level)/2} + z_power)^2 se^2 / effect^2`` (the normal-approximation
    sample size, Cohen 1988 ch. 12; Chow, Shao & Wang 2008 sec. 3.1). Returned as a float
    (round up for a design); inf for a zero effect.

    >>> round(pairs_to_resolve(0.02, 0.01, 1000))
    1962
    """
    if not 0.0 < power < 1.0:
        raise ValueError(f"power must lie in (0, 1), e.g. 0.8; got {power!r}")
    effect, se = np.asarray(effect, dtype=float), np.asarray(se, dtype=float)
    if np.any(se[~np.isnan(se)] < 0) or np.any(np.asarray(n) < 1):
        raise ValueError(f"se must be >= 0 and n >= 1; got se={se!r}, n={n!r}")
    z = normal_quantile(level) + float(stats.norm.ppf(power))
    with np.errstate(divide="ignore", invalid="ignore"):
        out = np.asarray(n, dtype=float) * (z * se / effect) ** 2
    return scalar_or_array(out)
