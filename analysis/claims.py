"""Verdicts on the convergence claims, computed from run Datasets.

Each function takes the ``run`` view of the stores (:func:`analysis.load.as_runs`) and
returns a :class:`Claim`: what was tested, the numbers, and one verdict out of
``supported`` / ``not supported`` / ``not enough data``. The rules follow the design's
"What careful statistics says": geometric convergence of p_t(E) needs q_t(E) = 1;
gamma_t's monotonicity is tested against its own sampling noise; the arcsin law is
compared with Moran's finite-n expectation, and the report states how many pairs it
would take to tell the law from rho_S = rho at all.
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field

import numpy as np
import xarray as xr
from scipy import stats

from theory import convergence, proxy, reliability

SUPPORTED = "supported"
NOT_SUPPORTED = "not supported"
NOT_ENOUGH = "not enough data"

#: Fewest cycles a trend or a rate can be fitted on.
MIN_CYCLES = 3
#: Fewest architectures with two replicates for a reliability estimate.
MIN_ARCHITECTURES = 10
#: Two-sided level of every interval and test here.
LEVEL = 0.95


@dataclass
class Claim:
    """One claim, its verdict and the numbers behind it."""

    key: str
    title: str
    verdict: str
    summary: str
    numbers: dict = field(default_factory=dict)
    details: list[str] = field(default_factory=list)

    def verdict_line(self) -> str:
        return f"**Verdict: {self.verdict}** - {self.summary}"


# --------------------------------------------------------------------------- helpers

def candidate_mask(runs: xr.Dataset) -> xr.DataArray:
    """True where a candidate exists (padding has an empty status); all False without candidates."""
    if "status" not in runs:
        return xr.DataArray(False)
    return runs["status"].astype(str) != ""


def series(runs: xr.Dataset, name: str) -> np.ndarray:
    """A cycle variable as a (run, cycle) float array (NaN where absent)."""
    if name not in runs:
        return np.full((runs.sizes["run"], runs.sizes["cycle"]), np.nan)
    return runs[name].transpose("run", "cycle").values.astype(float)


def _fmt(x: float, digits: int = 3) -> str:
    return "nan" if x is None or not np.isfinite(x) else f"{x:.{digits}f}"


def _elite_fraction(runs: xr.Dataset, r: int) -> float:
    """The run's elite fraction: from its config, else n_elite / n_valid pooled."""
    if "elite_fraction" in runs.coords:
        value = float(runs["elite_fraction"].values[r])
        if np.isfinite(value) and value > 0:
            return value
    n_elite = np.nansum(series(runs, "n_elite")[r])
    n_valid = np.nansum(series(runs, "n_valid")[r])
    return n_elite / n_valid if n_valid > 0 else math.nan


def threshold_standard_errors(runs: xr.Dataset, r: int, draws: int = 200, seed: int = 0) -> np.ndarray:
    """Bootstrap standard error of gamma_t per cycle of run ``r``.

    gamma_t is the (1 - rho) sample quantile of the cycle's valid scores (rho = elite
    fraction), so its noise is that of a sample quantile: resample the cycle's scores
    with replacement and take the quantile's standard deviation. Zero where the store
    holds no candidate scores (an exact simulation has a noise-free gamma_t).
    """
    n_cycles = runs.sizes["cycle"]
    out = np.zeros(n_cycles)
    if "score" not in runs:
        return out
    rho = _elite_fraction(runs, r)
    if not np.isfinite(rho):
        return out
    rng = np.random.default_rng(seed)
    scores = runs["score"].isel(run=r).transpose("cycle", "cand").values.astype(float)
    for t in range(n_cycles):
        s = scores[t][np.isfinite(scores[t])]
        if len(s) < 2:
            continue
        boot = rng.choice(s, size=(draws, len(s)), replace=True)
        out[t] = np.quantile(boot, 1 - rho, axis=1).std(ddof=1)
    return out


# --------------------------------------------------------------------------- claims

