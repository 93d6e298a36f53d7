"""Which proxy budget ranks architectures? (``python -m experiments.proxy_fidelity``)

A fixed, seeded set of architectures (the zoo, single-edit mutations of it like the LLM's
warm-started deltas, and draws from the grammar sampler's initial distribution, i.e. the
grammar control's cycle 0) is trained under each candidate proxy budget (training-set
size, test-set size, epochs, batch size, learning rate: the knobs the LEMUR interface
leaves to the harness; a candidate's own ``train_setup`` picks its optimiser) and under a
reference budget (the whole training split, 5 epochs), ``--seeds`` seeds each, through the
sandbox pool a search uses (:class:`cem_nas.evaluate.EvaluationPool`, one thread per
candidate), so the costs are what a run sees.

Per budget: training seconds per candidate run as the sandbox measured them; the proxy's
ICC(1) and SNR over seeds with F-based CIs; Spearman and Kendall between the proxy (seed
0, as a search scores) and the reference mean over seeds, with Fisher-z CIs; the share of
trained runs at chance (accuracy <= 1.2 x chance, LEMUR's bar) with a Wilson interval, over
all architectures and over the *learnable* ones (above that bar at the reference: some
mutations never learn, and no budget should be blamed for them); the median zoo accuracy.
The recommended budget is the cheapest (median training seconds) whose Spearman is within
``--margin`` of the best, whose learnable share at chance is at most ``--max-chance`` and
whose median zoo accuracy is at least ``--min-zoo``.

Resumable: every finished run is in ``OUT/cache.json`` (the pool's evaluation cache, keyed
by code, settings, seed and dataset), so a killed study continues where it stopped and a
call with more budgets trains only the new ones (the reference is reused). Writes ``OUT/proxy_fidelity.nc`` (dims budget x
arch x seed, per-budget statistics), ``OUT/proxy_fidelity.md`` (the table) and
``OUT/cost_fidelity.png`` (cost vs Spearman).
"""
from __future__ import annotations

import argparse
import dataclasses
import json
import math
import os
import sys
import threading
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import xarray as xr
from scipy import stats

from cem_nas import mutations, zoo
from cem_nas.evaluate import CHANCE_FACTOR, EvalSettings, EvaluationCache, EvaluationPool, normalise_code
from cem_nas.records import SCORED
from cem_nas.sampler.grammar import GrammarSampler
from theory import proxy, reliability
from theory.convergence import wilson_interval

LEVEL = 0.95
STUDY_FILE, CACHE_FILE = "study.json", "cache.json"


@dataclass(frozen=True)
class Budget:
    """One proxy training budget; sizes 0 = the whole split."""

    max_train: int
    max_test: int
    epochs: int
    batch_size: int
    lr: float

    @classmethod
    def parse(cls, text: str) -> "Budget":
        """``TRAIN:TEST:EPOCHS:BATCH:LR``, e.g. ``4000:0:1:32:0.01``.

        >>> Budget.parse("1000:500:1:64:0.01").label
        'n1000_t500_e1_b64_lr0.01'
        """
        parts = text.split(":")
        try:
            budget = cls(int(parts[0]), int(parts[1]), int(parts[2]), int(parts[3]), float(parts[4]))
            if len(parts) != 5:
                raise ValueError
        except (ValueError, IndexError):
            raise ValueError(f"budget {text!r}: expected TRAIN:TEST:EPOCHS:BATCH:LR "
                             "(ints, 0 = whole split; lr a float), e.g. 4000:0:1:32:0.01") from None
        if min(budget.max_train, budget.max_test) < 0 or budget.epochs < 1 or budget.batch_size < 2 \
                or not budget.lr > 0:
            raise ValueError(f"budget {text!r}: sizes must be >= 0, epochs >= 1, batch >= 2, lr > 0")
        return budget

    @property
    def label(self) -> str:
        train = self.max_train or "all"
        test = self.max_test or "all"
        return f"n{train}_t{test}_e{self.epochs}_b{self.batch_size}_lr{self.lr:g}"

    def settings(self, base: EvalSettings) -> EvalSettings:
        return dataclasses.replace(base, epochs=self.epochs, batch_size=self.batch_size, lr=self.lr)


#: The grid measured for the default (docs/results.md#proxy-fidelity): the old default, the whole split at three
#: batch sizes, one higher learning rate; the reference is the whole split for 5 epochs.
DEFAULT_BUDGETS = ("1000:500:1:64:0.01", "0:0:1:64:0.01", "0:0:1:32:0.01", "0:0:1:32:0.02", "0:0:1:16:0.01")
DEFAULT_REFERENCE = "0:0:5:64:0.01"


