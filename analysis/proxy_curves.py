"""Proxy reliability on training curves: does epoch-k accuracy rank configurations as the final one?

Input: a (configuration x epoch) Dataset from :func:`cem_nas.curves.read_curves`. Each
configuration's proxy-epoch accuracy is paired with its target-epoch accuracy (its own
last stored epoch, or a fixed one); configurations without both are counted by reason,
never imputed. Per group (``by`` a coordinate such as dataset) and per ceiling
truncation (the top k% by target accuracy):

- Pearson, Spearman and Kendall (tau_b) with percentile bootstrap CIs over
  configurations, or over clusters of them (``cluster = "nn"``: an architecture with all
  its hyperparameter settings) (``theory.bootstrap``: every statistic of a resample comes
  from one count matrix, so they are resampled jointly);
- the arcsin law on the raw Pearson: its asymptote (6/pi) asin(r/2) and Moran's
  expectation at n, the gap observed - Moran with CI (``theory.reliability.arcsin_gap``),
  the gap to the alternative rho_S = r with CI, and the pairs needed to resolve the gap;
- the normal-copula reading: 2 sin(pi r_S/6) vs sin(pi tau/2) and the CI of their
  difference (``theory.proxy.copula_check``);
- the share of tied values and the largest tie block (runs that never learn sit at one
  accuracy), and the target epochs used.

Verdicts: the arcsin law is *supported* when the gap's CI holds 0 and the CI of
r_S - r does not (the data tell the law from rho_S = r), *not supported* when the gap's
CI excludes 0, else *not enough data*. The normal-copula reading is *supported* when the
CI of the difference holds 0 and is narrower than +-``copula_resolution``, *not
supported* when it excludes 0, else *not enough data*. Fewer than ``min_pairs``
configurations: not enough data.
"""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass

import numpy as np
import xarray as xr
from tqdm import tqdm

from analysis.claims import NOT_ENOUGH, NOT_SUPPORTED, SUPPORTED
from cem_nas.curves import CONFIG_KEYS, last_stored_epoch
from theory import bootstrap as bt
from theory import proxy, reliability

#: Why a configuration is not in the study (the ``pairing`` variable).
PAIRED, NO_PROXY, CUT_SHORT, NO_TARGET = "paired", "no proxy epoch", "cut short", "target epoch not stored"
#: Resamples per block of the count matrix (bounds memory at block x n counts).
DRAW_BLOCK = 250


@dataclass
class CurveStudySettings:
    proxy_epoch: int = 1
    """Epoch whose accuracy is the proxy (as stored: LEMUR numbers most runs from 1)."""
    target_epoch: int | str = "last"
    """Epoch scored as the truth: 'last' (each configuration's own last stored epoch, which
    must come after the proxy epoch) or an epoch number."""
    by: str | None = "dataset"
    """Coordinate to group configurations by (task, dataset, metric, nn, source_repo); None pools all."""
    top_k: tuple[int, ...] = (100, 50, 25)
    """Ceiling truncation: percentages of each group kept, best by target accuracy."""
    draws: int = 1000
    """Bootstrap resamples."""
    cluster: str | None = None
    """Coordinate whose values are resampled as units (nn: an architecture with all its
    hyperparameter settings, which are not independent); None resamples configurations."""
    level: float = 0.95
    """Two-sided level of every interval."""
    seed: int = 0
    """Seed of the bootstrap."""
    min_pairs: int = 30
    """Fewest paired configurations for a verdict."""
    copula_resolution: float = 0.005
    """Half-width the copula difference's CI must be under for 'supported'. Non-normal copulas
    with the same tau (0.41) differ by -0.006 (Clayton) and -0.033 (Student t, 2 df):
    measured on 20,000 draws each."""

    def __post_init__(self):
        if self.target_epoch != "last":
            try:
                self.target_epoch = int(self.target_epoch)
            except (TypeError, ValueError):
                raise ValueError(f"target_epoch must be 'last' or an epoch number; got {self.target_epoch!r}") from None
            if self.target_epoch <= self.proxy_epoch:
                raise ValueError(f"target_epoch ({self.target_epoch}) must come after proxy_epoch ({self.proxy_epoch})")
        if self.proxy_epoch < 0:
            raise ValueError(f"proxy_epoch must be >= 0; got {self.proxy_epoch}")
        for name in ("by", "cluster"):
            value = getattr(self, name)
            if value is not None and value not in ("source_repo", *CONFIG_KEYS):
                raise ValueError(f"{name} must be one of source_repo, {', '.join(CONFIG_KEYS)} or None; got {value!r}")
        if not self.top_k or any(not 0 < k <= 100 for k in self.top_k):
            raise ValueError(f"top_k are percentages in (0, 100]; got {self.top_k!r}")
        self.top_k = tuple(sorted({int(k) for k in self.top_k}, reverse=True))
        if self.draws < 100:
            raise ValueError(f"draws must be >= 100 for a percentile interval; got {self.draws}")


