"""Per-cycle hooks and the built-in theory instrumentation.

After every cycle the loop hands each hook the cycle's
:class:`~cem_nas.records.CycleRecord` (every candidate with its final status, the elites,
the update statistics, phase timings).
A hook returns named values: a float becomes a cycle variable (dims ``cycle``), an
array with one entry per candidate becomes a candidate variable (dims ``cycle, cand``);
the store writes them with the units and description from the hook's ``variables``.

:class:`Instrumentation` computes what the convergence theory talks about (DESIGN.md,
"The claims this tool must be able to test"), with ``theory/``. Where there is not
enough data for a quantity it is NaN; a hook never stops a run for lack of data.
"""
from __future__ import annotations

import importlib
import math
from typing import Any

import numpy as np
from scipy import stats

from cem_nas.records import SCORED, STATUSES, CycleRecord
from theory import proxy, reliability
from theory.convergence import wilson_interval

NAN = math.nan


class Hook:
    """Called after every cycle; subclass and override what you need."""

    #: name -> (units, description) of every value after_cycle returns.
    variables: dict[str, tuple[str, str]] = {}

    def after_cycle(self, record: CycleRecord) -> dict[str, Any]:
        """Named per-cycle values (floats) or per-candidate arrays for the store."""
        return {}

    def after_values(self, record: CycleRecord, values: dict[str, Any]) -> None:
        """Called once every hook's values of the cycle are known, before the cycle is
        stored: for hooks that show a cycle rather than measure it (TensorBoard)."""

    def state_dict(self) -> dict:
        """JSON-able state carried across cycles (saved for resume)."""
        return {}

    def load_state_dict(self, state: dict) -> None:
        """Restore what :meth:`state_dict` returned."""


def load_user_hook(spec: str) -> Hook:
    """Construct a hook from 'package.module:Class' (no constructor arguments)."""
    module_name, _, attr = spec.partition(":")
    try:
        cls = getattr(importlib.import_module(module_name), attr)
    except (ImportError, AttributeError) as e:
        raise ValueError(f"hooks.user: cannot load {spec!r} ({e}); give 'package.module:Class' of an importable class") from None
    hook = cls()
    if not callable(getattr(hook, "after_cycle", None)):
        raise ValueError(f"hooks.user: {spec!r} has no after_cycle(record) method")
    return hook


def retest_correlations(rep: np.ndarray, level: float) -> dict[str, float]:
    """Test-retest Pearson, Spearman and Kendall between replicate 0 and 1, with CIs.

    For a one-way random-effects proxy the population test-retest Pearson equals ICC(1)
    (DESIGN.md); the Spearman is compared with the arcsin prediction
    ``spearman_from_pearson`` and with Moran's finite-n expectation at the observed n.
    Correlations need 3 non-constant pairs; the Fisher-z intervals need n > 3 (Pearson,
    Spearman) and n > 4 (Kendall); below that the value is NaN.
    """
    out = dict.fromkeys((
        "retest_pearson", "retest_pearson_lo", "retest_pearson_hi", "retest_spearman", "retest_spearman_lo",
        "retest_spearman_hi", "retest_kendall", "retest_kendall_lo", "retest_kendall_hi",
        "spearman_arcsin_pred", "spearman_moran_expected", "copula_from_spearman", "copula_from_kendall"), NAN)
    if rep.shape[1] < 2:
        return out
    both = np.isfinite(rep[:, 0]) & np.isfinite(rep[:, 1])
    x, y = rep[both, 0], rep[both, 1]
    n = len(x)
    if n < 3 or np.ptp(x) == 0 or np.ptp(y) == 0:
        return out
    r = float(np.clip(np.corrcoef(x, y)[0, 1], -1, 1))
    r_s = float(stats.spearmanr(x, y).statistic)
    tau = float(stats.kendalltau(x, y).statistic)
    out.update(retest_pearson=r, retest_spearman=r_s, retest_kendall=tau,
               spearman_arcsin_pred=proxy.spearman_from_pearson(r),
               spearman_moran_expected=proxy.moran_expected_spearman(r, n))
    copula = proxy.copula_check(r_s, tau)
    out.update(copula_from_spearman=copula["copula_from_spearman"], copula_from_kendall=copula["copula_from_kendall"])
    if n > 3:
        out["retest_pearson_lo"], out["retest_pearson_hi"] = proxy.pearson_ci(r, n, level)
        out["retest_spearman_lo"], out["retest_spearman_hi"] = proxy.spearman_ci(r_s, n, level)
    if n > 4:
        out["retest_kendall_lo"], out["retest_kendall_hi"] = proxy.kendall_ci(tau, n, level)
    return {k: float(v) for k, v in out.items()}


