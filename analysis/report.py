"""The convergence report: ``python -m analysis.report RUN_DIR [RUN_DIR ...] [--out DIR]``.

Writes ``report.md`` and PNG figures. Every claim section ends with a verdict line
(supported / not supported / not enough data) and the numbers behind it. Inputs are
run directories, ablation Datasets (.nc from ``experiments.ablate``) or a mix.
"""
from __future__ import annotations

import argparse
import math
import sys
from pathlib import Path

import numpy as np
import xarray as xr

from analysis import claims as cl
from analysis import plots
from analysis.load import as_runs, load
from cem_nas.store import StoreError


def _default_out(sources: list[Path]) -> Path:
    if len(sources) == 1:
        base = sources[0]
        return (base.parent / f"{base.stem}_report") if base.is_file() else base / "report"
    common = Path(*Path(sources[0]).resolve().parts[:1])
    parts = [p.resolve().parts for p in sources]
    for i in range(min(len(p) for p in parts)):
        if len({p[i] for p in parts}) > 1:
            break
        common = Path(*parts[0][: i + 1])
    return common / "report"


def _fmt(x, digits: int = 3) -> str:
    if isinstance(x, (int, np.integer)):
        return f"{int(x):,}"
    try:
        x = float(x)
    except (TypeError, ValueError):
        return str(x)
    return "n/a" if not math.isfinite(x) else f"{x:.{digits}f}"


def claim_section(claim: cl.Claim, figure: str | None = None) -> list[str]:
    """A claim as markdown: heading, optional figure, details, verdict line."""
    lines = [f"### {claim.title}", ""]
    if figure:
        lines += [f"![{claim.key}]({figure})", ""]
    lines += [f"- {d}" for d in claim.details]
    if claim.details:
        lines.append("")
    lines += [claim.verdict_line(), ""]
    return lines


def _rate_fits(runs: xr.Dataset) -> dict:
    """Per-run (kappa, intercept) of the geometric fit, for the figure."""
    fits = {}
    p = runs["p_E"].transpose("run", "cycle").values.astype(float) if "p_E" in runs else None
    if p is None:
        return fits
    for r, name in enumerate(runs["run"].values):
        fit = cl.fit_rate(runs["cycle"].values, p[r])
        if fit is not None:
            fits[str(name)] = (float(fit.kappa), float(fit.intercept))
    return fits


def _replicate_pairs(runs: xr.Dataset) -> np.ndarray | None:
    if "rep_score" not in runs or runs.sizes.get("rep", 0) < 2:
        return None
    reps = runs["rep_score"].transpose(..., "rep").values.reshape(-1, runs.sizes["rep"]).astype(float)
    return reps[np.isfinite(reps[:, 0]) & np.isfinite(reps[:, 1])][:, :2]


def _reliability_table(pooled: cl.PooledReliability | None) -> list[str]:
    if pooled is None:
        return ["No architecture has two scored proxy replicates (set replicate seeds in the config).", ""]
    icc = pooled.icc
    rows = [
        ("candidates in the runs", _fmt(pooled.n_candidates)),
        ("architectures with >= 2 replicates (used)", _fmt(pooled.n_architectures)),
        ("test-retest pairs (replicate 0 vs 1)", _fmt(pooled.n_pairs)),
        ("ICC(1) [95% CI]", f"{_fmt(icc.icc)} [{_fmt(icc.ci_low)}, {_fmt(icc.ci_high)}]"),
        ("SNR [95% CI]", f"{_fmt(icc.snr)} [{_fmt(icc.snr_ci_low)}, {_fmt(icc.snr_ci_high)}]"),
        ("test-retest Pearson", _fmt(pooled.pearson)),
        ("test-retest Spearman [95% CI]", f"{_fmt(pooled.spearman)} [{_fmt(pooled.spearman_ci[0])}, {_fmt(pooled.spearman_ci[1])}]"),
        ("arcsin prediction (6/pi) asin(ICC/2)", _fmt(pooled.arcsin_prediction)),
        (f"Moran expectation at n = {pooled.n_pairs}", _fmt(pooled.moran_expectation)),
        ("test-retest Kendall tau [95% CI]", f"{_fmt(pooled.kendall)} [{_fmt(pooled.kendall_ci[0])}, {_fmt(pooled.kendall_ci[1])}]"),
        ("copula check 2 sin(pi r_S/6) vs sin(pi tau/2)",
         f"{_fmt(pooled.copula['copula_from_spearman'])} vs {_fmt(pooled.copula['copula_from_kendall'])}"),
        ("Spearman(proxy, noise-free proxy) predicted from SNR", _fmt(pooled.proxy_spearman_from_snr)),
        ("pairs needed to tell arcsin law from rho_S = rho at this ICC", _fmt(pooled.pairs_needed, 0)),
        ("... at the largest gap (rho = 0.594)", _fmt(pooled.pairs_needed_worst, 0)),
    ]
    return ["| quantity | value |", "| --- | --- |", *[f"| {a} | {b} |" for a, b in rows], ""]


