"""LLM-CEM, grammar-CEM and random search at an equal budget (``python -m experiments.compare_samplers``).

For every seed, one run per sampler (``llm``: the LoRA-tuned LLM; ``grammar``: the exact
CEM over the mutation grammar; ``random``: uniform over the same grammar, never updated)
with the same config otherwise: data, proxy, cycles x candidates, seed. Each run is a
run directory ``OUT/cells/<sampler>_s<seed>`` made by the CEM loop; like
``experiments.ablate`` the study is resumable run by run (a finished run is skipped, a
partial one continued from its last complete cycle).

Written: ``OUT/compare_samplers.nc``, one Dataset with dims (sampler, seed, cycle):
best-so-far, elite threshold gamma_t and the mean score of each cycle's elites against
``candidates`` (proposals evaluated so far), their means over seeds with a Student-t
interval, and per run the candidates needed to reach ``--target`` (default: the run's
best zoo baseline's score on its proxy; each seed draws its own data subset); ``OUT/compare_samplers.png`` (the curves with
their bands). The printed summary says whether LLM-CEM (and grammar-CEM) beats random
search on the final best-so-far and on the mean of the last cycle's elites (paired
t-interval of the difference over seeds): a finding, whichever way it falls.

Default: the offline config (default.toml: its embedded model, mnist5k) at its cycles x candidates,
seeds 0 1 2. Budget as in the issue: ``--cycles 10 --candidates 24`` (240 per run).
"""
from __future__ import annotations

import argparse
import copy
import math
import sys
from pathlib import Path

import numpy as np
import xarray as xr

from analysis import claims as cl
from analysis import summaries as sm
from analysis.load import load
from analysis.plots import plot_sampler_comparison
from cem_nas import config as C
from cem_nas.store import StoreError, atomic_write_dataset
from experiments.ablate import run_cell

CONFIGS = Path(__file__).parent / "configs"
SAMPLERS = ("llm", "grammar", "random")
#: Per-run curves of the Dataset; each also gets _mean, _lo, _hi over seeds.
CURVES = ("best_so_far", "gamma", "elite_mean")


def sampler_config(base: C.RunConfig, out: Path, sampler: str, seed: int) -> C.RunConfig:
    """The base config with this sampler and seed, named and placed under OUT/cells/."""
    return C.apply_overrides(copy.deepcopy(base), {
        "sampler.kind": sampler, "run.seed": str(int(seed)), "run.name": f"{sampler}_s{seed}",
        "run.runs_dir": str(out / "cells"),
    })


def run_all(base: C.RunConfig, out: Path, samplers, seeds, log=print) -> dict[tuple[str, int], Path]:
    """Run (or continue, or skip) every (sampler, seed); their run directories."""
    dirs = {}
    for seed in seeds:
        for sampler in samplers:
            root, what = run_cell(sampler_config(base, out, sampler, seed))
            log(f"{sampler} seed {seed}: {what}")
            dirs[(sampler, int(seed))] = root
    return dirs


def run_curves(ds: xr.Dataset, cycles: int) -> dict[str, np.ndarray]:
    """best_so_far, gamma and elite_mean per cycle of one run (NaN past its last cycle)."""
    out = {name: np.full(cycles, np.nan) for name in CURVES}
    n = min(ds.sizes["cycle"], cycles)
    out["best_so_far"][:n] = ds["best_so_far"].values[:n]
    out["gamma"][:n] = ds["gamma"].values[:n]
    score = ds["score"].values[:n].astype(float)
    elite = ds["is_elite"].values[:n].astype(bool)
    for t in range(n):
        if elite[t].any():
            out["elite_mean"][t] = float(score[t][elite[t]].mean())
    return out


def candidates_to_reach(ds: xr.Dataset, target: float) -> float:
    """Proposals drawn (in order, over cycles) until the first whose score reaches ``target``; NaN if none."""
    if not math.isfinite(target):
        return math.nan
    score = ds["score"].values.astype(float)
    real = ds["status"].values.astype(str) != ""  # padding of shorter cycles is not a proposal
    hits = np.flatnonzero(np.nan_to_num(score[real], nan=-np.inf) >= target)
    return float(hits[0] + 1) if len(hits) else math.nan


def comparison_dataset(dirs: dict[tuple[str, int], Path], target: float | None = None,
                       level: float = cl.LEVEL) -> xr.Dataset:
    """The study's Dataset from its run directories (see the module docstring)."""
    samplers = list(dict.fromkeys(s for s, _ in dirs))
    seeds = sorted({seed for _, seed in dirs})
    runs = {key: load(path) for key, path in dirs.items()}
    cycles = max(ds.sizes["cycle"] for ds in runs.values())
    per_cycle = {int(ds.n_cand.values[0]) for ds in runs.values()}
    if len(per_cycle) != 1:
        raise ValueError(f"the runs drew different numbers of candidates per cycle {sorted(per_cycle)}: "
                         "an equal budget needs the same search.candidates")
    shape = (len(samplers), len(seeds))
    curves = {name: np.full(shape + (cycles,), np.nan) for name in CURVES}
    reach, targets = np.full(shape, np.nan), np.full(shape, np.nan)
    for (sampler, seed), ds in runs.items():
        i, j = samplers.index(sampler), seeds.index(seed)
        for name, values in run_curves(ds, cycles).items():
            curves[name][i, j] = values
        # each seed draws its own data subset: the baseline to beat is the run's own
        targets[i, j] = target if target is not None else float(ds["zoo_score"].max()) if "zoo_score" in ds else math.nan
        reach[i, j] = candidates_to_reach(ds, targets[i, j])
    data = {name: (("sampler", "seed", "cycle"), values) for name, values in curves.items()}
    for name, values in curves.items():
        summary = np.array([[sm.seed_interval(values[i, :, t], level) for t in range(cycles)]
                            for i in range(len(samplers))])
        for k, part in enumerate(("mean", "lo", "hi")):
            data[f"{name}_{part}"] = (("sampler", "cycle"), summary[..., k])
    data["target"] = (("sampler", "seed"), targets,
                      {"description": "score to reach: --target, else the run's best zoo baseline on its proxy"})
    data["candidates_to_reach"] = (("sampler", "seed"), reach,
                                   {"description": "proposals drawn until the first with score >= target; NaN: never"})
    n = per_cycle.pop()
    coords = {"sampler": samplers, "seed": seeds, "cycle": np.arange(cycles), "candidates": ("cycle", n * np.arange(1, cycles + 1))}
    return xr.Dataset(data, coords=coords, attrs={"level": float(level), "candidates_per_cycle": n,
                                                   "target_given": "" if target is None else float(target)})