def replicate_reliability(rep: np.ndarray, level: float) -> dict[str, float]:
    """ICC(1) and SNR = ICC/(1-ICC) with F-based CIs from the replicated architectures."""
    rows = rep[np.sum(np.isfinite(rep), axis=1) >= 2] if rep.shape[1] >= 2 else rep[:0]
    out = {"icc": NAN, "icc_lo": NAN, "icc_hi": NAN, "snr": NAN, "snr_lo": NAN, "snr_hi": NAN,
           "n_rep_arch": float(len(rows))}
    # ANOVA needs >= 3 architectures and some spread, else the F ratio is undefined.
    if len(rows) < 3 or np.nanstd(rows) == 0:
        return out
    res = reliability.icc1(rows, level=level)
    out.update(icc=res.icc, icc_lo=res.ci_low, icc_hi=res.ci_high, snr=res.snr,
               snr_lo=res.snr_ci_low, snr_hi=res.snr_ci_high)
    return {k: float(v) for k, v in out.items()}


class Instrumentation(Hook):
    """The theory instrumentation of every cycle (the store's cycle variables).

    Elite set E = {score >= gamma_ref}; gamma_ref is the configured value, or else the
    first finite elite threshold gamma_t, frozen. p_t(E) is the share of *all* of the
    cycle's proposals in E (a failed candidate is not in E), with a Wilson interval;
    q_t(E) is the share of the elites in E. Both are read as the run reads repeats
    (``search.duplicates``, the store's ``duplicates`` attribute); p_t(E) is also stored
    in both readings (``p_E_inherit``: a repeat has its twin's score; ``p_E_reject``: a
    repeat is a miss), beside the share of proposals that are new architectures and the
    novel-valid yield (new and ``ok``). The smoothing identity of mixture CE,
    ``1-p_{t+1} = alpha(1-q_t) + (1-alpha)(1-p_t)``, is checked when cycle t+1 is
    measured and stored on cycle t+1's row: ``smoothing_residual`` is the left side
    minus the right side with the sampler's known alpha (grammar sampler; LLM with
    parameter smoothing). For an LLM without smoothing alpha is unknown; the row then
    holds the implied alpha
    ``((1-p_{t+1})-(1-p_t)) / ((1-q_t)-(1-p_t))`` and no residual. The identity holds
    for the sampling distribution, so the residual of the sample shares has a sampling
    error of order sqrt(p(1-p)/N). It holds exactly only when the whole joint distribution
    is mixed; the grammar sampler mixes each coordinate's marginal, so for a set E defined
    by score (not by one coordinate) a systematic residual is itself a finding.
    """

    variables = {
        "gamma_ref": ("accuracy", "reference threshold of the elite set E (score >= gamma_ref)"),
        "p_E": ("1", "p_t(E) in the run's reading of repeats (attrs duplicates): share of all proposals with score >= gamma_ref"),
        "p_E_lo": ("1", "Wilson interval lower bound of p_E"),
        "p_E_hi": ("1", "Wilson interval upper bound of p_E"),
        "q_E": ("1", "q_t(E): share of this cycle's elites with score >= gamma_ref"),
        "alpha": ("1", "smoothing step from the previous cycle: the sampler's known alpha, else the implied alpha"),
        "smoothing_residual": ("1", "(1-p_t) - [alpha(1-q_{t-1}) + (1-alpha)(1-p_{t-1})]; NaN when alpha is implied"),
        "p_E_inherit": ("1", "p_t(E) when a repeat has its twin's score (search.duplicates = inherit, the CE reading)"),
        "p_E_inherit_lo": ("1", "Wilson interval lower bound of p_E_inherit"),
        "p_E_inherit_hi": ("1", "Wilson interval upper bound of p_E_inherit"),
        "p_E_reject": ("1", "p_t(E) when a repeat is a miss (search.duplicates = reject, the reference reading)"),
        "p_E_reject_lo": ("1", "Wilson interval lower bound of p_E_reject"),
        "p_E_reject_hi": ("1", "Wilson interval upper bound of p_E_reject"),
        "valid_rate": ("1", "share of proposals with status ok"),
        "duplicate_rate": ("1", "share of proposals with status duplicate (repeats rejected, not trained)"),
        "repeat_rate": ("1", "share of proposals that repeat an archived architecture (not trained, either reading)"),
        "new_share": ("1", "share of proposals that are new architectures (archived and trained)"),
        "novel_valid_yield": ("1", "share of proposals that are new architectures with status ok"),
        "strict_rate": ("1", "share of proposals whose delta applied at the strict tier (its @@ headers exact); "
                        "NaN in full mode"),
        "chance_share": ("1", "share of the trained candidates (ok or low_accuracy) at chance: accuracy <= 1.2 x "
                         "chance, status low_accuracy (a proxy whose runs sit at chance ranks nothing)"),
        "chance_share_lo": ("1", "Wilson interval lower bound of chance_share"),
        "chance_share_hi": ("1", "Wilson interval upper bound of chance_share"),
        "n_cand": ("count", "proposals this cycle"),
        "n_valid": ("count", "proposals with status ok"),
        "n_elite": ("count", "elites selected this cycle"),
        "score_mean": ("accuracy", "mean proxy accuracy of the valid candidates"),
        "score_median": ("accuracy", "median proxy accuracy of the valid candidates"),
        "score_best": ("accuracy", "best proxy accuracy this cycle"),
        "best_so_far": ("accuracy", "best proxy accuracy up to and including this cycle"),
        "icc": ("1", "ICC(1) of the replicate proxy runs (one-way random effects, ANOVA)"),
        "icc_lo": ("1", "F-based CI lower bound of icc"),
        "icc_hi": ("1", "F-based CI upper bound of icc"),
        "snr": ("1", "proxy signal-to-noise ratio ICC/(1-ICC)"),
        "snr_lo": ("1", "CI lower bound of snr"),
        "snr_hi": ("1", "CI upper bound of snr"),
        "n_rep_arch": ("count", "architectures with at least two scored replicate runs"),
        "retest_pearson": ("1", "Pearson correlation between replicate 0 and replicate 1"),
        "retest_pearson_lo": ("1", "Fisher-z CI lower bound of retest_pearson"),
        "retest_pearson_hi": ("1", "Fisher-z CI upper bound of retest_pearson"),
        "retest_spearman": ("1", "Spearman correlation between replicate 0 and replicate 1"),
        "retest_spearman_lo": ("1", "Fisher-z CI lower bound of retest_spearman"),
        "retest_spearman_hi": ("1", "Fisher-z CI upper bound of retest_spearman"),
        "retest_kendall": ("1", "Kendall tau between replicate 0 and replicate 1"),
        "retest_kendall_lo": ("1", "Fisher-z CI lower bound of retest_kendall"),
        "retest_kendall_hi": ("1", "Fisher-z CI upper bound of retest_kendall"),
        "spearman_arcsin_pred": ("1", "(6/pi) arcsin(r/2) of the test-retest Pearson r (bivariate-normal prediction)"),
        "spearman_moran_expected": ("1", "Moran's finite-n expectation of the Spearman at the test-retest Pearson"),
        "copula_from_spearman": ("1", "2 sin(pi r_S / 6): the Pearson a normal copula implies from the Spearman"),
        "copula_from_kendall": ("1", "sin(pi tau / 2): the Pearson an elliptical copula implies from Kendall's tau"),
        "update_loss_before": ("nat/token", "update training loss before the CE update"),
        "update_loss_after": ("nat/token", "update training loss after the CE update"),
        "elite_nll_before": ("nat/token", "mean NLL of the elite completions before the update"),
        "elite_nll_after": ("nat/token", "mean NLL of the elite completions after the update"),
        "tokens_per_proposal": ("token", "mean completion tokens per proposal"),
        "lines_per_proposal": ("line", "mean lines of the sampler's output per proposal (delta or file)"),
        "neutral_diversity": ("1", "Gini-Simpson diversity 1 - sum P^2 of the sampler's neutral control "
                              "coordinate when the cycle was sampled (drift); NaN without one"),
        "seconds_sample": ("s", "wall time of sampling the proposals"),
        "seconds_apply": ("s", "wall time of applying deltas, syntax and novelty checks"),
        "seconds_evaluate": ("s", "wall time of proxy training and scoring"),
        "seconds_update": ("s", "wall time of the sampler update"),
        "in_E": ("1", "candidate score >= gamma_ref"),
    }

    def __init__(self, gamma_ref: float = NAN, level: float = 0.95, mode: str = "delta"):
        self.gamma_ref = float(gamma_ref)
        self.level = level
        self.mode = mode
        self.previous: dict[str, float] = {}  # p_E and q_E of the previous cycle
        self.best_so_far = NAN

    def state_dict(self) -> dict:
        return {"gamma_ref": self.gamma_ref, "previous": self.previous, "best_so_far": self.best_so_far}

    def load_state_dict(self, state: dict) -> None:
        self.gamma_ref = float(state["gamma_ref"])
        self.previous = {k: float(v) for k, v in state["previous"].items()}
        self.best_so_far = float(state["best_so_far"])

    def after_cycle(self, record: CycleRecord) -> dict[str, Any]:
        if math.isnan(self.gamma_ref) and math.isfinite(record.gamma):
            self.gamma_ref = record.gamma
        scores, status = record.scores(), record.statuses()
        n = len(scores)
        valid = scores[status == "ok"]
        elites = np.array([c.is_elite for c in record.candidates], dtype=bool)
        in_e = self._in_e(scores)
        k = int(in_e.sum())
        p_lo, p_hi = wilson_interval(k, n, self.level)
        p = k / n
        q = float(in_e[elites].mean()) if elites.any() else NAN
        out: dict[str, Any] = {
            "gamma_ref": self.gamma_ref, "p_E": p, "p_E_lo": p_lo, "p_E_hi": p_hi, "q_E": q,
            "valid_rate": float(np.mean(status == "ok")), "duplicate_rate": float(np.mean(status == "duplicate")),
            "strict_rate": float(np.mean([c.apply_tier == "strict" for c in record.candidates]))
            if self.mode == "delta" else NAN,
            "n_cand": float(n), "n_valid": float(len(valid)), "n_elite": float(elites.sum()),
            "score_mean": float(np.mean(valid)) if len(valid) else NAN,
            "score_median": float(np.median(valid)) if len(valid) else NAN,
            "score_best": float(np.nanmax(scores)) if np.isfinite(scores).any() else NAN,
            "in_E": in_e,
        }
        # trained here: a repeat's inherited status would count its twin twice
        out.update(chance_share(status[[c.is_new for c in record.candidates]], self.level))
        out.update(self._smoothing(p, record.alpha))
        for reading in ("inherit", "reject"):
            read = np.array([c.reading(reading)[1] for c in record.candidates], dtype=float)
            k_r = int(self._in_e(read).sum())
            lo, hi = wilson_interval(k_r, n, self.level)
            out.update({f"p_E_{reading}": k_r / n, f"p_E_{reading}_lo": lo, f"p_E_{reading}_hi": hi})
        new = np.array([c.is_new for c in record.candidates], dtype=bool)
        out.update(repeat_rate=float(np.mean([bool(c.twin) for c in record.candidates])),
                   new_share=float(new.mean()), novel_valid_yield=float(np.mean(new & (status == "ok"))))
        self.best_so_far = float(np.fmax(self.best_so_far, out["score_best"]))
        out["best_so_far"] = self.best_so_far
        rep = record.rep_matrix()
        out.update(replicate_reliability(rep, self.level))
        out.update(retest_correlations(rep, self.level))
        u = record.update
        out.update(update_loss_before=u.loss_before, update_loss_after=u.loss_after,
                   elite_nll_before=u.elite_nll_before, elite_nll_after=u.elite_nll_after)
        out.update(proposal_sizes(record, self.mode))
        out["neutral_diversity"] = record.neutral_diversity
        for phase in ("sample", "apply", "evaluate", "update"):
            out[f"seconds_{phase}"] = float(record.seconds.get(phase, NAN))
        self.previous = {"p_E": p, "q_E": q}
        return out

    def _in_e(self, scores: np.ndarray) -> np.ndarray:
        """Membership of E = {score >= gamma_ref} (nobody while gamma_ref is unknown)."""
        if not math.isfinite(self.gamma_ref):
            return np.zeros(len(scores), bool)
        return np.nan_to_num(scores, nan=-np.inf) >= self.gamma_ref

    def _smoothing(self, p: float, alpha: float) -> dict[str, float]:
        """alpha and residual of 1-p_{t+1} = alpha(1-q_t) + (1-alpha)(1-p_t) (see class doc)."""
        p0, q0 = self.previous.get("p_E", NAN), self.previous.get("q_E", NAN)
        if math.isfinite(alpha):
            residual = (1 - p) - (alpha * (1 - q0) + (1 - alpha) * (1 - p0))
            return {"alpha": alpha, "smoothing_residual": residual}
        denominator = (1 - q0) - (1 - p0)
        implied = ((1 - p) - (1 - p0)) / denominator if denominator != 0 else NAN
        return {"alpha": implied, "smoothing_residual": NAN}


