"""The bootstrap of Pearson's, Spearman's and Kendall's correlations, vectorised over draws.

A bootstrap resample of n pairs is a vector of counts ``w`` (how often each pair was
drawn, multinomial(n, 1/n) over the pairs; Efron 1979). Pearson's r and Spearman's r_S
of a resample are exact functions of ``w`` (frequency-weighted moments, and midranks
from cumulative counts), so B resamples are one (B, n) count matrix and a few array
products, with no Python loop over draws. Kendall's tau_b needs all n^2 pair signs per
resample; its concordance sum is taken to first order in ``w - 1`` (its Hoeffding
projection, Hoeffding 1948), while the tie terms stay exact. The neglected second-order
term is a degenerate quadratic form: relative to the linear term its fluctuation is
O(n^-1/2) and its mean O(1/n), so the bootstrap spread is right to O(1/n) relative.
"""
from __future__ import annotations

import numpy as np

def resampling_counts(n: int, draws: int, rng: np.random.Generator) -> np.ndarray:
    """(draws, n) bootstrap counts: row b says how often each of n items was drawn.

    Each row is a multinomial(n, (1/n, ..., 1/n)) vector (Efron 1979), made from n
    uniform index draws per row; every row sums to n.

    >>> w = resampling_counts(5, 3, np.random.default_rng(0))
    >>> w.shape, w.sum(axis=1).tolist()
    ((3, 5), [5, 5, 5])
    """
    if n < 1 or draws < 1:
        raise ValueError(f"need n >= 1 items and draws >= 1; got n={n}, draws={draws}")
    idx = rng.integers(0, n, size=(draws, n)) + n * np.arange(draws)[:, None]
    return np.bincount(idx.ravel(), minlength=draws * n).reshape(draws, n)


def cluster_resampling_counts(labels, draws: int, rng: np.random.Generator) -> np.ndarray:
    """(draws, n) counts of a cluster bootstrap: clusters are drawn with replacement, items follow.

    With m clusters, each row draws m of them uniformly with replacement (the cluster, or
    block, bootstrap for dependent items; Davison & Hinkley 1997, sec. 3.8) and gives every
    item the count of its cluster, so rows sum to n only on average. Use it when items of
    one cluster (one architecture under several hyperparameter settings) are not independent.

    >>> w = cluster_resampling_counts(np.array(["a", "a", "b"]), 4, np.random.default_rng(1))
    >>> bool(np.all(w[:, 0] == w[:, 1])), w.shape
    (True, (4, 3))
    """
    names, index = np.unique(np.asarray(labels), return_inverse=True)
    return resampling_counts(len(names), draws, rng)[:, index]


def _weighted_r(sxy, sxx, syy):
    with np.errstate(invalid="ignore", divide="ignore"):
        return sxy / np.sqrt(sxx * syy)


def weighted_pearson(x, y, w) -> np.ndarray:
    """Pearson's r of each resample: ``sum w dx dy / sqrt(sum w dx^2 sum w dy^2)``.

    ``dx = x - sum(w x)/sum(w)`` per row; ``x``, ``y`` are (n,) and ``w`` is (B, n)
    counts (frequency weights: the r of the data with item i repeated w_i times,
    Pearson 1896). Rows with no spread give NaN.

    >>> x, y = np.array([1.0, 2.0, 3.0, 5.0]), np.array([2.0, 1.0, 4.0, 6.0])
    >>> w = np.array([[1, 1, 1, 1], [2, 0, 1, 1]])
    >>> r = weighted_pearson(x, y, w)
    >>> bool(np.isclose(r[0], np.corrcoef(x, y)[0, 1]))
    True
    >>> bool(np.isclose(r[1], np.corrcoef(np.repeat(x, w[1]), np.repeat(y, w[1]))[0, 1]))
    True
    """
    w = np.atleast_2d(np.asarray(w, dtype=float))
    # centred on the data means first: the moments below are then differences of small numbers
    x = np.asarray(x, dtype=float) - np.mean(x)
    y = np.asarray(y, dtype=float) - np.mean(y)
    total = w.sum(axis=1)
    mx, my = w @ x / total, w @ y / total
    return _weighted_r(w @ (x * y) / total - mx * my, w @ (x * x) / total - mx**2, w @ (y * y) / total - my**2)