def versus(ds: xr.Dataset, a: str, b: str) -> dict[str, tuple[float, float, float]]:
    """Paired t-intervals over seeds of a - b: final best-so-far and the last cycle's elite
    mean. Paired, because the runs of one seed share its data subset, zoo scores and the
    loop's random stream; the seed-to-seed spread of the data cancels in the difference."""
    out = {}
    for name in ("best_so_far", "elite_mean"):
        last = {s: sm.last_finite(ds[name].sel(sampler=s)).values for s in (a, b)}
        out[name] = sm.seed_interval(last[a] - last[b], ds.attrs["level"])
    return out


def _fmt(x: float, digits: int = 3) -> str:
    return "n/a" if not np.isfinite(x) else f"{x:.{digits}f}"


def summary(ds: xr.Dataset) -> str:
    """Per sampler: final best, last elite mean, candidates to reach the target; then LLM vs random."""
    level = ds.attrs["level"]
    target = float(np.nanmean(ds["target"].values)) if np.isfinite(ds["target"].values).any() else math.nan
    given = "given" if ds.attrs.get("target_given", "") != "" else "each run's best zoo baseline, mean"
    rows = [f"{ds.sizes['seed']} seed(s), {int(ds['candidates'].values[-1])} candidates per run, "
            f"{100 * level:.0f}% t-intervals over seeds; target {_fmt(target)} ({given})",
            f"{'sampler':>8} {'final best [CI]':>24} {'last elite mean [CI]':>24} {'to reach target':>18}"]
    for s in ds["sampler"].values:
        best = sm.seed_interval(sm.last_finite(ds["best_so_far"].sel(sampler=s)).values, level)
        elite = sm.seed_interval(sm.last_finite(ds["elite_mean"].sel(sampler=s)).values, level)
        reach = ds["candidates_to_reach"].sel(sampler=s).values
        reached = np.isfinite(reach)
        to_reach = f"{np.median(reach[reached]):.0f} ({reached.sum()}/{len(reach)})" if reached.any() else \
            f"never (0/{len(reach)})"
        rows.append(f"{s:>8} {_fmt(best[0]):>6} [{_fmt(best[1])}, {_fmt(best[2])}] "
                    f"{_fmt(elite[0]):>6} [{_fmt(elite[1])}, {_fmt(elite[2])}] {to_reach:>18}")
    samplers = [str(s) for s in ds["sampler"].values]
    for cem in (s for s in samplers if s != "random" and "random" in samplers):
        for name, (d, lo, hi) in versus(ds, cem, "random").items():
            verdict = (f"{cem}-CEM beats random search" if lo > 0 else f"random search beats {cem}-CEM" if hi < 0
                       else "no difference shown at this many seeds")
            rows.append(f"{cem} - random, {name.replace('_', ' ')} of the last cycle: {_fmt(d, 4)} "
                        f"[{_fmt(lo, 4)}, {_fmt(hi, 4)}] (paired): {verdict}")
    return "\n".join(rows)


def write(ds: xr.Dataset, out: Path) -> tuple[Path, Path]:
    """The Dataset (atomically) and the figure under ``out``."""
    path = out / "compare_samplers.nc"
    atomic_write_dataset(path, ds)
    return path, plot_sampler_comparison(ds, out / "compare_samplers.png")


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m experiments.compare_samplers", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--config", type=Path, default=CONFIGS / "default.toml",
                   help="base TOML config of every run (default: the offline LLM default)")
    p.add_argument("--samplers", nargs="+", default=list(SAMPLERS), choices=SAMPLERS,
                   help="samplers to compare (default %(default)s)")
    p.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2], metavar="S", help="run seeds (default %(default)s)")
    p.add_argument("--target", type=float, default=None,
                   help="score whose first reach is counted (default: the best zoo baseline's score)")
    p.add_argument("--out", type=Path, default=Path("runs/compare_samplers"),
                   help="output directory (default runs/compare_samplers)")
    C.add_arguments(p)
    return p


def main(argv=None) -> int:
    args = parser().parse_args(argv)
    try:
        base = C.apply_overrides(C.load_toml(args.config), C.overrides_from_args(args))
        dirs = run_all(base, args.out, args.samplers, args.seeds)
        ds = comparison_dataset(dirs, args.target)
        nc, png = write(ds, args.out)
    except (C.ConfigError, StoreError, ValueError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    print(summary(ds))
    print(f"\nDataset: {nc}\nfigure: {png}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