def monotone_threshold(runs: xr.Dataset) -> Claim:
    """Monotone quality improvement: gamma_t never falls and trends upward.

    A fall counts only when gamma_t - gamma_{t+1} exceeds z standard errors of the
    difference (bootstrap SE of each cycle's quantile), z = Phi^-1(1 - 0.05/steps) over
    all steps of all runs (Bonferroni: a 5% family-wise false alarm, so a large grid of
    runs does not turn quantile noise into violations). The trend is Theil-Sen per run (slope CI)
    with the Mann-Kendall test deciding the direction, and, with two or more replicate
    runs, Page's L test for an ordered increase across them.
    """
    gamma = series(runs, "gamma")
    names = [str(v) for v in runs["run"].values]
    rows, steps, slopes = [], [], []
    usable = 0
    for r, name in enumerate(names):
        g = gamma[r]
        ok = np.isfinite(g)
        if ok.sum() < MIN_CYCLES:
            rows.append(f"{name}: {int(ok.sum())} cycles with a threshold (need {MIN_CYCLES})")
            continue
        usable += 1
        t = np.flatnonzero(ok)
        se = threshold_standard_errors(runs, r)[t]
        gv = g[t]
        sd = np.sqrt(se[:-1] ** 2 + se[1:] ** 2)
        steps += [(name, int(runs["cycle"].values[t[i + 1]]), float(gv[i] - gv[i + 1]), float(sd[i]))
                  for i in range(len(gv) - 1)]
        ts = convergence.theil_sen_slope(gv, runs["cycle"].values[t].astype(float), level=LEVEL)
        # Theil-Sen's median slope is 0 once a run plateaus; the direction is decided by
        # the Mann-Kendall test (Kendall's tau of gamma_t against t), which ties do not weaken.
        mk = stats.kendalltau(t, gv)
        # Without candidate scores (an exact simulation) gamma_t has no sampling noise:
        # a rise from first to last cycle with no fall is then observed, not inferred.
        exact_rise = not se.any() and gv[-1] > gv[0]
        rises = exact_rise or (mk.statistic > 0 and mk.pvalue < 1 - LEVEL)
        falls = mk.statistic < 0 and mk.pvalue < 1 - LEVEL
        slopes.append((ts, float(mk.statistic), float(mk.pvalue), rises, falls))
        rows.append(f"{name}: Theil-Sen slope {_fmt(ts.slope, 4)} per cycle "
                    f"[{_fmt(ts.ci_low, 4)}, {_fmt(ts.ci_high, 4)}]; Mann-Kendall tau {_fmt(mk.statistic)} "
                    f"(p = {mk.pvalue:.3g})")
    z = float(stats.norm.ppf(1 - 0.05 / max(len(steps), 1)))
    drops = [(name, cycle, fall, z * sd) for name, cycle, fall, sd in steps if fall > z * sd + 1e-12]
    numbers: dict = {"runs": len(names), "runs_used": usable, "significant_falls": len(drops), "fall_z": z}
    if usable == 0:
        return Claim("monotone_threshold", "Monotone elite threshold gamma_t", NOT_ENOUGH,
                     f"no run has {MIN_CYCLES} cycles with a threshold", numbers, rows)
    page = None
    complete = np.all(np.isfinite(gamma), axis=1)
    if complete.sum() >= 2 and gamma.shape[1] >= MIN_CYCLES:
        page = convergence.page_trend_test(gamma[complete])
        numbers.update(page_L=float(page.statistic), page_p=float(page.p_value))
        rows.append(f"Page's L test over {int(complete.sum())} runs x {gamma.shape[1]} cycles: "
                    f"L = {_fmt(page.statistic, 1)}, p = {page.p_value:.3g}")
    numbers["slopes"] = [float(s[0].slope) for s in slopes]
    numbers["mann_kendall_p"] = [s[2] for s in slopes]
    up = [s for s in slopes if s[3]]
    down = [s for s in slopes if s[4]]
    trend_up = (page.p_value < 1 - LEVEL) if page is not None else len(up) == len(slopes)
    for name, cycle, fall, tol in drops:
        rows.append(f"{name}: gamma fell by {fall:.4f} into cycle {cycle} ({z:.2f} SE = {tol:.4f})")
    if drops:
        worst = max(drops, key=lambda d: d[2])
        return Claim("monotone_threshold", "Monotone elite threshold gamma_t", NOT_SUPPORTED,
                     f"gamma_t is not monotone: {len(drops)} significant fall(s), largest "
                     f"{worst[2]:.4f} into cycle {worst[1]} of {worst[0]} ({z:.2f} SE = {worst[3]:.4f})",
                     numbers, rows)
    if down:
        return Claim("monotone_threshold", "Monotone elite threshold gamma_t", NOT_SUPPORTED,
                     f"gamma_t trends downward in {len(down)} of {len(slopes)} run(s)", numbers, rows)
    if not trend_up:
        trend = (f"Page p = {page.p_value:.3g}" if page is not None else
                 f"{len(up)} of {len(slopes)} run(s) rise significantly (Mann-Kendall)")
        return Claim("monotone_threshold", "Monotone elite threshold gamma_t", NOT_SUPPORTED,
                     f"no significant fall, but no significant upward trend either ({trend})",
                     numbers, rows)
    trend = (f"Page p = {page.p_value:.3g}" if page is not None else
             f"Mann-Kendall p <= {max(numbers['mann_kendall_p']):.3g} or an exact rise, Theil-Sen "
             f"slope {_fmt(float(np.median(numbers['slopes'])), 4)}/cycle")
    return Claim("monotone_threshold", "Monotone elite threshold gamma_t", SUPPORTED,
                 f"no significant fall in {usable} run(s) and an upward trend ({trend})", numbers, rows)


