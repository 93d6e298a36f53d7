"""The cross-entropy method with mixture smoothing, exactly: update, identity, simulators.

Mixture smoothing ``pi_{t+1} = alpha q_t + (1 - alpha) pi_t`` (Rubinstein & Kroese 2004,
the smoothed CE update; PBIL's learning rate, Baluja 1994) gives, for every fixed set E,

    1 - p_{t+1}(E) = alpha (1 - q_t(E)) + (1 - alpha) (1 - p_t(E)),

with ``p_t(E) = pi_t(E)`` and ``q_t(E)`` the share of the elites inside E. The geometric
law ``1 - p_{t+1} = (1 - alpha)(1 - p_t)`` is the special case ``q_t(E) = 1``; a noisy
score makes ``q_t(E) < 1``. The simulators below make both cases exact and observable,
and a neutral coordinate (no effect on the score) exposes genetic drift: convergence of
the sampling distribution that certifies nothing (Doerr & Zheng 2020).

Reusable pieces for samplers: ``smoothed_update``, ``elite_count``, ``elite_indices``,
``elite_frequencies``, ``elite_probability``, ``elite_share_in_set``.
"""
from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np
import xarray as xr
from scipy import optimize, stats

from theory._checks import scalar_or_array

_MAX_JOINT = 2**22  # joint configurations enumerated exactly by simulate_pbil


def _check_alpha(alpha) -> float:
    alpha = float(alpha)
    if not 0.0 <= alpha <= 1.0:
        raise ValueError(f"smoothing alpha must lie in [0, 1]; got {alpha!r}")
    return alpha


def _check_rho(rho) -> float:
    rho = float(rho)
    if not 0.0 < rho <= 1.0:
        raise ValueError(f"elite fraction rho must lie in (0, 1]; got {rho!r}")
    return rho


def _check_distribution(probs, name: str) -> np.ndarray:
    probs = np.asarray(probs, dtype=float)
    if probs.ndim == 0 or np.any(~(probs >= 0)):
        raise ValueError(f"{name} must be an array of non-negative probabilities; got {probs!r}")
    if not np.allclose(probs.sum(axis=-1), 1.0, atol=1e-9):
        raise ValueError(f"{name} must sum to 1 along its last axis; sums are {probs.sum(axis=-1)!r}")
    return probs


def smoothed_update(probs, elite_freqs, alpha):
    """Mixture-smoothed CE update ``pi_{t+1} = alpha q_t + (1 - alpha) pi_t``.

    Rubinstein & Kroese (2004), eq. for the smoothed update; with per-coordinate rows this
    is the PBIL/UMDA-with-smoothing update of independent categorical coordinates
    (Baluja 1994). Categories lie on the last axis; rows must sum to 1 (zero-padded
    categories stay zero).

    >>> np.round(smoothed_update([0.5, 0.5], [1.0, 0.0], 0.2), 12).tolist()
    [0.6, 0.4]
    """
    probs = _check_distribution(probs, "probs")
    elite_freqs = _check_distribution(elite_freqs, "elite_freqs")
    if probs.shape != elite_freqs.shape:
        raise ValueError(f"probs {probs.shape} and elite_freqs {elite_freqs.shape} differ in shape")
    alpha = _check_alpha(alpha)
    return alpha * elite_freqs + (1.0 - alpha) * probs


def elite_probability(probs, in_set):
    """Probability of a fixed set E: ``p_t(E) = sum_{x in E} pi_t(x)`` (last axis = items).

    Applied to elite frequencies it gives ``q_t(E)``.

    >>> elite_probability([0.2, 0.3, 0.5], [False, True, True])
    0.8
    """
    probs = np.asarray(probs, dtype=float)
    in_set = np.asarray(in_set, dtype=bool)
    if in_set.shape != probs.shape[-1:]:
        raise ValueError(f"in_set must be a boolean mask of length {probs.shape[-1]}; got {in_set.shape}")
    return scalar_or_array(probs[..., in_set].sum(axis=-1))