def _status_table(runs: xr.Dataset) -> list[str]:
    if "status" not in runs:
        return ["The store holds no candidates (an exact simulation?).", ""]
    status = runs["status"].values.astype(str).ravel()
    status = status[status != ""]
    if not len(status):
        return []
    names, counts = np.unique(status, return_counts=True)
    order = np.argsort(-counts)
    lines = ["| status | candidates | share |", "| --- | ---: | ---: |"]
    lines += [f"| {names[i]} | {counts[i]:,} | {100 * counts[i] / len(status):.1f}% |" for i in order]
    return lines + [""]


def generation_markdown(runs: xr.Dataset) -> list[str]:
    """The delta-vs-full table (one column per generation mode) as markdown lines."""
    table = cl.generation_table(runs)
    modes = list(table)
    rows = [
        ("runs", "runs", 0), ("proposals", "proposals", 0), ("valid (ok)", "valid", 0),
        ("mean proxy accuracy (valid)", "score_mean", 3), ("best proxy accuracy", "score_best", 3),
        ("output lines per proposal", "lines_per_proposal", 1), ("tokens per proposal", "tokens_per_proposal", 1),
        ("output lines per valid candidate", "lines_per_valid", 1), ("tokens per valid candidate", "tokens_per_valid", 1),
        ("generation seconds (total)", "gen_seconds", 1), ("generation seconds per valid", "gen_seconds_per_valid", 2),
    ]
    lines = ["| | " + " | ".join(modes) + " |", "| --- |" + " ---: |" * len(modes)]
    lines.append("| valid rate [95% Wilson CI] | " + " | ".join(
        f"{100 * table[m]['valid_rate']:.1f}% [{100 * table[m]['valid_lo']:.1f}, {100 * table[m]['valid_hi']:.1f}]"
        for m in modes) + " |")
    for label, key, digits in rows:
        lines.append(f"| {label} | " + " | ".join(
            _fmt(table[m][key]) if digits == 0 else _fmt(table[m][key], digits) for m in modes) + " |")
    statuses = sorted({s for m in modes for s in table[m]["statuses"]})
    for s in statuses:
        lines.append(f"| status {s} | " + " | ".join(str(table[m]["statuses"].get(s, 0)) for m in modes) + " |")
    return lines + [""]



def _ablation_section(grid: xr.Dataset, out: Path) -> list[str]:
    summary = cl.ablation_summary(grid)
    shown = summary.drop_vars("n_seeds", errors="ignore")
    plots.plot_heatmaps(shown, out / "ablation.png")
    lines = ["## Ablation: elite fraction x novelty threshold", "", "![ablation](ablation.png)", "",
             "Cell means over seeds.", ""]
    names = list(summary.data_vars)
    lines += ["| elite fraction | novelty threshold | " + " | ".join(names) + " |",
              "| ---: | ---: |" + " ---: |" * len(names)]
    for ef in summary["elite_fraction"].values:
        for nt in summary["novelty_threshold"].values:
            cell = summary.sel(elite_fraction=ef, novelty_threshold=nt)
            lines.append(f"| {ef:g} | {nt:g} | " + " | ".join(_fmt(cell[n].values) for n in names) + " |")
    return lines + [""]