def geometric_convergence(runs: xr.Dataset) -> Claim:
    """Geometric convergence of p_t(E): 1 - p_{t+1} = (1 - alpha)(1 - p_t).

    The pure law needs q_t(E) = 1 in every cycle (smoothing identity). The rate kappa
    is fitted per run from log(1 - p_t) on t and its CI compared with 1 - alpha.
    """
    p = series(runs, "p_E")
    q = series(runs, "q_E")
    alpha = series(runs, "alpha")
    n_elite = series(runs, "n_elite")
    names = [str(v) for v in runs["run"].values]
    rows, fits = [], []
    residual = series(runs, "smoothing_residual")
    for r, name in enumerate(names):
        # The hook stores the sampler's alpha with a residual; without one (the LLM) the
        # alpha column is the implied step, which fitting kappa against would be circular.
        known = np.isfinite(residual[r]).any() and np.isfinite(alpha[r]).any()
        a = float(np.nanmean(alpha[r])) if known else math.nan
        fit = fit_rate(runs["cycle"].values, p[r], a if known else None)
        if fit is None:
            rows.append(f"{name}: fewer than {MIN_CYCLES} cycles with p_t(E) < 1")
            continue
        fits.append((name, fit, a))
        implied = "" if known or not np.isfinite(alpha[r]).any() else \
            f" (alpha unknown; median implied alpha {_fmt(float(np.nanmedian(alpha[r])))})"
        rows.append(f"{name}: kappa = {_fmt(fit.kappa)} [{_fmt(fit.ci_low)}, {_fmt(fit.ci_high)}] "
                    f"over {fit.n_points} cycles; 1 - alpha = {_fmt(1 - a)}{implied}")
    # q_t(E) < 1 shows up as elites outside E; with a sampled store the evidence is a
    # count (n_elite * (1 - q)), with an exact simulation q itself.
    finite_q = q[np.isfinite(q)]
    outside = np.nansum(np.where(np.isfinite(n_elite), n_elite, 0) * (1 - np.nan_to_num(q, nan=1.0)))
    q_short = bool((finite_q < 1 - 1e-9).any())
    numbers = {"runs": len(names), "runs_fitted": len(fits),
               "q_E_mean": float(finite_q.mean()) if finite_q.size else math.nan,
               "q_E_min": float(finite_q.min()) if finite_q.size else math.nan,
               "elites_outside_E": float(outside)}
    if fits:
        numbers["kappa"] = [float(f.kappa) for _, f, _ in fits]
        numbers["kappa_ci"] = [(float(f.ci_low), float(f.ci_high)) for _, f, _ in fits]
        numbers["one_minus_alpha"] = [float(1 - a) for _, _, a in fits]
    if not fits:
        return Claim("geometric", "Geometric convergence of p_t(E)", NOT_ENOUGH,
                     f"no run has {MIN_CYCLES} cycles with p_t(E) < 1", numbers, rows)
    kappa_text = "; ".join(f"kappa = {_fmt(f.kappa)} [{_fmt(f.ci_low)}, {_fmt(f.ci_high)}] vs "
                           f"1 - alpha = {_fmt(1 - a)}" for _, f, a in fits[:3])
    if len(fits) > 3:
        kappa_text += f"; ... ({len(fits)} runs)"
    if q_short:
        limit = numbers["q_E_mean"]
        return Claim("geometric", "Geometric convergence of p_t(E)", NOT_SUPPORTED,
                     f"not purely geometric: q_t(E) < 1 (mean {_fmt(limit)}, min {_fmt(numbers['q_E_min'])}), "
                     f"so 1 - p_t(E) tends to about 1 - q = {_fmt(1 - limit)} rather than 0 ({kappa_text})",
                     numbers, rows)
    known = [(f, a) for _, f, a in fits if np.isfinite(a)]
    if not known:
        below = all(f.ci_high < 1 for _, f, _ in fits)
        verdict = SUPPORTED if below else NOT_SUPPORTED
        return Claim("geometric", "Geometric convergence of p_t(E)", verdict,
                     f"q_t(E) = 1 throughout; alpha unknown, so only kappa < 1 is checked ({kappa_text})",
                     numbers, rows)
    inside = [f.consistent for f, _ in known]
    verdict = SUPPORTED if all(inside) else NOT_SUPPORTED
    what = ("q_t(E) = 1 throughout and every kappa CI covers 1 - alpha" if all(inside) else
            f"q_t(E) = 1 but {inside.count(False)} of {len(inside)} kappa CI(s) miss 1 - alpha")
    return Claim("geometric", "Geometric convergence of p_t(E)", verdict, f"{what} ({kappa_text})", numbers, rows)


