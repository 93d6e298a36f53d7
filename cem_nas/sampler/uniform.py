"""Random search: the standard NAS baseline, as a sampler that is never updated.

Proposals are uniform draws over the same mutation grammar as the grammar sampler
(every coordinate uniform over its choices, independently), rendered against the
baselines in the same way. ``update`` leaves the distribution as it is: the CE step
with smoothing alpha = 0, ``pi_{t+1} = 0 * q_t + 1 * pi_t``. So the sampler reports
``alpha = 0`` and the smoothing identity reads ``p_{t+1}(E) = p_t(E)`` up to sampling
noise: a stationary control at an equal candidate budget.
"""
from __future__ import annotations

import time

from cem_nas.records import Elite, UpdateStats
from cem_nas.sampler.grammar import GrammarSampler
from cem_nas import mutations


class RandomSampler(GrammarSampler):
    """Uniform over the grammar, never updated (``alpha = 0``); ``seed``, ``mode`` and
    ``scope`` as the grammar sampler's."""

    def __init__(self, seed: int = 0, mode: str = "delta", scope: str = "file"):
        super().__init__(alpha=0.0, seed=seed, mode=mode, scope=scope)

    def update(self, elites: list[Elite]) -> UpdateStats:
        """No step: the elites' NLL under the fixed uniform distribution, before and after alike."""
        start = time.perf_counter()
        if not elites:
            return UpdateStats(steps=0, examples=0, seconds=time.perf_counter() - start)
        nll = self.elite_nll([mutations.choice_vector(e.meta["choices"]) for e in elites])
        return UpdateStats(loss_before=nll, loss_after=nll, elite_nll_before=nll, elite_nll_after=nll,
                           steps=0, examples=len(elites), seconds=time.perf_counter() - start)
