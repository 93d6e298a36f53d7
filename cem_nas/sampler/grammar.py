"""The grammar sampler: an exact parametric CEM over the mutation grammar (the control).

The sampling distribution is a product of independent categorical distributions, one per
coordinate of :data:`cem_nas.mutations.GRAMMAR` (PBIL/UMDA style). A proposal is a choice
vector x drawn from it, rendered against a baseline to code and to a unified diff. The
update is the exact smoothed CE step (Rubinstein & Kroese 2004; ``theory.cem``)

    pi_{t+1}[j] = alpha * q_t[j] + (1 - alpha) * pi_t[j]     for every coordinate j,

with ``q_t[j]`` the elite frequencies of coordinate j. So for any fixed choice set E of a
coordinate, ``1 - p_{t+1}(E) = alpha (1 - q_t(E)) + (1 - alpha)(1 - p_t(E))`` holds to
rounding, and the neutral coordinate (``mutations.NEUTRAL``) shows pure genetic drift.

Elites must carry their choice vector in ``meta["choices"]`` (proposals put it there and
the loop copies proposal meta into elite meta). A sampled vector that changes nothing on
its baseline gives an empty delta, which the loop records as ``unchanged`` (never an
elite): that is part of the score this CE maximises.
"""
from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Callable

import numpy as np

from cem_nas import mutations
from cem_nas.delta import count_tokens, make_delta
from cem_nas.progress import QUIET, Progress
from cem_nas.records import Baseline, Elite, Proposal, UpdateStats
from cem_nas.scope import check_scope
from theory.cem import elite_frequencies, gini_simpson_diversity, smoothed_update

STATE_FILE = "grammar_sampler.json"


def _uniform_marginals(sizes: list[int], kept: tuple[int, ...] = ()) -> np.ndarray:
    """Uniform rows, except the coordinates in ``kept``, which put all their mass on keep."""
    width = max(sizes)
    return np.array([[float(c == 0) if j in kept else 1.0 / k if c < k else 0.0 for c in range(width)]
                     for j, k in enumerate(sizes)])


def recipe_coordinates(scope: str) -> tuple[int, ...]:
    """Indices of the coordinates that edit the training recipe when ``scope`` keeps it fixed.

    >>> [mutations.GRAMMAR[j].name for j in recipe_coordinates("architecture")], recipe_coordinates("file")
    (['dropout', 'optimizer', 'lr'], ())
    """
    check_scope(scope)
    return tuple(j for j, c in enumerate(mutations.GRAMMAR) if c.recipe and scope == "architecture")