def _epoch_values(curves: xr.Dataset, epoch: int) -> np.ndarray:
    if epoch not in curves["epoch"].values:
        return np.full(curves.sizes["configuration"], np.nan)
    return curves["accuracy"].sel(epoch=epoch).values.astype(float)


def pair_epochs(curves: xr.Dataset, proxy_epoch: int = 1, target_epoch: int | str = "last") -> xr.Dataset:
    """Per configuration: proxy and target accuracy, the target epoch, and why it is unpaired.

    ``pairing`` is 'paired', 'no proxy epoch' (the proxy epoch is not stored), 'cut short'
    (the curve ends at or before the proxy epoch, or before a fixed target epoch: LEMUR
    stops weak runs early) or 'target epoch not stored' (the curve goes past a fixed
    target epoch that was thinned out).
    """
    x = _epoch_values(curves, proxy_epoch)
    last = last_stored_epoch(curves).values
    if target_epoch == "last":
        t_epoch = last.copy()
        epochs = curves["epoch"].values
        col = np.searchsorted(epochs, np.maximum(last, epochs[0]))
        y = curves["accuracy"].transpose("configuration", "epoch").values[np.arange(len(last)), col]
        cut = last <= proxy_epoch
        missing = np.zeros_like(cut)
    else:
        t_epoch = np.full(len(last), int(target_epoch))
        y = _epoch_values(curves, int(target_epoch))
        cut = last < int(target_epoch)
        missing = ~cut & ~np.isfinite(y)
    pairing = np.full(len(last), PAIRED, dtype=object)
    pairing[missing] = NO_TARGET
    pairing[cut] = CUT_SHORT
    pairing[~np.isfinite(x)] = NO_PROXY
    paired = pairing == PAIRED
    return xr.Dataset(
        {"proxy": ("configuration", np.where(paired, x, np.nan), {"description": f"accuracy at epoch {proxy_epoch}"}),
         "target": ("configuration", np.where(paired, y, np.nan), {"description": "accuracy at the target epoch"}),
         "target_epoch": ("configuration", np.where(paired, t_epoch, -1)),
         "pairing": ("configuration", pairing.astype(str))},
        coords={k: curves[k] for k in ("configuration", "source_repo", *CONFIG_KEYS) if k in curves.coords})


def top_share(values: np.ndarray, k: float) -> np.ndarray:
    """Mask of the top ``k`` percent of ``values``; a tie block at the cut goes wholly in or out.

    Whichever of the two keeps the count nearer k% of n wins (ties to keeping it), so a
    floor of identical never-learned runs is never split at random.

    >>> top_share(np.array([0.1, 0.1, 0.1, 0.5, 0.7, 0.9]), 50).tolist()
    [False, False, False, True, True, True]
    >>> int(top_share(np.array([0.1, 0.1, 0.1, 0.1, 0.7, 0.9]), 50).sum())
    2
    """
    n = len(values)
    want = k / 100.0 * n
    if k >= 100 or n == 0:
        return np.ones(n, dtype=bool)
    cut = np.sort(values)[::-1][max(int(np.ceil(want)), 1) - 1]
    above, at = values > cut, values == cut
    with_block = above.sum() + at.sum()
    return above | at if abs(with_block - want) <= abs(above.sum() - want) else above


def tie_shares(values: np.ndarray) -> tuple[float, float, float]:
    """(share of values equal to another value, share of the largest tie block, its value)."""
    if len(values) == 0:
        return np.nan, np.nan, np.nan
    uniq, counts = np.unique(values, return_counts=True)
    big = int(np.argmax(counts))
    return float(counts[counts > 1].sum() / len(values)), float(counts[big] / len(values)), float(uniq[big])


