"""The paper protocol's report: our runs beside the source papers' published figures.

The input is one ordinary run directory per (LLM, generation mode), as
``experiments.paper_protocol`` makes them. The report holds, with a sample size and an
interval in every cell:

* per LLM and mode: valid rate (Wilson), mean and best proxy accuracy of the valid
  candidates, output lines and tokens per proposal (Student t), beside seed 001's figures;
* per LLM: the delta / full validity ratio (Katz log interval) and what the token-error
  model predicts from our own output lengths, beside seed 000's 1.41 observed / 2.23 predicted;
* the convergence claims of every run (:mod:`analysis.claims`, one run at a time);
* the arcsin law on the test-retest replicates, pooled and per LLM (Bonferroni over the LLMs);
* wall seconds per phase, and the full protocol's time projected from them;
* one verdict per seed claim: supports / rejects / cannot decide, and why.

The t intervals treat a run's proposals as independent draws. They are not identically
distributed (the sampler moves between cycles), so those intervals describe the runs and
do not generalise beyond them.
"""
from __future__ import annotations

import math
from collections.abc import Mapping
from pathlib import Path

import numpy as np
import xarray as xr

from analysis import claims as cl
from analysis import summaries
from analysis.load import as_runs, load
from analysis.tables import Table, fmt, to_markdown
from cem_nas.store import RunStore
from theory import validity

#: The protocol's full size: cycles x candidates per run.
FULL_CYCLES, FULL_CANDIDATES = 22, 50
#: The protocol's LLMs and generation modes; the projection names the cells not yet run.
MODELS = ("smollm2", "qwen2.5-coder-0.5b", "qwen2.5-coder-1.5b")
MODES = ("delta", "full")

#: Seed 001's published delta-vs-full figures (DeepSeek-Coder-7B, 22 cycles x 50 candidates
#: per LLM); rates and accuracies as fractions, lines as printed. No interval or best accuracy
#: is given for them here.
SEED_001 = {"DeepSeek-Coder-7B": {"delta": {"valid_rate": 0.753, "score_mean": 0.658, "lines": "30-50"},
                                  "full": {"valid_rate": 0.506, "score_mean": 0.423, "lines": "200+"}}}
#: Seed 000's figures: the delta / full validity ratio and its token-error prediction, and
#: the size of its arcsin test (3 LLMs x 22 cycles x 50 candidates).
SEED_000 = {"ratio_observed": 1.41, "ratio_predicted": 2.23, "architectures": 3300}

#: analysis.claims verdicts as the seed-claims table says them.
READING = {cl.SUPPORTED: "supports", cl.NOT_SUPPORTED: "rejects", cl.NOT_ENOUGH: "cannot decide"}
#: Per-run convergence claims: column label -> claim function of analysis.claims.
CONVERGENCE = {"monotone gamma_t": cl.monotone_threshold, "geometric p_t(E)": cl.geometric_convergence,
               "smoothing identity": cl.smoothing_identity, "convergence = optimality": cl.optimality}
PHASES = ("sample", "apply", "evaluate", "update")


def cell_name(model: str, mode: str) -> str:
    """The run directory name of one cell: a hub id's '/' becomes '--' (as in the hub cache).

    >>> cell_name("deepseek-ai/deepseek-coder-6.7b-instruct", "delta")
    'deepseek-ai--deepseek-coder-6.7b-instruct-delta'
    """
    return f"{model.strip('/').replace('/', '--')}-{mode}"


def cycles_done(root: Path) -> int:
    """Cycles a run directory has committed (0 when it has none, or does not exist)."""
    store = RunStore(root)
    return int(store.load_state()["cycles_done"]) if store.has_state() else 0


def load_cells(cells: Mapping[tuple[str, str], Path]) -> xr.Dataset | None:
    """The ``run`` view of every cell with a committed cycle, with a ``model`` coordinate;
    None when no cell has one."""
    ran = {key: Path(root) for key, root in cells.items() if cycles_done(Path(root)) > 0}
    if not ran:
        return None
    runs = as_runs(load(list(ran.values())))
    return runs.assign_coords(model=("run", [model for model, _ in ran]), mode=("run", [mode for _, mode in ran]))


def _subset(runs: xr.Dataset, **coords: str) -> xr.Dataset:
    keep = np.ones(runs.sizes["run"], bool)
    for name, value in coords.items():
        keep &= runs[name].values.astype(str) == value
    return runs.isel(run=np.flatnonzero(keep))


