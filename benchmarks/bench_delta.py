"""How perturbed deltas fare in :func:`cem_nas.delta.apply_delta`: share per tier, median time.

Deltas are real edits: zoo baselines rendered through random choice vectors of the
mutation grammar, diffed with :func:`make_delta` (3 context lines). Each is then
perturbed the way LLM output goes wrong and applied. A result counts as correct only
if it equals the intended file (CRLF aside).

A last table shows what the novelty archive (defaults: threshold 0.9) makes of the
same edits: the share of one-coordinate grammar edits that are duplicates of their own
baseline, and the median time of ``check`` against an archive of all the edited files.

    python -m benchmarks.bench_delta [--pairs-per-baseline 12] [--seed 0]
"""
from __future__ import annotations

import argparse
import re
import statistics
import time
from collections import Counter

import numpy as np

from cem_nas import mutations, zoo
from cem_nas.delta import TIERS, DeltaError, apply_delta, make_delta
from cem_nas.novelty import NoveltyArchive


def _body(delta: str, f) -> str:
    """Apply ``f`` to the hunk body lines (not the ---/+++/@@ headers)."""
    lines = delta.split("\n")
    return "\n".join(f(i, ln) if ln[:1] in " +-" and not ln.startswith(("--- ", "+++ ")) else ln for i, ln in enumerate(lines))


def _mangle_one_context_line(delta: str, rng: np.random.Generator) -> str:
    lines = delta.split("\n")
    context = [i for i, ln in enumerate(lines) if ln.startswith(" ") and len(ln.strip()) > 3]
    i = int(rng.choice(context))
    j = 1 + int(rng.integers(0, len(lines[i]) - 1))
    lines[i] = lines[i][:j] + ("Z" if lines[i][j] != "Z" else "Q") + lines[i][j + 1 :]
    return "\n".join(lines)


def _leave_out_one_context_line(delta: str, rng: np.random.Generator) -> str:
    """A hunk that forgot a line of context between two others (the gapped tier's case)."""
    lines = delta.split("\n")
    inner = [i for i in range(1, len(lines) - 1) if lines[i].startswith(" ") and lines[i].strip()
             and lines[i - 1][:1] in " +-" and lines[i + 1][:1] in " +-"]
    if inner:
        del lines[int(rng.choice(inner))]
    return "\n".join(lines)


PERTURBATIONS = {
    "exact": lambda d, rng: d,
    "shifted numbers": lambda d, rng: re.sub(r"@@ -(\d+)", lambda m: f"@@ -{int(m.group(1)) + int(rng.integers(1, 12))}", d),
    "wrong counts": lambda d, rng: re.sub(r"@@ -(\d+),(\d+) \+(\d+),(\d+) @@",
                                         lambda m: f"@@ -{m[1]},{int(m[2]) + 2} +{m[3]},{max(0, int(m[4]) - 1)} @@", d),
    "counts too large": lambda d, rng: re.sub(r"@@ -(\d+),(\d+) \+(\d+),(\d+) @@",
                                             lambda m: f"@@ -{m[1]},{int(m[2]) + 2} +{m[3]},{int(m[4]) + 2} @@", d),
    "no numbers": lambda d, rng: re.sub(r"@@ .* @@", "@@ @@", d),
    "dropped header": lambda d, rng: d.split("+++ b/net.py\n", 1)[1],
    "fenced": lambda d, rng: "```diff\n" + d + "```\n",
    "chatter": lambda d, rng: "Here is a change that should help accuracy:\n\n" + d + "\nThis adds capacity.\n",
    "whitespace drift": lambda d, rng: _body(d, lambda i, ln: ln.rstrip() + " " * (i % 3) if ln[:1] == " " else ln),
    "indentation drift": lambda d, rng: _body(d, lambda i, ln: ln[0] + "    " + ln[1:] if ln[1:].strip() else ln),
    "blank lines lost space": lambda d, rng: _body(d, lambda i, ln: "" if ln == " " else ln),
    "crlf": lambda d, rng: d.replace("\n", "\r\n"),
    "mangled context": _mangle_one_context_line,
    "context line left out": _leave_out_one_context_line,
    "truncated": lambda d, rng: d[: int(len(d) * 0.8)],
}