#: Bootstrapped statistics, in the order ``_resampled`` returns them.
BOOTSTRAPPED = ("pearson", "spearman", "kendall", "moran_expectation", "gap", "identity_gap", "copula_difference")


def _resampled(x: np.ndarray, y: np.ndarray, w: np.ndarray, scores: np.ndarray, n: int) -> np.ndarray:
    """(len(BOOTSTRAPPED), B) statistics of the resamples given by counts ``w``."""
    r = np.clip(bt.weighted_pearson(x, y, w), -1.0, 1.0)
    r_s = np.clip(bt.weighted_spearman(x, y, w), -1.0, 1.0)
    tau = np.clip(bt.weighted_kendall_tau_b(x, y, w, scores), -1.0, 1.0)
    return np.array([r, r_s, tau, proxy.moran_expected_spearman(r, n), reliability.arcsin_gap(r_s, r, n), r_s - r,
                     proxy.copula_check(r_s, tau)["difference"]])


def group_statistics(x: np.ndarray, y: np.ndarray, settings: CurveStudySettings, rng: np.random.Generator,
                     clusters: np.ndarray | None = None) -> dict:
    """Every statistic of the study for one set of (proxy, target) pairs (NaN when n < 4).

    ``clusters`` labels the resampling unit of each pair (``settings.cluster``); None
    resamples pairs.
    """
    n = len(x)
    out = dict(zip(("tied_share_proxy", "largest_tie_proxy", "largest_tie_value_proxy"), tie_shares(x)))
    out.update(zip(("tied_share_target", "largest_tie_target", "largest_tie_value_target"), tie_shares(y)))
    out["n"] = n
    if n < 4 or np.ptp(x) == 0 or np.ptp(y) == 0:
        return out
    scores = bt.concordance_scores(x, y)
    point = _resampled(x, y, np.ones((1, n)), scores, n)[:, 0]
    def counts(draws: int) -> np.ndarray:
        if clusters is None:
            return bt.resampling_counts(n, draws, rng)
        return bt.cluster_resampling_counts(clusters, draws, rng)

    draws = np.concatenate([_resampled(x, y, counts(min(DRAW_BLOCK, settings.draws - b)), scores, n)
                            for b in range(0, settings.draws, DRAW_BLOCK)], axis=1)
    lo, hi = bt.percentile_interval(draws, settings.level, axis=1)
    for name, p, a, b, s in zip(BOOTSTRAPPED, point, lo, hi, np.nanstd(draws, axis=1, ddof=1)):
        out.update({name: p, f"{name}_lo": a, f"{name}_hi": b, f"{name}_se": s})
    copula = proxy.copula_check(point[1], point[2])
    out["copula_from_spearman"] = copula["copula_from_spearman"]
    out["copula_from_kendall"] = copula["copula_from_kendall"]
    out["arcsin_prediction"] = float(proxy.spearman_from_pearson(point[0]))
    out["pairs_to_resolve_gap"] = float(reliability.pairs_to_resolve(out["gap"], out["gap_se"], n, settings.level))
    out["pairs_to_resolve_copula"] = float(reliability.pairs_to_resolve(
        out["copula_difference"], out["copula_difference_se"], n, settings.level))
    return out


def arcsin_verdict(st: dict, settings: CurveStudySettings) -> str:
    """The arcsin law on the raw Pearson for one group's statistics (see the module docstring)."""
    if st["n"] < settings.min_pairs or not np.isfinite(st.get("gap", np.nan)):
        return NOT_ENOUGH
    if not st["gap_lo"] <= 0 <= st["gap_hi"]:
        return NOT_SUPPORTED
    return NOT_ENOUGH if st["identity_gap_lo"] <= 0 <= st["identity_gap_hi"] else SUPPORTED


def copula_verdict(st: dict, settings: CurveStudySettings) -> str:
    """The normal-copula reading for one group's statistics (see the module docstring)."""
    if st["n"] < settings.min_pairs or not np.isfinite(st.get("copula_difference", np.nan)):
        return NOT_ENOUGH
    lo, hi = st["copula_difference_lo"], st["copula_difference_hi"]
    if not lo <= 0 <= hi:
        return NOT_SUPPORTED
    return SUPPORTED if (hi - lo) / 2 <= settings.copula_resolution else NOT_ENOUGH


