"""The sampling distribution of the CEM, as an interface.

A sampler is p_theta: ``propose`` draws X_1..X_n for given baselines, ``update`` moves
theta toward the elites (the CE step). Both the LLM and the exact grammar control
implement it, so the loop never knows which one it drives.
"""
from __future__ import annotations

from pathlib import Path
from typing import Protocol, runtime_checkable

import numpy as np

from cem_nas.records import Baseline, Elite, Proposal, UpdateStats


@runtime_checkable
class Sampler(Protocol):
    #: "delta": proposals carry a unified diff; "full": proposals carry a whole file.
    mode: str

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
