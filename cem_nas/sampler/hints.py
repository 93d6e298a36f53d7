"""Edit hints: the kind of change a prompt asks for, and the CE distribution over kinds.

Why: warm-started on single grammar edits, a small model writes mostly the shortest of
them (SmolLM2-135M: dropout literals, then only repeats of them; evidence:
docs/results.md#hints). A hint names one kind of edit (a non-neutral grammar coordinate:
the activation, the pooling, the width, ...) in the prompt. The warm start learns kind -> edit on a corpus balanced over kinds
(:func:`cem_nas.corpus.build_corpus` with ``balance``), and each proposal draws its
kind k from a categorical distribution w over the kinds the parent admits, so the
sampling distribution is the mixture

    p_theta(x) = sum_k w_k p_LLM(x | parent, k).

The CE update fits both parts to the elites: the LLM by LoRA steps on the elites'
(hinted prompt, delta) pairs, w by the exact smoothed CE step of a categorical
(de Boer, Kroese, Mannor & Rubinstein, A Tutorial on the Cross-Entropy Method, 2005):

    w_{t+1} = alpha * f_t + (1 - alpha) * w_t,

f_t the kinds' shares among the cycle's elites. A kind that no elite showed keeps
(1 - alpha)^t w_0 > 0, so the search can still come back to it.
"""
from __future__ import annotations

import functools
from dataclasses import dataclass
from typing import Sequence

import numpy as np

from cem_nas import mutations

#: The kinds of edit a hint can ask for (the grammar's non-neutral coordinates), with the
#: words the prompt uses for each.
KINDS: dict[str, str] = {
    "block": "the block structure (a plain convolution block or a residual block)",
    "norm": "the normalisation (add or remove BatchNorm layers)",
    "width": "the width (the number of channels or hidden units)",
    "kernel": "the kernel size of the convolutions",
    "activation": "the activation function",
    "pooling": "the pooling (max or average)",
    "dropout": "the dropout rate",
    "optimizer": "the optimizer",
    "lr": "the learning rate",
}


@dataclass
class HintSettings:
    """Edit hints in the prompts (see :mod:`cem_nas.sampler.hints`)."""

    enabled: bool = False
    """Name one kind of edit in each prompt, drawn from the CE distribution over kinds; the
    warm start then trains on a corpus balanced over kinds (another cached adapter). Off
    by default: with SmolLM2-135M no hinted proposal applied. Meant for larger models
    (evidence: docs/results.md#hints)."""
    alpha: float = 0.3
    """CE smoothing step of the distribution over kinds: w <- alpha * (the elites' kind
    shares) + (1 - alpha) * w after every update. 0 keeps it uniform."""

    def __post_init__(self) -> None:
        if not 0 <= self.alpha <= 1:
            raise ValueError(f"hints.alpha is a CE smoothing step in [0, 1]; got {self.alpha}")


def hint_text(kinds: Sequence[str]) -> str:
    """The sentence a prompt adds for the kinds asked for.

    >>> hint_text(["activation"])
    'Change only the activation function.'
    >>> hint_text(["dropout", "lr"])
    'Change only the dropout rate and the learning rate.'
    """
    unknown = [k for k in kinds if k not in KINDS]
    if unknown or not kinds:
        raise ValueError(f"hint kinds must be some of {list(KINDS)}; got {list(kinds)}")
    return f"Change only {' and '.join(KINDS[k] for k in kinds)}."


def pair_kinds(choices: Sequence[int]) -> list[str]:
    """The kinds a grammar choice vector edits (a corpus pair's hint), in grammar order.

    >>> pair_kinds([0, 0, 0, 0, 2, 0, 1, 0, 0, 0])
    ['activation', 'dropout']
    """
    return [c.name for c, i in zip(mutations.GRAMMAR, choices) if i and c.name in KINDS]


