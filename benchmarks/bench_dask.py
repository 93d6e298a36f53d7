"""Local sandbox pool vs a Dask LocalCluster of the same size on the same candidates.

Part 1, the pools alone: the start-up seconds of each executor, the median latency of a
candidate that fails fast inside the sandbox (build_error: pure dispatch overhead), the
median wall time of a batch over repeats (new seeds each repeat, so the cache never
answers), the overhead per candidate and the Dask/local ratio of the batch time.

Part 2, the same short search both ways: ``experiments/configs/grammar.toml`` shortened
to ``--cycles`` cycles, once per executor (which goes first alternates), ``--runs`` times; the median of
the evaluate phase summed over cycles (what the executor changes), its Dask/local ratio
(aim: <= 1.10) and the evaluate overhead per candidate.

    python -m benchmarks.bench_dask [--workers 2] [--repeats 3] [--max-train 300] [--runs 3]

Timings scale with the load average, which is printed alongside.
"""
from __future__ import annotations

import argparse
import os
import statistics
import tempfile
import time
from pathlib import Path

from cem_nas import mutations, zoo
from cem_nas.cem import run_search
from cem_nas.config import apply_overrides, load_toml
from cem_nas.distributed import DaskEvaluationPool, DatasetSpec
from cem_nas.evaluate import EvalSettings, EvaluationPool
from cem_nas.store import load

GRAMMAR = Path(__file__).resolve().parent.parent / "experiments" / "configs" / "grammar.toml"

FAST_FAIL = "import torch\n\ndef supported_hyperparameters():\n    return set()\n"  # no Net: build_error


def batch() -> list[str]:
    mlp, plain = zoo.source("mlp"), zoo.source("plainnet")
    return [mlp, plain, mutations.render(plain, {"width": "x0.5"}), mutations.render(mlp, {"dropout": "0.5"}),
            mutations.render(plain, {"activation": "GELU"}), mutations.render(mlp, {"optimizer": "Adam"})]


def measure(pool, codes: list[str], repeats: int, probes: int) -> dict[str, float]:
    latency = []
    for i in range(probes):
        start = time.perf_counter()
        pool.evaluate(FAST_FAIL + f"# probe {i}\nK = {i}\n")
        latency.append(time.perf_counter() - start)
    walls = []
    for rep in range(repeats):
        start = time.perf_counter()
        futures = [pool.submit(code, (100 + rep,)) for code in codes]
        for f in futures:
            f.result()
        walls.append(time.perf_counter() - start)
    return {"latency": statistics.median(latency), "batch": statistics.median(walls)}


def search_seconds(executor: str, args, runs_dir: str, index: int) -> tuple[float, float, int]:
    """(evaluate seconds summed over cycles, run wall seconds, candidates) of one short run."""
    cfg = apply_overrides(load_toml(GRAMMAR), {
        "run.name": f"{executor}-{index}", "run.runs_dir": runs_dir, "run.progress": "false",
        "run.seed": str(index), "search.cycles": str(args.cycles), "executor.kind": executor,
        "executor.workers": str(args.workers)})
    start = time.perf_counter()
    ds = load(run_search(cfg))
    return float(ds.seconds_evaluate.sum()), time.perf_counter() - start, int(ds.sizes["cycle"] * cfg.search.candidates)


def compare_pools(args) -> None:
    spec = DatasetSpec("mnist5k", max_train=args.max_train, max_test=200)
    settings = EvalSettings(timeout_s=120)
    codes = batch()
    print(f"part 1: {len(codes)} candidates x {args.repeats} repeats, max_train {args.max_train}, {args.workers} workers")
    results = {}
    for name, build in (("local", lambda: EvaluationPool(spec.load(), settings, workers=args.workers)),
                        ("dask", lambda: DaskEvaluationPool(spec, settings, workers=args.workers))):
        start = time.perf_counter()
        with build() as pool:
            started = time.perf_counter() - start
            results[name] = dict(measure(pool, codes, args.repeats, args.probes), start=started)
        r = results[name]
        print(f"{name:6s} start {r['start']:7.2f} s  fast-fail latency (median) {r['latency'] * 1e3:8.1f} ms  "
              f"batch (median) {r['batch']:7.2f} s")
    local, dask = results["local"], results["dask"]
    print(f"dispatch overhead per candidate (latency difference): {(dask['latency'] - local['latency']) * 1e3:.1f} ms")
    print(f"batch overhead per candidate: {(dask['batch'] - local['batch']) / len(codes) * 1e3:.1f} ms")
    print(f"batch time ratio dask/local: {dask['batch'] / local['batch']:.3f}")


def compare_searches(args) -> None:
    print(f"part 2: {GRAMMAR.name}, {args.cycles} cycles, {args.workers} workers, {args.runs} runs per executor "
          "(run seeds 0.., the same seed for both executors)")
    found: dict[str, list[tuple[float, float, int]]] = {"local": [], "dask": []}
    with tempfile.TemporaryDirectory(prefix="bench_dask_") as runs_dir:
        for index in range(args.runs):
            # alternate which executor goes first: the machine's speed drifts between runs
            for executor in (("local", "dask") if index % 2 == 0 else ("dask", "local")):
                found[executor].append(search_seconds(executor, args, runs_dir, index))
                evaluate, wall, n = found[executor][-1]
                print(f"  run {index} {executor:6s} evaluate {evaluate:7.2f} s  wall {wall:7.2f} s  ({n} candidates)")
    med = {e: statistics.median(v[0] for v in runs) for e, runs in found.items()}
    n = found["local"][0][2]
    print(f"evaluate phase (median): local {med['local']:.2f} s, dask {med['dask']:.2f} s; "
          f"overhead per candidate {(med['dask'] - med['local']) / n * 1e3:.1f} ms")
    print(f"evaluate time ratio dask/local: {med['dask'] / med['local']:.3f} (aim <= 1.10)")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--repeats", type=int, default=3, help="part 1: batches per pool")
    parser.add_argument("--probes", type=int, default=5, help="part 1: fast-fail latency probes")
    parser.add_argument("--max-train", type=int, default=300, help="part 1: training images")
    parser.add_argument("--runs", type=int, default=3, help="part 2: short searches per executor (0: skip)")
    parser.add_argument("--cycles", type=int, default=2, help="part 2: cycles of each search")
    args = parser.parse_args()
    print(f"load average {os.getloadavg()[0]:.1f}")
    compare_pools(args)
    if args.runs:
        compare_searches(args)
    print(f"load average {os.getloadavg()[0]:.1f}")


if __name__ == "__main__":
    main()