def fit_rate(cycles: np.ndarray, p: np.ndarray, alpha: float | None = None):
    """theory's geometric-rate fit over the cycles where p_t(E) < 1; None below 3 of them."""
    ok = np.isfinite(p) & (p < 1)
    if ok.sum() < MIN_CYCLES:
        return None
    return convergence.geometric_rate(p[ok], alpha=alpha, t=cycles[ok].astype(float), level=LEVEL)


def smoothing_identity(runs: xr.Dataset) -> Claim:
    """The smoothing identity 1 - p_{t+1} = alpha(1 - q_t) + (1 - alpha)(1 - p_t).

    The residual is compared with the sampling noise of the p_t(E) estimated from n
    candidates: Var = v(p_t) + (1 - alpha)^2 v(p_{t-1}), v(p) = p~(1 - p~)/n with the
    Agresti-Coull p~ = (k + 2)/(n + 4), so that a share of 0 or 1 is not taken as exact.
    The identity holds if the number of cycles beyond 2 SE is not significantly more than
    the 5% a correct identity gives (binomial tail p >= 0.05). The identity is exact for a
    categorical distribution over architectures; a sampler that smooths independent
    per-coordinate marginals (PBIL-style) satisfies it per coordinate only, not for the
    joint set E (theory.cem.simulate_pbil), so a failure there is expected, not a bug; nor
    does it bind an LLM whose alpha blends adapter parameters (``lora.smoothing``).
    """
    res = series(runs, "smoothing_residual")
    p = series(runs, "p_E")
    n = series(runs, "n_cand")
    alpha = series(runs, "alpha")
    ok = np.isfinite(res)
    numbers = {"cycles": int(ok.sum())}
    if ok.sum() < 1:
        return Claim("identity", "Smoothing identity", NOT_ENOUGH,
                     "no cycle has a smoothing residual (alpha or q_t(E) unknown)", numbers)
    sampled = np.isfinite(p) & (n > 0)
    n_safe = np.where(sampled, n, 1.0)
    p_tilde = (np.nan_to_num(p) * n_safe + 2) / (n_safe + 4)
    var = np.where(sampled, p_tilde * (1 - p_tilde) / n_safe, 0.0)
    # The hook stores the residual on cycle t's row, from p_{t-1} and p_t.
    var_prev = np.concatenate([np.zeros((var.shape[0], 1)), var[:, :-1]], axis=1)
    se = np.sqrt(var + (1 - np.nan_to_num(alpha)) ** 2 * var_prev)
    exceed = ok & (np.abs(res) > 2 * se + 1e-9)
    k, m = int(exceed.sum()), int(ok.sum())
    tail = float(stats.binom.sf(k - 1, m, 0.05)) if k else 1.0
    numbers.update(max_abs_residual=float(np.nanmax(np.abs(res))), exceed_2se=k, binomial_p=tail)
    verdict = SUPPORTED if tail >= 0.05 else NOT_SUPPORTED
    kinds = {str(k) for k in runs["sampler"].values} if "sampler" in runs.coords else set()
    why = []
    if kinds & {"grammar", "random"} or not kinds:
        why.append("a sampler that smooths per-coordinate marginals (the grammar control is PBIL-style) "
                   "satisfies the identity per coordinate only, not for the joint set E")
    if "llm" in kinds:
        why.append("the LLM's alpha smooths the adapter's parameters, not the sampling distribution, "
                   "so the identity of mixture CE need not hold for it")
    note = "" if verdict == SUPPORTED else "; " + "; ".join(why)
    return Claim("identity", "Smoothing identity", verdict,
                 f"max |residual| = {np.nanmax(np.abs(res)):.3g}; {k} of {m} cycles beyond 2 sampling SE "
                 f"(binomial p = {tail:.3g} against the 5% a true identity gives){note}", numbers)