def _models(runs: xr.Dataset) -> list[str]:
    return list(dict.fromkeys(str(m) for m in runs["model"].values))


def _seconds_interval(values) -> tuple[float, float, float]:
    """Student-t interval of mean seconds, its lower end cut at 0 (a duration is not negative)."""
    mean, lo, hi = summaries.seed_interval(values)
    return mean, max(lo, 0.0) if math.isfinite(lo) else lo, hi


def _mean_ci(values: np.ndarray, digits: int = 3, interval=summaries.seed_interval) -> str:
    """'mean [lo, hi] (n=...)': ``interval`` (Student t) of the mean over the finite values."""
    mean, lo, hi = interval(values)
    return f"{fmt(mean, digits)} [{fmt(lo, digits)}, {fmt(hi, digits)}] (n={int(np.isfinite(values).sum())})"


def _rate_ci(k: int, n: int, lo: float, hi: float) -> str:
    return f"{100 * k / n:.1f}% [{100 * lo:.1f}, {100 * hi:.1f}] ({k}/{n})" if n else "n/a (n=0)"


# --------------------------------------------------------------------------- generation

def generation_table(runs: xr.Dataset) -> Table:
    """Per LLM and mode beside seed 001: valid rate, accuracy, best, lines, tokens."""
    rows = []
    for model, modes in SEED_001.items():
        for mode, v in modes.items():
            rows.append(["seed 001", model, mode, "1,100 per LLM", f"{100 * v['valid_rate']:.1f}%",
                         f"{100 * v['score_mean']:.1f}%", "n/a", v["lines"], "n/a"])
    for r in range(runs.sizes["run"]):
        one = runs.isel(run=[r])
        mode = str(one["mode"].values[0])
        g = cl.generation_table(one)[mode]
        rows.append(["ours", str(one["model"].values[0]), mode, fmt(g["proposals"]),
                     _rate_ci(g["valid"], g["proposals"], g["valid_lo"], g["valid_hi"]),
                     _mean_ci(g["scores"]), fmt(g["score_best"]), _mean_ci(g["lines"], 1), _mean_ci(g["tokens"], 0)])
    return Table(["source", "LLM", "mode", "proposals", "valid [95% Wilson] (k/n)", "mean proxy acc. of valid [95% t]",
                  "best proxy acc.", "output lines / proposal [95% t]", "tokens / proposal [95% t]"], rows,
                 ["l", "l", "l"] + ["r"] * 6)


def _valid_and_tokens(runs: xr.Dataset) -> tuple[np.ndarray, np.ndarray]:
    """Per proposal: valid (status ok) and completion tokens (NaN where none were counted)."""
    mask = cl.candidate_mask(runs).values.ravel()
    valid = runs["status"].values.astype(str).ravel()[mask] == "ok"
    tokens = runs["completion_tokens"].values.astype(float).ravel()[mask]
    return valid, np.where(tokens >= 1, tokens, np.nan)


def validity_ratio(runs: xr.Dataset) -> dict:
    """Delta / full valid-rate ratio (Katz interval) and the token-error models' predictions.

    Each model (``theory.validity``) is fitted by maximum likelihood on the (tokens, valid)
    pairs of both modes together and predicts the ratio from the two modes' observed token
    counts; a fit that cannot be made (no valid output) is reported with its reason.
    """
    (vd, td), (vf, tf) = (_valid_and_tokens(_subset(runs, mode=m)) for m in MODES)
    out = {"delta": (int(vd.sum()), vd.size), "full": (int(vf.sum()), vf.size)}
    if not vd.size or not vf.size:
        return out
    out["measured"] = validity.measured_valid_ratio(vd, vf)
    counted = np.isfinite(np.concatenate([td, tf]))
    for model in validity.MODELS:
        try:
            fit = validity.fit_token_error(np.concatenate([td, tf])[counted], np.concatenate([vd, vf])[counted], model)
            out[model] = validity.predicted_valid_ratio(fit, td[np.isfinite(td)], tf[np.isfinite(tf)])
        except ValueError as e:  # no valid output, or no counted tokens in a mode
            out[model] = str(e)
    return out


def _ratio_cell(value) -> str:
    if isinstance(value, str):
        return f"n/a: {value}"
    return "n/a" if value is None else f"{value[0]:.2f} [{value[1]:.2f}, {value[2]:.2f}]"


