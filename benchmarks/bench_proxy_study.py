"""Wall time of the training-curves proxy study, phase by phase (target: < 60 s in all).

Reads LEMUR's curves (``../shared/lemur/curves.csv.gz`` beside the repository, or
``CEM_NAS_LEMUR_CURVES``), runs the study with the CLI's defaults (epoch 1 vs last, by
dataset, top 100/50/25%, 1,000 bootstrap resamples) and writes its report to a temporary
folder. Prints wall and CPU seconds and the load average before and after: on a shared
machine quote both.

    python -m benchmarks.bench_proxy_study [--curves PATH] [--repeats 1]
"""
from __future__ import annotations

import argparse
import os
import statistics
import tempfile
import time
from pathlib import Path

from analysis.proxy_curves import CurveStudySettings, curve_study
from analysis.proxy_curves_report import write_curves_report
from cem_nas.curves import read_curves

DEFAULT = Path(os.environ.get("CEM_NAS_LEMUR_CURVES",
                              Path(__file__).resolve().parents[1].parent / "shared" / "lemur" / "curves.csv.gz"))


def main(argv=None) -> int:
    p = argparse.ArgumentParser(prog="python -m benchmarks.bench_proxy_study", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--curves", type=Path, default=DEFAULT, help=f"curves file or folder (default {DEFAULT})")
    p.add_argument("--repeats", type=int, default=1, help="runs of the whole study; the median is reported")
    args = p.parse_args(argv)
    if not args.curves.exists():
        print(f"error: {args.curves} not found; pass --curves or set CEM_NAS_LEMUR_CURVES")
        return 2
    print(f"load average before: {' '.join(f'{v:.2f}' for v in os.getloadavg())}")
    times: dict[str, list[float]] = {"read": [], "study": [], "report": [], "total": [], "total CPU": []}
    for _ in range(args.repeats):
        cpu = time.process_time()
        t0 = time.perf_counter()
        curves = read_curves(args.curves)
        t1 = time.perf_counter()
        study = curve_study(curves, CurveStudySettings(), progress=False)
        t2 = time.perf_counter()
        with tempfile.TemporaryDirectory() as out:
            write_curves_report(study, out)
        t3 = time.perf_counter()
        for key, value in zip(times, (t1 - t0, t2 - t1, t3 - t2, t3 - t0, time.process_time() - cpu)):
            times[key].append(value)
    print(f"load average after:  {' '.join(f'{v:.2f}' for v in os.getloadavg())}")
    print(f"{curves.sizes['configuration']:,} configurations, {int(study['n'].sel(top_k=100).sum()):,} paired, "
          f"{study.sizes['group']} groups x {study.sizes['top_k']} truncations, {study.attrs['draws']} resamples")
    for key, values in times.items():
        print(f"{key:>7}: {statistics.median(values):6.1f} s (median of {len(values)})")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