# ---------------------------------------------------------------- the architectures

def _single_edit(rng: np.random.Generator) -> dict[str, str]:
    coords = [c for c in mutations.GRAMMAR if not c.neutral]
    coord = coords[int(rng.integers(len(coords)))]
    return {coord.name: coord.choices[1 + int(rng.integers(len(coord.choices) - 1))]}


def architectures(n_mutations: int, seed: int = 0) -> list[dict]:
    """The zoo plus ``n_mutations`` distinct mutations of it, seeded.

    Half are single-edit mutations (one random non-neutral coordinate, one random non-keep
    choice: the size of the warm-started LLM's deltas), half whole choice vectors from the
    grammar sampler's initial (uniform) distribution; baselines are taken in turn. The
    neutral tag is kept at "keep" (it only writes a comment). Renders that change nothing or
    repeat an earlier architecture (comments and layout ignored) are drawn again.
    """
    names = zoo.names()
    archs = [{"name": n, "baseline": n, "group": "zoo", "mutation": "keep", "code": zoo.source(n)}
             for n in names]
    seen = {normalise_code(a["code"]) for a in archs}
    rng = np.random.default_rng(seed)
    grammar = GrammarSampler(seed=seed)
    tag = mutations.coordinate_names().index(mutations.NEUTRAL)
    for i in range(n_mutations):
        group = "single_edit" if i < (n_mutations + 1) // 2 else "grammar"
        base = names[i % len(names)]
        for _ in range(1000):
            if group == "single_edit":
                choices = mutations.choice_vector(_single_edit(rng))
            else:
                choices = tuple(0 if j == tag else c for j, c in enumerate(grammar.sample(rng)))
            code = mutations.render(zoo.source(base), choices)
            key = normalise_code(code)
            if key not in seen:
                break
        else:
            raise RuntimeError(f"could not draw a new mutation of {base} in 1000 tries")
        seen.add(key)
        archs.append({"name": f"{group}_{i:02d}_{base}", "baseline": base, "group": group,
                      "mutation": mutations.describe_choices(choices), "code": code})
    return archs


# ---------------------------------------------------------------- training

def _save_json(path: Path, data: dict) -> None:
    tmp = path.with_suffix(".tmp")
    tmp.write_text(json.dumps(data))
    os.replace(tmp, path)


def open_study(out: Path, spec: dict, overwrite: bool = False) -> EvaluationCache:
    """The evaluation cache of the study in ``out`` (empty for a new one); refuses to mix
    results of another architecture set into it."""
    out.mkdir(parents=True, exist_ok=True)
    cache = EvaluationCache()
    if (out / STUDY_FILE).exists() and not overwrite:
        saved = json.loads((out / STUDY_FILE).read_text())
        if saved != spec:
            diff = sorted(k for k in set(saved) | set(spec) if saved.get(k) != spec.get(k))
            raise ValueError(f"{out} holds a study of other architectures ({', '.join(diff)}); "
                             "pass another --out, the same settings, or --overwrite")
        if (out / CACHE_FILE).exists():
            cache.load_state_dict(json.loads((out / CACHE_FILE).read_text()))
    _save_json(out / STUDY_FILE, spec)
    if overwrite and (out / CACHE_FILE).exists():
        (out / CACHE_FILE).unlink()
    return cache


