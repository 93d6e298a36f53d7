"""PNG figures for the report (matplotlib, Agg backend: no display needed).

Every function takes the ``run`` view of the stores (:func:`analysis.load.as_runs`) or
a summary computed from it, writes one PNG to ``path`` and returns the path.
"""
from __future__ import annotations

import warnings
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import xarray as xr  # noqa: E402

from cem_nas.records import STATUSES  # noqa: E402

#: Runs drawn individually; beyond this the figure shows the median and a 10-90% band.
MAX_LINES = 8


def _save(fig, path: Path, right: float = 0.97) -> Path:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    # fixed margins: tight_layout measures every text extent and costs seconds per figure
    fig.subplots_adjust(left=0.08, right=right, bottom=0.13, top=0.85, wspace=0.28)
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def _draw_runs(ax, cycles: np.ndarray, values: np.ndarray, names: list[str], **style) -> None:
    """One line per run, or median and 10-90% band when there are many runs."""
    if len(values) <= MAX_LINES:
        for row, name in zip(values, names):
            ax.plot(cycles, row, marker="o", ms=3, label=name, **style)
        return
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)
        lo, mid, hi = np.nanpercentile(values, [10, 50, 90], axis=0)
    ax.fill_between(cycles, lo, hi, alpha=0.25, **style)
    ax.plot(cycles, mid, label=f"median of {len(values)} runs", **style)


def _var(runs: xr.Dataset, name: str) -> np.ndarray:
    if name not in runs:
        return np.full((runs.sizes["run"], runs.sizes["cycle"]), np.nan)
    return runs[name].transpose("run", "cycle").values.astype(float)


def _names(runs: xr.Dataset) -> list[str]:
    return [str(v) for v in runs["run"].values]


def plot_threshold(runs: xr.Dataset, path: Path) -> Path:
    """gamma_t (elite threshold) and best-so-far per cycle."""
    cycles = runs["cycle"].values
    fig, axes = plt.subplots(1, 2, figsize=(10, 3.8), sharex=True)
    _draw_runs(axes[0], cycles, _var(runs, "gamma"), _names(runs))
    axes[0].set(title="elite threshold gamma_t", xlabel="cycle", ylabel="proxy accuracy")
    _draw_runs(axes[1], cycles, _var(runs, "best_so_far"), _names(runs))
    axes[1].set(title="best so far", xlabel="cycle")
    axes[0].legend(fontsize=7)
    return _save(fig, path)


def plot_elite_probability(runs: xr.Dataset, path: Path, fits: dict | None = None) -> Path:
    """p_t(E) with Wilson bands; log(1 - p_t(E)) with the fitted geometric rate.

    ``fits`` maps a run name to (kappa, intercept) of log(1 - p_t) = intercept + t log kappa.
    """
    cycles = runs["cycle"].values
    p, lo, hi = _var(runs, "p_E"), _var(runs, "p_E_lo"), _var(runs, "p_E_hi")
    fig, axes = plt.subplots(1, 2, figsize=(10, 3.8))
    for r, name in enumerate(_names(runs)[:MAX_LINES]):
        line, = axes[0].plot(cycles, p[r], marker="o", ms=3, label=name)
        axes[0].fill_between(cycles, lo[r], hi[r], color=line.get_color(), alpha=0.2)
        with np.errstate(divide="ignore", invalid="ignore"):
            axes[1].plot(cycles, 1 - p[r], marker="o", ms=3, ls="", color=line.get_color())
        if fits and name in fits:
            kappa, intercept = fits[name]
            axes[1].plot(cycles, np.exp(intercept) * kappa ** cycles, color=line.get_color(),
                         label=f"kappa = {kappa:.3f}")
    axes[0].set(title="p_t(E) with Wilson 95% band", xlabel="cycle", ylim=(-0.02, 1.02))
    axes[1].set(title="1 - p_t(E) (log) and geometric fit", xlabel="cycle", yscale="log")
    axes[0].legend(fontsize=7)
    if fits:
        axes[1].legend(fontsize=7)
    return _save(fig, path)


def plot_smoothing(runs: xr.Dataset, path: Path) -> Path:
    """q_t(E) (share of elites in E) and the smoothing-identity residual per cycle."""
    cycles = runs["cycle"].values
    fig, axes = plt.subplots(1, 2, figsize=(10, 3.8), sharex=True)
    _draw_runs(axes[0], cycles, _var(runs, "q_E"), _names(runs))
    axes[0].axhline(1, color="k", lw=0.8, ls=":")
    axes[0].set(title="q_t(E): share of elites in E (=1 needed for geometric law)", xlabel="cycle")
    _draw_runs(axes[1], cycles, _var(runs, "smoothing_residual"), _names(runs))
    axes[1].axhline(0, color="k", lw=0.8, ls=":")
    axes[1].set(title="smoothing identity residual", xlabel="cycle")
    axes[0].legend(fontsize=7)
    return _save(fig, path)


