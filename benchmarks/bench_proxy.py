"""What the proxy of a config costs and scores on the zoo: per baseline the test accuracy
and the training seconds the sandbox measured (one thread per worker), with the median
and the load average before and after.

Targets for the offline default (issue 17): median zoo accuracy >= 0.8 at <= 3 s of
training per candidate on one thread. Use ``--workers 1`` on a shared machine: the
figure is then one candidate's own cost, not two candidates competing for two cores.

    python -m benchmarks.bench_proxy [--config experiments/configs/default.toml] [--workers 1] [--seeds 2]
"""
from __future__ import annotations

import argparse
import dataclasses
import os
import statistics
import time
from pathlib import Path

from cem_nas import config as C
from cem_nas import zoo
from cem_nas.cem import load_data
from cem_nas.evaluate import EvaluationPool

DEFAULT = Path(__file__).resolve().parent.parent / "experiments" / "configs" / "default.toml"


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--config", type=Path, default=DEFAULT, help="config whose [data] and [proxy] are timed")
    ap.add_argument("--workers", type=int, default=1, help="sandbox workers (default 1)")
    ap.add_argument("--seeds", type=int, default=2, help="training seeds per baseline (default 2)")
    args = ap.parse_args(argv)
    cfg = C.load_toml(args.config)
    settings = dataclasses.replace(cfg.proxy, threads=1, timeout_s=max(cfg.proxy.timeout_s, 600.0))
    data = load_data(cfg)
    print(f"{args.config.name}: {len(data.y_train)} training / {len(data.y_test)} test images, "
          f"{settings.epochs} epoch(s), batch {settings.batch_size}, lr {settings.lr:g}; "
          f"{args.workers} worker(s), one thread each")
    load_before = os.getloadavg()[0]
    start = time.perf_counter()
    with EvaluationPool(data, settings, workers=args.workers) as pool:
        futures = {name: pool.submit(zoo.source(name), seeds=tuple(range(args.seeds))) for name in zoo.names()}
        results = {name: fut.result() for name, fut in futures.items()}
    wall = time.perf_counter() - start
    accuracies, seconds = [], []
    for name, runs in results.items():
        acc = statistics.mean(r.accuracy for r in runs)
        secs = [r.train_seconds for r in runs]
        accuracies.append(acc)
        seconds += secs
        print(f"  {name:12s} {runs[0].status:12s} accuracy {acc:.3f}  train s {statistics.median(secs):6.2f}")
    print(f"median zoo accuracy {statistics.median(accuracies):.3f}; training seconds per candidate: "
          f"median {statistics.median(seconds):.2f}, max {max(seconds):.2f}; {wall:.0f} s wall; "
          f"load {load_before:.2f} -> {os.getloadavg()[0]:.2f} on {os.cpu_count()} cores")


if __name__ == "__main__":
    main()
