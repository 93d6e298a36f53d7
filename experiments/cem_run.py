"""Run a CEM architecture search (``python -m experiments.cem_run``).

Without arguments: the offline default (embedded Qwen2.5-Coder-0.5B, delta mode, mnist5k; see
experiments/configs/default.toml). ``--config FILE`` reads another config, every field
can be overridden (``--cycles 3 --elite-fraction 0.2``, or dotted ``--lora.rank 8``),
``--sampler grammar`` runs the exact-CEM control, and ``--resume runs/NAME`` continues an
interrupted run from its last complete cycle.
"""
from __future__ import annotations

import argparse
import math
import sys
from pathlib import Path

from cem_nas import config as C
from cem_nas import preflight
from cem_nas.cem import run_search
from cem_nas.data_sources import DatasetUnavailable
from cem_nas.distributed import SchedulerLost
from cem_nas.sampler.model import ModelNotAvailable
from cem_nas.store import RunStore, StoreError, load

DEFAULT_CONFIG = Path(__file__).parent / "configs" / "default.toml"

#: ``--quick``: a smoke run of the same pipeline with a small warm start of its own;
#: applied over the config, under any explicit override.
QUICK = {
    "run.name": "quick", "search.cycles": "2", "search.candidates": "6", "search.replicate_candidates": "2",
    "data.max_train": "300", "data.max_test": "200", "sampler.warm_start.steps": "6", "sampler.lora.steps": "1",
}  # the token budget stays: at 160 tokens a quick run cut 1 of 6 answers mid-hunk (parse_error)


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m experiments.cem_run", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--config", type=Path, default=None, help=f"TOML config file (default {DEFAULT_CONFIG})")
    p.add_argument("--resume", type=Path, default=None, metavar="RUN_DIR",
                   help="continue the run in RUN_DIR from its last complete cycle")
    p.add_argument("--quick", action="store_true",
                   help="smoke run (2 cycles x 6 proposals, small warm start, run name "
                        "'quick'); other options still apply on top")
    C.add_arguments(p)
    return p


def resolve(args: argparse.Namespace) -> tuple[C.RunConfig, Path | None]:
    """The config to run, and the run directory to resume (None for a fresh run).

    On resume the saved config is the base (``--config`` replaces it); fields outside
    :data:`cem_nas.config.RESUMABLE_CHANGES` must not differ from the saved run.
    """
    overrides = C.overrides_from_args(args)
    if args.quick:
        if args.resume is not None:
            raise C.ConfigError("--quick starts a new smoke run; resume without --quick")
        overrides = {**QUICK, **overrides}
    if args.resume is None:
        return C.apply_overrides(C.load_toml(args.config or DEFAULT_CONFIG), overrides), None
    saved_path = args.resume / "config.toml"
    saved = C.load_toml(saved_path, saved_run=True) if saved_path.exists() else None
    if saved is None:
        raise StoreError(f"{args.resume} is not a run directory (no config.toml); start a fresh run instead")
    wanted = C.apply_overrides(C.load_toml(args.config) if args.config else C.load_toml(saved_path, saved_run=True), overrides)
    # the directory names the run: its saved name and location stand
    wanted.run.name, wanted.run.runs_dir = saved.run.name, saved.run.runs_dir
    blocking = {k: v for k, v in C.differences(saved, wanted).items() if k not in C.RESUMABLE_CHANGES}
    if blocking:
        listing = "\n".join(f"  {k}: run has {a!r}, now {b!r}" for k, (a, b) in blocking.items())
        raise C.ConfigError(f"cannot resume {args.resume}: these fields differ from the saved run\n{listing}\n"
                            f"only {', '.join(C.RESUMABLE_CHANGES)} may change on resume; start a new run "
                            "(another --name) to change the others")
    return wanted, args.resume


def _fmt(x: float, digits: int = 3) -> str:
    return "-" if x is None or (isinstance(x, float) and math.isnan(x)) else f"{x:.{digits}f}"


def summary(run_dir: Path) -> str:
    """Per-cycle table: valid rate, gamma_t, best, p_t(E) [CI], SNR, Spearman observed vs predicted."""
    ds = load(run_dir)
    head = f"{'cycle':>5} {'valid':>6} {'gamma_t':>8} {'best':>6} {'p_t(E) [95% CI]':>21} {'SNR':>7} " \
           f"{'r_S obs':>8} {'r_S Moran':>9} {'r_S arcsin':>10}"
    rows = [head, "-" * len(head)]
    for t in ds.cycle.values:
        c = ds.sel(cycle=t)
        p = f"{_fmt(float(c.p_E), 2)} [{_fmt(float(c.p_E_lo), 2)},{_fmt(float(c.p_E_hi), 2)}]"
        rows.append(f"{int(t):>5} {_fmt(float(c.valid_rate), 2):>6} {_fmt(float(c.gamma)):>8} "
                    f"{_fmt(float(c.score_best)):>6} {p:>21} {_fmt(float(c.snr), 2):>7} "
                    f"{_fmt(float(c.retest_spearman), 2):>8} {_fmt(float(c.spearman_moran_expected), 2):>9} "
                    f"{_fmt(float(c.spearman_arcsin_pred), 2):>10}")
    n = int(ds.n_cand.sum())
    rows.append(f"{n} candidates over {ds.sizes['cycle']} cycles; best {_fmt(float(ds.best_so_far[-1]))}; "
                f"store: {RunStore(run_dir).root.resolve()}  (open with cem_nas.store.load)")
    return "\n".join(rows)


def main(argv: list[str] | None = None) -> int:
    args = parser().parse_args(argv)
    try:
        cfg, resume_dir = resolve(args)
    except (C.ConfigError, StoreError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    # before the store, the dataset or the model is touched: a foreseeable failure costs seconds
    found = preflight.problems(cfg)
    for problem in found:
        print(f"error: {problem}", file=sys.stderr)
    if found:
        return 2
    # the run draws its own transient bars; transformers' weight-loading bar would stay on screen
    from transformers.utils import logging as hf_logging

    hf_logging.disable_progress_bar()
    try:
        run_dir = run_search(cfg, resume_dir)
    except (C.ConfigError, StoreError, DatasetUnavailable, ModelNotAvailable) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    except SchedulerLost as e:
        # the cycle in progress was not stored; state.json still marks the last complete one
        where = resume_dir or Path(cfg.run.runs_dir) / cfg.run.name
        print(f"error: {e}\nCompleted cycles are kept; restart the scheduler and continue with --resume {where}",
              file=sys.stderr)
        return 3
    except KeyboardInterrupt:
        where = resume_dir or Path(cfg.run.runs_dir) / cfg.run.name
        print(f"\ninterrupted; completed cycles are kept. Continue with --resume {where}", file=sys.stderr)
        return 130
    print(summary(run_dir))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
