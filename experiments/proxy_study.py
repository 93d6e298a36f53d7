"""How good is the 1-epoch proxy? On retrained run architectures, or on published training curves.

``python -m experiments.proxy_study --curves PATH [--proxy-epoch 1] [--target-epoch last|N]
[--by dataset]`` reads training curves (a CSV export such as LEMUR's ``curves.csv.gz``, or a
clone of ABrain-One/nn-dataset: ``cem_nas.curves``) and tests, per group, the arcsin law
on the raw Pearson between the proxy and the target epoch, the normal-copula reading of
the ranks, and how both move when only the top k% by target accuracy are kept
(``analysis.proxy_curves``). Writes ``OUT/proxy_curves.nc``, two figures,
``OUT/proxy_curves.md`` and ``.html``; on LEMUR's six image datasets (36,365
configurations) it takes well under a minute on a 2-core CPU (docs/results.md#proxy-curves).

``python -m experiments.proxy_study RUN_DIR [RUN_DIR ...]``:
Takes architectures from one or more runs - the top ``--top`` by proxy score and
``--random`` more drawn one per score stratum (equal-count quantile bins of the rest),
so the study covers the whole range and not only the winners - and retrains each for
every epoch count in ``--epochs`` with ``--seeds`` seeds through the sandbox
(``cem_nas.evaluate.EvaluationPool``), on the runs' dataset unless overridden.

Then, with the shortest training as the proxy and the longest as the final score:
- reliability of the proxy, ICC(1) and SNR with CIs (one-way random effects over seeds);
- reliability of the final score's mean over k seeds (Spearman-Brown);
- Spearman and Kendall between the proxy (seed 0, as the search uses it) and the final
  mean, with Fisher-z CIs, and the Pearson correlation;
- the arcsin prediction from the measured SNR (``theory.proxy.spearman_from_snr``: the
  proxy against its own noise-free value), and the fidelity bound: the proxy's Pearson
  with the final score is at most sqrt(rel_proxy * rel_final) (equality when the
  noise-free 1-epoch and N-epoch qualities are perfectly correlated), so the predicted
  Spearman is (6/pi) arcsin(fidelity sqrt(rel_proxy rel_final) / 2); the fidelity is
  estimated by correcting the observed Pearson for attenuation.

Writes ``OUT/proxy_study.nc`` (accuracy over arch x epochs x seed, with the code) and
``OUT/proxy_study.md``.
"""
from __future__ import annotations

import argparse
import dataclasses
import math
import os
import sys
from pathlib import Path

import numpy as np
import xarray as xr
from scipy import stats

from analysis.load import as_runs, load
from cem_nas import config as C
from cem_nas.store import StoreError
from theory import proxy, reliability

LEVEL = 0.95
#: Fewest architectures for a statement about the fidelity bound.
MIN_ARCHITECTURES = 10


def select_architectures(runs: xr.Dataset, top: int, random: int, seed: int = 0) -> list[dict]:
    """Distinct scored architectures: the ``top`` best, then ``random`` stratified draws.

    The rest (after the top) are split into ``random`` equal-count bins by proxy score
    and one architecture is drawn from each bin. Identical code counts once (its best score).
    """
    if top < 0 or random < 0 or top + random == 0:
        raise ValueError(f"need top >= 0, random >= 0 and top + random >= 1; got top={top}, random={random}")
    score = runs["score"].values.astype(float).ravel()
    code = runs["code"].values.astype(str).ravel()
    name = np.broadcast_to(runs["run"].values[:, None, None], runs["score"].transpose("run", ...).shape).ravel()
    cycle = np.broadcast_to(runs["cycle"].values[None, :, None], runs["score"].transpose("run", ...).shape).ravel()
    best: dict[str, dict] = {}
    for i in np.flatnonzero(np.isfinite(score) & (code != "")):
        if code[i] not in best or score[i] > best[code[i]]["score"]:
            best[code[i]] = {"code": code[i], "score": float(score[i]), "run": str(name[i]), "cycle": int(cycle[i])}
    pool = sorted(best.values(), key=lambda a: -a["score"])
    if not pool:
        raise ValueError("the runs hold no scored architecture with code; run a search first")
    chosen = [dict(a, group="top") for a in pool[:top]]
    rest = pool[top:]
    rng = np.random.default_rng(seed)
    for stratum in np.array_split(np.arange(len(rest)), min(random, len(rest))) if random and rest else []:
        chosen.append(dict(rest[int(rng.choice(stratum))], group="random"))
    return chosen