def ratio_table(ratios: Mapping[str, dict]) -> Table:
    """Seed 000's ratio beside ours, per LLM and pooled."""
    rows = [["seed 000", "", "", f"{SEED_000['ratio_observed']:.2f}", f"{SEED_000['ratio_predicted']:.2f}", ""]]
    for scope, r in ratios.items():
        rows.append(["ours", scope, " / ".join(f"{k}/{n}" for k, n in (r["delta"], r["full"])),
                     _ratio_cell(r.get("measured")), _ratio_cell(r.get("independent")), _ratio_cell(r.get("markov"))])
    return Table(["source", "LLM", "valid delta / full (k/n)", "measured ratio [95% Katz]",
                  "predicted: independent tokens [95%]", "predicted: Markov tokens [95%]"], rows, ["l"] * 3 + ["r"] * 3)


# --------------------------------------------------------------------------- claims

def convergence_claims(runs: xr.Dataset) -> dict[str, list[cl.Claim]]:
    """Every run's convergence claims, decided on that run alone."""
    return {str(runs["run"].values[r]): [claim(runs.isel(run=[r])) for claim in CONVERGENCE.values()]
            for r in range(runs.sizes["run"])}


def convergence_table(per_run: Mapping[str, list[cl.Claim]]) -> Table:
    return Table(["run", *CONVERGENCE], [[run] + [c.verdict for c in found] for run, found in per_run.items()],
                 ["l"] * (1 + len(CONVERGENCE)))


def arcsin_claims(runs: xr.Dataset) -> dict[str, cl.Claim]:
    """The arcsin law pooled over every run (95%) and per LLM at the Bonferroni level
    1 - 0.05 / m over the m LLMs, so that the family of per-LLM tests errs at 5%."""
    models = _models(runs)
    level = 1 - (1 - cl.LEVEL) / len(models)
    out = {"pooled": cl.proxy_reliability(runs)}
    out.update({model: cl.proxy_reliability(_subset(runs, model=model), level) for model in models})
    return out


def arcsin_table(found: Mapping[str, cl.Claim]) -> Table:
    rows = []
    for scope, claim in found.items():
        n = claim.numbers
        lo, hi = n.get("spearman_ci", (math.nan, math.nan))
        rows.append([scope, fmt(n.get("n_architectures", 0)), fmt(n.get("n_pairs", math.nan)), fmt(n.get("icc", math.nan)),
                     f"{fmt(n.get('spearman', math.nan))} [{fmt(lo)}, {fmt(hi)}]", fmt(n.get("moran_expectation", math.nan)),
                     fmt(n.get("arcsin_prediction", math.nan)), fmt(n.get("pairs_needed", math.nan), 0), claim.verdict])
    return Table(["scope", "architectures", "pairs", "ICC(1)", "test-retest Spearman [CI]", "Moran expectation",
                  "arcsin (6/pi) asin(ICC/2)", "pairs to tell from rho_S = rho", "verdict"], rows)


def _ratio_verdict(r: dict) -> tuple[str, str]:
    """Seed 000: delta outputs are valid more often (1.41x), and the token-error model
    overstates that ratio (2.23). Verdicts on both from one LLM's (or the pool's) ratios."""
    if "measured" not in r:
        both = ("cannot decide", "needs both modes")
        return both, both
    ratio, lo, hi = r["measured"]
    n = f"n = {r['delta'][1]} / {r['full'][1]}"
    seed = "contains" if lo <= SEED_000["ratio_observed"] <= hi else "excludes"
    better = ("supports" if lo > 1 else "rejects" if hi < 1 else "cannot decide",
              f"ratio {ratio:.2f} [{lo:.2f}, {hi:.2f}] ({n}); the interval {seed} seed 000's 1.41")
    pred = r.get("markov")
    if not isinstance(pred, tuple):
        return better, ("cannot decide", f"no Markov token-error fit: {pred}")
    if pred[1] > hi:
        over = "supports", f"predicted {_ratio_cell(pred)} lies above the measured interval"
    elif pred[2] < lo:
        over = "rejects", f"predicted {_ratio_cell(pred)} lies below the measured interval"
    else:
        over = "cannot decide", f"predicted {_ratio_cell(pred)} overlaps the measured [{lo:.2f}, {hi:.2f}] ({n})"
    return better, over


