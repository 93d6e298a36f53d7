"""What a run shows while it works: transient progress bars and one lasting line per cycle.

Bars (tqdm, on stderr) vanish when their phase ends, so the console keeps only the
lines written with :meth:`Progress.line` (one summary per cycle). The loop owns one
:class:`Progress` and hands it to the sampler, whose warm start and CE update draw
their optimiser steps on it; :data:`QUIET` shows nothing.
"""
from __future__ import annotations

import math
import time
from typing import Any

from tqdm.auto import tqdm


class Progress:
    """Factory of transient bars; ``prefix`` (e.g. 'cycle 3 ') starts every bar's label."""

    def __init__(self, enabled: bool = True, prefix: str = "", file: Any = None):
        self.enabled = enabled
        self.prefix = prefix
        self.file = file  # None: bars on stderr, lines on stdout

    def bar(self, total: int, desc: str, unit: str = "it") -> Any:
        """A tqdm bar that disappears when closed (use it as a context manager)."""
        return tqdm(total=total, desc=f"{self.prefix}{desc}", unit=unit, leave=False, disable=not self.enabled,
                    dynamic_ncols=True, file=self.file)

    def line(self, text: str) -> None:
        """A line that stays on screen above the bars."""
        if self.enabled:
            tqdm.write(text, file=self.file)


QUIET = Progress(enabled=False)


class StepReporter:
    """Optimiser steps on a bar: the running loss (mean of the last few steps) as postfix.

    tqdm's own rate and remaining-time estimate give the time left.
    """

    def __init__(self, bar: Any, window: int = 4):
        self.bar, self.window, self.losses = bar, window, []

    def __call__(self, step: int, loss: float) -> None:
        self.losses.append(loss)
        recent = self.losses[-self.window:]
        self.bar.update()
        # redraw every step: tqdm's update() skips draws within mininterval, so fast steps
        # would leave an old loss on screen (steps take seconds in a real run: no cost)
        self.bar.set_postfix_str(f"loss {sum(recent) / len(recent):.3f}", refresh=True)


class TokenReporter:
    """Decoding on a bar of proposals: rows finished advance it, tokens/s is the postfix.

    ``done_before`` is how many proposals earlier batches already finished; the caller
    calls :meth:`sync` with the true count when a batch returns (a row can end without
    the decoder reporting it, e.g. at the token limit).
    """

    def __init__(self, bar: Any):
        self.bar, self.tokens, self.start = bar, 0, time.perf_counter()
        self.done_before = 0

    def __call__(self, tokens: int, finished: int) -> None:
        self.tokens += tokens
        target = self.done_before + finished
        if target > self.bar.n:
            self.bar.update(target - self.bar.n)
        self.bar.set_postfix_str(f"{self.rate():.1f} tok/s", refresh=True)

    def rate(self) -> float:
        elapsed = time.perf_counter() - self.start
        return self.tokens / elapsed if elapsed > 0 else math.nan

    def sync(self, done: int, tokens: int) -> None:
        """After a batch: ``done`` proposals finished in all, ``tokens`` generated in all."""
        self.done_before, self.tokens = done, tokens
        if done > self.bar.n:
            self.bar.update(done - self.bar.n)
        self.bar.set_postfix_str(f"{self.rate():.1f} tok/s", refresh=True)


def _num(x: Any, digits: int = 3) -> str:
    try:
        x = float(x)
    except (TypeError, ValueError):
        return "-"
    return f"{x:.{digits}f}" if math.isfinite(x) else "-"


def cycle_line(record: Any, values: dict[str, Any]) -> str:
    """One line per cycle: proposals, valid and novel valid, gamma_t, best so far, p_t(E)
    with its interval, and the seconds of each phase.

    Valid means status ``ok``; *novel* valid are the ok candidates that are new
    architectures (a repeat that inherited its twin's score is valid but not novel).

    >>> from types import SimpleNamespace as NS
    >>> rec = NS(cycle=2, gamma=0.41, candidates=[NS(status="ok"), NS(status="ok", is_new=False),
    ...          NS(status="parse_error")], seconds={"sample": 61.24, "apply": 0.3, "evaluate": 35.0, "update": 12.4})
    >>> cycle_line(rec, {"best_so_far": 0.655, "p_E": 0.42, "p_E_lo": 0.19, "p_E_hi": 0.68})
    'cycle 2: 3 proposals, 2 valid (1 novel), gamma_t 0.410, best so far 0.655, p_t(E) 0.42 [0.19, 0.68] | seconds: sample 61.2, apply 0.3, evaluate 35.0, update 12.4'
    """
    cands = record.candidates
    valid = [c for c in cands if c.status == "ok"]
    novel = sum(1 for c in valid if getattr(c, "is_new", True))
    phases = ", ".join(f"{phase} {seconds:.1f}" for phase, seconds in record.seconds.items())
    return (f"cycle {record.cycle}: {len(cands)} proposals, {len(valid)} valid ({novel} novel), "
            f"gamma_t {_num(record.gamma)}, best so far {_num(values.get('best_so_far'))}, "
            f"p_t(E) {_num(values.get('p_E'), 2)} [{_num(values.get('p_E_lo'), 2)}, {_num(values.get('p_E_hi'), 2)}]"
            f" | seconds: {phases}")