def plot_status(runs: xr.Dataset, path: Path) -> Path:
    """Share of proposals by final status per cycle, stacked, pooled over runs."""
    cycles = runs["cycle"].values
    if "status_count" in runs:
        counts = runs["status_count"].sum("run")
        kind = next(d for d in counts.dims if d != "cycle")  # the store names it status_kind
        counts = counts.transpose("cycle", kind)
        labels = [str(s) for s in counts[kind].values]
        counts = counts.values.astype(float)
    elif "status" in runs:
        status = runs["status"].astype(str).transpose("cycle", ...).values.reshape(len(cycles), -1)
        labels = list(STATUSES)
        counts = np.array([[np.sum(row == s) for s in labels] for row in status], dtype=float)
    else:
        labels, counts = [], np.zeros((len(cycles), 0))
    total = counts.sum(axis=1, keepdims=True)
    share = np.divide(counts, total, out=np.zeros_like(counts), where=total > 0)
    used = share.sum(axis=0) > 0
    fig, ax = plt.subplots(figsize=(8, 4))
    if not used.any():
        ax.text(0.5, 0.5, "no candidates in the store", ha="center", va="center")
        return _save(fig, path)
    ax.stackplot(cycles, share[:, used].T, labels=[l for l, u in zip(labels, used) if u])
    ax.set(title="proposals by final status", xlabel="cycle", ylabel="share", ylim=(0, 1))
    ax.legend(fontsize=7, loc="center left", bbox_to_anchor=(1, 0.5))
    return _save(fig, path, right=0.78)


def plot_reliability(runs: xr.Dataset, path: Path, pooled=None, pairs: np.ndarray | None = None) -> Path:
    """Per-cycle test-retest Spearman vs arcsin prediction vs Moran; pooled scatter.

    ``pooled`` is a :class:`analysis.claims.PooledReliability`; ``pairs`` the (n, 2)
    replicate-0/replicate-1 scores it used (drawn as a hexbin: thousands of points).
    """
    cycles = runs["cycle"].values
    fig, axes = plt.subplots(1, 2, figsize=(10, 4))
    obs = _var(runs, "retest_spearman")
    with warnings.catch_warnings():  # cycles without replicates are all-NaN columns
        warnings.simplefilter("ignore", RuntimeWarning)
        axes[0].plot(cycles, np.nanmean(obs, axis=0), marker="o", label="observed Spearman (mean over runs)")
        axes[0].fill_between(cycles, np.nanmean(_var(runs, "retest_spearman_lo"), axis=0),
                             np.nanmean(_var(runs, "retest_spearman_hi"), axis=0), alpha=0.2)
        axes[0].plot(cycles, np.nanmean(_var(runs, "spearman_arcsin_pred"), axis=0), ls="--", label="arcsin prediction")
        axes[0].plot(cycles, np.nanmean(_var(runs, "spearman_moran_expected"), axis=0), ls=":", label="Moran expectation")
    axes[0].set(title="test-retest Spearman per cycle", xlabel="cycle")
    axes[0].legend(fontsize=7)
    if pairs is not None and len(pairs):
        axes[1].hexbin(pairs[:, 0], pairs[:, 1], gridsize=30, mincnt=1, cmap="viridis")
        title = f"replicate 0 vs 1, {len(pairs)} architectures"
        if pooled is not None:
            title += f"\nSpearman {pooled.spearman:.3f}, Moran {pooled.moran_expectation:.3f}"
        axes[1].set(title=title, xlabel="proxy accuracy, seed 0", ylabel="proxy accuracy, seed 1")
    else:
        axes[1].text(0.5, 0.5, "no replicate proxy runs", ha="center", va="center")
        axes[1].set_axis_off()
    return _save(fig, path)


def plot_heatmaps(summary: xr.Dataset, path: Path) -> Path:
    """One heatmap per variable of an ablation summary with dims (elite_fraction, novelty_threshold)."""
    names = list(summary.data_vars)
    fig, axes = plt.subplots(1, len(names), figsize=(4.2 * len(names), 3.8), squeeze=False)
    ef = summary["elite_fraction"].values
    nt = summary["novelty_threshold"].values
    for ax, name in zip(axes[0], names):
        grid = summary[name].transpose("elite_fraction", "novelty_threshold").values.astype(float)
        im = ax.imshow(grid, origin="lower", aspect="auto", cmap="viridis")
        ax.set_xticks(range(len(nt)), [f"{v:g}" for v in nt])
        ax.set_yticks(range(len(ef)), [f"{v:g}" for v in ef])
        ax.set(xlabel="novelty threshold", ylabel="elite fraction", title=name)
        for i in range(len(ef)):
            for j in range(len(nt)):
                if np.isfinite(grid[i, j]):
                    ax.text(j, i, f"{grid[i, j]:.3f}", ha="center", va="center", color="w", fontsize=8)
        fig.colorbar(im, ax=ax, shrink=0.8)
    return _save(fig, path)


def plot_sampler_comparison(ds: xr.Dataset, path: Path) -> Path:
    """Best-so-far and elite threshold against candidates evaluated, one line per sampler:
    the mean over seeds with its interval band (``experiments.compare_samplers``'s Dataset)."""
    x = ds["candidates"].values
    fig, axes = plt.subplots(1, 2, figsize=(10, 3.8), sharex=True)
    for ax, name, title in ((axes[0], "best_so_far", "best so far"), (axes[1], "gamma", "elite threshold gamma_t")):
        for sampler in ds["sampler"].values:
            mean, lo, hi = (ds[f"{name}_{k}"].sel(sampler=sampler).values for k in ("mean", "lo", "hi"))
            line, = ax.plot(x, mean, marker="o", ms=3, label=str(sampler))
            ax.fill_between(x, lo, hi, alpha=0.2, color=line.get_color())
        if "target" in ds and np.isfinite(ds["target"].values).any():
            ax.axhline(float(np.nanmean(ds["target"].values)), color="grey", ls=":", lw=1, label="target (mean)")
        ax.set(xlabel="candidates evaluated", ylabel="proxy accuracy", title=title)
    axes[0].legend(fontsize=8)
    fig.suptitle(f"mean over {ds.sizes['seed']} seeds, {100 * ds.attrs.get('level', 0.95):.0f}% t-interval")
    return _save(fig, path)
