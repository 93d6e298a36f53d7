"""The report's tables as data: a header, rows of formatted cells, column alignment.

Each builder takes the ``run`` view of the stores (or what the claims computed from it)
and returns a :class:`Table`; :func:`to_markdown` renders one for report.md and
:mod:`analysis.html` for report.html, so both files always show the same numbers.
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field

import numpy as np
import xarray as xr

from analysis import claims as cl
from analysis import summaries as sm
from cem_nas.records import STATUSES


@dataclass
class Table:
    """Formatted cells; ``align`` holds 'l' or 'r' per column (default: first left, rest right)."""

    header: list[str]
    rows: list[list[str]]
    align: list[str] = field(default_factory=list)

    def __post_init__(self) -> None:
        if not self.align:
            self.align = ["l"] + ["r"] * (len(self.header) - 1)


def fmt(x, digits: int = 3) -> str:
    """A number as the report prints it: ints with thousands separators, 'n/a' for NaN.

    >>> fmt(12345), fmt(0.123456), fmt(float("nan")), fmt("ok")
    ('12,345', '0.123', 'n/a', 'ok')
    """
    if isinstance(x, (int, np.integer)):
        return f"{int(x):,}"
    try:
        x = float(x)
    except (TypeError, ValueError):
        return str(x)
    return "n/a" if not math.isfinite(x) else f"{x:.{digits}f}"


def to_markdown(table: Table) -> list[str]:
    """The table as markdown lines (pipes inside cells escaped), followed by a blank line."""
    def cells(row: list[str]) -> str:
        return "| " + " | ".join(str(c).replace("|", "\\|") for c in row) + " |"

    rule = "|" + "|".join(" ---: " if a == "r" else " --- " for a in table.align) + "|"
    return [cells(table.header), rule, *[cells(r) for r in table.rows], ""]


def verdict_table(claims: list[cl.Claim]) -> Table:
    return Table(["claim", "verdict", "why"], [[c.title, c.verdict, c.summary] for c in claims], ["l", "l", "l"])


def _cycle_value(runs: xr.Dataset, name: str, r: int, t: int) -> float:
    if name not in runs:
        return math.nan
    return float(runs[name].isel(run=r, cycle=t).values)


def cycle_table(runs: xr.Dataset, r: int) -> Table:
    """One run's cycles: proposals, valid, duplicates, gamma_t, p_t(E) [CI], q_t(E), best, seconds."""
    header = ["cycle", "proposals", "valid", "repeats", "gamma_t", "p_t(E) [95% CI]", "q_t(E)",
              "best so far", "mean valid score", "s sample", "s evaluate", "s update"]
    rows = []
    for t in range(runs.sizes["cycle"]):
        v = {name: _cycle_value(runs, name, r, t) for name in (
            "n_cand", "n_valid", "repeat_rate", "duplicate_rate", "gamma", "p_E", "p_E_lo", "p_E_hi", "q_E", "best_so_far",
            "score_mean", "seconds_sample", "seconds_evaluate", "seconds_update")}
        if not v["n_cand"] > 0:
            continue  # padding of a run with fewer cycles
        n = int(v["n_cand"])
        rows.append([
            str(int(runs["cycle"].values[t])), fmt(n), fmt(int(v["n_valid"])) if math.isfinite(v["n_valid"]) else "n/a",
            # a store from before repeats were inherited counted them as duplicates
            fmt(int(round(repeats * n))) if math.isfinite(repeats := v["repeat_rate"] if math.isfinite(
                v["repeat_rate"]) else v["duplicate_rate"]) else "n/a",
            fmt(v["gamma"]), f"{fmt(v['p_E'], 2)} [{fmt(v['p_E_lo'], 2)}, {fmt(v['p_E_hi'], 2)}]", fmt(v["q_E"], 2),
            fmt(v["best_so_far"]), fmt(v["score_mean"]), fmt(v["seconds_sample"], 1), fmt(v["seconds_evaluate"], 1),
            fmt(v["seconds_update"], 1)])
    return Table(header, rows)


def readings_table(runs: xr.Dataset) -> Table:
    """Per cycle, means over runs: p_t(E) in both readings of repeats, repeat rate, new share,
    novel-valid yield ('n/a' where a store lacks them: an old store has no inherit reading)."""
    values = sm.readings_table(runs)
    names = list(sm.READING_VARIABLES)
    rows = [[str(int(c))] + [fmt(values[n][t]) for n in names] for t, c in enumerate(runs["cycle"].values)]
    return Table(["cycle"] + [sm.READING_VARIABLES[n] for n in names], rows)


def baseline_table(runs: xr.Dataset) -> Table:
    """Per run: the best trained candidate against the best zoo baseline on the same proxy."""
    return Table(["run", "best trained candidate", "best zoo baseline", "difference"],
                 [[r["run"], fmt(r["best_candidate"]), f"{fmt(r['best_baseline'])} {r['baseline']}".strip(),
                   fmt(r["difference"])] for r in sm.best_vs_baseline(runs)])


def _status_counts(runs: xr.Dataset) -> tuple[list[str], np.ndarray]:
    """(status names, counts of shape (cycle, status)) pooled over runs."""
    if "status_count" in runs:
        counts = runs["status_count"].sum("run")
        kind = next(d for d in counts.dims if d != "cycle")  # the store names it status_kind
        counts = counts.transpose("cycle", kind)
        return [str(s) for s in counts[kind].values], counts.values.astype(int)
    if "status" in runs:
        status = runs["status"].astype(str).transpose("cycle", ...).values.reshape(runs.sizes["cycle"], -1)
        return list(STATUSES), np.array([[int(np.sum(row == s)) for s in STATUSES] for row in status])
    return [], np.zeros((runs.sizes["cycle"], 0), dtype=int)


