"""Why short deltas beat full files: the probability that an L-token output is valid.

Two token-error models (the LLM-NAS convergence paper, Adhikari, Timofte & Ignatov 2026,
result 4, argues with the second):

* independent: each token is wrong with probability eps, so ``P(valid | L) = (1 - eps)^L``;
* first-order Markov: token error indicators form a two-state chain with
  ``P(error at token 1) = eps_first`` and ``P(error | previous token correct) = eps``
  (``P(error | previous error)`` is free: errors may come in bursts). An output is valid
  when no token is wrong, i.e. the chain never leaves the correct state:
  ``P(valid | L) = (1 - eps_first) (1 - eps)^(L - 1)``. The burst parameter cannot matter
  for validity, and the length-free factor absorbs failures that do not scale with length
  (e.g. a malformed diff header).

Both are fitted by maximum likelihood from observed (length, valid) pairs and predict the
delta/full valid-rate ratio, to be compared with the measured ratio (the paper reports
2.23 predicted vs 1.41 measured).
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
from theory._checks import normal_quantile, scalar_or_array

MODELS = ("independent", "markov")


def _as_lengths(length, minimum: int) -> np.ndarray:
    length = np.asarray(length, dtype=float)
    if np.any(~(length >= minimum)) or np.any(length != np.floor(length)):
        raise ValueError(f"lengths must be integer token counts >= {minimum}; got {length!r}")
    return length


def _as_probability(p, name: str) -> np.ndarray:
    p = np.asarray(p, dtype=float)
    if np.any(~((p >= 0) & (p <= 1))):
        raise ValueError(f"{name} is a probability and must lie in [0, 1]; got {p!r}")
    return p


def valid_probability_independent(length, eps):
    """``P(valid | L) = (1 - eps)^L``: every token independently wrong with probability eps.

    >>> round(valid_probability_independent(100, 0.01), 4)
    0.366
    """
    length = _as_lengths(length, 0)
    return scalar_or_array((1.0 - _as_probability(eps, "eps")) ** length)


def valid_probability_markov(length, eps_first, eps):
    """``P(valid | L) = (1 - eps_first)(1 - eps)^(L - 1)`` under first-order Markov token errors.

    The chain of error indicators must stay in the correct state for all L tokens
    (Adhikari et al. 2026, result 4). Needs L >= 1.

    >>> round(valid_probability_markov(100, 0.2, 0.01), 4)
    0.2958
    """
    length = _as_lengths(length, 1)
    first = _as_probability(eps_first, "eps_first")
    return scalar_or_array((1.0 - first) * (1.0 - _as_probability(eps, "eps")) ** (length - 1.0))


def _design(length: np.ndarray, model: str) -> np.ndarray:
    """Rows x with ``-log P(valid | L) = x . beta``, beta = per-output and per-token hazards."""
    if model == "independent":
        return length[:, None]
    if model == "markov":
        return np.column_stack([np.ones_like(length), length - 1.0])
    raise ValueError(f"model must be one of {MODELS}; got {model!r}")


@dataclass(frozen=True)
class TokenErrorFit:
    """Maximum-likelihood token-error model. ``hazards`` = -log(1 - eps) per parameter
    (("eps",) or ("eps_first", "eps")), ``cov`` their inverse-Fisher covariance."""

    model: str
    eps: float
    eps_first: float
    hazards: tuple
    cov: np.ndarray
    loglik: float
    n: int
    n_valid: int

    def valid_probability(self, length):
        """Fitted ``P(valid | L)``."""
        if self.model == "independent":
            return valid_probability_independent(length, self.eps)
        return valid_probability_markov(length, self.eps_first, self.eps)

    def eps_ci(self, level: float = 0.95):
        """Wald interval for eps on the hazard scale, mapped back: ``1 - exp(-(h -+ z se))``."""
        se = math.sqrt(self.cov[-1, -1])
        h, z = self.hazards[-1], normal_quantile(level)
        return 1.0 - math.exp(-max(h - z * se, 0.0)), 1.0 - math.exp(-(h + z * se))


def _loglik(x: np.ndarray, y: np.ndarray, beta: np.ndarray) -> float:
    eta = x @ beta
    with np.errstate(divide="ignore"):
        return float(-np.sum(y * eta) + np.sum((1.0 - y) * np.log(-np.expm1(-eta))))


def _maximise_loglik(x: np.ndarray, y: np.ndarray, floor: float = 1e-12, tol: float = 1e-12):
    """Maximise the concave log-likelihood over beta >= floor by projected Fisher scoring.

    Score ``x^T (-y + (1 - y) / (e^eta - 1))``, expected information
    ``x^T diag(1 / (e^eta - 1)) x``; a coordinate at the floor whose score points further
    down is held there (active set); steps are halved until the likelihood does not drop.
    The floor keeps ``log(1 - e^{-eta})`` finite for invalid outputs.
    """
    beta = np.full(x.shape[1], -math.log(y.mean()) / max(float(np.sum(x.mean(axis=0))), 1.0))
    ll = _loglik(x, y, beta)
    for _ in range(500):
        weight = 1.0 / np.expm1(x @ beta)
        score = x.T @ (-y + (1.0 - y) * weight)
        info = (x * weight[:, None]).T @ x
        free = ~((beta <= floor) & (score < 0))
        step = np.zeros_like(beta)
        if free.any():
            step[free] = np.linalg.lstsq(info[np.ix_(free, free)], score[free], rcond=None)[0]
        size = 1.0
        candidate = np.maximum(beta + step, floor)
        ll_new = _loglik(x, y, candidate)
        while ll_new < ll and size > 1e-12:
            size /= 2.0
            candidate = np.maximum(beta + size * step, floor)
            ll_new = _loglik(x, y, candidate)
        if ll_new < ll:
            break  # no ascent direction left: at the maximum to rounding
        # Converged when the step no longer moves beta or the likelihood (to rounding).
        done = (np.all(np.abs(candidate - beta) <= tol * np.maximum(np.abs(beta), 1e-6))
                or ll_new - ll <= tol * abs(ll))
        beta, ll = candidate, ll_new
        if done:
            break
    return beta, ll


def fit_token_error(lengths, valid, model: str = "independent") -> TokenErrorFit:
    """MLE of a token-error model from observed (length, valid) pairs.

    With ``P(valid | L) = exp(-x . beta)`` (x = [L] or [1, L - 1], beta >= 0 the hazards
    ``-log(1 - eps)``), the log-likelihood ``sum_i -y_i eta_i + (1 - y_i) log(1 - e^{-eta_i})``
    is concave in beta (a binomial GLM with log link); it is maximised under beta >= 0 and
    the covariance is the inverse expected information ``sum_i x_i x_i^T p_i / (1 - p_i)``
    (NaN when every output is valid, the boundary eps = 0). The Markov model needs a spread of
    lengths to separate its two parameters. At least one output must be valid.

    >>> fit = fit_token_error([10, 10, 50, 50, 100, 100], [1, 1, 1, 0, 0, 1])
    >>> round(fit.eps, 4), fit.n_valid
    (0.0084, 4)
    """
    length = _as_lengths(lengths, 1)
    y = np.asarray(valid)
    if length.ndim != 1 or y.shape != length.shape:
        raise ValueError(f"lengths and valid must be 1-D of equal length; got {length.shape} and {y.shape}")
    if not np.all((y == 0) | (y == 1)):
        raise ValueError("valid must hold booleans (or 0/1)")
    y = y.astype(float)
    if y.sum() == 0:
        raise ValueError("no valid output: every token-error rate explains that (eps -> 1); "
                         "collect outputs until some are valid")
    x = _design(length, model)

    if y.all():
        # Boundary MLE eps = 0: the likelihood is maximal (= 1) there and has no curvature.
        beta, loglik = np.zeros(x.shape[1]), 0.0
        cov = np.full((x.shape[1], x.shape[1]), np.nan)
    else:
        beta, loglik = _maximise_loglik(x, y)
        p = np.exp(-(x @ beta))
        info = (x * (p / -np.expm1(-(x @ beta)))[:, None]).T @ x
        try:
            cov = np.linalg.inv(info)
        except np.linalg.LinAlgError:  # lengths too alike to separate the Markov parameters
            cov = np.full(info.shape, np.inf)
    eps = 1.0 - math.exp(-beta[-1])
    eps_first = eps if model == "independent" else 1.0 - math.exp(-beta[0])
    return TokenErrorFit(model=model, eps=eps, eps_first=eps_first, hazards=tuple(float(b) for b in beta),
                         cov=cov, loglik=float(loglik), n=int(y.size), n_valid=int(y.sum()))


def predicted_valid_ratio(fit: TokenErrorFit, lengths_delta, lengths_full, level: float = 0.95):
    """Predicted delta/full valid-rate ratio ``mean_i P(valid | L_delta,i) / mean_j P(valid | L_full,j)``.

    Averages probabilities over the observed length distributions (not the probability at
    the mean length: by Jensen that would overstate the ratio's spread). Interval by the
    delta method on ``log ratio`` with the fit's covariance; the length samples are taken
    as fixed. Returns ``(ratio, lo, hi)``.

    >>> fit = TokenErrorFit("independent", 0.01, 0.01, (-math.log(0.99),), np.zeros((1, 1)), 0.0, 0, 0)
    >>> round(predicted_valid_ratio(fit, [40], [120])[0], 3)
    2.235
    """
    parts = []
    for lengths in (lengths_delta, lengths_full):
        x = _design(_as_lengths(np.atleast_1d(lengths), 1), fit.model)
        p = np.exp(-(x @ np.asarray(fit.hazards)))
        parts.append((p.mean(), (p @ x) / p.sum()))
    (mean_d, dlog_d), (mean_f, dlog_f) = parts
    ratio = mean_d / mean_f
    # d/dbeta log mean p = -(sum p x) / sum p for p = exp(-x . beta).
    grad = -dlog_d + dlog_f
    se = math.sqrt(float(grad @ fit.cov @ grad))
    z = normal_quantile(level)
    return float(ratio), float(ratio * math.exp(-z * se)), float(ratio * math.exp(z * se))


def measured_valid_ratio(valid_delta, valid_full, level: float = 0.95):
    """Measured ratio of valid rates ``(k_d / n_d) / (k_f / n_f)`` with the Katz log interval.

    ``var(log R) = 1/k_d - 1/n_d + 1/k_f - 1/n_f`` (Katz, Baptista, Azen & Pike 1978,
    Biometrics 34:469); a zero count gets 0.5 added to k and n (Haldane's correction).
    Returns ``(ratio, lo, hi)``.

    >>> r, lo, hi = measured_valid_ratio([1] * 753 + [0] * 247, [1] * 506 + [0] * 494)
    >>> round(r, 3), round(lo, 3), round(hi, 3)
    (1.488, 1.386, 1.597)
    """
    counts = []
    for flags in (valid_delta, valid_full):
        flags = np.asarray(flags)
        if flags.ndim != 1 or flags.size == 0 or not np.all((flags == 0) | (flags == 1)):
            raise ValueError("valid flags must be a non-empty 1-D array of booleans (or 0/1)")
        k, n = float(flags.sum()), float(flags.size)
        counts.append((k + 0.5, n + 0.5) if k == 0 else (k, n))
    (k_d, n_d), (k_f, n_f) = counts
    ratio = (k_d / n_d) / (k_f / n_f)
    se = math.sqrt(1 / k_d - 1 / n_d + 1 / k_f - 1 / n_f)
    z = normal_quantile(level)
    return float(ratio), float(ratio * math.exp(-z * se)), float(ratio * math.exp(z * se))