def elite_share_in_set(elite_in_set):
    """Share of elites inside E: ``q_t(E) = (1/m) sum_i 1[x_i in E]`` over the m elites.

    NaN when there are no elites.

    >>> elite_share_in_set([True, True, False, True])
    0.75
    """
    flags = np.asarray(elite_in_set, dtype=bool)
    return float(flags.mean()) if flags.size else math.nan


def elite_probability_next(p_t, q_t, alpha):
    """The smoothing identity solved for p_{t+1}(E): ``alpha q_t(E) + (1 - alpha) p_t(E)``.

    Equivalent to ``1 - p_{t+1} = alpha (1 - q_t) + (1 - alpha)(1 - p_t)``.

    >>> round(elite_probability_next(0.5, 1.0, 0.2), 12)
    0.6
    """
    alpha = _check_alpha(alpha)
    return scalar_or_array(alpha * np.asarray(q_t, float) + (1.0 - alpha) * np.asarray(p_t, float))


def identity_residual(p_t, q_t, p_next, alpha):
    """Residual of the smoothing identity: ``(1 - p_{t+1}) - [alpha (1 - q_t) + (1 - alpha)(1 - p_t)]``.

    Zero (to rounding) for an exact mixture-smoothed update; for an LLM update it measures
    how far the step is from mixture smoothing with this alpha.

    >>> abs(identity_residual(0.5, 1.0, 0.6, 0.2)) < 1e-15
    True
    """
    p_next = np.asarray(p_next, dtype=float)
    return scalar_or_array(np.asarray(elite_probability_next(p_t, q_t, alpha)) - p_next)


def implied_alpha(p_t, q_t, p_next):
    """Smoothing step implied by one transition: ``alpha = (p_{t+1} - p_t) / (q_t - p_t)``.

    From the identity; NaN where ``q_t = p_t`` (the step is then unidentified).

    >>> round(implied_alpha(0.5, 1.0, 0.6), 12)
    0.2
    """
    p_t, q_t, p_next = (np.asarray(v, dtype=float) for v in (p_t, q_t, p_next))
    with np.errstate(invalid="ignore", divide="ignore"):
        out = np.where(q_t == p_t, np.nan, (p_next - p_t) / (q_t - p_t))
    return scalar_or_array(out)


def elite_count(n, rho) -> int:
    """Number of elites among n scored candidates: ``max(1, ceil(rho n))`` (0 when n = 0).

    ``rho n`` is read as the exact product: 0.07 * 100 is 7.000000000000001 in floating
    point, where a plain ``ceil`` would give 8 elites, not 7.

    >>> elite_count(100, 0.07), elite_count(50, 0.1), elite_count(3, 0.1)
    (7, 5, 1)
    """
    rho = _check_rho(rho)
    if n <= 0:
        return 0
    # rho * n in floating point can land a hair above an integer (0.07 * 100 = 7.000000000000001).
    return max(1, math.ceil(rho * n - 1e-9))


def elite_indices(scores, rho, rng: np.random.Generator | None = None) -> np.ndarray:
    """Indices of the top ``elite_count(n_valid, rho)`` scores, best first; NaN = not scored.

    Ties are broken uniformly at random with ``rng`` (in input order when rng is None), so
    equal scores do not favour early candidates.

    >>> elite_indices([0.1, np.nan, 0.9, 0.5], 0.5).tolist()
    [2, 3]
    """
    scores = np.asarray(scores, dtype=float)
    if scores.ndim != 1:
        raise ValueError(f"scores must be 1-D; got shape {scores.shape}")
    valid = np.flatnonzero(~np.isnan(scores))
    tiebreak = np.arange(valid.size) if rng is None else rng.random(valid.size)
    order = valid[np.lexsort((tiebreak, -scores[valid]))]
    return order[: elite_count(valid.size, rho)]


