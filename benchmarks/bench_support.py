"""How many distinct new files can the warm-started LLM reach from the zoo, at each temperature?

The sampler is never updated here: this is the support of the distribution the first CE
cycle samples from, the supply that any later cycle with fixed parents draws on. For each
temperature it draws ``--draws`` proposals over the zoo baselines in cycle-sized chunks
(``--chunk``, one call each, as a cycle does) and prints, after every chunk:

* built: share of the chunk's proposals whose delta applies, changes its parent and compiles
  (an upper bound of ``ok``, which also needs a proxy run above chance);
* new: share of the chunk that is a file not seen before (exact repeat key of
  :func:`cem_nas.repeats.exact_key`, against the zoo and every earlier draw at this temperature);
* distinct: new files so far;

and per temperature the build statuses of all draws and the kinds of edit
(:mod:`cem_nas.edit_kinds`) of the built ones: whether the warm start kept the model's
own repertoire or taught it one edit.

With fixed parents, a ``new`` share that falls with the draws while the sampler stays the
same means that the supply runs out, whatever the CE update does.

    python -m benchmarks.bench_support --temperatures 0.5 0.9 1.2 --draws 240
"""
from __future__ import annotations

import argparse
import dataclasses
import os
import time
from collections import Counter
from pathlib import Path

import numpy as np

from benchmarks.bench_diversity import parse_setting
from benchmarks.bench_generation import TASK
from cem_nas import config as C
from cem_nas import zoo
from cem_nas.cem import build_sampler
from cem_nas.build import build
from cem_nas.edit_kinds import KINDS, edit_kinds
from cem_nas.records import Baseline
from cem_nas.repeats import exact_key

CONFIG = Path(__file__).resolve().parents[1] / "experiments" / "configs" / "default.toml"


def support_curve(sampler, baselines: list[Baseline], draws: int, chunk: int, seed: int,
                  kinds: Counter | None = None, statuses: Counter | None = None) -> list[dict]:
    """Per chunk: draws so far, the chunk's built and new shares, distinct new files so far.

    ``kinds`` (when given) counts the kinds of edit (:func:`cem_nas.edit_kinds.edit_kinds`)
    of every built proposal, ``statuses`` the build status of every proposal (ok: built)."""
    seen = {exact_key(b.code) for b in baselines}
    by_name = {b.name: b.code for b in baselines}
    rng = np.random.default_rng(seed)
    rows, done = [], 0
    while done < draws:
        n = min(chunk, draws - done)
        shift = done % len(baselines)
        proposals = sampler.propose(baselines[shift:] + baselines[:shift], n, rng)
        built = new = 0
        for p in proposals:
            result = build(by_name[p.baseline], p, "delta", sampler.scope)
            if statuses is not None:
                statuses[result.status or "built"] += 1
            if result.status:
                continue
            built += 1
            if kinds is not None:
                kinds.update(edit_kinds(by_name[p.baseline], result.code))
            key = exact_key(result.code)
            if key not in seen:
                seen.add(key)
                new += 1
        done += n
        rows.append({"draws": done, "built": built / n, "new": new / n, "distinct": len(seen) - len(baselines)})
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--temperatures", type=float, nargs="+", default=[0.5, 0.9, 1.2])
    parser.add_argument("--draws", type=int, default=240, help="proposals per temperature")
    parser.add_argument("--chunk", type=int, default=24, help="proposals per call (a cycle's candidates)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--config", default=str(CONFIG))
    parser.add_argument("--common", default="", metavar="FIELD=VALUE,...", help="config overrides (cem_run's fields)")
    args = parser.parse_args()
    overrides = parse_setting(f"common:{args.common}")[1]
    cfg = C.validate(C.apply_overrides(C.load_toml(args.config), overrides))
    print(f"load average before: {os.getloadavg()}", flush=True)
    sampler = build_sampler(cfg, TASK)
    sampler.warm_start()
    baselines = [Baseline(name, zoo.source(name)) for name in zoo.names()]
    summary = []
    for temperature in args.temperatures:
        sampler.generation = dataclasses.replace(sampler.generation, temperature=temperature)
        t0 = time.perf_counter()
        kinds, statuses = Counter(), Counter()
        rows = support_curve(sampler, baselines, args.draws, args.chunk, args.seed, kinds, statuses)
        print(f"\n== temperature {temperature}: {args.draws} draws in {time.perf_counter() - t0:.0f} s", flush=True)
        print("draws  built  new   distinct", flush=True)
        for r in rows:
            print(f"{r['draws']:5d}  {r['built']:.2f}   {r['new']:.2f}  {r['distinct']:4d}", flush=True)
        print("statuses: " + ", ".join(f"{k} {v}" for k, v in statuses.most_common()), flush=True)
        print("kinds of the built edits: " + ", ".join(f"{k} {kinds[k]}" for k in KINDS if kinds[k]), flush=True)
        summary.append((temperature, rows, kinds))
    print("\ntemperature  built (all draws)  new in the first / last chunk  distinct new files  kinds seen", flush=True)
    for temperature, rows, kinds in summary:
        built = np.mean([r["built"] for r in rows])
        print(f"{temperature:11.2f}  {built:.2f}               {rows[0]['new']:.2f} / {rows[-1]['new']:.2f}"
              f"                   {rows[-1]['distinct']:4d}           {sum(1 for k in KINDS if kinds[k])}", flush=True)
    print(f"load average after: {os.getloadavg()}", flush=True)


if __name__ == "__main__":
    main()