def optimality(runs: xr.Dataset) -> Claim:
    """Does a converged p_t(E) certify optimality? (It does not, in general.)

    CE/PBIL drifts: a coordinate with no effect on the score still concentrates, its
    Gini-Simpson diversity decaying like (1 - alpha^2/m)^t (Doerr & Zheng 2020; see
    ``theory.cem.expected_neutral_diversity``). Evidence read here: the cycle variable
    ``neutral_diversity`` of a neutral control coordinate when the store has it (drift
    when it lost at least half its first-cycle value), and, across replicate runs,
    converged runs (final p_t(E) > 0.9) that reach different bests.
    """
    rows = []
    p = series(runs, "p_E")
    converged = np.array([np.isfinite(row).any() and row[np.isfinite(row)][-1] > 0.9 for row in p])
    best = series(runs, "best_so_far")
    final_best = np.array([row[np.isfinite(row)][-1] if np.isfinite(row).any() else np.nan for row in best])
    numbers = {"runs": int(p.shape[0]), "converged_runs": int(converged.sum())}
    title = "Converged p_t(E) certifies optimality"
    if "neutral_diversity" in runs:
        div = series(runs, "neutral_diversity")
        first = np.array([row[np.isfinite(row)][0] if np.isfinite(row).any() else np.nan for row in div])
        last = np.array([row[np.isfinite(row)][-1] if np.isfinite(row).any() else np.nan for row in div])
        lost = 1 - last / first
        numbers["neutral_diversity_lost"] = [float(x) for x in lost]
        rows += [f"{name}: neutral diversity {_fmt(a)} -> {_fmt(b)} ({100 * x:.0f}% lost)"
                 for name, a, b, x in zip(runs["run"].values, first, last, lost)]
        if np.isfinite(lost).any() and np.nanmax(lost) >= 0.5:  # an LLM store has the variable, all NaN
            return Claim("optimality", title, NOT_SUPPORTED,
                         f"the neutral control coordinate lost {100 * np.nanmax(lost):.0f}% of its diversity: "
                         "the distribution concentrates on choices the score cannot see (drift), so "
                         "convergence is not evidence of optimality", numbers, rows)
    done = final_best[converged & np.isfinite(final_best)]
    if len(done) >= 2:
        spread = float(done.max() - done.min())
        numbers["final_best_spread"] = spread
        rows.append(f"final best among converged runs: {', '.join(_fmt(x) for x in done)}")
        if spread > 0:
            return Claim("optimality", title, NOT_SUPPORTED,
                         f"{len(done)} converged runs end at different bests (spread {spread:.4f}): "
                         "at most one of them can be the optimum", numbers, rows)
    return Claim("optimality", title, NOT_ENOUGH,
                 "no neutral-coordinate drift measured and no two converged replicate runs with different "
                 "bests; convergence of p_t(E) alone says nothing about optimality", numbers, rows)


