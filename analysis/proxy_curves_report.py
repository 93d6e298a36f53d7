"""The training-curves proxy study as a report: netCDF, figures, markdown and HTML.

``write_curves_report(study, out)`` writes ``proxy_curves.nc``, ``proxy_curves_hexbin.png``
(proxy vs target accuracy per group), ``proxy_curves_spearman.png`` (predicted vs
observed Spearman and the copula difference, with CIs, for every group and ceiling
truncation on one figure), and ``proxy_curves.md`` and ``proxy_curves.html`` rendered from
one :class:`analysis.document.Document` with :class:`analysis.claims.Claim` verdicts, as
the run report is.
``python -m analysis.proxy_curves_report STUDY.nc [--out DIR]`` rewrites them from a saved study.
"""
from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

import numpy as np
import xarray as xr

from analysis import plots
from analysis.claims import Claim
from analysis.document import Document, Figure, Section, Text
from analysis.html import write_document
from analysis.proxy_curves import PAIRED, settings_of
from analysis.tables import Table, verdict_table
from analysis.tables import fmt as _fmt

plt = plots.plt
#: Marker of each ceiling truncation in the Spearman figure, by position in top_k.
MARKERS = ("o", "s", "^", "D", "v")
#: Groups drawn in the figures (the largest by paired configurations; tables list all).
MAX_PLOTTED = 12
ARCSIN_TITLE = "arcsin law on the raw Pearson"
COPULA_TITLE = "normal-copula reading"


def _ci(study: xr.Dataset, name: str, g: int, j: int) -> str:
    v = study[name].values
    return f"{_fmt(v[g, j])} [{_fmt(study[name + '_lo'].values[g, j])}, {_fmt(study[name + '_hi'].values[g, j])}]"


def _at(study: xr.Dataset, name: str, g: int, j: int) -> float:
    return float(study[name].values[g, j])


def _share(x: float) -> str:
    return _fmt(100 * x, 1) + "%"


def _tie(study: xr.Dataset, which: str, g: int, j: int) -> str:
    """'tied share; largest block share at value' of the proxy or target values."""
    return (f"{_share(_at(study, f'tied_share_{which}', g, j))}; {_share(_at(study, f'largest_tie_{which}', g, j))} "
            f"at {_fmt(_at(study, f'largest_tie_value_{which}', g, j), 4)}")


def _target_text(study: xr.Dataset, own: str = "each configuration's") -> str:
    t = study.attrs.get("target_epoch", "last")
    return f"{own} last stored epoch" if str(t) == "last" else f"epoch {t}"


def claims(study: xr.Dataset, j: int | None = None) -> list[Claim]:
    """One arcsin-law and one copula claim per group at truncation index ``j`` (default: the largest share kept)."""
    j = _full(study) if j is None else j
    out = []
    k = int(study["top_k"].values[j])
    scope = "" if k == 100 else f", top {k}%"
    for g, name in enumerate(study["group"].values.astype(str)):
        n = int(_at(study, "n", g, j))
        copula_verdict = str(study["verdict_copula"].values[g, j])
        text = (f"n = {n:,}: Spearman {_ci(study, 'spearman', g, j)} vs Moran's {_fmt(_at(study, 'moran_expectation', g, j))} "
                f"from Pearson {_fmt(_at(study, 'pearson', g, j))}; gap {_ci(study, 'gap', g, j)}; "
                f"r_S - r {_ci(study, 'identity_gap', g, j)}")
        if copula_verdict == "not supported" and str(study["verdict_arcsin"].values[g, j]) == "supported":
            text += "; the copula check rejects a normal copula, so the agreement is not the law's mechanism"
        out.append(Claim(f"arcsin_{name}_{k}", f"{name}{scope}: {ARCSIN_TITLE}", str(study["verdict_arcsin"].values[g, j]),
                         text, {"n": n, "gap": _at(study, "gap", g, j)}))
        text = (f"2 sin(pi r_S/6) = {_fmt(_at(study, 'copula_from_spearman', g, j))} vs sin(pi tau/2) = "
                f"{_fmt(_at(study, 'copula_from_kendall', g, j))}; difference {_ci(study, 'copula_difference', g, j)}; "
                f"tied proxy values {_tie(study, 'proxy', g, j)}; tied target values {_tie(study, 'target', g, j)}")
        out.append(Claim(f"copula_{name}_{k}", f"{name}{scope}: {COPULA_TITLE}", copula_verdict, text,
                         {"n": n, "difference": _at(study, "copula_difference", g, j)}))
    return out