def retrain(archs: list[dict], dataset, settings, epochs: list[int], seeds: int, workers: int) -> np.ndarray:
    """Accuracy (arch, epochs, seed) of every architecture; NaN where a run did not score."""
    from cem_nas.evaluate import EvaluationPool

    acc = np.full((len(archs), len(epochs), seeds), np.nan)
    for j, e in enumerate(epochs):
        with EvaluationPool(dataset, dataclasses.replace(settings, epochs=int(e)), workers=workers) as pool:
            futures = [pool.submit(a["code"], seeds=tuple(range(seeds))) for a in archs]
            for i, fut in enumerate(futures):
                acc[i, j] = [r.accuracy if r.scored else np.nan for r in fut.result()]
    return acc


@dataclasses.dataclass
class ProxyStatistics:
    """The proxy study's estimates (see the module docstring)."""

    n: int
    proxy_epochs: int
    final_epochs: int
    seeds: int
    icc_proxy: object
    icc_final: object
    rel_final_mean: float
    pearson: float
    spearman: float
    spearman_ci: tuple[float, float]
    kendall: float
    kendall_ci: tuple[float, float]
    spearman_from_snr: float
    pearson_bound: float
    spearman_bound: float
    fidelity: float
    spearman_moran_bound: float


def proxy_statistics(acc: xr.DataArray) -> ProxyStatistics:
    """Reliability and rank agreement of the shortest training against the longest.

    ``acc`` has dims (arch, epochs, seed). Architectures with a missing value in the
    proxy's seed 0 or in every final seed are dropped.
    """
    if set(acc.dims) != {"arch", "epochs", "seed"}:
        raise ValueError(f"acc needs dims (arch, epochs, seed); got {acc.dims}")
    if acc.sizes["seed"] < 2 or acc.sizes["epochs"] < 2:
        raise ValueError("the study needs >= 2 seeds (for reliabilities) and >= 2 epoch counts "
                         f"(proxy and final); got {acc.sizes['seed']} seeds, {acc.sizes['epochs']} epoch counts")
    e_proxy, e_final = int(acc["epochs"].min()), int(acc["epochs"].max())
    first = acc.sel(epochs=e_proxy).transpose("arch", "seed").values.astype(float)
    last = acc.sel(epochs=e_final).transpose("arch", "seed").values.astype(float)
    with np.errstate(all="ignore"):
        final_mean = np.nanmean(last, axis=1)
    keep = np.isfinite(first[:, 0]) & np.isfinite(final_mean)
    n = int(keep.sum())
    if n < 5:
        raise ValueError(f"only {n} architectures have both a proxy and a final score; need >= 5")
    k = acc.sizes["seed"]
    icc_p = reliability.icc1(first[keep], level=LEVEL)
    icc_f = reliability.icc1(last[keep], level=LEVEL)
    rel_mean = float(reliability.spearman_brown(max(icc_f.icc, 0.0), k))
    x, y = first[keep, 0], final_mean[keep]
    r = float(np.corrcoef(x, y)[0, 1])
    r_s = float(stats.spearmanr(x, y).statistic)
    tau = float(stats.kendalltau(x, y).statistic)
    bound = math.sqrt(max(icc_p.icc, 0.0) * rel_mean)
    fidelity = float(reliability.correct_attenuation(r, icc_p.icc, rel_mean)) if icc_p.icc > 0 and rel_mean > 0 else math.nan
    return ProxyStatistics(
        n=n, proxy_epochs=e_proxy, final_epochs=e_final, seeds=k, icc_proxy=icc_p, icc_final=icc_f,
        rel_final_mean=rel_mean, pearson=r, spearman=r_s,
        spearman_ci=tuple(float(v) for v in proxy.spearman_ci(r_s, n, LEVEL)),
        kendall=tau, kendall_ci=tuple(float(v) for v in proxy.kendall_ci(tau, n, LEVEL)),
        spearman_from_snr=float(proxy.spearman_from_snr(max(icc_p.snr, 0.0))),
        pearson_bound=bound, spearman_bound=float(proxy.spearman_from_pearson(bound)),
        fidelity=fidelity, spearman_moran_bound=float(proxy.moran_expected_spearman(bound, n)),
    )


