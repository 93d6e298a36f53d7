"""Does the LLM keep proposing new valid architectures under the CE update?

Runs a short real CEM search (default.toml's embedded model, default.toml plus the setting's
overrides) per named setting and prints per cycle, i.e. after 0, 1, 2, ... updates:

* valid: share of the cycle's proposals with status ``ok`` (trained, above 1.2 x chance);
* new: share of proposals whose file is not an exact repeat (after normalisation,
  :func:`cem_nas.repeats.exact_key`) of a zoo baseline or an earlier proposal of the run
  (an archive of its own, so the figure does not depend on how the loop books repeats; a
  delta that leaves its parent unchanged is not new);
* yield: new and ``ok`` (the novel-valid yield of the exact reading), with its Wilson 95%
  interval;
* near: the same yield when a file within MinHash Jaccard ``--threshold`` (default 0.97,
  the earlier default novelty threshold) of an earlier file counts as a repeat;
* strict: share whose delta applied at the strict tier (exact ``@@`` headers);
* p_E: the loop's p_t(E).

    python -m benchmarks.bench_diversity --cycles 4 --candidates 12 --settings default refine hot

Settings are names of :data:`SETTINGS` or ``NAME:field=value,field=value`` (config
fields as on the cem_run command line). Each setting is a run directory under
``--out`` (resumed if it is there, so an interrupted study continues); settings that
change the warm start pay for their own warm start once (cached). Proxy replicates are
off (they do not change what is proposed; they only cost training). Timings scale with
the load average, printed before and after.
"""
from __future__ import annotations

import argparse
import os
import time
from pathlib import Path

import numpy as np

from cem_nas import config as C
from cem_nas import zoo
from cem_nas.cem import run_search
from cem_nas.novelty import NoveltyArchive
from cem_nas.repeats import RepeatArchive
from cem_nas.store import RunStore, load
from theory.convergence import wilson_interval

CONFIG = Path(__file__).resolve().parents[1] / "experiments" / "configs" / "default.toml"

#: The levers of the CE update and of the warm start, one named setting each (over default.toml).
SETTINGS: dict[str, dict[str, str]] = {
    "default": {},
    "hot": {"sampler.generation.temperature": "0.9"},
    "refine": {"search.baseline_mode": "refine", "search.refine_top": "9"},
    # parents retire one cycle after their birth: every cycle edits files never shown before
    "aging": {"search.baseline_mode": "refine", "search.refine_top": "10", "search.refine_age": "1"},
    # and no-ops (the parent already holds the edit the model knows) drawn again
    "aging_redraw": {"search.baseline_mode": "refine", "search.refine_top": "10", "search.refine_age": "1",
                     "sampler.generation.redraw_unchanged": "4"},
    # the same, never updated: is it the CE update, or the model's repertoire?
    "aging_frozen": {"search.baseline_mode": "refine", "search.refine_top": "10", "search.refine_age": "1",
                     "sampler.generation.redraw_unchanged": "4", "sampler.lora.steps": "0"},
    "refine_hot": {"search.baseline_mode": "refine", "search.refine_top": "9", "sampler.generation.temperature": "0.9"},
    # duplicates rejected, at most 2 parents of one lineage: do parents of other families keep
    # the one-edit neighbourhood from running out (the resnet variants one activation apart)?
    "per_family": {"search.duplicates": "reject", "search.refine_per_family": "2"},
    "big_step": {"sampler.lora.lr": "1e-3", "sampler.lora.steps": "8"},
    "big_step_smooth": {"sampler.lora.lr": "1e-3", "sampler.lora.steps": "8", "sampler.lora.smoothing": "0.3"},
    "smooth": {"sampler.lora.smoothing": "0.5"},
    # no CE step at all: does the update collapse the sampler, or does the warm-started
    # model run out of edits it knows?
    "frozen": {"sampler.lora.steps": "0"},
    "no_replay": {"sampler.lora.replay_share": "0", "sampler.lora.corpus_share": "0"},
    "corpus_heavy": {"sampler.lora.replay_share": "0.25", "sampler.lora.corpus_share": "0.6"},
    # 90: at max_changed 4 only 95 distinct single-edit pairs pass the corpus filters
    "wide_warm": {"sampler.warm_start.corpus_size": "90", "sampler.warm_start.steps": "48"},
    "hints": {"sampler.hints.enabled": "true"},
    "hints8": {"sampler.hints.enabled": "true", "sampler.warm_start.max_changed": "8"},
    "hints8_refine": {"sampler.hints.enabled": "true", "sampler.warm_start.max_changed": "8",
                      "search.baseline_mode": "refine", "search.refine_top": "9"},
    # a warm start over every kind of edit: do the dropout/optimizer literals crowd out the rest?
    "balanced_warm": {"sampler.warm_start.balance": "true", "sampler.warm_start.max_changed": "8",
                      "sampler.warm_start.corpus_size": "96", "sampler.warm_start.steps": "48"},
    "two_edit_warm": {"sampler.warm_start.max_edits": "2", "sampler.warm_start.max_changed": "8",
                      "sampler.warm_start.corpus_size": "96", "sampler.warm_start.steps": "48"},
}