def summary_lines(study: xr.Dataset, max_groups: int = 20) -> list[str]:
    """A console summary: one line per group (untruncated), or verdict counts beyond ``max_groups``."""
    j, groups = _full(study), study["group"].values.astype(str)
    if len(groups) > max_groups:
        out = [f"{len(groups)} groups (see the report for each):"]
        for key, title in (("verdict_arcsin", ARCSIN_TITLE), ("verdict_copula", COPULA_TITLE)):
            names, counts = np.unique(study[key].values[:, j].astype(str), return_counts=True)
            out.append(f"  {title}: " + ", ".join(f"{c} {v}" for v, c in zip(names, counts)))
        return out
    width = max(len(g) for g in groups)
    out = [f"{'group':<{width}} {'n':>6} {'Pearson':>7} {'Spearman':>8} {'Moran':>6} {'gap [95% CI]':>22} "
           f"{'copula diff [95% CI]':>24}  arcsin law / normal copula"]
    for g, name in enumerate(groups):
        out.append(f"{name:<{width}} {int(_at(study, 'n', g, j)):>6} {_fmt(_at(study, 'pearson', g, j)):>7} "
                   f"{_fmt(_at(study, 'spearman', g, j)):>8} {_fmt(_at(study, 'moran_expectation', g, j)):>6} "
                   f"{_ci(study, 'gap', g, j):>22} {_ci(study, 'copula_difference', g, j):>24}  "
                   f"{study['verdict_arcsin'].values[g, j]} / {study['verdict_copula'].values[g, j]}")
    return out


def curves_document(study: xr.Dataset, hexbin: Path | None = None, spearman: Path | None = None) -> Document:
    """The study as a report document (figures, when given, are PNG paths already written)."""
    st = settings_of(study)
    groups = study["group"].values.astype(str)
    full = _full(study)
    meta = [f"Source: {study.attrs.get('curves_source', '?')} ({study.attrs.get('curves_layout', '?')}, "
            f"{int(study.attrs.get('curves_records', 0)):,} records; "
            f"{int(study.attrs.get('curves_dropped_duplicate_configurations', 0)):,} configurations with duplicated "
            "epochs left out)",
            f"Proxy: accuracy at epoch {st.proxy_epoch}; target: {_target_text(study)}; groups: "
            f"{st.by or 'all configurations pooled'}; intervals: {st.level:.0%} percentile bootstrap over "
            + (f"{st.cluster} values (each with all its configurations)" if st.cluster else "configurations")
            + f" ({st.draws:,} resamples, seed {st.seed})"]
    configurations = Table(
        ["group", "configurations", "paired", "no proxy epoch", "cut short (survivorship)", "target not stored",
         "numbered from epoch 0", "median target epoch"],
        [[g, _fmt(int(study["n_configurations"].values[i])), _fmt(int(_at(study, "n", i, full))),
          *(_fmt(int(study[v].values[i])) for v in ("n_no_proxy", "n_cut_short", "n_no_target", "n_epoch_zero")),
          _fmt(float(study["median_target_epoch"].values[i]), 0)] for i, g in enumerate(groups)])
    blocks: list = [configurations, Text(
        "Cut-short runs (LEMUR stops a run whose accuracy falls below a bar) are not in the study, so it describes "
        "runs that survived past the proxy epoch. Epochs are as stored: for a family numbered from 0 the proxy "
        "epoch is its second.")]
    if len(groups) > MAX_PLOTTED:
        blocks.append(Text(f"The figures show the {MAX_PLOTTED} largest of the {len(groups)} groups."))
    if hexbin:
        blocks.append(Figure(hexbin, "proxy vs target accuracy"))
    agreement = Table(
        ["group", "n", "Pearson", "Spearman", "Kendall tau_b", "arcsin (6/pi) asin(r/2)", "Moran at n",
         "gap: Spearman - Moran", "Spearman - Pearson", "pairs to resolve the gap"],
        [[g, _fmt(int(_at(study, "n", i, full))), _ci(study, "pearson", i, full), _ci(study, "spearman", i, full),
          _ci(study, "kendall", i, full), _fmt(_at(study, "arcsin_prediction", i, full)),
          _fmt(_at(study, "moran_expectation", i, full)), _ci(study, "gap", i, full),
          _ci(study, "identity_gap", i, full), _fmt(_at(study, "pairs_to_resolve_gap", i, full), 0)]
         for i, g in enumerate(groups)])
    copula = Table(
        ["group", "2 sin(pi r_S/6)", "sin(pi tau/2)", "difference", "pairs to resolve the difference",
         "proxy: tied values; largest tie block", "target: tied values; largest tie block"],
        [[g, _fmt(_at(study, "copula_from_spearman", i, full)), _fmt(_at(study, "copula_from_kendall", i, full)),
          _ci(study, "copula_difference", i, full), _fmt(_at(study, "pairs_to_resolve_copula", i, full), 0),
          _tie(study, "proxy", i, full), _tie(study, "target", i, full)]
         for i, g in enumerate(groups)])
    truncation = Table(
        ["group", "kept", "n", "Pearson", "Spearman", "Moran", "gap", "copula difference", ARCSIN_TITLE, COPULA_TITLE],
        [[g, f"{int(k)}%", _fmt(int(_at(study, "n", i, j))), _fmt(_at(study, "pearson", i, j)),
          _fmt(_at(study, "spearman", i, j)), _fmt(_at(study, "moran_expectation", i, j)), _ci(study, "gap", i, j),
          _ci(study, "copula_difference", i, j), str(study["verdict_arcsin"].values[i, j]),
          str(study["verdict_copula"].values[i, j])]
         for i, g in enumerate(groups) for j, k in enumerate(study["top_k"].values)])
    sections = [
        Section("Configurations", blocks, "configurations"),
        Section("Rank agreement", [agreement, copula], "agreement"),
        Section("Verdicts", [
            Text(f"The {ARCSIN_TITLE} is supported when the gap's CI holds 0 and the CI of Spearman - Pearson "
                 f"does not; the {COPULA_TITLE} when the CI of the difference holds 0 and lies within "
                 f"+-{st.copula_resolution:g}; either needs {st.min_pairs} configurations."),
            verdict_table(claims(study, full))], "verdicts"),
        Section("Ceiling truncation: the top k% by target accuracy", [
            *([Figure(spearman, "predicted vs observed Spearman and the copula difference")] if spearman else []),
            truncation,
            Text("A tie block at the cut is kept or dropped whole, so 'kept' is approximate; n is what was used.")],
            "truncation"),
    ]
    return Document("Proxy reliability on training curves", meta, sections)


