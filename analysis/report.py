"""The convergence report: ``python -m analysis.report RUN_DIR [RUN_DIR ...] [--out DIR]``.

Writes ``report.md``, PNG figures and ``report.html`` (the same report as one
self-contained page: figures inline, printable, readable without the store, with the
best architectures' deltas and lines of descent). Every claim section ends with a verdict line
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
from analysis import plots, tables
from analysis import summaries as sm
from analysis.document import Architectures, ClaimBlock, Document, Figure, Section, Text, markdown_block
from analysis.html import write_document
from analysis.lineage import top_architectures
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


def claim_section(claim: cl.Claim, figure: str | None = None) -> list[str]:
    """A claim as markdown: heading, optional figure, details, verdict line."""
    return markdown_block(ClaimBlock(claim, Figure(Path(figure), claim.key) if figure else None), Path("."))


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


def generation_markdown(runs: xr.Dataset) -> list[str]:
    """The delta-vs-full table (one column per generation mode) as markdown lines."""
    return tables.to_markdown(tables.generation_table(runs))


#: Runs whose per-cycle table is shown; an ablation grid has more (its store has them all).
MAX_CYCLE_TABLES = 8
#: Architectures listed in the report.
TOP_ARCHITECTURES = 10


def _cycle_section(runs: xr.Dataset) -> Section:
    n = runs.sizes["run"]
    blocks: list = []
    for r in range(min(n, MAX_CYCLE_TABLES)):
        if n > 1:
            blocks.append(Text(f"Run {runs['run'].values[r]}:"))
        blocks.append(tables.cycle_table(runs, r))
    if n > MAX_CYCLE_TABLES:
        blocks.append(Text(f"... and {n - MAX_CYCLE_TABLES} more runs (see their stores)."))
    return Section("Cycles", blocks, "cycles")


def _status_section(runs: xr.Dataset, figure: Figure) -> Section:
    if "status" not in runs and "status_count" not in runs:
        return Section("Validity by status", [Text("The store holds no candidates (an exact simulation?).")], "status")
    blocks = [figure]
    by_cycle = tables.status_by_cycle_table(runs)
    if by_cycle is not None:
        blocks += [Text("Candidates per final status in each cycle (all runs):"), by_cycle]
    pooled = tables.status_table(runs)
    if pooled is not None:
        blocks += [Text("All cycles:"), pooled]
    return Section("Validity by status", blocks, "status")


def _repeats_section(runs: xr.Dataset) -> Section:
    kinds = sorted(set(sm.readings_used(runs).values()))
    old = any("predates" in k for k in kinds)
    return Section("Repeats: both readings, and the reference points", [
        Text("A repeat (the same architecture as an archived one: equal code after normalisation, or MinHash "
             "Jaccard at the novelty threshold) is not trained. Inherit reading: it takes its twin's score and "
             "counts in gamma_t, p_t(E) and q_t(E) (the CE reading); reject reading: it is a miss (the reference "
             "pipeline's). The new share counts proposals that are new architectures; the novel-valid yield those "
             "also ok."),
        Text(f"The verdicts use the {' / '.join(kinds)} reading (the runs' search.duplicates)."
             + (" The inherit reading is unavailable for a store that predates it." if old else "")),
        tables.readings_table(runs),
        Text("Same proxy for both columns: each zoo baseline is scored once at the start of the run; repeats "
             "(whose score is their twin's) are not counted as trained candidates."),
        tables.baseline_table(runs)], "repeats")


def build_document(sources: list[Path], ds: xr.Dataset, out: Path) -> Document:
    """Compute the claims, write the figures into ``out`` and lay out the report."""
    runs = as_runs(ds)
    if runs.sizes["run"] == 0:
        raise ValueError(f"{', '.join(map(str, sources))}: no run has a completed cycle to report on")
    claims = {c.key: c for c in cl.all_claims(runs)}
    pooled = cl.pooled_reliability(runs)

    fig = {name: Figure(out / f"{name}.png", name) for name in
           ("threshold", "elite_probability", "smoothing", "status", "reliability")}
    plots.plot_threshold(runs, fig["threshold"].path)
    plots.plot_elite_probability(runs, fig["elite_probability"].path, _rate_fits(runs))
    plots.plot_smoothing(runs, fig["smoothing"].path)
    plots.plot_status(runs, fig["status"].path)
    plots.plot_reliability(runs, fig["reliability"].path, pooled, _replicate_pairs(runs))

    n_cand = int(cl.candidate_mask(runs).sum())
    modes = sorted({str(m) for m in runs["mode"].values}) if "mode" in runs.coords else []
    meta = [f"Sources: {', '.join(str(s) for s in sources)}",
            f"Runs: {runs.sizes['run']}; cycles: {runs.sizes['cycle']}; candidates: {n_cand:,}"
            + (f"; modes: {', '.join(modes)}" if modes else "")]
    sections = [
        Section("Verdicts", [tables.verdict_table(list(claims.values())), Text(
            f"Repeats read as: {', '.join(sorted(set(sm.readings_used(runs).values())))} (see 'Repeats').")],
            "verdicts"),
        Section(f"Top {TOP_ARCHITECTURES} architectures", [
            Text("Distinct architectures by proxy score; each lists every proposal of it (repeats included), "
                 "its line of descent back to the zoo baseline and its delta against its parent."),
            Architectures(top_architectures(runs, TOP_ARCHITECTURES))], "architectures"),
        _cycle_section(runs),
        Section("Elite threshold and best so far", [
            Text("gamma_t is the lowest elite score of cycle t. Monotonicity is tested, not assumed: a fall counts "
                 "when it exceeds z bootstrap standard errors of the two quantiles, z Bonferroni-corrected over all "
                 "steps (5% family-wise)."),
            ClaimBlock(claims["monotone_threshold"], fig["threshold"])], "threshold"),
        Section("Elite probability p_t(E)", [
            Text("The pure geometric law 1 - p_{t+1} = (1 - alpha)(1 - p_t) needs q_t(E) = 1; kappa is fitted "
                 "from log(1 - p_t) on t over cycles with 0 < p_t < 1."),
            ClaimBlock(claims["geometric"], fig["elite_probability"])], "elite-probability"),
        Section("q_t(E) and the smoothing identity", [
            Text("1 - p_{t+1} = alpha (1 - q_t) + (1 - alpha)(1 - p_t) holds for any fixed E under mixture smoothing."),
            ClaimBlock(claims["identity"], fig["smoothing"]), ClaimBlock(claims["optimality"])], "smoothing"),
        _status_section(runs, fig["status"]),
        _repeats_section(runs),
        Section("Proxy reliability (pooled over all evaluated architectures)", [
            fig["reliability"],
            tables.reliability_table(pooled) if pooled is not None else
            Text("No architecture has two scored proxy replicates (set replicate seeds in the config)."),
            ClaimBlock(claims["arcsin"])], "reliability"),
    ]
    if "delta_vs_full" in claims:
        sections.append(Section("Delta vs full generation", [
            tables.generation_table(runs), ClaimBlock(claims["delta_vs_full"])], "delta-vs-full"))
    if {"elite_fraction", "novelty_threshold"} <= set(ds.dims):
        summary = sm.ablation_summary(ds)
        heatmap = Figure(plots.plot_heatmaps(summary.drop_vars("n_seeds", errors="ignore"), out / "ablation.png"),
                         "ablation")
        sections.append(Section("Ablation: elite fraction x novelty threshold", [
            heatmap, Text("Cell means over seeds."), tables.ablation_table(summary)], "ablation"))
    return Document("cem-nas convergence report", meta, sections)


def write_report(sources, out: str | Path | None = None) -> Path:
    """Load ``sources``, compute the claims, write figures, ``report.md`` and the
    self-contained ``report.html`` beside it; return the markdown file's path."""
    if isinstance(sources, (str, Path)):
        sources = [sources]
    sources = [Path(s) for s in sources]
    ds = load(sources)
    out = Path(out) if out is not None else _default_out(sources)
    out.mkdir(parents=True, exist_ok=True)
    doc = build_document(sources, ds, out)
    return write_document(doc, out, "report")


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
    print(path.read_text().split("## Top ")[0].rstrip())
    print(f"\nreport written to {path} and {path.with_suffix('.html')}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