def corpus_pair_kinds(item: Sequence) -> list[str]:
    """The hint of a warm-start corpus pair ``(baseline, before, after, delta, choices)``: the
    kinds its grammar choices edit or, for a pair without any (a LEMUR pair,
    :mod:`cem_nas.corpus_lemur`), the kinds :func:`cem_nas.edit_kinds.edit_kinds` reads off its
    two files, ``other`` left out (then no hint: no kind the prompt can name was edited).

    >>> corpus_pair_kinds(("m", "a = nn.ReLU()", "a = nn.GELU()", "", ()))
    ['activation']
    >>> corpus_pair_kinds(("m", "x = 1", "x = 2", "", ()))
    []
    """
    choices = tuple(item[4]) if len(item) > 4 else ()
    if any(choices):
        return pair_kinds(choices)
    if len(item) < 5:  # a bare (name, before, after, delta) override: nothing says what it edits
        return []
    from cem_nas.edit_kinds import edit_kinds

    return [k for k in edit_kinds(item[1], item[2]) if k in KINDS]


@functools.lru_cache(maxsize=1024)
def applicable_kinds(code: str, scope: str = "file") -> tuple[str, ...]:
    """The kinds whose grammar edit changes ``code``; every kind where the grammar cannot
    read the file (an LLM-written parent may still take any edit) or none applies.

    >>> from cem_nas import zoo
    >>> "activation" in applicable_kinds(zoo.source("plainnet"))
    True
    >>> applicable_kinds("not python (") == tuple(KINDS)
    True
    """
    from cem_nas.corpus import applicable_choices

    recipe = {c.name for c in mutations.GRAMMAR if c.recipe and scope == "architecture"}
    allowed = tuple(k for k in KINDS if k not in recipe)
    try:
        found = {mutations.GRAMMAR[j].name for j in applicable_choices(code, scope)}
    except (mutations.MutationError, SyntaxError, ValueError):
        return allowed
    return tuple(k for k in allowed if k in found) or allowed


class KindDistribution:
    """The categorical distribution w over :data:`KINDS` and its smoothed CE step.

    >>> w = KindDistribution(alpha=0.5)
    >>> w.update(["activation", "activation"])
    >>> round(w.weights["activation"], 4), round(w.weights["pooling"], 4)   # 0.5 * 1 + 0.5 / 9; 0.5 / 9
    (0.5556, 0.0556)
    """

    def __init__(self, alpha: float):
        self.alpha = float(alpha)
        self.p = np.full(len(KINDS), 1.0 / len(KINDS))

    @property
    def weights(self) -> dict[str, float]:
        return {k: float(v) for k, v in zip(KINDS, self.p)}

    def sample(self, rng: np.random.Generator, allowed: Sequence[str]) -> str:
        """One kind, drawn with probability proportional to w among ``allowed``."""
        index = [i for i, k in enumerate(KINDS) if k in allowed]
        if not index:
            raise ValueError(f"no known kind among {list(allowed)}")
        p = self.p[index]
        return list(KINDS)[index[int(rng.choice(len(index), p=p / p.sum()))]]

    def update(self, elite_kinds: Sequence[str]) -> None:
        """w <- alpha f + (1 - alpha) w, f the shares of ``elite_kinds``; no elites, no step."""
        if not elite_kinds:
            return
        f = np.array([sum(k == name for k in elite_kinds) for name in KINDS], dtype=float)
        if f.sum() != len(elite_kinds):
            raise ValueError(f"unknown kinds among the elites: {sorted(set(elite_kinds) - set(KINDS))}")
        self.p = self.alpha * f / f.sum() + (1 - self.alpha) * self.p

    def state_dict(self) -> dict:
        return {"alpha": self.alpha, "weights": self.weights}

    def load_state_dict(self, state: dict) -> None:
        weights = state["weights"]
        if set(weights) != set(KINDS):
            raise ValueError(f"saved hint weights are over {sorted(weights)}, not {sorted(KINDS)}")
        self.p = np.array([float(weights[k]) for k in KINDS])