def elite_frequencies(elite_choices, n_choices: Sequence[int]) -> np.ndarray:
    """Per-coordinate elite frequencies of categorical vectors, zero-padded to (d, max K).

    ``q_t[j, c] = (1/m) #{elite i : x_ij = c}``: the elite distribution of independent
    categorical coordinates (the UMDA/PBIL target). ``elite_choices`` is (m, d) integers.

    >>> elite_frequencies([[0, 2], [1, 2]], [2, 3]).tolist()
    [[0.5, 0.5, 0.0], [0.0, 0.0, 1.0]]
    """
    choices = np.asarray(elite_choices)
    sizes = np.asarray(n_choices, dtype=int)
    if choices.ndim != 2 or choices.shape[1] != sizes.size or choices.shape[0] == 0:
        raise ValueError(f"elite_choices must be (m >= 1, {sizes.size}); got shape {choices.shape}")
    if np.any(choices < 0) or np.any(choices >= sizes):
        raise ValueError("elite_choices hold a choice outside 0..n_choices-1 of its coordinate")
    freqs = np.zeros((sizes.size, sizes.max()))
    for j in range(sizes.size):
        freqs[j, : sizes[j]] = np.bincount(choices[:, j], minlength=sizes[j]) / choices.shape[0]
    return freqs


def population_elites(probs, quality, rho, noise_sd: float = 0.0):
    """Elite distribution of an infinite sample: the top-rho mass of the score distribution.

    Score = quality + N(0, noise_sd^2). The threshold gamma solves
    ``sum_x pi(x) P(score_x >= gamma) = rho`` and ``q(x) = pi(x) P(score_x >= gamma) / rho``
    (the N -> infinity CE update, Rubinstein & Kroese 2004; de Boer et al. 2005). Without
    noise the boundary quality level enters with the fraction that completes rho (ties share
    it). Returns ``(q, gamma)``.

    >>> q, gamma = population_elites([0.25, 0.25, 0.5], [1.0, 2.0, 3.0], 0.6)
    >>> np.round(q, 4).tolist(), gamma
    ([0.0, 0.1667, 0.8333], 2.0)
    """
    probs = _check_distribution(probs, "probs")
    quality = np.asarray(quality, dtype=float)
    if probs.ndim != 1 or quality.shape != probs.shape or not np.all(np.isfinite(quality)):
        raise ValueError("probs and quality must be 1-D of equal length with finite quality")
    rho = _check_rho(rho)
    if noise_sd < 0 or not math.isfinite(noise_sd):
        raise ValueError(f"noise_sd must be finite and >= 0; got {noise_sd!r}")
    if noise_sd == 0.0:
        levels, level_of = np.unique(quality, return_inverse=True)
        mass = np.bincount(level_of, weights=probs, minlength=levels.size)[::-1]  # best first
        above = np.concatenate(([0.0], np.cumsum(mass)[:-1]))
        # A level whose better levels already hold rho (to rounding) gets no share; otherwise
        # 0.1 + 0.1 landing a hair under 0.2 would make the next level the boundary.
        included = (above < rho - 1e-12) & (mass > 0)
        share = np.where(included, np.clip((rho - above) / np.where(mass > 0, mass, 1.0), 0.0, 1.0), 0.0)
        weight = share[::-1][level_of]
        boundary = int(np.flatnonzero(included)[-1])
        gamma = float(levels[::-1][boundary])
    else:
        def excess(g):
            return float(probs @ stats.norm.sf((g - quality) / noise_sd)) - rho

        lo, hi = quality.min() - 40 * noise_sd, quality.max() + 40 * noise_sd
        gamma = float(optimize.brentq(excess, lo, hi, xtol=1e-14 * max(1.0, abs(hi)), rtol=1e-15))
        weight = stats.norm.sf((gamma - quality) / noise_sd)
    q = probs * weight
    return q / q.sum(), gamma


def expected_best(probs, quality, n_samples: int) -> float:
    """Expected best quality among n iid draws: ``sum_v v [F(v)^n - F(v^-)^n]`` over levels v.

    ``F`` is the CDF of quality under ``probs`` (order statistics of a discrete law).

    >>> expected_best([0.5, 0.5], [0.0, 1.0], 2)
    0.75
    """
    probs = _check_distribution(probs, "probs")
    levels, level_of = np.unique(np.asarray(quality, dtype=float), return_inverse=True)
    cdf = np.minimum(np.cumsum(np.bincount(level_of, weights=probs, minlength=levels.size)), 1.0)
    below = np.concatenate(([0.0], cdf[:-1]))
    return float(np.sum(levels * (cdf**n_samples - below**n_samples)))