def seed_claims_table(runs: xr.Dataset, ratios: Mapping[str, dict], arcsin: Mapping[str, cl.Claim]) -> Table:
    """One row per seed claim (per LLM where the claim is per LLM): reading, and why."""
    rows = []
    for words, claim in (("monotonic quality improvement", cl.monotone_threshold(runs)),
                         ("geometric convergence of the elite probability", cl.geometric_convergence(runs))):
        rows.append(["seed 000", f"{words} (tested: {claim.title}, all {runs.sizes['run']} runs)",
                     READING[claim.verdict], claim.summary])
    pooled = arcsin["pooled"]
    per_llm = ", ".join(f"{scope}: {READING[c.verdict]}" for scope, c in arcsin.items() if scope != "pooled")
    rows.append(["seed 000", "arcsin law, partially confirmed on 3,300 architectures", READING[pooled.verdict],
                 f"seed 000 used {SEED_000['architectures']:,} architectures; ours {pooled.summary}; per LLM, Bonferroni over "
                 f"{len(arcsin) - 1}: {per_llm}"])
    for scope, r in ratios.items():
        better, over = _ratio_verdict(r)
        rows.append(["seed 000", f"delta valid more often than full (1.41x), {scope}", *better])
        rows.append(["seed 000", f"token-error model overstates the ratio (2.23 vs 1.41), {scope}", *over])
    for model in _models(runs):
        claim = cl.delta_vs_full(_subset(runs, model=model))
        if claim is None:
            rows.append(["seed 001", f"delta beats full on valid rate, {model}", "cannot decide", "needs both modes"])
        else:
            rows.append(["seed 001", f"delta beats full on valid rate, {model}", READING[claim.verdict], claim.summary])
    return Table(["source", "claim", "our runs", "why"], rows, ["l"] * 4)


# --------------------------------------------------------------------------- time

def _phase_seconds(run: xr.Dataset) -> dict[str, np.ndarray]:
    """Seconds per phase of each committed cycle of one run (NaN where a phase is absent)."""
    done = run["n_cand"].values.astype(float) > 0
    return {p: run[f"seconds_{p}"].values.astype(float)[done] if f"seconds_{p}" in run else np.full(done.sum(), np.nan)
            for p in PHASES}


def time_table(runs: xr.Dataset) -> Table:
    """Per run: total wall seconds of each phase and the mean cycle [95% t] over its cycles."""
    rows = []
    for r in range(runs.sizes["run"]):
        secs = _phase_seconds(runs.isel(run=r))
        cycle = np.nansum(np.vstack(list(secs.values())), axis=0)
        rows.append([str(runs["run"].values[r]), fmt(len(cycle))] + [fmt(np.nansum(secs[p]), 1) for p in PHASES]
                    + [fmt(cycle.sum(), 1), _mean_ci(cycle, 1, _seconds_interval)])
    return Table(["run", "cycles", *(f"s {p}" for p in PHASES), "s total", "s per cycle [95% t]"], rows)


def projection(run: xr.Dataset) -> dict:
    """One run's full-size time: each cycle projects 22 x (50 x its seconds per proposal of
    sample, apply and evaluate + its update seconds), and the mean over cycles with its t
    interval is the projection. The warm start (once, cached) and the zoo scoring before
    cycle 0 are not in the cycle files and not projected."""
    secs = _phase_seconds(run)
    n = run["n_cand"].values.astype(float)
    n = n[n > 0]
    per_proposal = np.nansum(np.vstack([secs[p] for p in PHASES[:3]]), axis=0) / n
    cycle = FULL_CANDIDATES * per_proposal + np.nan_to_num(secs["update"])
    return {"cycles": len(n), "per_proposal": _seconds_interval(per_proposal),
            "per_cycle": _seconds_interval(secs["update"]), "seconds": _seconds_interval(FULL_CYCLES * cycle)}


