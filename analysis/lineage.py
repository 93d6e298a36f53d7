"""The best architectures of runs: score, size, status history, delta, line of descent.

An *architecture* is a model file the search produced. Its rows are every candidate that
proposed it: the one that was trained (or first scored) and the later repeats, which the
store links to it by ``twin`` (the archive's name of the architecture) or, in stores
without that variable, by identical code. Its *lineage* follows ``baseline`` (the parent
each proposal edited: a zoo name, or in refine mode the name ``cTTTT_III`` of an earlier
candidate) back to the zoo.
"""
from __future__ import annotations

import difflib
import math
import re
from dataclasses import dataclass, field

import numpy as np
import xarray as xr

from cem_nas import zoo
from cem_nas.cem import candidate_name

#: A candidate's name in the store and archive (cem_nas.cem.candidate_name).
NAME = re.compile(r"^c(\d{4})_(\d{3})$")
#: Longest line of descent followed (a guard against a malformed store).
MAX_DEPTH = 64


@dataclass
class Row:
    """One candidate of one run, as the store holds it."""

    name: str
    cycle: int
    status: str
    score: float
    baseline: str
    code: str
    delta: str
    params: int
    flops: int
    is_elite: bool
    twin: str
    message: str


@dataclass
class Step:
    """One ancestor in a line of descent: a zoo baseline (score NaN unless known) or a candidate."""

    name: str
    score: float
    is_zoo: bool


@dataclass
class Architecture:
    """A distinct architecture of one run, with every candidate row that proposed it."""

    run: str
    name: str
    score: float
    params: int
    flops: int
    parent: str
    delta: str
    code: str
    history: list[Row] = field(default_factory=list)
    lineage: list[Step] = field(default_factory=list)  # zoo baseline first, this architecture last
    diff: list[str] = field(default_factory=list)  # unified diff against the parent, line by line


def _column(runs: xr.Dataset, name: str, r: int, fill) -> np.ndarray:
    shape = (runs.sizes["cycle"], runs.sizes.get("cand", 0))
    if name not in runs:
        return np.full(shape, fill, dtype=object)
    return runs[name].isel(run=r).transpose("cycle", "cand").values


def rows(runs: xr.Dataset, r: int) -> list[Row]:
    """Every candidate of run ``r`` (padding left out), in cycle and candidate order."""
    if "status" not in runs or "cand" not in runs.dims:
        return []
    cols = {name: _column(runs, name, r, fill) for name, fill in (
        ("status", ""), ("score", math.nan), ("baseline", ""), ("code", ""), ("delta", ""), ("params", -1),
        ("flops", -1), ("is_elite", False), ("twin", ""), ("message", ""))}
    cycles = runs["cycle"].values
    out = []
    for t in range(len(cycles)):
        for i in range(cols["status"].shape[1]):
            status = str(cols["status"][t, i] or "")
            if not status or status == "nan":
                continue
            out.append(Row(
                name=candidate_name(int(cycles[t]), i), cycle=int(cycles[t]), status=status,
                score=float(cols["score"][t, i]), baseline=str(cols["baseline"][t, i] or ""),
                code=str(cols["code"][t, i] or ""), delta=str(cols["delta"][t, i] or ""),
                params=int(cols["params"][t, i]), flops=int(cols["flops"][t, i]),
                is_elite=bool(cols["is_elite"][t, i]), twin=str(cols["twin"][t, i] or ""),
                message=str(cols["message"][t, i] or "")))
    return out


def _zoo_source(name: str) -> str:
    return zoo.source(name) if name in zoo.names() else ""


def unified_diff(before: str, after: str, parent: str, name: str) -> list[str]:
    """Lines of the unified diff from ``before`` to ``after`` (3 context lines).

    >>> unified_diff("a\\nb\\n", "a\\nc\\n", "p", "x")[2:]
    ['@@ -1,2 +1,2 @@', ' a', '-b', '+c']
    """
    return [line.rstrip("\n") for line in difflib.unified_diff(
        before.splitlines(True), after.splitlines(True), fromfile=parent, tofile=name)]


def architectures(runs: xr.Dataset, r: int) -> list[Architecture]:
    """The distinct scored architectures of run ``r``, best score first (ties: earlier first)."""
    run = str(runs["run"].values[r])
    all_rows = rows(runs, r)
    by_name = {row.name: row for row in all_rows}
    zoo_scores = _zoo_scores(runs, r)
    first_with_code: dict[str, str] = {}
    groups: dict[str, list[Row]] = {}
    for row in all_rows:
        if not row.code:
            continue
        key = row.twin or first_with_code.setdefault(row.code, row.name)
        groups.setdefault(key, []).append(row)
    out = []
    for key, members in groups.items():
        scored = [m for m in members if math.isfinite(m.score)]
        if not scored:
            continue
        head = by_name.get(key) or members[0]  # a repeat of a zoo baseline has no row of its own
        trained = next((m for m in scored if m.params >= 0), scored[0])
        parent_code = by_name[head.baseline].code if head.baseline in by_name else _zoo_source(head.baseline)
        diff = head.delta.splitlines() if head.delta else (
            unified_diff(parent_code, head.code, head.baseline, head.name) if parent_code else [])
        out.append(Architecture(run=run, name=head.name, score=max(m.score for m in scored),
                                params=trained.params, flops=trained.flops, parent=head.baseline,
                                delta=head.delta, code=head.code, history=members,
                                lineage=lineage(head, by_name, zoo_scores), diff=diff))
    out.sort(key=lambda a: (-a.score, a.history[0].cycle, a.name))
    return out


def _zoo_scores(runs: xr.Dataset, r: int) -> dict[str, float]:
    """The zoo baselines' own proxy scores, where the store has them (``zoo_score``)."""
    if "zoo_score" not in runs or "zoo" not in runs.dims:
        return {}
    score = runs["zoo_score"].isel(run=r)
    if "cycle" in score.dims:
        score = score.isel(cycle=0)
    return {str(z): float(v) for z, v in zip(runs["zoo"].values, score.values)}


def lineage(row: Row, by_name: dict[str, Row], zoo_scores: dict[str, float] | None = None) -> list[Step]:
    """Ancestors of ``row`` from its zoo baseline down to ``row`` itself."""
    chain = [Step(row.name, row.score, False)]
    parent, seen = row.baseline, {row.name}
    while parent and parent not in seen and len(chain) < MAX_DEPTH:
        seen.add(parent)
        found = by_name.get(parent)
        if found is None:
            chain.append(Step(parent, (zoo_scores or {}).get(parent, math.nan), not NAME.match(parent)))
            break
        chain.append(Step(found.name, found.score, False))
        parent = found.baseline
    return chain[::-1]


def top_architectures(runs: xr.Dataset, k: int = 10) -> list[Architecture]:
    """The ``k`` best architectures over all runs (each run's distinct ones, pooled)."""
    pooled = [a for r in range(runs.sizes["run"]) for a in architectures(runs, r)]
    pooled.sort(key=lambda a: (-a.score, a.run, a.history[0].cycle, a.name))
    return pooled[:k]