def _groups(pairs: xr.Dataset, by: str | None) -> tuple[list[str], np.ndarray]:
    if by is None:
        return ["all"], np.zeros(pairs.sizes["configuration"], dtype=int)
    names, index = np.unique(pairs[by].values.astype(str), return_inverse=True)
    return [str(v) for v in names], index


#: Per-group counts of configurations by pairing outcome (study variables).
EXCLUSIONS = {"n_configurations": None, "n_no_proxy": NO_PROXY, "n_cut_short": CUT_SHORT, "n_no_target": NO_TARGET}


def curve_study(curves: xr.Dataset, settings: CurveStudySettings | None = None, progress: bool = True) -> xr.Dataset:
    """The study as one Dataset: statistics over (group, top_k), the pairs over configuration."""
    settings = settings or CurveStudySettings()
    pairs = pair_epochs(curves, settings.proxy_epoch, settings.target_epoch)
    names, index = _groups(pairs, settings.by)
    paired = pairs["pairing"].values == PAIRED
    x_all, y_all = pairs["proxy"].values, pairs["target"].values
    table: dict[str, np.ndarray] = {}
    verdicts = {"verdict_arcsin": np.full((len(names), len(settings.top_k)), "", dtype=object),
                "verdict_copula": np.full((len(names), len(settings.top_k)), "", dtype=object)}
    jobs = [(g, j) for g in range(len(names)) for j in range(len(settings.top_k))]
    for g, j in tqdm(jobs, desc="proxy study", unit="group", disable=not progress, leave=False):
        member = paired & (index == g)
        keep = top_share(y_all[member], settings.top_k[j])
        x, y = x_all[member][keep], y_all[member][keep]
        clusters = None if settings.cluster is None else pairs[settings.cluster].values[member][keep]
        st = group_statistics(x, y, settings, np.random.default_rng([settings.seed, g, settings.top_k[j]]), clusters)
        for key, value in st.items():
            table.setdefault(key, np.full((len(names), len(settings.top_k)), np.nan))[g, j] = value
        verdicts["verdict_arcsin"][g, j] = arcsin_verdict(st, settings)
        verdicts["verdict_copula"][g, j] = copula_verdict(st, settings)
    group_vars = {}
    for key, reason in EXCLUSIONS.items():
        mask = np.ones_like(paired) if reason is None else pairs["pairing"].values == reason
        group_vars[key] = ("group", np.bincount(index[mask], minlength=len(names)))
    # a family numbered from epoch 0 is paired at its second epoch: say how many
    zero = (np.isfinite(curves["accuracy"].sel(epoch=0).values) if 0 in curves["epoch"].values
            else np.zeros(len(paired), dtype=bool))
    group_vars["n_epoch_zero"] = ("group", np.bincount(index[paired & zero], minlength=len(names)))
    t_epoch = pairs["target_epoch"].values
    group_vars["median_target_epoch"] = ("group", np.array(
        [np.median(t_epoch[paired & (index == g)]) if (paired & (index == g)).any() else np.nan
         for g in range(len(names))]))
    data = {k: (("group", "top_k"), v) for k, v in table.items()}
    data.update({k: (("group", "top_k"), v.astype(str)) for k, v in verdicts.items()})
    data.update(group_vars)
    data.update({k: v.variable for k, v in pairs.data_vars.items()})
    data["group_of"] = ("configuration", np.array(names, dtype=object)[index].astype(str))
    attrs = {k: (v if v is not None else "none") for k, v in dataclasses.asdict(settings).items()}
    attrs["top_k"] = list(settings.top_k)
    attrs.update({f"curves_{k}": v for k, v in curves.attrs.items()})
    return xr.Dataset(data, coords={"group": names, "top_k": list(settings.top_k),
                                    **{k: v for k, v in pairs.coords.items()}}, attrs=attrs)


def settings_of(study: xr.Dataset) -> CurveStudySettings:
    """The settings a study Dataset was computed with (from its attrs)."""
    fields = {f.name for f in dataclasses.fields(CurveStudySettings)}
    kw = {k: study.attrs[k] for k in fields if k in study.attrs}
    for name in ("by", "cluster"):
        if kw.get(name) == "none":
            kw[name] = None
    kw["top_k"] = tuple(int(k) for k in np.atleast_1d(kw.get("top_k", (100,))))
    return CurveStudySettings(**kw)