def train_all(archs: list[dict], budgets: list[Budget], base: EvalSettings, seeds: int, workers: int,
              cache: EvaluationCache, cache_path: Path, progress: bool = True) -> dict[str, np.ndarray]:
    """Train every (budget, arch, seed) not already in ``cache``; arrays (budget, arch, seed)
    of accuracy, status, train and eval seconds, the load average around each budget, and
    ``fresh``: how many runs this call added to the cache (the rest came from it)."""
    from tqdm.auto import tqdm

    from cem_nas.data import load_dataset

    shape = (len(budgets), len(archs), seeds)
    out = {"accuracy": np.full(shape, np.nan), "train_seconds": np.full(shape, np.nan),
           "eval_seconds": np.full(shape, np.nan), "status": np.full(shape, "", dtype=object),
           "message": np.full(shape, "", dtype=object), "load_before": np.full(len(budgets), np.nan),
           "load_after": np.full(len(budgets), np.nan), "fresh": 0}
    lock = threading.Lock()
    bar = tqdm(total=len(budgets) * len(archs), unit="arch", disable=not progress, dynamic_ncols=True)
    cached = len(cache)

    def saved(_fut) -> None:
        with lock:  # the pool's threads finish candidates concurrently
            _save_json(cache_path, cache.state_dict())
            bar.update()

    for b, budget in enumerate(budgets):
        bar.set_description(budget.label)
        data = load_dataset("mnist5k", max_train=budget.max_train or None, max_test=budget.max_test or None)
        out["load_before"][b] = os.getloadavg()[0]
        with EvaluationPool(data, budget.settings(base), workers=workers, cache=cache) as pool:
            futures = [pool.submit(a["code"], seeds=tuple(range(seeds))) for a in archs]
            for fut in futures:
                if fut.done():  # every seed was in the cache: nothing new to save
                    bar.update()
                else:
                    fut.add_done_callback(saved)
            for i, fut in enumerate(futures):
                for s, r in enumerate(fut.result()):
                    out["status"][b, i, s], out["message"][b, i, s] = r.status, r.message
                    out["train_seconds"][b, i, s] = r.train_seconds
                    out["eval_seconds"][b, i, s] = r.eval_seconds
                    out["accuracy"][b, i, s] = r.accuracy if r.status in SCORED else np.nan
        out["load_after"][b] = os.getloadavg()[0]
    bar.close()
    out["fresh"] = len(cache) - cached
    return out


# ---------------------------------------------------------------- statistics

def budget_statistics(acc: np.ndarray, status: np.ndarray, train_s: np.ndarray, reference: int,
                      zoo_mask: np.ndarray, num_classes: int = 10, level: float = LEVEL) -> dict[str, np.ndarray]:
    """Per-budget fidelity figures from (budget, arch, seed) arrays (see the module docstring).

    The reference's own row has no rank agreement (it would be compared with itself).

    >>> rng = np.random.default_rng(0)
    >>> q = rng.uniform(0.3, 0.9, 40)
    >>> acc = np.stack([q[:, None] + rng.normal(0, s, (40, 2)) for s in (0.01, 0.2)])
    >>> st = budget_statistics(acc, np.full(acc.shape, "ok"), np.ones(acc.shape), 0, np.ones(40, bool))
    >>> bool(st["icc"][0] > 0.9 > st["icc"][1]), bool(np.isnan(st["spearman"][0]) and st["spearman"][1] < 0.9)
    (True, True)
    """
    n_budgets = acc.shape[0]
    names = ("icc", "icc_lo", "icc_hi", "snr", "snr_lo", "snr_hi", "spearman", "spearman_lo", "spearman_hi",
             "kendall", "kendall_lo", "kendall_hi", "n_ranked", "chance_share", "chance_lo", "chance_hi",
             "n_trained", "chance_learnable", "chance_learnable_lo", "chance_learnable_hi", "train_s_median", "train_s_p90", "zoo_median", "accuracy_median")
    out = {k: np.full(n_budgets, np.nan) for k in names}
    with np.errstate(all="ignore"):
        ref_mean = np.nanmean(acc[reference], axis=1)
    chance = CHANCE_FACTOR / num_classes
    learnable = ref_mean > chance  # NaN (never trained at the reference) compares False
    for b in range(n_budgets):
        a = acc[b]
        trained = np.isin(status[b], SCORED)
        at_chance = trained & ~(a > chance)
        for name, rows in (("chance", slice(None)), ("chance_learnable", learnable)):
            n_t, k = int(trained[rows].sum()), int(at_chance[rows].sum())
            if n_t:
                key = "chance_share" if name == "chance" else name
                out[key][b] = k / n_t
                out[f"{name}_lo"][b], out[f"{name}_hi"][b] = wilson_interval(k, n_t, level)
        out["n_trained"][b] = int(trained.sum())
        t = train_s[b][np.isfinite(train_s[b])]
        if len(t):
            out["train_s_median"][b], out["train_s_p90"][b] = np.median(t), np.percentile(t, 90)
        with np.errstate(all="ignore"):
            means = np.nanmean(a, axis=1)
        if np.isfinite(means[zoo_mask]).any():
            out["zoo_median"][b] = np.nanmedian(means[zoo_mask])
        if np.isfinite(a).any():
            out["accuracy_median"][b] = np.nanmedian(a)
        rows = a[np.sum(np.isfinite(a), axis=1) >= 2] if a.shape[1] >= 2 else a[:0]
        if len(rows) >= 3 and np.nanstd(rows) > 0:
            icc = reliability.icc1(rows, level=level)
            out["icc"][b], out["icc_lo"][b], out["icc_hi"][b] = icc.icc, icc.ci_low, icc.ci_high
            out["snr"][b], out["snr_lo"][b], out["snr_hi"][b] = icc.snr, icc.snr_ci_low, icc.snr_ci_high
        both = np.isfinite(a[:, 0]) & np.isfinite(ref_mean)
        n = int(both.sum())
        out["n_ranked"][b] = n
        if b == reference or n < 5 or np.ptp(a[both, 0]) == 0 or np.ptp(ref_mean[both]) == 0:
            continue
        r_s = float(stats.spearmanr(a[both, 0], ref_mean[both]).statistic)
        tau = float(stats.kendalltau(a[both, 0], ref_mean[both]).statistic)
        out["spearman"][b] = r_s
        out["spearman_lo"][b], out["spearman_hi"][b] = proxy.spearman_ci(r_s, n, level)
        out["kendall"][b] = tau
        out["kendall_lo"][b], out["kendall_hi"][b] = proxy.kendall_ci(tau, n, level)
    return out