def noise_sd_for_snr(quality_variance: float, snr) -> float:
    """Noise standard deviation giving ``SNR = var(quality) / var(noise)``; 0 for snr None/inf."""
    if snr is None or snr == math.inf:
        return 0.0
    if not snr > 0:
        raise ValueError(f"snr must be > 0 (or None for a noise-free score); got {snr!r}")
    if not quality_variance > 0:
        raise ValueError("a noisy score needs quality that varies under the initial distribution")
    return math.sqrt(quality_variance / snr)


def _dataset(variables: dict, coords: dict, attrs: dict) -> xr.Dataset:
    """Dataset from ``name: (dims, values, description)`` triples."""
    data = {
        name: xr.Variable(dims, values, attrs={"description": text})
        for name, (dims, values, text) in variables.items()
    }
    return xr.Dataset(data, coords=coords, attrs={k: v for k, v in attrs.items() if v is not None})


_DESCRIPTIONS = {
    "gamma": "elite threshold gamma_t (score units: lowest elite score)",
    "p_E": "p_t(E): probability of the reference set E = {quality >= gamma_ref} before the update",
    "q_E": "q_t(E): share of the elite distribution inside E",
    "best": "best true quality among the samples of the iteration (its expectation when exact)",
    "mean": "expected true quality under the sampling distribution",
}


def _simulate_categorical(quality, alpha, rho, iterations, probs0, snr, gamma_ref, elite_step,
                          attrs: dict) -> xr.Dataset:
    """Shared loop of the categorical simulators; ``elite_step(probs, noise_sd, in_e)`` returns
    ``(q_t, gamma_t, q_t(E), best)`` for one iteration."""
    quality = np.asarray(quality, dtype=float)
    if quality.ndim != 1 or quality.size < 2 or not np.all(np.isfinite(quality)):
        raise ValueError("quality must be a 1-D array of at least 2 finite values")
    if probs0 is None:
        probs = np.full(quality.size, 1.0 / quality.size)
    else:
        probs = _check_distribution(probs0, "probs0")
        if probs.shape != quality.shape:
            raise ValueError(f"probs0 must have the shape of quality {quality.shape}; got {probs.shape}")
    alpha, rho = _check_alpha(alpha), _check_rho(rho)
    sd = noise_sd_for_snr(float(probs @ (quality - probs @ quality) ** 2), snr)
    if gamma_ref is None:
        gamma_ref = population_elites(probs, quality, rho)[1]
    in_e = quality >= gamma_ref
    pis, qs = np.empty((iterations, quality.size)), np.empty((iterations, quality.size))
    gamma, q_e, best = np.empty(iterations), np.empty(iterations), np.empty(iterations)
    for t in range(iterations):
        pis[t] = probs
        qs[t], gamma[t], q_e[t], best[t] = elite_step(probs, sd, in_e)
        probs = smoothed_update(probs, qs[t], alpha)
    variables = {
        "gamma": (("iteration",), gamma, _DESCRIPTIONS["gamma"]),
        "p_E": (("iteration",), elite_probability(pis, in_e), _DESCRIPTIONS["p_E"]),
        "q_E": (("iteration",), q_e, _DESCRIPTIONS["q_E"]),
        "best": (("iteration",), best, _DESCRIPTIONS["best"]),
        "mean": (("iteration",), pis @ quality, _DESCRIPTIONS["mean"]),
        "probs": (("iteration", "item"), pis, "sampling distribution pi_t"),
        "elite_probs": (("iteration", "item"), qs, "elite distribution q_t"),
        "quality": (("item",), quality, "true quality of each item"),
        "in_E": (("item",), in_e, "membership of the reference set E"),
    }
    attrs = dict(attrs, alpha=alpha, rho=rho, snr=snr, noise_sd=sd, gamma_ref=float(gamma_ref))
    return _dataset(variables, {"iteration": np.arange(iterations)}, attrs)