def chance_share(status: np.ndarray, level: float) -> dict[str, float]:
    """Share of the trained candidates whose proxy accuracy is at chance (status
    ``low_accuracy``), with its Wilson interval; NaN when nothing was trained."""
    n = int(np.isin(status, SCORED).sum())
    if n == 0:
        return {"chance_share": NAN, "chance_share_lo": NAN, "chance_share_hi": NAN}
    k = int(np.sum(status == "low_accuracy"))
    lo, hi = wilson_interval(k, n, level)
    return {"chance_share": k / n, "chance_share_lo": float(lo), "chance_share_hi": float(hi)}


def proposal_sizes(record: CycleRecord, mode: str) -> dict[str, float]:
    """Mean completion tokens, and mean output lines (delta lines in delta mode, file lines
    in full mode) over the proposals whose output could be extracted."""
    cands = record.candidates
    lines = [c.delta_lines if mode == "delta" else c.code_lines for c in cands
             if (c.delta if mode == "delta" else c.code)]
    return {"tokens_per_proposal": float(np.mean([c.completion_tokens for c in cands])),
            "lines_per_proposal": float(np.mean(lines)) if lines else NAN}


def status_counts(record: CycleRecord) -> np.ndarray:
    """Candidates per final status, in the order of :data:`STATUSES`."""
    status = record.statuses()
    return np.array([int(np.sum(status == s)) for s in STATUSES], dtype=np.int64)