def recommend(st: dict[str, np.ndarray], reference: int, margin: float, max_chance: float,
              min_zoo: float = 0.0) -> int:
    """Index of the cheapest budget (median training seconds) with Spearman >= best - margin,
    at most max_chance of the runs of learnable architectures at chance and a median zoo
    accuracy >= min_zoo; -1 when none qualifies.

    >>> st = {"spearman": np.array([np.nan, 0.90, 0.86, 0.70]), "chance_learnable": np.array([0, 0, 0.01, 0]),
    ...       "train_s_median": np.array([9.0, 2.0, 1.0, 0.5]), "zoo_median": np.array([0.9, 0.9, 0.6, 0.9])}
    >>> recommend(st, 0, 0.05, 0.05), recommend(st, 0, 0.01, 0.05), recommend(st, 0, 0.05, 0.05, min_zoo=0.8)
    (2, 1, 1)
    """
    rho = st["spearman"]
    if not np.isfinite(rho).any():
        return -1
    best = np.nanmax(rho)
    ok = [b for b in range(len(rho)) if b != reference and rho[b] >= best - margin
          and st["chance_learnable"][b] <= max_chance and st["zoo_median"][b] >= min_zoo
          and np.isfinite(st["train_s_median"][b])]
    return min(ok, key=lambda b: st["train_s_median"][b]) if ok else -1


# ---------------------------------------------------------------- outputs

def study_dataset(archs: list[dict], budgets: list[Budget], reference: int, runs: dict[str, np.ndarray],
                  st: dict[str, np.ndarray], attrs: dict) -> xr.Dataset:
    per_run = ("budget", "arch", "seed")
    ds = xr.Dataset(
        {"accuracy": (per_run, runs["accuracy"], {"units": "1", "description": "test accuracy; NaN if not trained"}),
         "status": (per_run, runs["status"].astype(str)),
         "message": (per_run, runs["message"].astype(str)),
         "train_seconds": (per_run, runs["train_seconds"], {"units": "s", "description": "training time in the sandbox"}),
         "eval_seconds": (per_run, runs["eval_seconds"], {"units": "s", "description": "test pass time in the sandbox"}),
         "code": ("arch", np.array([a["code"] for a in archs], dtype=str)),
         "baseline": ("arch", np.array([a["baseline"] for a in archs], dtype=str)),
         "group": ("arch", np.array([a["group"] for a in archs], dtype=str)),
         "mutation": ("arch", np.array([a["mutation"] for a in archs], dtype=str)),
         "max_train": ("budget", [b.max_train for b in budgets], {"description": "0 = whole split"}),
         "max_test": ("budget", [b.max_test for b in budgets], {"description": "0 = whole split"}),
         "epochs": ("budget", [b.epochs for b in budgets]),
         "batch_size": ("budget", [b.batch_size for b in budgets]),
         "lr": ("budget", [b.lr for b in budgets]),
         "is_reference": ("budget", [b == reference for b in range(len(budgets))]),
         "load_before": ("budget", runs["load_before"], {"description": "1-min load average when the budget started"}),
         "load_after": ("budget", runs["load_after"], {"description": "1-min load average when the budget ended"}),
         **{k: ("budget", v) for k, v in st.items()}},
        coords={"budget": [b.label for b in budgets], "arch": [a["name"] for a in archs],
                "seed": np.arange(runs["accuracy"].shape[2])},
        attrs=attrs)
    return ds