def simulate_categorical_exact(quality, alpha, rho, iterations, probs0=None, snr=None,
                               gamma_ref=None, n_samples: int = 50) -> xr.Dataset:
    """Population (N -> infinity) CE on a finite set with mixture smoothing, computed exactly.

    Each iteration: ``q_t, gamma_t = population_elites(pi_t, quality, rho, noise_sd)``, then
    ``pi_{t+1} = alpha q_t + (1 - alpha) pi_t``. Noise has ``sd = sqrt(var_{pi_0}(quality)/snr)``
    (``snr=None``: noise-free). E = {quality >= gamma_ref}, by default the noise-free elite
    threshold of pi_0, so that noise-free runs have ``q_t(E) = 1`` and the geometric law
    ``1 - p_{t+1}(E) = (1 - alpha)(1 - p_t(E))`` holds exactly. ``best`` is the expected best
    of ``n_samples`` draws (``expected_best``). Returns a Dataset over ``iteration`` (and
    ``item`` for the distributions ``probs`` = pi_t and ``elite_probs`` = q_t); read the mean
    quality as ``ds["mean"]`` (``ds.mean`` is the Dataset method).

    >>> ds = simulate_categorical_exact(np.arange(5.0), alpha=0.3, rho=0.2, iterations=4)
    >>> np.round(1 - ds.p_E.values, 4).tolist()
    [0.8, 0.56, 0.392, 0.2744]
    """
    def step(probs, sd, in_e):
        q, gamma = population_elites(probs, quality, rho, sd)
        return q, gamma, elite_probability(q, in_e), expected_best(probs, quality, n_samples)

    quality = np.asarray(quality, dtype=float)
    return _simulate_categorical(quality, alpha, rho, iterations, probs0, snr, gamma_ref, step,
                                 dict(kind="categorical_exact", n_samples=n_samples))


def simulate_categorical_sampled(quality, alpha, rho, iterations, n_samples, probs0=None,
                                 snr=None, gamma_ref=None, seed=0) -> xr.Dataset:
    """Sampled CE on a finite set: N draws, top ``elite_count(N, rho)`` by noisy score, smoothing.

    Same model and output as ``simulate_categorical_exact`` but with ``n_samples`` draws
    per iteration: ``q_t`` is the empirical elite frequency, ``gamma_t`` the lowest elite
    score, ``q_E`` the share of elites in E, ``best`` the best sampled true quality.
    ``p_E`` and ``mean`` are exact under the current pi_t. Seeded by ``seed``.

    >>> ds = simulate_categorical_sampled(np.arange(5.0), 0.3, 0.2, 6, n_samples=20, seed=1)
    >>> p, q = ds.p_E.values, ds.q_E.values
    >>> float(np.abs(identity_residual(p[:-1], q[:-1], p[1:], 0.3)).max()) < 1e-12
    True
    """
    rng = np.random.default_rng(seed)
    quality = np.asarray(quality, dtype=float)

    def step(probs, sd, in_e):
        items = rng.choice(quality.size, size=n_samples, p=probs / probs.sum())
        scores = quality[items] + sd * rng.standard_normal(n_samples)
        elites = elite_indices(scores, rho, rng)
        q = np.bincount(items[elites], minlength=quality.size) / elites.size
        return q, scores[elites[-1]], elite_share_in_set(in_e[items[elites]]), quality[items].max()

    return _simulate_categorical(quality, alpha, rho, iterations, probs0, snr, gamma_ref, step,
                                 dict(kind="categorical_sampled", n_samples=n_samples, seed=seed))


def _joint_quality(values: list[np.ndarray], marginals: np.ndarray):
    """Quality and probability of every joint configuration of additive coordinates."""
    quality, probs = np.zeros(1), np.ones(1)
    for j, v in enumerate(values):
        quality = (quality[:, None] + v[None, :]).ravel()
        probs = (probs[:, None] * marginals[j, : v.size][None, :]).ravel()
    return quality, probs