@dataclass
class PooledReliability:
    """Test-retest statistics pooled over every architecture with >= 2 replicates."""

    n_architectures: int
    n_candidates: int
    n_pairs: int
    icc: object  # theory.reliability.ICCResult
    pearson: float
    spearman: float
    spearman_ci: tuple[float, float]
    kendall: float
    kendall_ci: tuple[float, float]
    arcsin_prediction: float
    moran_expectation: float
    proxy_spearman_from_snr: float
    pairs_needed: float
    pairs_needed_worst: float
    copula: dict


def _interval(ci, r: float, n: int, minimum: int, level: float) -> tuple[float, float]:
    """``ci(r, n, level)``; (NaN, NaN) where its Fisher-z form needs more than ``n`` pairs."""
    return tuple(float(x) for x in ci(r, n, level)) if n > minimum else (math.nan, math.nan)


def pooled_reliability(runs: xr.Dataset, level: float = LEVEL) -> PooledReliability | None:
    """Pool rep_score over all runs and cycles; None when fewer than 3 pairs exist. ``level``:
    of the intervals (a family of tests passes its Bonferroni-corrected level)."""
    n_candidates = int(candidate_mask(runs).sum())
    if "rep_score" not in runs or runs.sizes.get("rep", 0) < 2:
        return None
    reps = runs["rep_score"].transpose(..., "rep").values.reshape(-1, runs.sizes["rep"]).astype(float)
    reps = reps[np.isfinite(reps).sum(axis=1) >= 2]
    pair = reps[np.isfinite(reps[:, 0]) & np.isfinite(reps[:, 1])][:, :2]
    if len(pair) < 3:
        return None
    icc = reliability.icc1(reps, level=level)
    n = len(pair)
    r_p = float(np.corrcoef(pair[:, 0], pair[:, 1])[0, 1])
    r_s = float(stats.spearmanr(pair[:, 0], pair[:, 1]).statistic)
    tau = float(stats.kendalltau(pair[:, 0], pair[:, 1]).statistic)
    rho = float(np.clip(icc.icc, -0.999, 0.999))
    return PooledReliability(
        n_architectures=len(reps), n_candidates=n_candidates, n_pairs=n, icc=icc, pearson=r_p,
        spearman=r_s, spearman_ci=_interval(proxy.spearman_ci, r_s, n, 3, level),
        kendall=tau, kendall_ci=_interval(proxy.kendall_ci, tau, n, 4, level),
        arcsin_prediction=float(proxy.spearman_from_pearson(rho)),
        moran_expectation=float(proxy.moran_expected_spearman(rho, n)),
        proxy_spearman_from_snr=float(proxy.spearman_from_snr(max(float(icc.snr), 0.0))),
        pairs_needed=float(proxy.pairs_to_distinguish_arcsin(rho)) if rho > 0 else math.inf,
        pairs_needed_worst=float(proxy.pairs_to_distinguish_arcsin(proxy.max_arcsin_gap()[0])),
        copula=proxy.copula_check(r_s, tau),
    )


