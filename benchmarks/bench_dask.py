"""Local sandbox pool vs a Dask LocalCluster of the same size on the same candidates.

Prints the start-up seconds of each executor, the median latency of a candidate that
fails fast inside the sandbox (build_error: pure dispatch overhead), the median wall
time of the batch over repeats (new seeds each repeat, so the cache never answers),
the overhead per candidate and the Dask/local ratio of the batch time (aim: <= 1.10).

    python -m benchmarks.bench_dask [--workers 2] [--repeats 3] [--max-train 300]

Timings scale with the load average, which is printed alongside.
"""
from __future__ import annotations

import argparse
import os
import statistics
import time

from cem_nas import mutations, zoo
from cem_nas.distributed import DaskEvaluationPool, DatasetSpec
from cem_nas.evaluate import EvalSettings, EvaluationPool

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


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--probes", type=int, default=5)
    parser.add_argument("--max-train", type=int, default=300)
    args = parser.parse_args()
    spec = DatasetSpec("mnist5k", max_train=args.max_train, max_test=200)
    settings = EvalSettings(timeout_s=120)
    codes = batch()
    print(f"load average {os.getloadavg()[0]:.1f}; {len(codes)} candidates x {args.repeats} repeats; "
          f"{args.workers} workers")
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
    print(f"batch time ratio dask/local: {dask['batch'] / local['batch']:.3f} (aim <= 1.10)")


if __name__ == "__main__":
    main()
