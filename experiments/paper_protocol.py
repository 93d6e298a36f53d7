"""The source papers' protocol offline (``python -m experiments.paper_protocol``).

Three LLMs x two generation modes (delta: a unified diff against the baseline; full: the
whole file) x 22 cycles x 50 candidates, then one report that sets our figures beside the
seeds' (seed 001: valid rate, accuracy, output lines, delta vs full; seed 000: the
delta / full validity ratio against its prediction, the convergence claims, the arcsin law
"partially confirmed on 3,300 architectures").

Each (LLM, mode) is an ordinary cem_run store, ``OUT/<model>-<mode>/``. The study resumes
run by run: a finished run is skipped, an interrupted one continues from its last complete
cycle (``cem_nas.cem.run_search(cfg, resume_dir)``), so rerunning the same command after a
kill, or with more ``--cycles``, picks up where it stopped. The report
(``analysis.paper_table``) is written to ``OUT/report.md`` and printed; it also projects the
full size's time from the seconds per phase the stores hold.

Size: 22 x 50 unless ``--cycles`` / ``--candidates`` say otherwise; every scored
candidate gets a replicate proxy run (``search.replicate_candidates`` = candidates; the
arcsin law is tested on those pairs) unless ``--replicate-candidates`` says otherwise.
Any other config field passes through as in ``experiments.cem_run`` (``--sampler grammar``
runs the whole protocol in seconds without an LLM, the model names then only label the runs).

Reduced size: ``--cycles 6 --candidates 24``.
"""
from __future__ import annotations

import argparse
import copy
import sys
import time
from pathlib import Path

from analysis import paper_table
from cem_nas import config as C
from cem_nas import preflight
from cem_nas.data import DatasetUnavailable
from cem_nas.distributed import SchedulerLost
from cem_nas.sampler.model import ModelNotAvailable
from cem_nas.store import StoreError, atomic_write_text
from experiments.ablate import run_cell

DEFAULT_CONFIG = Path(__file__).parent / "configs" / "default.toml"
#: Fields the protocol sets per run: the command's own options stand for them.
OWNED = {"sampler.model": "--models", "sampler.mode": "--modes", "run.name": "--out", "run.runs_dir": "--out"}


def parser() -> argparse.ArgumentParser:
    # no abbreviations: ``--model`` must not silently mean ``--models``
    p = argparse.ArgumentParser(prog="python -m experiments.paper_protocol", description=__doc__, allow_abbrev=False,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--config", type=Path, default=DEFAULT_CONFIG, help="base TOML config of every run "
                   "(default %(default)s)")
    p.add_argument("--models", nargs="+", default=list(paper_table.MODELS), metavar="MODEL",
                   help="LLMs, as sampler.model takes them (default %(default)s)")
    p.add_argument("--modes", nargs="+", default=list(paper_table.MODES), choices=paper_table.MODES,
                   help="generation modes (default %(default)s)")
    p.add_argument("--out", type=Path, default=Path("runs/paper_protocol"),
                   help="directory of the runs and report.md (default %(default)s)")
    p.add_argument("--report-only", action="store_true",
                   help="run nothing: report on the runs under OUT as far as they got")
    C.add_arguments(p)
    return p


def base_config(args: argparse.Namespace) -> C.RunConfig:
    """The config file, then the protocol's size and replicates, then the command line's overrides."""
    overrides = C.overrides_from_args(args)
    owned = sorted({flag for field, flag in OWNED.items() if field in overrides})
    if owned:
        raise C.ConfigError(f"the protocol names, places and sizes its runs itself: use {', '.join(owned)} "
                            "instead of the config field")
    candidates = overrides.get("search.candidates", str(paper_table.FULL_CANDIDATES))
    protocol = {"search.cycles": str(paper_table.FULL_CYCLES), "search.candidates": candidates,
                "search.replicate_candidates": candidates}
    return C.apply_overrides(C.load_toml(args.config), {**protocol, **overrides})


def cell_config(base: C.RunConfig, out: Path, model: str, mode: str) -> C.RunConfig:
    """The base config for one LLM and mode, named and placed under OUT."""
    return C.apply_overrides(copy.deepcopy(base), {"sampler.model": model, "sampler.mode": mode,
                                                   "run.name": paper_table.cell_name(model, mode),
                                                   "run.runs_dir": str(out)})


def run_cells(configs: list[C.RunConfig], log=print) -> None:
    """Run, continue or skip every run, in order, saying which and how long it took."""
    for i, cfg in enumerate(configs, 1):
        root = Path(cfg.run.runs_dir) / cfg.run.name
        done, want = paper_table.cycles_done(root), cfg.search.cycles
        if done < want:
            log(f"[{i}/{len(configs)}] {cfg.run.name}: " + (f"continuing at cycle {done} of {want}" if done else
                                                           f"starting, {want} cycles x {cfg.search.candidates}"))
        start = time.monotonic()
        _, what = run_cell(cfg)
        log(f"[{i}/{len(configs)}] {cfg.run.name}: {what}"
            + (f" ({time.monotonic() - start:.0f} s)" if what != "complete" else ""))


def main(argv: list[str] | None = None) -> int:
    args = parser().parse_args(argv)
    try:
        base = base_config(args)
        configs = [cell_config(base, args.out, model, mode) for model in dict.fromkeys(args.models)
                   for mode in dict.fromkeys(args.modes)]
    except C.ConfigError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    if not args.report_only:
        # every run is checked before the first starts: a missing model fails in seconds, not hours in
        found = dict.fromkeys(p for cfg in configs for p in preflight.problems(cfg))
        for problem in found:
            print(f"error: {problem}", file=sys.stderr)
        if found:
            return 2
        from transformers.utils import logging as hf_logging

        hf_logging.disable_progress_bar()  # the runs draw their own transient bars
        try:
            run_cells(configs)
        except (C.ConfigError, StoreError, DatasetUnavailable, ModelNotAvailable) as e:
            print(f"error: {e}", file=sys.stderr)
            return 2
        except SchedulerLost as e:
            print(f"error: {e}\nCompleted cycles are kept; restart the scheduler and rerun the same command",
                  file=sys.stderr)
            return 3
        except KeyboardInterrupt:
            print("\ninterrupted; completed cycles are kept. Rerun the same command to continue", file=sys.stderr)
            return 130
    # every run of the protocol under OUT, not only this command's: running the LLMs one command
    # each must not leave a report of the last one alone
    everything = [cell_config(base, args.out, model, mode) for model in dict.fromkeys([*args.models, *paper_table.MODELS])
                  for mode in paper_table.MODES]
    cells = {(cfg.sampler.model, cfg.sampler.mode): Path(cfg.run.runs_dir) / cfg.run.name for cfg in everything}
    try:
        text = paper_table.report(cells)
    except (StoreError, ValueError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    path = args.out / "report.md"
    path.parent.mkdir(parents=True, exist_ok=True)
    atomic_write_text(path, text)
    print(text)
    print(f"report written to {path}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