def gini_simpson_diversity(probs):
    """Gini-Simpson diversity ``H = 1 - sum_c P(c)^2`` of a categorical distribution.

    The probability that two independent draws differ (Simpson 1949, Nature 163:688);
    0 for a distribution fixed on one value, ``1 - 1/K`` for the uniform one on K values.
    Along the last axis.

    >>> float(gini_simpson_diversity([0.25, 0.25, 0.25, 0.25]))
    0.75
    >>> float(gini_simpson_diversity([1.0, 0.0]))
    0.0
    """
    p = np.asarray(probs, dtype=float)
    return scalar_or_array(1.0 - np.sum(p**2, axis=-1))


def expected_neutral_diversity(diversity0, alpha, n_elite, t):
    """Expected Gini-Simpson diversity ``1 - sum_c P_t(c)^2`` of a neutral coordinate.

    Elites are m iid draws from ``P_t`` on a coordinate that does not affect the score, so
    ``P_{t+1} = (1 - alpha) P_t + alpha q`` with ``E[q] = P_t``, ``Cov(q) = (diag P - P P^T)/m``
    and ``E[H_{t+1} | P_t] = (1 - alpha^2/m) H_t``: ``E[H_t] = H_0 (1 - alpha^2/m)^t``, the
    Wright-Fisher heterozygosity decay (Wright 1931) that drives the genetic drift of
    UMDA/PBIL (Doerr & Zheng 2020, IEEE TEVC 24:1056). The coordinate fixes on an
    arbitrary value although nothing selects it.

    >>> round(expected_neutral_diversity(0.5, 1.0, 5, 1), 6)
    0.4
    """
    alpha = _check_alpha(alpha)
    if n_elite < 1:
        raise ValueError(f"n_elite must be >= 1; got {n_elite!r}")
    t = np.asarray(t, dtype=float)
    return scalar_or_array(diversity0 * (1.0 - alpha**2 / n_elite) ** t)