def summary_table(ds: xr.Dataset) -> str:
    f = lambda v, d=3: "n/a" if not np.isfinite(v) else f"{v:.{d}f}"  # noqa: E731
    head = ("| budget | train s/cand (median, p90) | zoo median | ICC [CI] | Spearman [CI] | Kendall [CI] "
            "| at chance: all [CI] | learnable [CI] | trained |")
    rows = [head, "|" + " --- |" * 9]
    chosen = ds.attrs.get("recommended", "")
    for label in ds["budget"].values:
        b = ds.sel(budget=label)
        v = {k: float(b[k]) for k in ds.data_vars if ds[k].dims == ("budget",) and ds[k].dtype.kind == "f"}
        mark = " (reference)" if bool(b["is_reference"]) else " **recommended**" if label == chosen else ""
        rows.append(
            f"| {label}{mark} | {f(v['train_s_median'], 2)}, {f(v['train_s_p90'], 2)} | {f(v['zoo_median'])} "
            f"| {f(v['icc'])} [{f(v['icc_lo'])}, {f(v['icc_hi'])}] "
            f"| {f(v['spearman'])} [{f(v['spearman_lo'])}, {f(v['spearman_hi'])}] "
            f"| {f(v['kendall'])} [{f(v['kendall_lo'])}, {f(v['kendall_hi'])}] "
            f"| {f(v['chance_share'])} [{f(v['chance_lo'])}, {f(v['chance_hi'])}] "
            f"| {f(v['chance_learnable'])} [{f(v['chance_learnable_lo'])}, {f(v['chance_learnable_hi'])}] "
            f"| {int(v['n_trained'])} |")
    return "\n".join(rows)