def edit_pairs(per_baseline: int, rng: np.random.Generator) -> list[tuple[str, str]]:
    """(before, after) pairs: each baseline rendered through random grammar choice vectors."""
    pairs = []
    for name in zoo.names():
        before = zoo.source(name)
        tries = 0
        while sum(p[0] == before for p in pairs) < per_baseline and tries < 20 * per_baseline:
            tries += 1
            vector = [int(rng.integers(0, c)) if rng.random() < 0.3 else 0 for c in mutations.cardinalities()]
            try:
                after = mutations.render(before, vector)
            except mutations.MutationError:
                continue
            if after != before:
                pairs.append((before, after))
    return pairs


def run(per_baseline: int, seed: int, partial: bool) -> None:
    rng = np.random.default_rng(seed)
    pairs = edit_pairs(per_baseline, rng)
    columns = [*TIERS[:-1], *(["partial"] if partial else []), "parse_error", "apply_error", "correct"]
    print(f"{len(pairs)} deltas from {len(zoo.names())} baselines, partial={partial}; shares in %, "
          f"median apply time in ms\n")
    print(f"{'perturbation':24s}" + "".join(f"{c:>12s}" for c in columns) + f"{'median_ms':>11s}")
    all_times = []
    for name, perturb in PERTURBATIONS.items():
        counts, times = Counter(), []
        for before, after in pairs:
            delta = perturb(make_delta(before, after), rng)
            t0 = time.perf_counter()
            try:
                r = apply_delta(before, delta, partial=partial)
                counts[r.tier] += 1
                counts["correct"] += r.code.replace("\r\n", "\n") == after
            except DeltaError as e:
                counts[e.kind] += 1
            times.append(time.perf_counter() - t0)
        all_times += times
        row = "".join(f"{100 * counts[c] / len(pairs):12.1f}" for c in columns)
        print(f"{name:24s}{row}{1000 * statistics.median(times):11.2f}")
    print(f"\nmedian apply time over all {len(all_times)} applications: {1000 * statistics.median(all_times):.2f} ms")


def novelty(pairs: list[tuple[str, str]]) -> None:
    """Duplicate share of one-coordinate edits vs their baseline; check() time on a full archive."""
    print(f"{'coordinate (one edit)':24s}{'n':>6s}{'dup of base %':>15s}")
    for c, coord in enumerate(mutations.coordinate_names()):
        dup, n = 0, 0
        for name in zoo.names():
            base = NoveltyArchive()
            base.add(name, zoo.source(name))
            for choice in range(1, mutations.cardinalities()[c]):
                vector = [0] * len(mutations.cardinalities())
                vector[c] = choice
                try:
                    after = mutations.render(zoo.source(name), vector)
                except mutations.MutationError:
                    continue
                if after != zoo.source(name):
                    n += 1
                    dup += not base.check(after)[0]
        print(f"{coord:24s}{n:6d}{100 * dup / max(n, 1):15.1f}")
    archive = NoveltyArchive()
    for i, (_, after) in enumerate(pairs):
        archive.add(str(i), after)
    times = []
    for i, (before, _) in enumerate(pairs):
        code = f"{before}\n# probe {i}\n"  # a string not seen before: its signature is computed, not cached
        t0 = time.perf_counter()
        archive.check(code)
        times.append(time.perf_counter() - t0)
    print(f"\nnovelty check against an archive of {len(archive)}: median {1000 * statistics.median(times):.2f} ms")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--pairs-per-baseline", type=int, default=12)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    for partial in (False, True):
        run(args.pairs_per_baseline, args.seed, partial)
        print()
    novelty(edit_pairs(args.pairs_per_baseline, np.random.default_rng(args.seed)))


if __name__ == "__main__":
    main()