def status_table(runs: xr.Dataset) -> Table | None:
    """Candidates per final status over all runs and cycles, most frequent first."""
    names, counts = _status_counts(runs)
    total = counts.sum(axis=0)
    if not total.sum():
        return None
    order = [i for i in np.argsort(-total, kind="stable") if total[i]]
    return Table(["status", "candidates", "share"],
                 [[names[i], fmt(int(total[i])), f"{100 * total[i] / total.sum():.1f}%"] for i in order])


def status_by_cycle_table(runs: xr.Dataset) -> Table | None:
    """Candidates per final status in each cycle (pooled over runs); statuses never seen are left out."""
    names, counts = _status_counts(runs)
    used = [j for j in range(len(names)) if counts[:, j].sum()]
    if not used:
        return None
    rows = [[str(int(runs["cycle"].values[t]))] + [fmt(int(counts[t, j])) for j in used] + [fmt(int(counts[t].sum()))]
            for t in range(counts.shape[0]) if counts[t].sum()]
    return Table(["cycle"] + [names[j] for j in used] + ["total"], rows)


def reliability_table(pooled: cl.PooledReliability) -> Table:
    icc = pooled.icc
    rows = [
        ("candidates in the runs", fmt(pooled.n_candidates)),
        ("architectures with >= 2 replicates (used)", fmt(pooled.n_architectures)),
        ("test-retest pairs (replicate 0 vs 1)", fmt(pooled.n_pairs)),
        ("ICC(1) [95% CI]", f"{fmt(icc.icc)} [{fmt(icc.ci_low)}, {fmt(icc.ci_high)}]"),
        ("SNR [95% CI]", f"{fmt(icc.snr)} [{fmt(icc.snr_ci_low)}, {fmt(icc.snr_ci_high)}]"),
        ("test-retest Pearson", fmt(pooled.pearson)),
        ("test-retest Spearman [95% CI]", f"{fmt(pooled.spearman)} [{fmt(pooled.spearman_ci[0])}, {fmt(pooled.spearman_ci[1])}]"),
        ("arcsin prediction (6/pi) asin(ICC/2)", fmt(pooled.arcsin_prediction)),
        (f"Moran expectation at n = {pooled.n_pairs}", fmt(pooled.moran_expectation)),
        ("test-retest Kendall tau [95% CI]", f"{fmt(pooled.kendall)} [{fmt(pooled.kendall_ci[0])}, {fmt(pooled.kendall_ci[1])}]"),
        ("copula check 2 sin(pi r_S/6) vs sin(pi tau/2)",
         f"{fmt(pooled.copula['copula_from_spearman'])} vs {fmt(pooled.copula['copula_from_kendall'])}"),
        ("Spearman(proxy, noise-free proxy) predicted from SNR", fmt(pooled.proxy_spearman_from_snr)),
        ("pairs needed to tell arcsin law from rho_S = rho at this ICC", fmt(pooled.pairs_needed, 0)),
        ("... at the largest gap (rho = 0.594)", fmt(pooled.pairs_needed_worst, 0)),
    ]
    return Table(["quantity", "value"], [list(r) for r in rows])


def generation_table(runs: xr.Dataset) -> Table:
    """The delta-vs-full comparison, one column per generation mode."""
    table = cl.generation_table(runs)
    modes = list(table)
    rows = [["valid rate [95% Wilson CI]"] + [
        f"{100 * table[m]['valid_rate']:.1f}% [{100 * table[m]['valid_lo']:.1f}, {100 * table[m]['valid_hi']:.1f}]"
        for m in modes]]
    for label, key, digits in (
        ("runs", "runs", 0), ("proposals", "proposals", 0), ("valid (ok)", "valid", 0),
        ("mean proxy accuracy (valid)", "score_mean", 3), ("best proxy accuracy", "score_best", 3),
        ("output lines per proposal", "lines_per_proposal", 1), ("tokens per proposal", "tokens_per_proposal", 1),
        ("output lines per valid candidate", "lines_per_valid", 1), ("tokens per valid candidate", "tokens_per_valid", 1),
        ("generation seconds (total)", "gen_seconds", 1), ("generation seconds per valid", "gen_seconds_per_valid", 2),
    ):
        rows.append([label] + [fmt(table[m][key]) if digits == 0 else fmt(table[m][key], digits) for m in modes])
    for s in sorted({s for m in modes for s in table[m]["statuses"]}):
        rows.append([f"status {s}"] + [str(table[m]["statuses"].get(s, 0)) for m in modes])
    return Table([""] + modes, rows)


def ablation_table(summary: xr.Dataset) -> Table:
    """Cell means of an ablation summary, one row per (elite fraction, novelty threshold)."""
    names = list(summary.data_vars)
    rows = []
    for ef in summary["elite_fraction"].values:
        for nt in summary["novelty_threshold"].values:
            cell = summary.sel(elite_fraction=ef, novelty_threshold=nt)
            rows.append([f"{ef:g}", f"{nt:g}"] + [fmt(cell[n].values) for n in names])
    return Table(["elite fraction", "novelty threshold", *names], rows, ["r"] * (2 + len(names)))