def proxy_reliability(runs: xr.Dataset, level: float = LEVEL) -> Claim:
    """The arcsin law for the proxy, pooled over all evaluated architectures.

    With replicate proxy runs the test-retest Pearson is ICC(1), so the law predicts a
    test-retest Spearman of (6/pi) arcsin(ICC/2); with n pairs the observed Spearman is
    compared to Moran's finite-n expectation, not to that asymptote. ``level`` is the
    Spearman interval's (one test of a Bonferroni family of m passes 1 - (1 - LEVEL)/m).
    """
    pooled = pooled_reliability(runs, level)
    if pooled is None or pooled.n_architectures < MIN_ARCHITECTURES:
        have = 0 if pooled is None else pooled.n_architectures
        return Claim("arcsin", "Proxy reliability: the arcsin law", NOT_ENOUGH,
                     f"{have} architectures with two or more proxy replicates (need {MIN_ARCHITECTURES})",
                     {"n_architectures": have})
    lo, hi = pooled.spearman_ci
    consistent = lo <= pooled.moran_expectation <= hi
    numbers = {"n_candidates": pooled.n_candidates, "n_architectures": pooled.n_architectures,
               "n_pairs": pooled.n_pairs, "icc": float(pooled.icc.icc), "snr": float(pooled.icc.snr),
               "spearman": pooled.spearman, "spearman_ci": pooled.spearman_ci,
               "arcsin_prediction": pooled.arcsin_prediction, "moran_expectation": pooled.moran_expectation,
               "pairs_needed": pooled.pairs_needed}
    text = (f"pooled over {pooled.n_architectures} architectures ({pooled.n_pairs} test-retest pairs, "
            f"{pooled.n_candidates} candidates): observed Spearman {_fmt(pooled.spearman)} "
            f"[{_fmt(lo)}, {_fmt(hi)}] ({100 * level:.3g}% CI), Moran expectation {_fmt(pooled.moran_expectation)}, "
            f"arcsin asymptote {_fmt(pooled.arcsin_prediction)} from ICC {_fmt(float(pooled.icc.icc))}")
    if not consistent:
        return Claim("arcsin", "Proxy reliability: the arcsin law", NOT_SUPPORTED,
                     f"{text}; the expectation lies outside the CI", numbers)
    if pooled.n_pairs < pooled.pairs_needed:
        return Claim("arcsin", "Proxy reliability: the arcsin law", NOT_ENOUGH,
                     f"{text}; consistent, but telling the law from rho_S = rho at this rho needs "
                     f"about {pooled.pairs_needed:,.0f} pairs", numbers)
    return Claim("arcsin", "Proxy reliability: the arcsin law", SUPPORTED,
                 f"{text}; consistent, with more pairs than the {pooled.pairs_needed:,.0f} needed to tell it "
                 "from rho_S = rho", numbers)


# --------------------------------------------------------------------------- delta vs full

def _output_lines(runs: xr.Dataset, mode: str) -> np.ndarray:
    """Lines of each proposal's extracted output: the delta in delta mode, the file in
    full mode (NaN where nothing could be extracted), flattened like ``candidate_mask``."""
    name = "delta_lines" if mode == "delta" else "code_lines"
    if name not in runs:
        return np.full(candidate_mask(runs).size, np.nan)
    lines = runs[name].values.astype(float).ravel()
    return np.where(lines > 0, lines, np.nan)


def generation_table(runs: xr.Dataset) -> dict[str, dict]:
    """Per generation mode: counts, valid rate (Wilson CI), statuses, scores, lengths, time.

    Valid means status ``ok``. Output lines are the extracted delta's (delta mode) or
    file's (full mode), as the loop's ``lines_per_proposal``; per-valid figures divide the totals spent on all proposals by the valid ones (the
    cost of one usable candidate).
    """
    if "mode" not in runs.coords:
        raise ValueError("the runs have no 'mode' coordinate; load them with analysis.load([...])")
    out: dict[str, dict] = {}
    for mode in sorted({str(m) for m in runs["mode"].values}):
        sel = runs.isel(run=np.flatnonzero(runs["mode"].values.astype(str) == mode))
        mask = candidate_mask(sel).values.ravel()
        status = sel["status"].values.astype(str).ravel()[mask]
        n = len(status)
        valid = status == "ok"
        k = int(valid.sum())
        score = sel["score"].values.astype(float).ravel()[mask] if "score" in sel else np.full(n, np.nan)
        lines = _output_lines(sel, mode)[mask]
        tokens = sel["completion_tokens"].values.astype(float).ravel()[mask] if "completion_tokens" in sel else np.full(n, np.nan)
        secs = sel["gen_seconds"].values.astype(float).ravel()[mask] if "gen_seconds" in sel else np.full(n, np.nan)
        lo, hi = convergence.wilson_interval(k, n, LEVEL) if n else (math.nan, math.nan)
        valid_scores = score[valid & np.isfinite(score)]
        out[mode] = {
            "runs": int(sel.sizes["run"]), "proposals": n, "valid": k,
            "valid_rate": k / n if n else math.nan, "valid_lo": float(lo), "valid_hi": float(hi),
            "statuses": {s: int((status == s).sum()) for s in sorted(set(status))},
            "score_mean": float(valid_scores.mean()) if len(valid_scores) else math.nan,
            "score_best": float(valid_scores.max()) if len(valid_scores) else math.nan,
            "scores": valid_scores, "lines": lines, "tokens": tokens,
            "lines_per_proposal": float(np.nanmean(lines)) if n else math.nan,
            "tokens_per_proposal": float(np.nanmean(tokens)) if n else math.nan,
            "lines_per_valid": float(np.nansum(lines) / k) if k else math.nan,
            "tokens_per_valid": float(np.nansum(tokens) / k) if k else math.nan,
            "gen_seconds": float(np.nansum(secs)),
            "gen_seconds_per_valid": float(np.nansum(secs) / k) if k else math.nan,
        }
    return out