def plot_cost_fidelity(ds: xr.Dataset, path: Path) -> Path:
    """Spearman with the reference (with CI) against median training seconds per candidate."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    proxies = ds.where(~ds["is_reference"], drop=True)
    x, y = proxies["train_s_median"].values, proxies["spearman"].values
    err = np.abs(np.stack([y - proxies["spearman_lo"].values, proxies["spearman_hi"].values - y]))
    fig, ax = plt.subplots(figsize=(7, 4.2))
    ax.errorbar(x, y, yerr=err, fmt="o", capsize=3)
    for xi, yi, label in zip(x, y, proxies["budget"].values):
        ax.annotate(str(label), (xi, yi), textcoords="offset points", xytext=(4, 4), fontsize=7)
    ax.axhline(0.8, ls=":", c="grey", lw=1)
    ax.margins(x=0.3)  # room for the labels
    ax.set_xlabel("median training seconds per candidate (one thread, sandbox)")
    ax.set_ylabel("Spearman with the reference (95% CI)")
    ax.set_title(f"proxy cost vs fidelity ({ds.sizes['arch']} architectures; "
                 f"reference {ds.attrs.get('reference', '')})", fontsize=9)
    fig.subplots_adjust(left=0.11, right=0.97, bottom=0.13, top=0.9)
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def _write_atomic(ds: xr.Dataset, path: Path) -> None:
    tmp = path.with_suffix(".nc.tmp")
    ds.to_netcdf(tmp)
    os.replace(tmp, path)


# ---------------------------------------------------------------- command line

def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m experiments.proxy_fidelity", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--budgets", nargs="+", default=list(DEFAULT_BUDGETS), metavar="SPEC",
                   help="proxy budgets TRAIN:TEST:EPOCHS:BATCH:LR (0 = whole split; default %(default)s)")
    p.add_argument("--reference", default=DEFAULT_REFERENCE, metavar="SPEC",
                   help="reference budget, same format (default %(default)s)")
    p.add_argument("--mutations", type=int, default=52, help="grammar mutations of the zoo (default 52)")
    p.add_argument("--zoo", nargs="*", default=None, metavar="NAME",
                   help="zoo baselines to use (default: all)")
    p.add_argument("--seeds", type=int, default=2, help="training seeds per architecture and budget (default 2)")
    p.add_argument("--arch-seed", type=int, default=0, help="seed of the mutation draw (default 0)")
    p.add_argument("--workers", type=int, default=2, help="sandbox workers, one thread each (default 2)")
    p.add_argument("--timeout", type=float, default=600.0,
                   help="wall-clock limit of one training run in s (default 600: generous, a shared "
                        "machine slows the reference several-fold)")
    p.add_argument("--margin", type=float, default=0.05,
                   help="recommend the cheapest budget with Spearman >= best - margin (default 0.05)")
    p.add_argument("--max-chance", type=float, default=0.05,
                   help="... and at most this share of the learnable architectures' runs at chance (default 0.05)")
    p.add_argument("--min-zoo", type=float, default=0.8,
                   help="... and a median zoo accuracy of at least this (default 0.8): a proxy at which the "
                        "zoo's own baselines have not learned compresses every score near chance")
    p.add_argument("--out", type=Path, default=Path("runs/proxy_fidelity"), help="output directory")
    p.add_argument("--overwrite", action="store_true", help="discard a previous study in --out")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    return p


def main(argv=None) -> int:
    args = parser().parse_args(argv)
    try:
        budgets = [Budget.parse(s) for s in args.budgets]
        ref = Budget.parse(args.reference)
        if args.seeds < 2:
            raise ValueError("--seeds must be >= 2 (the ICC needs replicates)")
        if args.mutations < 0 or args.workers < 1 or not args.timeout > 0:
            raise ValueError("--mutations must be >= 0, --workers >= 1 and --timeout > 0")
        if ref in budgets:
            raise ValueError(f"the reference {ref.label} is also in --budgets; give it once")
        archs = architectures(args.mutations, args.arch_seed)
        if args.zoo is not None:
            unknown = sorted(set(args.zoo) - set(zoo.names()))
            if unknown:
                raise ValueError(f"unknown zoo baselines {unknown}; known: {', '.join(zoo.names())}")
            archs = [a for a in archs if a["baseline"] in args.zoo]
        # Budgets may change between calls (results are cached per settings), the architectures not.
        spec = {"mutations": args.mutations, "zoo": args.zoo, "seeds": args.seeds, "arch_seed": args.arch_seed}
        cache = open_study(args.out, spec, args.overwrite)
    except (ValueError, KeyError, mutations.MutationError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    all_budgets = [ref, *budgets]  # the reference first: every rank statistic needs it
    base = EvalSettings(timeout_s=args.timeout, threads=1)
    print(f"{len(archs)} architectures x {len(all_budgets)} budgets x {args.seeds} seeds "
          f"({len(cache)} runs already done) on {args.workers} workers; load {os.getloadavg()[0]:.2f}")
    started = time.perf_counter()
    runs = train_all(archs, all_budgets, base, args.seeds, args.workers, cache, args.out / CACHE_FILE,
                     progress=not args.no_progress)
    wall = time.perf_counter() - started
    st = budget_statistics(runs["accuracy"], runs["status"], runs["train_seconds"], 0,
                           np.array([a["group"] == "zoo" for a in archs]))
    chosen = recommend(st, 0, args.margin, args.max_chance, args.min_zoo)
    attrs = {"reference": ref.label, "margin": args.margin, "max_chance": args.max_chance, "min_zoo": args.min_zoo,
             "recommended": all_budgets[chosen].label if chosen >= 0 else "",
             "wall_seconds_this_call": wall, "workers": args.workers, "threads_per_worker": 1,
             "dataset": "mnist5k", "arch_seed": args.arch_seed, "level": LEVEL}
    ds = study_dataset(archs, all_budgets, 0, runs, st, attrs)
    _write_atomic(ds, args.out / "proxy_fidelity.nc")
    table = summary_table(ds)
    png = plot_cost_fidelity(ds, args.out / "cost_fidelity.png")
    rule = (f"Spearman within {args.margin:g} of the best, <= {args.max_chance:.0%} of the learnable "
            f"architectures' runs at chance, zoo median >= {args.min_zoo:g}")
    verdict = (f"recommended: {all_budgets[chosen].label} (the cheapest with {rule})" if chosen >= 0
               else f"no budget has {rule}")
    loads = ", ".join(f"{lb:.1f}->{la:.1f}" for lb, la in zip(runs["load_before"], runs["load_after"]))
    text = (f"# Proxy fidelity\n\n{len(archs)} architectures, {args.seeds} seeds, reference {ref.label}; "
            f"{wall:.0f} s wall this call ({runs['fresh']} runs trained, the rest from the cache); "
            f"load per budget {loads}\n\n{table}\n\n{verdict}\n")
    (args.out / "proxy_fidelity.md").write_text(text)
    print(text)
    print(f"written: {args.out / 'proxy_fidelity.nc'}, {args.out / 'proxy_fidelity.md'}, {png}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