def write_report(sources, out: str | Path | None = None) -> Path:
    """Load ``sources``, compute the claims, write figures and ``report.md``; return its path."""
    if isinstance(sources, (str, Path)):
        sources = [sources]
    sources = [Path(s) for s in sources]
    ds = load(sources)
    out = Path(out) if out is not None else _default_out(sources)
    out.mkdir(parents=True, exist_ok=True)
    runs = as_runs(ds)
    if runs.sizes["run"] == 0:
        raise ValueError(f"{', '.join(map(str, sources))}: no run has a completed cycle to report on")
    claims = {c.key: c for c in cl.all_claims(runs)}
    pooled = cl.pooled_reliability(runs)

    plots.plot_threshold(runs, out / "threshold.png")
    plots.plot_elite_probability(runs, out / "elite_probability.png", _rate_fits(runs))
    plots.plot_smoothing(runs, out / "smoothing.png")
    plots.plot_status(runs, out / "status.png")
    plots.plot_reliability(runs, out / "reliability.png", pooled, _replicate_pairs(runs))

    n_cand = int(cl.candidate_mask(runs).sum())
    modes = sorted({str(m) for m in runs["mode"].values}) if "mode" in runs.coords else []
    lines = ["# cem-nas convergence report", "",
             f"Sources: {', '.join(str(s) for s in sources)}  ",
             f"Runs: {runs.sizes['run']}; cycles: {runs.sizes['cycle']}; candidates: {n_cand:,}"
             + (f"; modes: {', '.join(modes)}" if modes else ""), "",
             "## Verdicts", "", "| claim | verdict |", "| --- | --- |"]
    lines += [f"| {c.title} | {c.verdict} |" for c in claims.values()]
    lines += ["",
              "## Elite threshold and best so far", "",
              "gamma_t is the lowest elite score of cycle t. Monotonicity is tested, not assumed: "
              "a fall counts when it exceeds z bootstrap standard errors of the two quantiles, z Bonferroni-corrected over all steps (5% family-wise).", "",
              *claim_section(claims["monotone_threshold"], "threshold.png"),
              "## Elite probability p_t(E)", "",
              "The pure geometric law 1 - p_{t+1} = (1 - alpha)(1 - p_t) needs q_t(E) = 1; kappa is fitted "
              "from log(1 - p_t) on t over cycles with 0 < p_t < 1.", "",
              *claim_section(claims["geometric"], "elite_probability.png"),
              "## q_t(E) and the smoothing identity", "",
              "1 - p_{t+1} = alpha (1 - q_t) + (1 - alpha)(1 - p_t) holds for any fixed E under mixture smoothing.", "",
              *claim_section(claims["identity"], "smoothing.png"),
              *claim_section(claims["optimality"]),
              "## Validity by status", "", "![status](status.png)", "", *_status_table(runs),
              "## Proxy reliability (pooled over all evaluated architectures)", "",
              "![reliability](reliability.png)", "", *_reliability_table(pooled),
              *claim_section(claims["arcsin"])]
    if "delta_vs_full" in claims:
        lines += ["## Delta vs full generation", "", *generation_markdown(runs),
                  *claim_section(claims["delta_vs_full"])]
    if {"elite_fraction", "novelty_threshold"} <= set(ds.dims):
        lines += _ablation_section(ds, out)
    path = out / "report.md"
    path.write_text("\n".join(lines) + "\n")
    return path


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(prog="python -m analysis.report", description=__doc__)
    parser.add_argument("sources", nargs="+", help="run directories (runs/NAME) or ablation .nc files")
    parser.add_argument("--out", help="output directory (default: RUN_DIR/report for one run, "
                                      "the runs' common parent/report for several)")
    args = parser.parse_args(argv)
    try:
        path = write_report(args.sources, args.out)
    except (StoreError, FileNotFoundError, ValueError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    print(path.read_text().split("## Elite threshold")[0].rstrip())
    print(f"\nreport written to {path}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
