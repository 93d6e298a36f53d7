"""TensorBoard view of a run (``hooks.tensorboard = true``): ``tensorboard --logdir runs/NAME/tb``.

Per cycle (the TensorBoard step is the cycle number) the hook writes every scalar cycle
variable the hooks produced (gamma_t, p_t(E), q_t(E), valid rate, ICC, seconds per
phase, ...) and the count of each final status as scalars, the scores of the cycle's
scored candidates as a histogram, and the best delta of the cycle as text. NaN values
(a quantity without enough data that cycle) are left out rather than drawn as gaps.
Needs the optional ``tensorboard`` package (``pip install 'cem-nas[tensorboard]'``).
"""
from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import numpy as np

from cem_nas.hooks import Hook, status_counts
from cem_nas.records import STATUSES, CycleRecord


def best_delta_text(record: CycleRecord) -> str:
    """Markdown for the best scored candidate of the cycle: score, parent, delta (or file)."""
    scored = [c for c in record.candidates if math.isfinite(c.score)]
    if not scored:
        return "no candidate was scored this cycle"
    best = max(scored, key=lambda c: c.score)
    body = best.delta or best.code
    kind = "diff" if best.delta else "python"
    return (f"**score {best.score:.4f}**, candidate {best.cand} of cycle {record.cycle}, "
            f"status {best.status}, parent {best.baseline}\n\n```{kind}\n{body}\n```")


class TensorBoardHook(Hook):
    """Writes the cycle's variables, score histogram and best delta to ``log_dir``."""

    def __init__(self, log_dir: str | Path):
        self.log_dir = Path(log_dir)
        self.writer: Any = None

    def _open(self, first_step: int) -> Any:
        from torch.utils.tensorboard import SummaryWriter

        # a resumed run rewrites the cycle that was interrupted: purge its stale events
        return SummaryWriter(str(self.log_dir), purge_step=first_step or None)

    def after_values(self, record: CycleRecord, values: dict[str, Any]) -> None:
        if self.writer is None:
            self.writer = self._open(record.cycle)
        w, t = self.writer, record.cycle
        scalars = {"gamma": record.gamma, **values}
        for name, value in scalars.items():
            arr = np.asarray(value)
            if arr.ndim == 0 and arr.dtype.kind in "biuf" and math.isfinite(float(arr)):
                w.add_scalar(name, float(arr), t)
        for status, count in zip(STATUSES, status_counts(record)):
            w.add_scalar(f"status/{status}", int(count), t)
        scores = record.scores()
        scores = scores[np.isfinite(scores)]
        if len(scores):
            w.add_histogram("score", scores, t)
        w.add_text("best_delta", best_delta_text(record), t)
        w.flush()

    def close(self) -> None:
        if self.writer is not None:
            self.writer.close()
            self.writer = None
