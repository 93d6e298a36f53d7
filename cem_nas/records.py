"""The records that pass between the pieces of the loop.

A candidate's life: a sampler makes a :class:`Proposal`; the delta is applied and
novelty-checked; the sandbox returns one :class:`EvalResult` per proxy seed; the loop
turns the best into :class:`Elite` examples for the sampler's update, which reports
:class:`UpdateStats`. Every candidate ends with exactly one status from
:data:`STATUSES`.
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any

#: Final statuses, in pipeline order: the first failure a candidate meets is its status.
STATUSES = (
    "parse_error",       # no unified diff / no code could be extracted from the response
    "apply_error",       # the delta did not apply to its baseline at any tier
    "unchanged",         # the delta applied but leaves its parent as it was (nothing to train)
    "syntax_error",      # the resulting file is not valid Python
    "out_of_scope",      # it changes the fixed training recipe (search.scope = architecture): never trained
    "policy_violation",  # the AST policy or the audit hook refused the code
    "build_error",       # Net(...) raised, or the file lacks the model interface
    "shape_error",       # forward() gave the wrong output shape
    "duplicate",         # a repeat of an archived architecture, rejected (search.duplicates = reject)
    "timeout",           # wall-clock or CPU limit hit (killed)
    "memory_error",      # address-space limit hit or MemoryError
    "nan_loss",          # non-finite loss or outputs during training
    "train_error",       # training or evaluation raised
    "worker_lost",       # the process evaluating it died for a reason not its own, retries spent
    "low_accuracy",      # trained, but accuracy <= 1.2 x chance (LEMUR's bar)
    "ok",
)

#: Statuses whose candidates were trained and have a proxy score.
SCORED = ("low_accuracy", "ok")


@dataclass
class Baseline:
    """A parent architecture a proposal edits: a zoo file or an earlier candidate."""

    name: str
    code: str


@dataclass
class TaskSpec:
    """What the network must fit: the prompt states it, the shape check enforces it."""

    dataset: str
    in_shape: tuple[int, int, int]  # (channels, height, width)
    num_classes: int


@dataclass
class Proposal:
    """One sample X_i from the sampling distribution.

    In delta mode ``delta`` holds the extracted unified diff (None: none was found; ""
    an empty delta, which changes nothing) and ``code`` is None until the loop applies
    it; in full mode ``code`` holds the whole extracted file and ``delta`` is None.
    ``meta`` carries sampler-specific data (the grammar sampler's choice indices, for
    instance); ``complete`` see :mod:`cem_nas.delta`.
    """

    baseline: str
    prompt: str
    response: str
    delta: str | None = None
    code: str | None = None
    prompt_tokens: int = 0
    completion_tokens: int = 0
    gen_seconds: float = 0.0
    stop_reason: str = ""
    """Why generation ended: eos, fence (the fenced answer closed), length (token budget
    spent); empty for samplers that do not generate text."""
    meta: dict[str, Any] = field(default_factory=dict)
    complete: bool | None = None
    """Whether the delta is known to be whole: decided once by the sampler from the raw
    response and its stop reason (None: unknown, the applier's truncation heuristic decides)."""


@dataclass
class EvalResult:
    """The outcome of one proxy run (one seed) of one candidate."""

    status: str
    message: str = ""
    accuracy: float = math.nan
    loss: float = math.nan
    params: int = -1
    flops: int = -1
    train_seconds: float = math.nan
    eval_seconds: float = math.nan
    seed: int = 0

    def __post_init__(self) -> None:
        if self.status not in STATUSES:
            raise ValueError(f"unknown status {self.status!r}; expected one of {STATUSES}")

    @property
    def scored(self) -> bool:
        return self.status in SCORED


@dataclass
class Elite:
    """A (prompt, completion) pair the update learns from, with its lineage."""

    baseline: str
    prompt: str
    completion: str
    score: float
    cycle: int
    meta: dict[str, Any] = field(default_factory=dict)


@dataclass
class UpdateStats:
    """What one CE update did. NLLs are mean per completion token (nats)."""

    loss_before: float = math.nan
    loss_after: float = math.nan
    elite_nll_before: float = math.nan
    elite_nll_after: float = math.nan
    steps: int = 0
    examples: int = 0
    seconds: float = 0.0