def _tie_groups(x: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Sort order of ``x``, start of each run of equal values in that order, group of each item."""
    order = np.argsort(x, kind="stable")
    xs = x[order]
    is_start = np.r_[True, xs[1:] != xs[:-1]]
    group_of = np.empty(len(x), dtype=np.intp)
    group_of[order] = np.cumsum(is_start) - 1
    return order, np.flatnonzero(is_start), group_of


def _group_counts(w: np.ndarray, order: np.ndarray, starts: np.ndarray) -> np.ndarray:
    """(B, groups) total count of each tie group, groups in ascending value."""
    return np.add.reduceat(w[:, order], starts, axis=1)


def _group_midranks(counts: np.ndarray) -> np.ndarray:
    """(B, groups) midrank of each tie group from its counts (groups in ascending value)."""
    return np.cumsum(counts, axis=1) - counts + (counts + 1.0) / 2.0


def weighted_midranks(x, w) -> np.ndarray:
    """(B, n) midrank of each item inside each resample.

    ``R_i = sum_{j: x_j < x_i} w_j + (sum_{j: x_j = x_i} w_j + 1) / 2``: the average of the
    ranks the copies of item i (and of the items tied with it) occupy in the resample,
    the usual treatment of ties (Kendall & Gibbons 1990, ch. 3). Items drawn 0 times get
    the rank they would have had; they carry weight 0 downstream.

    >>> from scipy.stats import rankdata
    >>> x = np.array([3.0, 1.0, 3.0, 2.0])
    >>> weighted_midranks(x, np.ones((1, 4)))[0].tolist() == rankdata(x).tolist()
    True
    >>> weighted_midranks(x, np.array([[0, 2, 1, 1]]))[0].tolist()
    [4.0, 1.5, 4.0, 3.0]
    """
    x = np.asarray(x, dtype=float)
    w = np.atleast_2d(np.asarray(w, dtype=float))
    order, starts, group_of = _tie_groups(x)
    return _group_midranks(_group_counts(w, order, starts))[:, group_of]


def weighted_spearman(x, y, w) -> np.ndarray:
    """Spearman's r_S of each resample: Pearson's r of the resample's midranks.

    ``r_S = r(R(x), R(y))`` with midranks for ties (Spearman 1904; Kendall & Gibbons
    1990), ranked inside each resample (``weighted_midranks``) and weighted by ``w``.
    Every resample's midranks have mean (n + 1)/2, and their squares sum over tie
    groups, so only the cross term is summed over items.

    >>> from scipy.stats import spearmanr
    >>> x, y = np.array([1.0, 2.0, 2.0, 4.0, 5.0]), np.array([1.0, 3.0, 2.0, 2.0, 6.0])
    >>> w = np.array([[3, 0, 1, 1, 0]])
    >>> bool(np.isclose(weighted_spearman(x, y, w)[0], spearmanr(np.repeat(x, w[0]), np.repeat(y, w[0])).statistic))
    True
    """
    w = np.atleast_2d(np.asarray(w, dtype=float))
    total = w.sum(axis=1)
    centre = (total + 1.0) / 2.0
    moments = []
    for v in (x, y):
        order, starts, group_of = _tie_groups(np.asarray(v, dtype=float))
        counts = _group_counts(w, order, starts)
        ranks = _group_midranks(counts) - centre[:, None]
        moments.append(((counts * ranks**2).sum(axis=1), ranks, group_of))
    (sxx, rx, gx), (syy, ry, gy) = moments
    sxy = np.einsum("bi,bi,bi->b", w, rx[:, gx], ry[:, gy])
    return _weighted_r(sxy, sxx, syy)


def _fenwick_lower_upper(groups: list[np.ndarray], yr: np.ndarray, size: int) -> tuple[np.ndarray, np.ndarray]:
    """For each item: earlier-group items with smaller / larger y rank (Fenwick 1994 tree).

    ``groups`` lists item indices group by group in the order they are met; ``yr`` are
    1-based y ranks up to ``size``. Items of one group are counted only by later groups.
    """
    tree = [0] * (size + 1)
    below = np.zeros(len(yr), dtype=np.int64)
    above = np.zeros(len(yr), dtype=np.int64)
    seen = 0
    for members in groups:
        for i in members.tolist():
            r, acc = int(yr[i]) - 1, 0
            while r > 0:
                acc += tree[r]
                r -= r & -r
            r, at_most = int(yr[i]), 0
            while r > 0:
                at_most += tree[r]
                r -= r & -r
            below[i], above[i] = acc, seen - at_most
        for i in members.tolist():
            r = int(yr[i])
            while r <= size:
                tree[r] += 1
                r += r & -r
        seen += len(members)
    return below, above


def concordance_scores(x, y) -> np.ndarray:
    """``k_i = sum_j sign(x_i - x_j) sign(y_i - y_j)``: concordant minus discordant partners of i.

    Twice the Hoeffding projection of Kendall's concordance sum, up to its mean (Hoeffding
    1948): ``sum_i k_i = 2 (C - D)``. O(n log n): items of smaller x are counted by y rank
    in a Fenwick tree; items of larger x follow from the totals,
    ``#{x_j > x_i, y_j < y_i} = #{y_j < y_i} - #{x_j < x_i, y_j < y_i} - #{x_j = x_i, y_j < y_i}``.

    >>> concordance_scores(np.array([1.0, 2.0, 3.0]), np.array([1.0, 3.0, 2.0])).tolist()
    [2.0, 0.0, 0.0]
    """
    x, y = np.asarray(x, dtype=float), np.asarray(y, dtype=float)
    n = len(x)
    _, _, xr = _tie_groups(x)
    _, _, yr = _tie_groups(y)
    size = int(yr.max()) + 1 if n else 0
    order = np.lexsort((yr, xr))
    cuts = np.flatnonzero(np.diff(xr[order])) + 1
    below, above = _fenwick_lower_upper(np.split(order, cuts), yr + 1, size)
    key = np.sort(xr.astype(np.int64) * (size + 1) + yr)
    own = xr.astype(np.int64) * (size + 1)
    same_below = np.searchsorted(key, own + yr, "left") - np.searchsorted(key, own, "left")
    same_above = np.searchsorted(key, own + size + 1, "left") - np.searchsorted(key, own + yr, "right")
    ys = np.sort(yr)
    y_below = np.searchsorted(ys, yr, "left")
    y_above = n - np.searchsorted(ys, yr, "right")
    later_below = y_below - below - same_below
    later_above = y_above - above - same_above
    return (below + later_above - above - later_below).astype(float)


def _untied_pair_weight(x: np.ndarray, w: np.ndarray) -> np.ndarray:
    """(B,) ordered pairs of the resample not tied in x: ``(sum w)^2 - sum_groups (sum_g w)^2``."""
    order, starts, _ = _tie_groups(x)
    counts = _group_counts(w, order, starts)
    return w.sum(axis=1) ** 2 - (counts**2).sum(axis=1)


def weighted_kendall_tau_b(x, y, w, scores=None) -> np.ndarray:
    """Kendall's tau_b of each resample, its concordance sum to first order in ``w - 1``.

    ``tau_b = S / sqrt(P_x P_y)`` (Kendall 1945) with, over ordered pairs of the resample,
    ``S = 2 (C - D)`` and ``P_x = (sum w)^2 - sum_g (sum_{i in g} w_i)^2`` the pairs not
    tied in x (tie groups g). ``P_x``, ``P_y`` are exact; ``S(w) = S(1) + 2 (w - 1) . k``
    with ``k = concordance_scores(x, y)`` is its Hoeffding projection (Hoeffding 1948),
    exact at ``w = 1``. Pass ``scores`` to reuse k across calls.

    >>> from scipy.stats import kendalltau
    >>> x, y = np.array([1.0, 2.0, 2.0, 4.0, 5.0, 3.0]), np.array([1.0, 3.0, 2.0, 2.0, 6.0, 2.0])
    >>> bool(np.isclose(weighted_kendall_tau_b(x, y, np.ones((1, 6)))[0], kendalltau(x, y).statistic))
    True
    """
    x, y = np.asarray(x, dtype=float), np.asarray(y, dtype=float)
    w = np.atleast_2d(np.asarray(w, dtype=float))
    k = concordance_scores(x, y) if scores is None else np.asarray(scores, dtype=float)
    s = k.sum() + 2.0 * (w - 1.0) @ k
    with np.errstate(invalid="ignore", divide="ignore"):
        return s / np.sqrt(_untied_pair_weight(x, w) * _untied_pair_weight(y, w))


def percentile_interval(draws, level: float = 0.95, axis: int = 0):
    """Percentile bootstrap interval ``(q_{(1-level)/2}, q_{(1+level)/2})`` of ``draws`` (Efron 1979).

    NaN draws (a resample without spread) are ignored.

    >>> lo, hi = percentile_interval(np.arange(101.0), 0.9)
    >>> round(float(lo), 6), round(float(hi), 6)
    (5.0, 95.0)
    """
    if not 0.0 < level < 1.0:
        raise ValueError(f"confidence level must lie in (0, 1), e.g. 0.95; got {level!r}")
    tail = (1.0 - level) / 2.0
    lo, hi = np.nanquantile(np.asarray(draws, dtype=float), [tail, 1.0 - tail], axis=axis)
    return lo, hi
