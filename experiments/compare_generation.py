"""Delta vs full generation with the same LLM, budget and seeds (``python -m experiments.compare_generation``).

For every seed, two runs that differ only in ``sampler.mode`` (delta: the LLM writes a
unified diff against the baseline; full: it writes the whole file): same model, config,
cycles x candidates and seed. Each run is a run directory under ``OUT/runs/`` (resumable
like ``experiments.ablate``). The comparison - valid rate with a Wilson CI, status
breakdown, mean and best proxy accuracy of valid candidates, output lines and tokens per
proposal and per valid candidate, generation seconds - is written to
``OUT/compare.md`` (markdown, with the verdict on "delta beats full") and
``OUT/compare.nc`` (dims mode, status_kind). ``--runs DIR [DIR ...]`` compares existing
run directories instead of running anything.

Default: the offline config (default.toml: its embedded model, mnist5k), seed 0.
"""
from __future__ import annotations

import argparse
import copy
import os
import sys
from pathlib import Path

import numpy as np
import xarray as xr

from analysis import claims as cl
from analysis.load import as_runs, load
from analysis.report import claim_section, generation_markdown
from cem_nas import config as C
from cem_nas.records import STATUSES
from cem_nas.store import StoreError
from experiments.ablate import run_cell

CONFIGS = Path(__file__).parent / "configs"
MODES = ("delta", "full")

#: Scalar rows of :func:`analysis.claims.generation_table` stored in the netCDF.
METRICS = ("runs", "proposals", "valid", "valid_rate", "valid_lo", "valid_hi", "score_mean", "score_best",
           "lines_per_proposal", "tokens_per_proposal", "lines_per_valid", "tokens_per_valid",
           "gen_seconds", "gen_seconds_per_valid")


def mode_config(base: C.RunConfig, out: Path, mode: str, seed: int) -> C.RunConfig:
    """The base config with this mode and seed, named and placed under OUT/runs/."""
    return C.apply_overrides(copy.deepcopy(base), {
        "sampler.mode": mode, "run.seed": str(int(seed)), "run.name": f"{mode}_s{seed}",
        "run.runs_dir": str(out / "runs"),
    })


def run_pairs(base: C.RunConfig, out: Path, seeds, log=print) -> list[Path]:
    """Run (or continue, or skip) the delta and full run of every seed; their directories."""
    if base.sampler.kind != "llm":
        raise C.ConfigError(f"sampler.kind is {base.sampler.kind!r}; delta vs full compares LLM generation "
                            "modes, so set --sampler llm")
    dirs = []
    for seed in seeds:
        for mode in MODES:
            root, what = run_cell(mode_config(base, out, mode, seed))
            log(f"{mode} seed {seed}: {what}")
            dirs.append(root)
    return dirs


def comparison_dataset(runs: xr.Dataset) -> xr.Dataset:
    """The generation table as a Dataset: metrics over ``mode``, status counts over (mode, status_kind)."""
    table = cl.generation_table(runs)
    modes = list(table)
    data = {m: ("mode", np.array([float(table[mode][m]) for mode in modes])) for m in METRICS}
    data["status_count"] = (("mode", "status_kind"),
                            np.array([[table[mode]["statuses"].get(s, 0) for s in STATUSES] for mode in modes]))
    return xr.Dataset(data, coords={"mode": modes, "status_kind": list(STATUSES)})


def write_comparison(dirs, out: Path) -> tuple[Path, Path, cl.Claim | None]:
    """Write OUT/compare.md and OUT/compare.nc for the given run directories."""
    runs = as_runs(load(dirs))
    claim = cl.delta_vs_full(runs)
    out.mkdir(parents=True, exist_ok=True)
    lines = ["# Delta vs full generation", "", f"Runs: {', '.join(str(d) for d in dirs)}", "",
             *generation_markdown(runs)]
    if claim is not None:
        lines += claim_section(claim)
    else:
        lines += ["Only one generation mode is present: no delta vs full verdict.", ""]
    md = out / "compare.md"
    md.write_text("\n".join(lines) + "\n")
    nc = out / "compare.nc"
    tmp = nc.with_suffix(".nc.tmp")
    comparison_dataset(runs).to_netcdf(tmp)
    os.replace(tmp, nc)
    return md, nc, claim


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m experiments.compare_generation", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--config", type=Path, default=CONFIGS / "default.toml", help="base TOML config of every run")
    p.add_argument("--seeds", type=int, nargs="+", default=[0], metavar="S", help="run seeds (default 0)")
    p.add_argument("--out", type=Path, default=Path("runs/compare_generation"), help="output directory")
    p.add_argument("--runs", type=Path, nargs="+", metavar="RUN_DIR",
                   help="compare these existing run directories instead of running")
    C.add_arguments(p)
    return p


def main(argv=None) -> int:
    args = parser().parse_args(argv)
    try:
        if args.runs:
            dirs = args.runs
        else:
            base = C.apply_overrides(C.load_toml(args.config), C.overrides_from_args(args))
            dirs = run_pairs(base, args.out, args.seeds)
        md, nc, _ = write_comparison(dirs, args.out)
    except (C.ConfigError, StoreError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    print(md.read_text())
    print(f"written: {md}, {nc}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