def parse_setting(spec: str) -> tuple[str, dict[str, str]]:
    """``name`` of a preset, or ``name:field=value,field=value``."""
    name, sep, rest = spec.partition(":")
    if not sep:
        if name not in SETTINGS:
            raise SystemExit(f"unknown setting {name!r}; presets: {', '.join(SETTINGS)}, or NAME:field=value,...")
        return name, SETTINGS[name]
    pairs = [item.split("=", 1) for item in rest.split(",") if item]
    if any(len(p) != 2 for p in pairs):
        raise SystemExit(f"setting {spec!r}: write NAME:field=value,field=value")
    return name, dict(pairs)


def novel_flags(ds, threshold: float | None) -> np.ndarray:
    """(cycle, cand) booleans: the proposal's file is new against the zoo and all earlier
    files: not an exact repeat, nor (``threshold`` given) within that MinHash Jaccard."""
    archive = RepeatArchive(None if threshold is None else NoveltyArchive(threshold=threshold))
    for name in zoo.names():
        archive.add(f"zoo:{name}", zoo.source(name))
    codes = ds.code.values.astype(str)
    flags = np.zeros(codes.shape, dtype=bool)
    for t in range(codes.shape[0]):
        for i, code in enumerate(codes[t]):
            if code and archive.twin(code)[0] is None:
                archive.add(f"{t}:{i}", code)
                flags[t, i] = True
    return flags


def cycle_table(ds, threshold: float = 0.97) -> list[dict[str, float]]:
    """Per-cycle figures of a run store (see the module docstring)."""
    status = ds.status.values.astype(str)
    new, near = novel_flags(ds, None), novel_flags(ds, threshold)
    tier = ds.apply_tier.values.astype(str)
    rows = []
    for t in range(status.shape[0]):
        n = status.shape[1]
        ok = status[t] == "ok"
        good = int((ok & new[t]).sum())
        lo, hi = wilson_interval(good, n, 0.95)
        rows.append({"cycle": t, "n": n, "valid": float(np.mean(ok)), "novel": float(new[t].mean()),
                     "yield": good / n, "yield_lo": lo, "yield_hi": hi, "near": float(np.mean(ok & near[t])),
                     "strict": float(np.mean(tier[t] == "strict")),
                     "p_E": float(ds.p_E.values[t]), "distinct_valid": len(set(ds.code.values[t][status[t] == "ok"]))})
    return rows


def run_setting(name: str, overrides: dict[str, str], args) -> tuple[list[dict[str, float]], float]:
    base = {"run.name": name, "run.runs_dir": str(args.out), "run.seed": str(args.seed), "run.progress": "false",
            "search.cycles": str(args.cycles), "search.candidates": str(args.candidates),
            "search.replicate_candidates": "0", "search.replicate_seeds": "1"}
    cfg = C.validate(C.apply_overrides(C.load_toml(args.config), {**base, **overrides}))
    root = Path(args.out) / name
    t0 = time.perf_counter()
    resume = RunStore(root).has_state()
    if not resume:  # a directory without state is a setting killed before its first cycle: start it again
        cfg.run.overwrite = True
    run_search(cfg, resume_dir=root if resume else None)
    return cycle_table(load(root), args.threshold), time.perf_counter() - t0


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--settings", nargs="+", default=["default", "refine", "hot"],
                        help=f"presets ({', '.join(SETTINGS)}) or NAME:field=value,...")
    parser.add_argument("--cycles", type=int, default=4, help="cycles per setting (updates measured: cycles - 1)")
    parser.add_argument("--candidates", type=int, default=12, help="proposals per cycle")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--threshold", type=float, default=0.97, help="MinHash Jaccard of the 'near' column")
    parser.add_argument("--config", default=str(CONFIG))
    parser.add_argument("--out", default="runs/bench_diversity", help="run directories, one per setting")
    parser.add_argument("--common", default="", metavar="FIELD=VALUE,...",
                        help="overrides for every setting (e.g. a smaller proxy: data.max_train=500)")
    args = parser.parse_args()
    common = parse_setting(f"common:{args.common}")[1]
    settings = [(name, {**common, **overrides}) for name, overrides in map(parse_setting, args.settings)]
    print(f"load average before: {os.getloadavg()}", flush=True)
    summary = []
    for name, overrides in settings:
        rows, seconds = run_setting(name, overrides, args)
        print(f"\n== {name} {overrides or '(default.toml)'}: {seconds:.0f} s", flush=True)
        print("cycle  valid  new    yield [95% CI]       near   strict  p_E   distinct ok", flush=True)
        for r in rows:
            print(f"{r['cycle']:5d}  {r['valid']:.2f}   {r['novel']:.2f}   {r['yield']:.2f} [{r['yield_lo']:.2f}, "
                  f"{r['yield_hi']:.2f}]   {r['near']:.2f}   {r['strict']:.2f}    {r['p_E']:.2f}  {r['distinct_valid']}",
                  flush=True)
        later = [r["yield"] for r in rows[1:]]
        summary.append((name, rows[0]["yield"], float(np.mean(later)) if later else float("nan"),
                        min(r["yield"] for r in rows)))
    print("\nsetting            yield@0  mean yield after updates  min yield", flush=True)
    for name, first, later, low in summary:
        print(f"{name:18s} {first:.2f}     {later:.2f}                      {low:.2f}", flush=True)
    print(f"load average after: {os.getloadavg()}", flush=True)


if __name__ == "__main__":
    main()