def simulate_pbil(values, alpha, rho, iterations, n_samples, neutral_choices: int = 2,
                  probs0=None, snr=None, gamma_ref=None, seed=0) -> xr.Dataset:
    """PBIL-style CE over independent categorical coordinates, with a neutral control coordinate.

    Quality is additive, ``f(x) = sum_j values[j][x_j]``; a last coordinate with
    ``neutral_choices`` choices and no effect is appended. Each iteration draws
    ``n_samples`` vectors from the product of marginals ``P_t``, scores them
    (``f + N(0, sd^2)``, ``sd = sqrt(var_{P_0}(f)/snr)``), keeps the top
    ``elite_count(N, rho)``, and smooths every marginal toward the elite frequencies
    (``smoothed_update`` row-wise). ``p_E`` is exact (all joint configurations of the
    scoring coordinates are enumerated); E = {f >= gamma_ref}, by default the noise-free
    population elite threshold of ``P_0``. Because the update acts on marginals, the
    smoothing identity holds per coordinate (``p_opt``, ``q_opt``: marginal and elite share
    of each coordinate's best choice), not for the joint set E. The neutral coordinate's
    marginal (``neutral_probs``) and diversity (``neutral_diversity``, see
    ``expected_neutral_diversity``) show drift. ``probs0`` is (d + 1, max K) zero-padded
    marginals, default uniform.

    >>> ds = simulate_pbil([[0.0, 1.0], [0.0, 1.0]], 0.2, 0.2, 5, n_samples=30, seed=0)
    >>> ds.sizes["iteration"], ds.sizes["coord"], ds.sizes["choice"]
    (5, 3, 2)
    """
    rng = np.random.default_rng(seed)
    alpha, rho = _check_alpha(alpha), _check_rho(rho)
    values = [np.asarray(v, dtype=float) for v in values] + [np.zeros(int(neutral_choices))]
    sizes = np.array([v.size for v in values])
    if np.any(sizes < 2):
        raise ValueError("every coordinate (the neutral one included) needs at least 2 choices")
    if math.prod(sizes[:-1].tolist()) > _MAX_JOINT:
        raise ValueError(f"the scoring coordinates span more than {_MAX_JOINT} configurations; "
                         "use fewer coordinates or choices (p_E is computed exactly)")
    d, width = sizes.size, sizes.max()
    valid = np.arange(width)[None, :] < sizes[:, None]
    if probs0 is None:
        marginals = np.where(valid, 1.0 / sizes[:, None], 0.0)
    else:
        marginals = _check_distribution(probs0, "probs0")
        if marginals.shape != (d, width) or np.any(marginals[~valid] != 0):
            raise ValueError(f"probs0 must be ({d}, {width}) with zeros past each coordinate's choices")
    padded_values = np.where(valid, 0.0, np.nan)
    for j, v in enumerate(values):
        padded_values[j, : v.size] = v
    best_choice = np.array([int(np.argmax(v)) for v in values])
    variance = sum(float(marginals[j, : v.size] @ (v - marginals[j, : v.size] @ v) ** 2)
                   for j, v in enumerate(values))
    sd = noise_sd_for_snr(variance, snr)
    joint_q, joint_p = _joint_quality(values[:-1], marginals)
    if gamma_ref is None:
        gamma_ref = population_elites(joint_p, joint_q, rho)[1]
    in_e = joint_q >= gamma_ref

    margs = np.empty((iterations, d, width))
    gamma, p_e, q_e, best = (np.empty(iterations) for _ in range(4))
    q_opt = np.empty((iterations, d))
    for t in range(iterations):
        margs[t] = marginals
        p_e[t] = elite_probability(_joint_quality(values[:-1], marginals)[1], in_e)
        # Inverse-CDF draws for all coordinates at once; clip guards rounding of the cumsum.
        cum = np.cumsum(marginals, axis=1)
        u = rng.random((n_samples, d, 1))
        x = np.minimum((u >= cum[None, :, :]).sum(axis=2), sizes - 1)
        true = np.nansum(padded_values[np.arange(d), x], axis=1)
        scores = true + sd * rng.standard_normal(n_samples)
        elites = elite_indices(scores, rho, rng)
        freqs = elite_frequencies(x[elites], sizes)
        gamma[t], best[t] = scores[elites[-1]], true.max()
        q_e[t] = elite_share_in_set(true[elites] >= gamma_ref)
        q_opt[t] = freqs[np.arange(d), best_choice]
        marginals = smoothed_update(marginals, freqs, alpha)
    neutral = margs[:, -1, : sizes[-1]]
    mean = np.nansum(margs * padded_values[None], axis=(1, 2))
    variables = {
        "gamma": (("iteration",), gamma, _DESCRIPTIONS["gamma"]),
        "p_E": (("iteration",), p_e, _DESCRIPTIONS["p_E"]),
        "q_E": (("iteration",), q_e, _DESCRIPTIONS["q_E"]),
        "best": (("iteration",), best, _DESCRIPTIONS["best"]),
        "mean": (("iteration",), mean, _DESCRIPTIONS["mean"]),
        "marginals": (("iteration", "coord", "choice"), np.where(valid, margs, np.nan),
                      "marginal distribution of each coordinate (NaN past its choices)"),
        "p_opt": (("iteration", "coord"), margs[:, np.arange(d), best_choice],
                  "marginal probability of each coordinate's best choice (choice 0 for the neutral one)"),
        "q_opt": (("iteration", "coord"), q_opt, "elite share of each coordinate's best choice"),
        "neutral_probs": (("iteration", "neutral_choice"), neutral, "marginal of the neutral coordinate"),
        "neutral_diversity": (("iteration",), gini_simpson_diversity(neutral),
                              "Gini-Simpson diversity 1 - sum P^2 of the neutral coordinate"),
        "values": (("coord", "choice"), padded_values, "quality contribution of each choice"),
    }
    attrs = dict(kind="pbil", alpha=alpha, rho=rho, snr=snr, noise_sd=sd, gamma_ref=float(gamma_ref),
                 n_samples=n_samples, n_elite=elite_count(n_samples, rho), seed=seed,
                 neutral_coord=d - 1)
    coords = {"iteration": np.arange(iterations), "coord": np.arange(d), "choice": np.arange(width),
              "neutral_choice": np.arange(sizes[-1])}
    return _dataset(variables, coords, attrs)