def markdown(st: ProxyStatistics, archs: list[dict]) -> str:
    f = lambda v: "n/a" if v is None or not np.isfinite(v) else f"{v:.3f}"  # noqa: E731
    ci = lambda c: f"[{f(c[0])}, {f(c[1])}]"  # noqa: E731
    rows = [
        ("architectures (top / random)", f"{st.n} ({sum(a['group'] == 'top' for a in archs)} / "
                                         f"{sum(a['group'] == 'random' for a in archs)} selected)"),
        ("seeds per architecture and epoch count", str(st.seeds)),
        (f"proxy ({st.proxy_epochs} epoch) ICC(1)", f"{f(st.icc_proxy.icc)} {ci((st.icc_proxy.ci_low, st.icc_proxy.ci_high))}"),
        ("proxy SNR", f"{f(st.icc_proxy.snr)} {ci((st.icc_proxy.snr_ci_low, st.icc_proxy.snr_ci_high))}"),
        (f"final ({st.final_epochs} epochs) ICC(1), one seed", f"{f(st.icc_final.icc)} {ci((st.icc_final.ci_low, st.icc_final.ci_high))}"),
        (f"final reliability, mean of {st.seeds} seeds", f(st.rel_final_mean)),
        ("Pearson(proxy seed 0, final mean)", f(st.pearson)),
        ("Spearman(proxy seed 0, final mean)", f"{f(st.spearman)} {ci(st.spearman_ci)}"),
        ("Kendall tau(proxy seed 0, final mean)", f"{f(st.kendall)} {ci(st.kendall_ci)}"),
        ("arcsin prediction from the proxy SNR alone", f(st.spearman_from_snr)),
        ("Pearson bound sqrt(rel_proxy rel_final)", f(st.pearson_bound)),
        ("Spearman at the bound (arcsin) / Moran at n", f"{f(st.spearman_bound)} / {f(st.spearman_moran_bound)}"),
        ("fidelity (disattenuated Pearson)", f(st.fidelity)),
    ]
    lo, hi = st.spearman_ci
    if st.n < MIN_ARCHITECTURES:
        verdict = (f"not enough data: {st.n} architectures (need {MIN_ARCHITECTURES}); the CI cannot "
                   "separate fidelity 1 from a much lower one")
    elif hi < st.spearman_moran_bound:
        verdict = ("below the reliability bound: the noise-free 1-epoch ranking differs from the final one "
                   f"(fidelity {f(st.fidelity)} < 1)")
    else:
        verdict = "consistent with the reliability bound (fidelity ~ 1): proxy noise explains the rank disagreement"
    out = ["# Proxy study", "", "| quantity | value |", "| --- | --- |", *[f"| {a} | {b} |" for a, b in rows], "",
           f"Observed Spearman {f(st.spearman)} {ci(st.spearman_ci)} vs {f(st.spearman_moran_bound)} expected at "
           f"the bound: {verdict}. The source paper reports 0.926 between 1-epoch and 50-epoch ranks.", ""]
    return "\n".join(out)


def study_dataset(acc: np.ndarray, archs: list[dict], epochs: list[int]) -> xr.Dataset:
    return xr.Dataset(
        {"accuracy": (("arch", "epochs", "seed"), acc, {"units": "accuracy", "description": "test accuracy"}),
         "code": ("arch", np.array([a["code"] for a in archs], dtype=object)),
         "search_score": ("arch", np.array([a["score"] for a in archs])),
         "group": ("arch", np.array([a["group"] for a in archs], dtype=object)),
         "source_run": ("arch", np.array([a["run"] for a in archs], dtype=object)),
         "source_cycle": ("arch", np.array([a["cycle"] for a in archs]))},
        coords={"arch": np.arange(len(archs)), "epochs": list(epochs), "seed": np.arange(acc.shape[2])})


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m experiments.proxy_study", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("runs", type=Path, nargs="*", help="run directories to take architectures from")
    curves = p.add_argument_group("training curves (instead of run directories)")
    curves.add_argument("--curves", type=Path, default=None, metavar="PATH",
                        help="curves CSV (.csv/.csv.gz) or a clone of nn-dataset / its ab/nn/stat folder")
    curves.add_argument("--proxy-epoch", type=int, default=1, help="epoch whose accuracy is the proxy (default 1)")
    curves.add_argument("--target-epoch", default="last",
                        help="'last' (each configuration's last stored epoch, default) or an epoch number")
    curves.add_argument("--by", default="dataset",
                        help="group by task, dataset, metric, nn or source_repo; 'none' pools (default dataset)")
    curves.add_argument("--top-k", type=int, nargs="+", default=[100, 50, 25],
                        help="ceiling truncation: percent kept, best by target accuracy (default 100 50 25)")
    curves.add_argument("--bootstrap", type=int, default=1000, help="bootstrap resamples (default 1000)")
    curves.add_argument("--cluster", default="none",
                        help="resample whole groups of configurations sharing this coordinate, e.g. nn (an "
                             "architecture with all its hyperparameter settings); 'none' resamples configurations "
                             "(default)")
    curves.add_argument("--duplicates", choices=("error", "drop"), default="error",
                        help="two records for one (configuration, epoch): stop with the list (default) or drop "
                             "those configurations")
    p.add_argument("--top", type=int, default=5, help="best architectures to take (default 5)")
    p.add_argument("--random", type=int, default=5, help="stratified random architectures (default 5)")
    p.add_argument("--epochs", type=int, nargs="+", default=[1, 5],
                   help="epoch counts to train; the smallest is the proxy, the largest the final (default 1 5)")
    p.add_argument("--seeds", type=int, default=3, help="seeds per architecture and epoch count (default 3)")
    p.add_argument("--workers", type=int, default=2, help="sandbox workers (default 2)")
    p.add_argument("--max-train", type=int, default=None, help="training examples (default: the run's)")
    p.add_argument("--max-test", type=int, default=None, help="test examples (default: the run's)")
    p.add_argument("--seed", type=int, default=0, help="seed of the stratified draw / of the bootstrap")
    p.add_argument("--out", type=Path, default=None,
                   help=f"output directory (default RUN_DIR/proxy_study; with --curves {CURVES_OUT})")
    return p


