"""The sampling distribution of the CEM, as an interface.

A sampler is p_theta: ``propose`` draws X_1..X_n for given baselines, ``update`` moves
theta toward the elites (the CE step). Both the LLM and the exact grammar control
implement it, so the loop never knows which one it drives: every attribute the loop
reads is here, and a sampler for which one means nothing gives its neutral value
(NaN, a no-op) rather than leaving it out.
"""
from __future__ import annotations

from pathlib import Path
from typing import Callable, Protocol, runtime_checkable

import numpy as np

from cem_nas.progress import Progress
from cem_nas.records import Baseline, Elite, Proposal, UpdateStats


@runtime_checkable
class Sampler(Protocol):
    #: "delta": proposals carry a unified diff; "full": proposals carry a whole file.
    mode: str

    #: Compute dtype of the model weights, stored with the run ("" for a sampler without weights).
    dtype: str

    #: The bars the sampler draws its own steps on (warm start, update); the loop installs its console.
    progress: Progress

    #: Called per decoding step with (tokens added, rows finished); the loop installs it while
    #: sampling, a sampler that does not decode never calls it.
    on_decode_step: Callable[[int, int], None] | None

    #: Whether a file repeats one the run has seen (the zoo, any earlier candidate); the loop
    #: installs it while sampling with search.redraw_repeats, and a sampler that draws
    #: infeasible proposals again draws those again too. A sampler that never redraws ignores it.
    seen: Callable[[str], bool] | None

    #: False until :meth:`warm_start` has run; a sampler without a warm start is always True.
    warm_started: bool

    @property
    def alpha(self) -> float:
        """The known CE smoothing step in [0, 1]; NaN when the sampler has none."""

    @property
    def neutral_diversity(self) -> float:
        """Gini-Simpson diversity of a neutral control coordinate (its loss is genetic drift);
        NaN when the sampler has no such coordinate."""

    def warm_start(self) -> UpdateStats:
        """Fit the distribution before cycle 0 (the loop calls it while ``warm_started`` is False)."""

    def propose(self, baselines: list[Baseline], n: int, rng: np.random.Generator) -> list[Proposal]:
        """Draw ``n`` proposals, spreading them over ``baselines``."""

    def update(self, elites: list[Elite]) -> UpdateStats:
        """One CE update toward the elites (with whatever smoothing/replay the sampler uses)."""

    def state_dict(self) -> dict:
        """JSON-serialisable state needed to resume (not the weights: see ``save``)."""

    def load_state_dict(self, state: dict) -> None:
        """Restore what ``state_dict`` returned."""

    def save(self, directory: Path) -> None:
        """Write the parameters (e.g. the LoRA adapter) under ``directory``."""

    def load(self, directory: Path) -> None:
        """Read what ``save`` wrote."""
