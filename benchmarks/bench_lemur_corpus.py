"""What the LEMUR warm-start corpus (:mod:`cem_nas.corpus_lemur`) makes of a LEMUR folder.

Prints the files read and skipped (by reason), the families, the candidate pairs and the
pairs kept under both search scopes (dropped by reason), the kept pairs per family, the
distribution of their changed lines (and of all candidates without the cap, which the default
``warm_start.lemur_max_changed`` is read off), the kinds of edit of the kept pairs
(:func:`cem_nas.edit_kinds.edit_kinds`), and two checks of the accuracy rule: how many variants
of a base file beat it at the median run and at the best run, and how many kept pairs a
per-dataset rule would also keep reversed.

    python -m benchmarks.bench_lemur_corpus [PATH (default ../shared/lemur or $CEM_NAS_LEMUR)] [--epoch 1]
"""
from __future__ import annotations

import argparse
import os
import time
from collections import Counter
from pathlib import Path

import numpy as np

from cem_nas.corpus import changed_lines
from cem_nas.corpus_lemur import (
    DEFAULT_EPOCH, DEFAULT_MAX_CHANGED, beats, families, lemur_pool, locate, read_accuracies, read_models,
)
from cem_nas.edit_kinds import edit_kinds

DEFAULT_PATH = Path(os.environ.get("CEM_NAS_LEMUR", Path(__file__).resolve().parents[1].parent / "shared" / "lemur"))


def _counts(d: dict) -> str:
    return ", ".join(f"{k} {v}" for k, v in sorted(d.items(), key=lambda kv: (-kv[1], kv[0]))) or "none"


def _quantiles(values: list[int]) -> str:
    if not values:
        return "none"
    q = np.percentile(values, [0, 25, 50, 75, 90, 100])
    return "min {:.0f}, q25 {:.0f}, median {:.0f}, q75 {:.0f}, q90 {:.0f}, max {:.0f}".format(*q)


def base_wins(path, epoch: int) -> dict[str, tuple[int, int]]:
    """Per statistic, (variants of a base file that beat it, variants with accuracies)."""
    source = locate(path)
    sources, _ = read_models(source.models)
    out = {}
    for statistic in ("median", "max"):
        acc, _ = read_accuracies(source, epoch, sources, statistic)
        won = total = 0
        for name, members in families(sources).items():
            if name not in acc:
                continue
            for v in members:
                if v != name and v in acc:
                    total += 1
                    won += beats(acc[v], acc[name])
        out[statistic] = (won, total)
    return out


def main(argv=None) -> int:
    p = argparse.ArgumentParser(prog="python -m benchmarks.bench_lemur_corpus", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("path", nargs="?", default=str(DEFAULT_PATH), help="a LEMUR folder or nn-dataset clone")
    p.add_argument("--epoch", type=int, default=DEFAULT_EPOCH)
    args = p.parse_args(argv)

    t0 = time.perf_counter()
    source = locate(args.path)
    sources, skipped = read_models(source.models)
    fams = families(sources)
    with_base = [f for f, m in fams.items() if f in m and len(m) > 1]
    without = [f for f, m in fams.items() if f not in m and len(m) > 1]
    print(f"LEMUR folder {args.path} ({source.layout} layout), epoch {args.epoch}")
    print(f"files: {len(sources) + sum(skipped.values())} read, {len(sources)} usable; skipped: {_counts(skipped)}")
    print(f"families with two or more members: {len(with_base) + len(without)} "
          f"({len(with_base)} with a base file, {len(without)} without: "
          f"{', '.join(f'{f} {len(fams[f])}' for f in without)}); singletons {sum(len(m) == 1 for m in fams.values())}")
    for statistic, (won, total) in base_wins(args.path, args.epoch).items():
        print(f"variants of a base file that beat it ({statistic} run, majority of shared datasets): {won} of {total}")

    pools = {}
    for scope in ("file", "architecture"):
        t = time.perf_counter()
        pools[scope] = pool = lemur_pool(args.path, args.epoch, context=1, scope=scope)
        s = pool.summary
        print(f"scope {scope}: {s.candidates} candidate pairs, dropped {_counts(s.dropped)}, {s.kept} kept "
              f"({time.perf_counter() - t:.1f} s); curves without accuracy {s.without_accuracy}, "
              f"curve data skipped: {_counts(s.curves_skipped)}")
    pool = pools["architecture"]
    print(f"kept per family (architecture): {_counts(Counter(pool.family))}")
    kept_changed = [changed_lines(pair.delta) for pair in pool.pairs]
    print(f"changed lines of kept pairs (architecture, cap {DEFAULT_MAX_CHANGED}): {_quantiles(kept_changed)}")
    uncapped = lemur_pool(args.path, args.epoch, context=1, scope="architecture", max_changed=None)
    all_changed = [changed_lines(pair.delta) for pair in uncapped.pairs]
    for cap in (10, 20, 40, 80):
        print(f"  candidates passing the other filters with <= {cap} changed lines: "
              f"{sum(c <= cap for c in all_changed)} of {len(all_changed)}")
    print(f"  uncapped: {_quantiles(all_changed)}")
    kinds = Counter(k for pair in pool.pairs for k in edit_kinds(pair.before, pair.after))
    first = Counter(edit_kinds(pair.before, pair.after)[0] for pair in pool.pairs)
    print(f"edit kinds of kept pairs (a pair may have several): {_counts(kinds)}")
    print(f"first kind (what balance and hints use): {_counts(first)}")
    non_ga = [(pair, f) for pair, f in zip(pool.pairs, pool.family) if f != "ga"]
    print(f"edit kinds outside ga: {_counts(Counter(k for pair, _ in non_ga for k in edit_kinds(pair.before, pair.after)))}")

    # a rule of one pair per dataset, merged into one pair of files, would keep both directions
    # of two siblings that split the datasets; the majority rule keeps one
    acc, _ = read_accuracies(source, args.epoch, sources)
    reversed_wins = sum(any(acc[p.baseline][k] > acc[v][k] for k in acc[p.baseline].keys() & acc[v].keys())
                        for p, v in zip(pool.pairs, pool.variant))
    print(f"kept pairs whose base wins on some shared dataset too (a per-dataset rule would keep the reverse): "
          f"{reversed_wins} of {len(pool.pairs)}")
    print(f"total {time.perf_counter() - t0:.1f} s")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
