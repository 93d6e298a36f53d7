"""What the sandbox costs per candidate, against the training itself and against a fresh
interpreter per candidate; throughput with 1 vs 2 workers.

Three ways to run the same proxy evaluation (cem_nas.proxy_run.child_evaluate on mnist5k):

- in-process: called directly here, no isolation (the floor);
- sandbox: EvaluationPool.evaluate, a fork of a warm worker with all guards, cache off;
- fresh interpreter: ``python -c`` that imports torch, loads the tensors and evaluates
  (no guards at all, so this favours it).

overhead = median(wall) - median(in-process wall). Aims: sandbox overhead <= 5% of a
typical training time, and >= 10x less than a fresh interpreter's. The return path (the
child encodes its predictions, the worker checks them, the pool scores them) is also
timed on its own.

    python -m benchmarks.bench_sandbox [--repeats 5] [--baselines mlp shufflenet] [--candidates 8]
"""
from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time

import torch

from cem_nas import zoo
from cem_nas.confinement import ChildOutcome
from cem_nas.data import load_dataset
from cem_nas.evaluate import EvalSettings, EvaluationCache, EvaluationPool, score
from cem_nas.proxy_run import child_evaluate, outcome_result, worker_init

NULL_CANDIDATE = "import torch\n"  # no Net: ends at build_error right after exec

FRESH = """
import json, sys, time, torch
torch.set_num_threads(1)
from cem_nas.proxy_run import child_evaluate
state = torch.load(sys.argv[1])
out = []
child_evaluate(state, open(sys.argv[2]).read(), 0, json.loads(sys.argv[3]), out.append)
print(json.dumps(out[-1]))
"""


def timed(fn) -> float:
    start = time.perf_counter()
    fn()
    return time.perf_counter() - start


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--baselines", nargs="+", default=["mlp", "shufflenet"])
    ap.add_argument("--candidates", type=int, default=8, help="distinct candidates for the throughput run")
    args = ap.parse_args()
    torch.set_num_threads(1)
    data = load_dataset("mnist5k")
    settings = EvalSettings()
    settings_json = json.dumps(vars(settings))
    arrays = {k: getattr(data, k).numpy() for k in ("x_train", "y_train", "x_test")}  # no test labels
    state = worker_init(arrays, data.num_classes, "cpu")
    print(f"mnist5k train={len(data.y_train)} test={len(data.y_test)}; {args.repeats} repeats; "
          f"load average {os.getloadavg()[0]:.1f} on {os.cpu_count()} cores")

    with tempfile.TemporaryDirectory() as tmp, EvaluationPool(data, settings, workers=1) as pool:
        state_path = os.path.join(tmp, "state.pt")
        torch.save(state, state_path)

        def sandboxed(code: str) -> None:
            pool.cache = EvaluationCache()  # retrain every time
            pool.evaluate(code)

        def fresh(code: str) -> None:
            path = os.path.join(tmp, "net.py")
            with open(path, "w") as fh:
                fh.write(code)
            subprocess.run([sys.executable, "-c", FRESH, state_path, path, settings_json],
                           check=True, capture_output=True, env=dict(os.environ, OMP_NUM_THREADS="1"))

        print(f"{'candidate':<12}{'in-process s':>14}{'sandbox s':>11}{'fresh s':>10}"
              f"{'sandbox ovh s':>15}{'ovh/run':>9}{'fresh ovh s':>13}{'fresh/sandbox ovh':>19}")
        for name in ["(null)"] + args.baselines:
            code = NULL_CANDIDATE if name == "(null)" else zoo.source(name)
            # Interleaved, and overheads as paired differences: the shared box's load drifts.
            runs = [(timed(lambda: child_evaluate(state, code, 0, vars(settings), lambda m: None)),
                     timed(lambda: sandboxed(code)), timed(lambda: fresh(code))) for _ in range(args.repeats)]
            inproc, sand, fr = (statistics.median(r[i] for r in runs) for i in range(3))
            ovh = statistics.median(r[1] - r[0] for r in runs)
            fovh = statistics.median(r[2] - r[0] for r in runs)
            share = f"{ovh / inproc:>9.1%}" if name != "(null)" else f"{'-':>9}"
            print(f"{name:<12}{inproc:>14.3f}{sand:>11.3f}{fr:>10.3f}{ovh:>15.3f}{share}{fovh:>13.3f}"
                  f"{fovh / max(ovh, 1e-3):>19.1f}")
            if name == "(null)":
                null_ovh = ovh
            else:
                print(f"{'':<12}fixed sandbox cost (null candidate) / this run: {null_ovh / inproc:.1%}")

    messages: list[dict] = []
    child_evaluate(state, zoo.source("mlp"), 0, vars(settings), messages.append)
    labels, n = data.y_test.numpy(), len(data.y_test)

    def return_path() -> None:
        outcome = ChildOutcome([json.loads(json.dumps(m)) for m in messages], exit_code=0, wall_s=60.0)
        fields, raw = outcome_result(outcome, 0, settings.limits(), n)
        score(vars(fields), raw, labels, data.num_classes)

    path_s = statistics.median(timed(return_path) for _ in range(200))
    print(f"return path per candidate (JSON round trip of the child's messages, checks, scoring; "
          f"{n} predictions): {path_s * 1e3:.2f} ms")

    base = zoo.source("mlp")
    variants = [base.replace("nn.Linear(128, 64)", f"nn.Linear(128, {64 + i})").replace(
        "nn.Linear(64, out_shape[0])", f"nn.Linear({64 + i}, out_shape[0])") for i in range(args.candidates)]
    assert len(set(variants)) == args.candidates, "mlp source changed: variants are not distinct"
    rates = {}
    for workers in (1, 2):
        with EvaluationPool(data, settings, workers=workers) as pool:
            wall = timed(lambda: [f.result() for f in [pool.submit(v) for v in variants]])
            rates[workers] = args.candidates / wall
            print(f"throughput with {workers} worker(s): {rates[workers]:.2f} candidates/s "
                  f"({args.candidates} mlp variants in {wall:.1f} s)")
    print(f"2-worker / 1-worker throughput: {rates[2] / rates[1]:.2f}x "
          f"(load average now {os.getloadavg()[0]:.1f}; the box is shared)")


if __name__ == "__main__":
    main()
