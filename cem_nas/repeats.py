"""Repeats: a proposal of an architecture the run has already evaluated takes its result.

For a cross-entropy method a repeat is a sample of p_theta like any other; only its
training is redundant. So every architecture the run evaluates (the zoo baselines at the
start, then each new candidate) is archived under its name with the scoring result its
proxy run gave, and a later proposal is a **repeat** of an archived **twin** when

* its code is the same after normalisation (:func:`cem_nas.novelty.normalised_tokens`:
  comments, docstrings, layout and local names do not count), always, even with the
  MinHash filter switched off; or
* its MinHash Jaccard to the twin reaches the novelty threshold (when novelty is on).

What the loop does with a repeat is ``search.duplicates``: ``inherit`` gives it the twin's
status and score (the CE reading), ``reject`` calls it a ``duplicate`` that is never an
elite (the reference pipeline's reading). A twin's result is ``None`` while the twin is
still being trained in the same cycle; the loop resolves the repeat after it.
"""
from __future__ import annotations

import dataclasses
import hashlib
import math

from cem_nas.novelty import NoveltyArchive, normalised_tokens
from cem_nas.records import EvalResult

#: Values of search.duplicates.
READINGS = ("inherit", "reject")


def exact_key(code: str) -> str:
    """sha256 of the normalised token stream: equal for code that differs only in comments,
    docstrings, layout or local names.

    >>> exact_key("def f(x):\\n    return x  # id\\n") == exact_key("def f(y):\\n\\n    return y\\n")
    True
    """
    return hashlib.sha256("\x00".join(normalised_tokens(code)).encode()).hexdigest()


class RepeatArchive:
    """Every evaluated architecture by name, found again exactly or by MinHash, with its result.

    ``novelty`` is the MinHash archive near-repeats are looked up in (None: exact repeats
    only). Names are unique: a zoo name or a candidate name (``c0003_017``).
    """

    def __init__(self, novelty: NoveltyArchive | None = None):
        self.novelty = novelty
        self.exact: dict[str, str] = {}
        self.results: dict[str, EvalResult | None] = {}

    def twin(self, code: str) -> tuple[str | None, float]:
        """(name of the archived twin or None, similarity): 1.0 for an exact repeat, else the
        largest MinHash Jaccard to the archive (NaN when novelty is off)."""
        name = self.exact.get(exact_key(code))
        if name is not None:
            return name, 1.0
        if self.novelty is None:
            return None, math.nan
        novel, similarity, nearest = self.novelty.check(code)
        return (None if novel else nearest), float(similarity)

    def add(self, name: str, code: str) -> None:
        """Archive a new architecture; its result is pending until :meth:`resolve`."""
        if name in self.results:
            raise ValueError(f"{name!r} is already archived; names must be unique")
        self.exact.setdefault(exact_key(code), name)
        if self.novelty is not None:
            self.novelty.add(name, code)
        self.results[name] = None

    def resolve(self, name: str, result: EvalResult) -> None:
        """Record the scoring result of an archived architecture."""
        if name not in self.results:
            raise KeyError(f"{name!r} is not archived")
        self.results[name] = dataclasses.replace(result)

    def result(self, name: str) -> EvalResult | None:
        """The twin's scoring result (None while pending or unknown)."""
        found = self.results.get(name)
        return None if found is None else dataclasses.replace(found)

    def __contains__(self, name: object) -> bool:
        return name in self.results

    def state_dict(self) -> dict:
        """JSON-able state (the MinHash archive is saved by its owner)."""
        return {"exact": dict(self.exact),
                "results": {k: None if r is None else dataclasses.asdict(r) for k, r in self.results.items()}}

    def load_state_dict(self, state: dict | None) -> None:
        """Restore :meth:`state_dict`; a state saved before repeats were archived (None)
        leaves the archive empty, so earlier architectures are not found again exactly."""
        state = state or {"exact": {}, "results": {}}
        self.exact = dict(state["exact"])
        self.results = {k: None if r is None else EvalResult(**r) for k, r in state["results"].items()}


def inherited(result: EvalResult, twin: str, similarity: float, rejected: bool = False) -> tuple[EvalResult, str]:
    """The result a repeat takes from its twin (not trained: no training time) and its
    message; a ``rejected`` repeat (``search.duplicates = reject``) takes nothing, and its
    message names the twin's result without saying it was inherited."""
    copy = dataclasses.replace(result, train_seconds=math.nan, eval_seconds=math.nan)
    how = "exact repeat" if similarity >= 1.0 else f"Jaccard {similarity:.3f}"
    what = f"score {result.accuracy:.4f}" if result.scored else f"failure: {result.message}"
    if rejected:
        return copy, (f"repeat of {twin} ({how}; the twin's result: {result.status}, {what}): rejected, "
                      "not trained or scored (search.duplicates = reject)")
    return copy, f"repeat of {twin} ({how}): inherits its {result.status} ({what})"