def plotted_groups(study: xr.Dataset) -> list[tuple[int, str]]:
    """(index, name) of the groups the figures show: all, or the MAX_PLOTTED largest."""
    n = np.nan_to_num(study["n"].values[:, _full(study)])
    order = sorted(np.argsort(-n, kind="stable")[:MAX_PLOTTED])
    return [(int(g), str(study["group"].values[g])) for g in order]


def _full(study: xr.Dataset) -> int:
    """Index of the untruncated level (top 100%), else of the largest kept share."""
    return int(np.argmax(study["top_k"].values))


def plot_hexbins(study: xr.Dataset, path: Path) -> Path:
    """Proxy vs target accuracy of the paired configurations, one hexbin panel per group."""
    shown = plotted_groups(study)
    groups = [name for _, name in shown]
    cols = min(3, len(groups))
    rows = int(np.ceil(len(groups) / cols))
    fig, axes = plt.subplots(rows, cols, figsize=(4.2 * cols, 3.8 * rows), squeeze=False)
    paired = study["pairing"].values.astype(str) == PAIRED
    member = study["group_of"].values.astype(str)
    full = _full(study)
    for ax, (g, name) in zip(axes.ravel(), shown):
        sel = paired & (member == name)
        x, y = study["proxy"].values[sel], study["target"].values[sel]
        if len(x):
            ax.hexbin(x, y, gridsize=35, mincnt=1, bins="log", cmap="viridis")
        ax.set(title=f"{name}: n {len(x):,}, r {_fmt(_at(study, 'pearson', g, full), 2)}, "
                     f"r_S {_fmt(_at(study, 'spearman', g, full), 2)}",
               xlabel=f"accuracy at epoch {study.attrs.get('proxy_epoch', 1)}",
               ylabel=f"accuracy at {_target_text(study, own='its')}")
    for ax in axes.ravel()[len(groups):]:
        ax.set_axis_off()
    fig.subplots_adjust(hspace=0.45)
    return plots._save(fig, path)