def delta_vs_full(runs: xr.Dataset) -> Claim | None:
    """Delta generation beats full generation on valid rate (None unless both modes ran).

    Two-proportion comparison: the Newcombe (Wilson-score) interval for the
    difference of valid rates; accuracy by Mann-Whitney U on valid candidates.
    """
    if "mode" not in runs.coords or not {"delta", "full"} <= {str(m) for m in runs["mode"].values}:
        return None
    table = generation_table(runs)
    d, f = table["delta"], table["full"]
    diff = d["valid_rate"] - f["valid_rate"]
    lo = diff - math.sqrt((d["valid_rate"] - d["valid_lo"]) ** 2 + (f["valid_hi"] - f["valid_rate"]) ** 2)
    hi = diff + math.sqrt((d["valid_hi"] - d["valid_rate"]) ** 2 + (f["valid_rate"] - f["valid_lo"]) ** 2)
    numbers = {"delta_valid": d["valid_rate"], "full_valid": f["valid_rate"], "diff": diff, "diff_ci": (lo, hi),
               "delta_n": d["proposals"], "full_n": f["proposals"]}
    rows = []
    if len(d["scores"]) >= 2 and len(f["scores"]) >= 2:
        u = stats.mannwhitneyu(d["scores"], f["scores"], alternative="two-sided")
        numbers["accuracy_p"] = float(u.pvalue)
        rows.append(f"mean proxy accuracy of valid candidates: delta {_fmt(d['score_mean'])}, "
                    f"full {_fmt(f['score_mean'])} (Mann-Whitney p = {u.pvalue:.3g})")
    if d["lines_per_proposal"] and f["lines_per_proposal"]:
        shorter = 1 - d["lines_per_proposal"] / f["lines_per_proposal"]
        numbers["shorter"] = shorter
        rows.append(f"delta outputs are {100 * shorter:.0f}% shorter in lines than full outputs")
    text = (f"valid rate delta {100 * d['valid_rate']:.1f}% vs full {100 * f['valid_rate']:.1f}%, "
            f"difference {100 * diff:+.1f} points [{100 * lo:+.1f}, {100 * hi:+.1f}] "
            f"(n = {d['proposals']} / {f['proposals']})")
    if lo > 0:
        verdict = SUPPORTED
    elif hi < 0 or (hi - lo) / 2 <= 0.10:
        verdict = NOT_SUPPORTED
    else:
        verdict = NOT_ENOUGH
    return Claim("delta_vs_full", "Delta generation beats full generation", verdict, text, numbers, rows)


def all_claims(runs: xr.Dataset) -> list[Claim]:
    """Every claim the runs can speak to, in report order."""
    claims = [monotone_threshold(runs), geometric_convergence(runs), smoothing_identity(runs),
              optimality(runs), proxy_reliability(runs)]
    dvf = delta_vs_full(runs)
    if dvf is not None:
        claims.append(dvf)
    return claims
