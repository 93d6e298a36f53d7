"""Summaries of runs that are not verdicts: the two readings of repeats, the best
candidate against the zoo, intervals over seeds and the cells of an ablation grid.

Like :mod:`analysis.claims` they read the ``run`` view of the stores
(:func:`analysis.load.as_runs`), or the grid of :func:`analysis.load.load_grid`.
"""
from __future__ import annotations

import math
import warnings

import numpy as np
import xarray as xr
from scipy import stats

from analysis.claims import LEVEL, series


# --------------------------------------------------------------------------- readings of repeats

#: Cycle variables of the two readings of repeats, with their labels.
READING_VARIABLES = {"p_E_inherit": "p_t(E) inherit", "p_E_reject": "p_t(E) reject", "new_share": "new share",
                     "novel_valid_yield": "novel-valid yield", "repeat_rate": "repeat rate"}


def readings_used(runs: xr.Dataset) -> dict[str, str]:
    """How each run read its repeats, which is the reading its p_E (and so every verdict)
    uses: ``inherit`` or ``reject``; a store from before ``search.duplicates`` counted
    repeats as misses, the reject reading (its inherit reading is unavailable)."""
    values = runs["duplicates"].values if "duplicates" in runs.coords else [None] * runs.sizes["run"]
    return {str(name): str(v) if v not in (None, "") else "reject (store predates search.duplicates)"
            for name, v in zip(runs["run"].values, values)}


def readings_table(runs: xr.Dataset) -> dict[str, np.ndarray]:
    """Per cycle, means over runs of :data:`READING_VARIABLES` (NaN where a store lacks one:
    an old store has no inherit reading)."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)  # a cycle no run reached: NaN, as documented
        return {name: np.nanmean(series(runs, name), axis=0) if name in runs else np.full(runs.sizes["cycle"], np.nan)
                for name in READING_VARIABLES}


def best_vs_baseline(runs: xr.Dataset) -> list[dict]:
    """Per run: the best trained candidate against the best zoo baseline on the same proxy.

    Candidates that are repeats (their score inherited from a twin) are left out, so a
    proposal that reproduces a baseline cannot pass for a better candidate. A store
    without zoo scores (older runs) gives NaN for the baseline.
    """
    out = []
    for r, name in enumerate(runs["run"].values):
        run = runs.isel(run=r)
        score = run["score"].values.astype(float) if "score" in run else np.array([np.nan])
        if "is_new" in run:
            score = np.where(run["is_new"].values.astype(bool), score, np.nan)
        best = float(np.nanmax(score)) if np.isfinite(score).any() else math.nan
        zoo_best, zoo_name = math.nan, ""
        if "zoo_score" in run:
            zs = run["zoo_score"].values.astype(float)
            if np.isfinite(zs).any():
                k = int(np.nanargmax(zs))
                zoo_best, zoo_name = float(zs[k]), str(run["zoo"].values[k])
        out.append({"run": str(name), "best_candidate": best, "best_baseline": zoo_best, "baseline": zoo_name,
                    "difference": best - zoo_best})
    return out


# --------------------------------------------------------------------------- across seeds

def seed_interval(values, level: float = LEVEL) -> tuple[float, float, float]:
    """(mean, lower, upper): Student-t interval of the mean of finite ``values`` over seeds,
    mean +- t_{(1+level)/2, n-1} s / sqrt(n); NaN bounds below 2 values.

    >>> m, lo, hi = seed_interval([1.0, 2.0, 3.0])
    >>> m, round(hi - m, 3)   # t_{0.975, 2} = 4.303, s / sqrt(3) = 0.577
    (2.0, 2.484)
    """
    x = np.asarray(values, dtype=float)
    x = x[np.isfinite(x)]
    if len(x) == 0:
        return math.nan, math.nan, math.nan
    mean = float(x.mean())
    if len(x) < 2:
        return mean, math.nan, math.nan
    half = float(stats.t.ppf(0.5 + level / 2, len(x) - 1) * x.std(ddof=1) / math.sqrt(len(x)))
    return mean, mean - half, mean + half


# --------------------------------------------------------------------------- ablation

#: What an ablation cell is summarised by: name -> (cycle variable, reduction over cycles).
ABLATION_METRICS = {
    "final_best": ("best_so_far", "last"),
    "final_p_E": ("p_E", "last"),
    "final_gamma": ("gamma", "last"),
    "mean_valid_rate": ("valid_rate", "mean"),
}


def last_finite(values: xr.DataArray, dim: str = "cycle") -> xr.DataArray:
    """The last finite value along ``dim`` (NaN where there is none)."""
    def pick(a: np.ndarray) -> np.ndarray:
        ok = np.isfinite(a)
        idx = np.where(ok.any(-1), a.shape[-1] - 1 - np.argmax(ok[..., ::-1], axis=-1), 0)
        out = np.take_along_axis(a, idx[..., None], axis=-1)[..., 0]
        return np.where(ok.any(-1), out, np.nan)
    return xr.apply_ufunc(pick, values.astype(float), input_core_dims=[[dim]])


def ablation_summary(grid: xr.Dataset) -> xr.Dataset:
    """Cell means over seeds of :data:`ABLATION_METRICS`, dims (elite_fraction, novelty_threshold).

    Also ``n_seeds``: seeds that ran in the cell (a partly finished grid shows it).
    """
    missing = [d for d in ("elite_fraction", "novelty_threshold") if d not in grid.dims]
    if missing:
        raise ValueError(f"an ablation Dataset needs dims elite_fraction and novelty_threshold; missing {missing}")
    out = {}
    for name, (var, how) in ABLATION_METRICS.items():
        if var not in grid:
            continue
        values = last_finite(grid[var]) if how == "last" else grid[var].astype(float).mean("cycle", skipna=True)
        out[name] = values.mean("seed", skipna=True) if "seed" in values.dims else values
    ran = (grid["n_cand"].fillna(0) > 0).any("cycle") if "n_cand" in grid else None
    if ran is not None:
        out["n_seeds"] = ran.sum("seed") if "seed" in ran.dims else ran.astype(int)
    return xr.Dataset(out)