def plot_spearman_agreement(study: xr.Dataset, path: Path) -> Path:
    """Left: observed Spearman vs Moran's prediction from the Pearson; right: copula difference.

    Every group (colour) and ceiling truncation (marker) on one figure, with the bootstrap
    CIs of both coordinates.
    """
    shown = plotted_groups(study)
    top_k = study["top_k"].values
    fig, axes = plt.subplots(1, 2, figsize=(12, 5))
    colours = plt.rcParams["axes.prop_cycle"].by_key()["color"]
    for pos, (g, name) in enumerate(shown):
        c = colours[pos % len(colours)]
        for j, k in enumerate(top_k):
            px, py = _at(study, "moran_expectation", g, j), _at(study, "spearman", g, j)
            if not np.isfinite(px):
                continue
            xerr = [[px - _at(study, "moran_expectation_lo", g, j)], [_at(study, "moran_expectation_hi", g, j) - px]]
            yerr = [[py - _at(study, "spearman_lo", g, j)], [_at(study, "spearman_hi", g, j) - py]]
            label = name if j == 0 else None
            axes[0].errorbar(px, py, xerr=xerr, yerr=yerr, fmt=MARKERS[j % len(MARKERS)], color=c, ms=5, label=label)
            d = _at(study, "copula_difference", g, j)
            derr = [[d - _at(study, "copula_difference_lo", g, j)], [_at(study, "copula_difference_hi", g, j) - d]]
            axes[1].errorbar(pos + 0.2 * (j - (len(top_k) - 1) / 2), d, yerr=derr, fmt=MARKERS[j % len(MARKERS)],
                             color=c, ms=5)
    low = [np.nanmin(study[v].values[[g for g, _ in shown]]) for v in ("spearman_lo", "moran_expectation_lo")]
    lims = [min(0.0, *low), 1.0]
    axes[0].plot(lims, lims, color="k", lw=0.8, ls=":", label="observed = predicted")
    axes[0].set(title="Spearman: observed vs arcsin law (Moran at n) from the raw Pearson",
                xlabel="predicted Spearman", ylabel="observed Spearman", xlim=lims, ylim=lims)
    for j, k in enumerate(top_k):
        axes[0].plot([], [], MARKERS[j % len(MARKERS)], color="grey", label=f"top {int(k)}%")
    axes[0].legend(fontsize=7, loc="upper left")
    res = settings_of(study).copula_resolution
    axes[1].axhline(0, color="k", lw=0.8, ls=":")
    axes[1].axhspan(-res, res, color="grey", alpha=0.15)
    axes[1].set_xticks(range(len(shown)), [name for _, name in shown], rotation=30, fontsize=8)
    axes[1].set(title="copula check: 2 sin(pi r_S/6) - sin(pi tau/2)", ylabel="difference")
    return plots._save(fig, path)


def write_curves_report(study: xr.Dataset, out: str | Path) -> Path:
    """Write the netCDF, both figures, ``proxy_curves.md`` and ``proxy_curves.html`` into ``out``;
    return the markdown path."""
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    tmp = out / "proxy_curves.nc.tmp"
    # text as compressed character arrays: HDF5 variable-length strings cost ~20 MB for LEMUR's 36k rows
    encoding = {k: {"zlib": True, "complevel": 4, **({"dtype": "S1"} if study[k].dtype.kind in "OU" else {})}
                for k in study.variables}
    study.to_netcdf(tmp, encoding=encoding)
    os.replace(tmp, out / "proxy_curves.nc")
    hexbin, spearman = out / "proxy_curves_hexbin.png", out / "proxy_curves_spearman.png"
    plot_hexbins(study, hexbin)
    plot_spearman_agreement(study, spearman)
    doc = curves_document(study, hexbin, spearman)
    return write_document(doc, out, "proxy_curves")


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(prog="python -m analysis.proxy_curves_report", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("study", type=Path, help="proxy_curves.nc written by experiments.proxy_study --curves")
    parser.add_argument("--out", type=Path, default=None, help="output directory (default: the study's folder)")
    args = parser.parse_args(argv)
    try:
        study = xr.load_dataset(args.study)
    except (OSError, ValueError) as e:
        print(f"error: {args.study}: cannot be read as a study netCDF ({e})", file=sys.stderr)
        return 2
    if "verdict_arcsin" not in study:
        print(f"error: {args.study} is not a curves proxy study (no verdict_arcsin); write one with "
              "python -m experiments.proxy_study --curves PATH", file=sys.stderr)
        return 2
    path = write_curves_report(study, args.out or args.study.parent)
    print(f"report written to {path}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