CURVES_OUT = Path("runs") / "proxy_curves"


def curves_main(args: argparse.Namespace) -> int:
    """The training-curves mode: read, study, write the report, print the summary."""
    import time

    from analysis.proxy_curves import CurveStudySettings, curve_study
    from analysis.proxy_curves_report import summary_lines, write_curves_report
    from cem_nas.curves import CurvesError, read_curves

    start = time.perf_counter()
    try:
        settings = CurveStudySettings(
            proxy_epoch=args.proxy_epoch, target_epoch=args.target_epoch,
            by=None if args.by == "none" else args.by, top_k=tuple(args.top_k), draws=args.bootstrap, seed=args.seed,
            cluster=None if args.cluster == "none" else args.cluster)
        print(f"reading {args.curves}")
        curves = read_curves(args.curves, duplicates=args.duplicates, progress=True)
    except (CurvesError, ValueError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    print(f"{curves.sizes['configuration']:,} configurations, {curves.attrs['records']:,} records "
          f"({curves.attrs['dropped_duplicate_configurations']:,} dropped for duplicated epochs)")
    study = curve_study(curves, settings)
    path = write_curves_report(study, args.out or CURVES_OUT)
    print("\n".join(summary_lines(study)))
    print(f"written: {path}, {path.with_suffix('.html')}, {path.with_suffix('.nc')} and 2 figures "
          f"({time.perf_counter() - start:.1f} s)")
    return 0


def main(argv=None) -> int:
    args = parser().parse_args(argv)
    if (args.curves is None) == (not args.runs):
        print("error: give run directories or --curves PATH (one of the two)", file=sys.stderr)
        return 2
    if args.curves is not None:
        return curves_main(args)
    if len(set(args.epochs)) < 2 or min(args.epochs) < 1 or args.seeds < 2:
        print("error: give >= 2 distinct epoch counts >= 1 (--epochs 1 5) and --seeds >= 2", file=sys.stderr)
        return 2
    from cem_nas.cem import load_data

    try:
        runs = as_runs(load(args.runs))
        cfg = C.load_toml(args.runs[0] / "config.toml", saved_run=True)
        overrides = {k: str(v) for k, v in (("data.max_train", args.max_train), ("data.max_test", args.max_test))
                     if v is not None}
        cfg = C.apply_overrides(cfg, overrides)
        archs = select_architectures(runs, args.top, args.random, args.seed)
    except (C.ConfigError, StoreError, ValueError, FileNotFoundError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    epochs = sorted(set(args.epochs))
    print(f"retraining {len(archs)} architectures x epochs {epochs} x {args.seeds} seeds")
    acc = retrain(archs, load_data(cfg), cfg.proxy, epochs, args.seeds, args.workers)
    out = args.out or args.runs[0] / "proxy_study"
    out.mkdir(parents=True, exist_ok=True)
    ds = study_dataset(acc, archs, epochs)
    tmp = out / "proxy_study.nc.tmp"
    ds.to_netcdf(tmp)
    os.replace(tmp, out / "proxy_study.nc")
    try:
        text = markdown(proxy_statistics(ds["accuracy"]), archs)
    except ValueError as e:
        text = f"# Proxy study\n\nNo statistics: {e}\n"
    (out / "proxy_study.md").write_text(text)
    print(text)
    print(f"written: {out / 'proxy_study.md'}, {out / 'proxy_study.nc'}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