def projection_table(runs: xr.Dataset) -> tuple[Table, str]:
    """The projection per run and its sum, and a line naming the protocol's cells not measured."""
    rows, total, half2 = [], 0.0, 0.0  # independent runs: half-widths add in quadrature
    for r in range(runs.sizes["run"]):
        p = projection(runs.isel(run=r))
        mean, lo, hi = p["seconds"]
        total += mean
        half2 += (hi - mean) ** 2  # the t half-width (the lower end may be cut at 0); NaN below 2 cycles
        rows.append([str(runs["run"].values[r]), fmt(p["cycles"]),
                     f"{fmt(p['per_proposal'][0], 2)} [{fmt(p['per_proposal'][1], 2)}, {fmt(p['per_proposal'][2], 2)}]",
                     f"{fmt(p['per_cycle'][0], 1)} [{fmt(p['per_cycle'][1], 1)}, {fmt(p['per_cycle'][2], 1)}]",
                     f"{fmt(mean / 3600, 2)} [{fmt(lo / 3600, 2)}, {fmt(hi / 3600, 2)}]"])
    half = math.sqrt(half2)
    rows.append(["sum of the measured runs", "", "", "",
                 f"{fmt(total / 3600, 2)} [{fmt(max(total - half, 0.0) / 3600, 2)}, {fmt((total + half) / 3600, 2)}]"])
    measured = {(str(m), str(d)) for m, d in zip(runs["model"].values, runs["mode"].values)}
    wanted = [(m, d) for m in MODELS for d in MODES]
    missing = [cell_name(m, d) for m, d in wanted if (m, d) not in measured]
    note = (f"{len(wanted) - len(missing)} of the full protocol's {len(wanted)} runs ({len(MODELS)} LLMs x "
            f"{len(MODES)} modes) measured" + (f"; not measured, so not in the sum: {', '.join(missing)}" if missing else ""))
    return Table(["run", "cycles measured", "s per proposal (sample+apply+evaluate) [95% t]",
                  "s per cycle (update) [95% t]", f"projected hours at {FULL_CYCLES} x {FULL_CANDIDATES} [95% t]"],
                 rows), note


# --------------------------------------------------------------------------- report

def report(cells: Mapping[tuple[str, str], Path]) -> str:
    """The whole report as markdown, from the cells that have committed a cycle."""
    runs = load_cells(cells)
    if runs is None:
        raise ValueError(f"none of the {len(cells)} run directories has a completed cycle to report on")
    ratios = {model: validity_ratio(_subset(runs, model=model)) for model in _models(runs)}
    if len(ratios) > 1:
        ratios["pooled"] = validity_ratio(runs)
    per_run = convergence_claims(runs)
    arcsin = arcsin_claims(runs)
    projected, missing = projection_table(runs)
    n = int(cl.candidate_mask(runs).sum())
    lines = ["# The papers' protocol: our runs beside seeds 000 and 001", "",
             f"{runs.sizes['run']} runs, {n:,} proposals over up to {runs.sizes['cycle']} cycles "
             f"(the full protocol: {len(MODELS)} LLMs x {len(MODES)} modes x {FULL_CYCLES} x {FULL_CANDIDATES}); "
             f"runs: {', '.join(str(v) for v in runs['run'].values)}.", "",
             "## Seed claims", "", *to_markdown(seed_claims_table(runs, ratios, arcsin)),
             "## Generation per LLM and mode", "",
             "Valid = status ok. Accuracy: proxy accuracy of the valid candidates (repeats carry their twin's). "
             "Lines: the extracted delta (delta mode) or file (full mode). Intervals: Wilson for rates, Student t "
             "for means, n beside each.", "", *to_markdown(generation_table(runs)),
             "## Delta / full validity ratio", "",
             "Measured: (k_d/n_d)/(k_f/n_f) with the Katz log interval. Predicted: the token-error models of "
             "theory.validity fitted on our (tokens, valid) pairs of both modes, averaged over each mode's token "
             "counts (delta-method interval).", "", *to_markdown(ratio_table(ratios)),
             "## Convergence claims per run", "", *to_markdown(convergence_table(per_run))]
    for run, found in per_run.items():
        lines += [f"- {run}: " + "; ".join(f"{c.title}: {c.summary}" for c in found)]
    lines += ["", "## The arcsin law on test-retest replicates", "",
              f"Architectures scored under two proxy seeds; the law predicts a test-retest Spearman of (6/pi) "
              f"asin(ICC/2), compared with Moran's finite-n expectation. Pooled: 95% interval; per LLM: "
              f"Bonferroni over {len(arcsin) - 1} LLMs (each at {100 * (1 - (1 - cl.LEVEL) / (len(arcsin) - 1)):.3g}%).",
              "", *to_markdown(arcsin_table(arcsin)),
              "## Wall time per phase", "", *to_markdown(time_table(runs)),
              f"## Projected time of the full size ({FULL_CYCLES} x {FULL_CANDIDATES} per run)", "",
              "Sample, apply and evaluate scale with the proposals, the update with the cycles; the warm start "
              "and the zoo scoring are once per run and not included. Later cycles evaluate fewer new "
              "architectures (repeats are not trained), so a run measured on few cycles overstates its evaluation "
              "share.", "", *to_markdown(projected), missing, ""]
    return "\n".join(lines)