class GrammarSampler:
    """Independent categoricals over the grammar's coordinates, updated by exact CE.

    ``alpha`` is the smoothing step; ``probs`` optional initial marginals, shape
    (coordinates, max choices) zero-padded (default uniform); ``seed`` seeds the generator
    used when ``propose`` gets no ``rng``; ``mode`` "delta" (proposals carry the diff) or
    "full" (proposals carry the rendered file). Under ``scope`` architecture the coordinates
    that edit the training recipe start (and so stay, under CE updates) at keep: the
    distribution lives on the same search space as the LLM's.
    """

    # no weights, no steps worth a bar, no decoding, and nothing to warm: the distribution
    # starts where ``probs`` puts it
    dtype = ""
    progress: Progress = QUIET
    on_decode_step: Callable[[int, int], None] | None = None
    seen: Callable[[str], bool] | None = None  # never read: the grammar does not redraw
    warm_started = True

    def __init__(self, alpha: float = 0.7, probs=None, seed: int = 0, mode: str = "delta", scope: str = "file"):
        if not 0.0 <= alpha <= 1.0:
            raise ValueError(f"alpha is a smoothing step in [0, 1]; got {alpha!r}")
        if mode not in ("delta", "full"):
            raise ValueError(f"mode must be 'delta' or 'full'; got {mode!r}")
        self.alpha = float(alpha)
        self.mode = mode
        self.sizes = mutations.cardinalities()
        self.names = mutations.coordinate_names()
        self.neutral = self.names.index(mutations.NEUTRAL)
        self.scope = scope
        self.probs = _uniform_marginals(self.sizes, recipe_coordinates(scope)) if probs is None else self._checked(probs)
        self.rng = np.random.default_rng(seed)
        self.updates = 0

    def _checked(self, probs) -> np.ndarray:
        probs = np.array(probs, dtype=float)
        expected = (len(self.sizes), max(self.sizes))
        if probs.shape != expected:
            raise ValueError(f"probs must have shape {expected} (coordinates x max choices); got {probs.shape}")
        for j, k in enumerate(self.sizes):
            if np.any(probs[j, k:] != 0) or np.any(probs[j] < 0) or not np.isclose(probs[j].sum(), 1.0):
                raise ValueError(f"probs row {self.names[j]!r} must be a distribution over its {k} choices "
                                 "(non-negative, summing to 1, zero past the last choice)")
        return probs

    # -- the distribution ---------------------------------------------------------------
    def marginal(self, coordinate: str) -> dict[str, float]:
        """Current distribution of one coordinate, by choice label."""
        j = self.names.index(coordinate)
        return dict(zip(mutations.GRAMMAR[j].choices, self.probs[j, : self.sizes[j]].tolist()))

    @property
    def neutral_diversity(self) -> float:
        """Gini-Simpson diversity of the neutral coordinate: its loss is pure genetic drift."""
        return float(gini_simpson_diversity(self.probs[self.neutral, : self.sizes[self.neutral]]))

    def sample(self, rng: np.random.Generator) -> tuple[int, ...]:
        """One choice vector x ~ pi_t (coordinates independent), by inverse CDF per row."""
        below = (rng.random((len(self.sizes), 1)) >= np.cumsum(self.probs, axis=1)).sum(axis=1)
        return tuple(int(c) for c in np.minimum(below, np.array(self.sizes) - 1))  # rounding of the cumsum

    def log_prob(self, choices) -> float:
        """``log pi_t(x) = sum_j log pi_t[j, x_j]`` (-inf where a choice has probability 0)."""
        vector = mutations.choice_vector(choices)
        with np.errstate(divide="ignore"):
            return float(np.sum(np.log(self.probs[np.arange(len(vector)), vector])))

    def elite_nll(self, elites_choices: list[tuple[int, ...]]) -> float:
        """Mean ``-log pi_t(x)`` over the elites' choice vectors: the CE objective (nats per elite)."""
        return float(-np.mean([self.log_prob(c) for c in elites_choices]))

    # -- Sampler protocol ---------------------------------------------------------------
    def warm_start(self) -> UpdateStats:
        """Nothing to do (``warm_started`` is always True)."""
        return UpdateStats()

    def propose(self, baselines: list[Baseline], n: int, rng: np.random.Generator | None = None) -> list[Proposal]:
        """``n`` proposals, baselines taken in turn; each renders a fresh choice vector."""
        if not baselines:
            raise ValueError("propose needs at least one baseline")
        rng = self.rng if rng is None else rng
        proposals = []
        for i in range(n):
            start = time.perf_counter()
            base = baselines[i % len(baselines)]
            choices = self.sample(rng)
            rendered = mutations.render_detail(base.code, choices)
            prompt = f"Edit {base.name}: {mutations.describe_choices(choices)}"
            diff = make_delta(base.code, rendered.code)
            response = diff if self.mode == "delta" else rendered.code
            proposals.append(Proposal(
                baseline=base.name, prompt=prompt, response=response,
                delta=diff if self.mode == "delta" else None,
                code=rendered.code if self.mode == "full" else None,
                prompt_tokens=count_tokens(prompt), completion_tokens=count_tokens(response),
                gen_seconds=time.perf_counter() - start,
                meta={"choices": list(choices), "noops": list(rendered.noops)}, complete=True,
            ))
        return proposals

    def update(self, elites: list[Elite]) -> UpdateStats:
        """Exact smoothed CE step toward the elites' choice frequencies.

        ``elite_nll_*`` (and ``loss_*``, the same quantity) are the mean negative
        log-likelihood of the elites' choice vectors under pi_t and pi_{t+1}.
        """
        start = time.perf_counter()
        if not elites:
            return UpdateStats(steps=0, examples=0, seconds=time.perf_counter() - start)
        try:
            choices = [mutations.choice_vector(e.meta["choices"]) for e in elites]
        except KeyError as err:
            raise ValueError("grammar elites need meta['choices'] (the proposal's choice vector)") from err
        before = self.elite_nll(choices)
        self.probs = smoothed_update(self.probs, elite_frequencies(choices, self.sizes), self.alpha)
        self.updates += 1
        after = self.elite_nll(choices)
        return UpdateStats(loss_before=before, loss_after=after, elite_nll_before=before, elite_nll_after=after,
                           steps=1, examples=len(elites), seconds=time.perf_counter() - start)

    def state_dict(self) -> dict:
        return {"alpha": self.alpha, "mode": self.mode, "coordinates": self.names, "probs": self.probs.tolist(),
                "updates": self.updates, "rng": self.rng.bit_generator.state}

    def load_state_dict(self, state: dict) -> None:
        if state.get("coordinates") != self.names:
            raise ValueError(f"state is for coordinates {state.get('coordinates')}, this grammar has {self.names}")
        self.alpha, self.mode, self.updates = float(state["alpha"]), state["mode"], int(state["updates"])
        self.probs = self._checked(state["probs"])
        self.rng.bit_generator.state = state["rng"]

    def save(self, directory: Path) -> None:
        directory = Path(directory)
        directory.mkdir(parents=True, exist_ok=True)
        (directory / STATE_FILE).write_text(json.dumps(self.state_dict()))

    def load(self, directory: Path) -> None:
        path = Path(directory) / STATE_FILE
        if not path.exists():
            raise FileNotFoundError(f"no grammar sampler state at {path}; save() writes it")
        self.load_state_dict(json.loads(path.read_text()))
