"""Ablate the elite fraction and the novelty threshold (``python -m experiments.ablate``).

A grid elite_fraction x novelty_threshold x seed; each cell is a complete run directory
(``OUT/cells/ef<rho>_nt<tau>_s<seed>``) made by the CEM loop, so every cell can be
reported on alone. The grid is resumable cell by cell: a finished cell is skipped, a
partial one is continued from its last complete cycle. At the end all cells are
concatenated into one Dataset with dims (elite_fraction, novelty_threshold, seed,
cycle, ...) written to ``OUT/ablation.nc`` (open it with ``analysis.load``), a summary
table is printed and, with ``--report``, ``analysis.report`` writes ``OUT/report/``.

Without arguments: a small grid (2 elite fractions x 2 novelty thresholds x 1 seed, 3
cycles of 8 candidates, the grammar sampler, 500 mnist5k training images) that runs
offline in minutes. The full grid: ``--config experiments/configs/default.toml
--elite-fractions 0.1 0.2 0.3 0.5 --novelty-thresholds 0.8 0.85 0.9 0.95 --seeds 0 1 2``
(any config field can be overridden as in ``experiments.cem_run``). Novelty filtering is
switched on in every cell: the threshold is what is being ablated.
"""
from __future__ import annotations

import argparse
import copy
import os
import sys
from pathlib import Path

import xarray as xr

from analysis.summaries import ablation_summary
from analysis.load import load_grid
from cem_nas import config as C
from cem_nas.cem import run_search
from cem_nas.store import RunStore, StoreError

CONFIGS = Path(__file__).parent / "configs"

#: The small offline grid: what runs without any argument.
DEFAULT_GRID = {"elite_fractions": (0.2, 0.5), "novelty_thresholds": (0.8, 0.95), "seeds": (0,)}
DEFAULT_OVERRIDES = {"search.cycles": "3", "search.candidates": "8", "data.max_train": "500",
                     "data.max_test": "250", "run.progress": "false"}


def cell_name(elite_fraction: float, novelty_threshold: float, seed: int) -> str:
    return f"ef{elite_fraction:g}_nt{novelty_threshold:g}_s{seed}"


def cell_config(base: C.RunConfig, out: Path, elite_fraction: float, novelty_threshold: float,
                seed: int) -> C.RunConfig:
    """The base config with this cell's grid values, name and run directory."""
    return C.apply_overrides(copy.deepcopy(base), {
        "search.elite_fraction": repr(float(elite_fraction)),
        "search.novelty_threshold": repr(float(novelty_threshold)),
        "run.seed": str(int(seed)),
        "run.name": cell_name(elite_fraction, novelty_threshold, seed),
        "run.runs_dir": str(out / "cells"),
        "novelty.enabled": "true",
    })


def cell_progress(root: Path) -> int:
    """Cycles a cell has completed (0 when it never committed one)."""
    store = RunStore(root)
    return int(store.load_state()["cycles_done"]) if store.has_state() else 0


def run_cell(cfg: C.RunConfig) -> tuple[Path, str]:
    """Run, continue or skip one cell; returns its directory and what was done."""
    root = Path(cfg.run.runs_dir) / cfg.run.name
    done = cell_progress(root)
    if done == 0:
        cfg.run.overwrite = True  # a cell without a committed cycle holds nothing worth keeping
        return run_search(cfg), "ran"
    saved = C.load_toml(root / "config.toml", saved_run=True)
    blocking = {k: v for k, v in C.differences(saved, cfg).items() if k not in C.RESUMABLE_CHANGES}
    if blocking:
        listing = ", ".join(f"{k} (cell has {a!r}, now {b!r})" for k, (a, b) in blocking.items())
        raise C.ConfigError(f"cell {root} was run with another config: {listing}; "
                            "use another --out for a different study")
    if done >= cfg.search.cycles:
        return root, "complete"
    return run_search(cfg, resume_dir=root), f"resumed at cycle {done}"


def run_grid(base: C.RunConfig, out: Path, elite_fractions, novelty_thresholds, seeds,
             log=print) -> xr.Dataset:
    """Run every cell (skipping finished ones), write ``OUT/ablation.nc``, return the Dataset."""
    out = Path(out)
    cells = {}
    for ef in elite_fractions:
        for nt in novelty_thresholds:
            for seed in seeds:
                cfg = cell_config(base, out, ef, nt, seed)
                root, what = run_cell(cfg)
                log(f"{cfg.run.name}: {what}")
                cells[(float(ef), float(nt), int(seed))] = root
    grid = load_grid(cells)
    path = out / "ablation.nc"
    tmp = path.with_suffix(".nc.tmp")
    grid.to_netcdf(tmp)
    os.replace(tmp, path)
    return grid


def summary_table(grid: xr.Dataset) -> str:
    summary = ablation_summary(grid)
    names = list(summary.data_vars)
    rows = [f"{'elite_fraction':>14} {'novelty':>8} " + " ".join(f"{n:>15}" for n in names)]
    for ef in summary["elite_fraction"].values:
        for nt in summary["novelty_threshold"].values:
            cell = summary.sel(elite_fraction=ef, novelty_threshold=nt)
            rows.append(f"{ef:>14g} {nt:>8g} " + " ".join(f"{float(cell[n]):>15.4f}" for n in names))
    return "\n".join(rows)


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m experiments.ablate", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--config", type=Path, default=CONFIGS / "grammar.toml",
                   help="base TOML config of every cell (default: the grammar control)")
    p.add_argument("--elite-fractions", type=float, nargs="+", default=DEFAULT_GRID["elite_fractions"],
                   metavar="RHO", help="elite fractions of the grid (default %(default)s)")
    p.add_argument("--novelty-thresholds", type=float, nargs="+", default=DEFAULT_GRID["novelty_thresholds"],
                   metavar="TAU", help="novelty thresholds of the grid (default %(default)s)")
    p.add_argument("--seeds", type=int, nargs="+", default=DEFAULT_GRID["seeds"], metavar="S",
                   help="run seeds per cell (default %(default)s)")
    p.add_argument("--out", type=Path, default=Path("runs/ablate"), help="output directory (default runs/ablate)")
    p.add_argument("--report", action="store_true", help="also write OUT/report/ with analysis.report")
    C.add_arguments(p)
    return p


def base_config(args: argparse.Namespace) -> C.RunConfig:
    """The config file, then the small-grid defaults (only with the default config), then CLI overrides."""
    cfg = C.load_toml(args.config)
    overrides = dict(DEFAULT_OVERRIDES) if args.config == CONFIGS / "grammar.toml" else {}
    overrides.update(C.overrides_from_args(args))
    return C.apply_overrides(cfg, overrides)


def main(argv=None) -> int:
    args = parser().parse_args(argv)
    try:
        for name, values in (("--elite-fractions", args.elite_fractions),
                             ("--novelty-thresholds", args.novelty_thresholds)):
            bad = [v for v in values if not 0 < v <= 1]
            if bad:
                raise C.ConfigError(f"{name} must lie in (0, 1]; got {bad}")
        grid = run_grid(base_config(args), args.out, args.elite_fractions, args.novelty_thresholds, args.seeds)
    except (C.ConfigError, StoreError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    print(summary_table(grid))
    print(f"\nablation Dataset: {args.out / 'ablation.nc'}")
    if args.report:
        from analysis.report import write_report
        print(f"report: {write_report([args.out / 'ablation.nc'], args.out / 'report')}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
