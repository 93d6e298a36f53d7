"""The records that pass between the pieces of the loop.

A candidate's life: a sampler makes a :class:`Proposal`; the delta is applied and
novelty-checked; the sandbox returns one :class:`EvalResult` per proxy seed; the loop
turns the best into :class:`Elite` examples for the sampler's update, which reports
:class:`UpdateStats`. Every candidate ends with exactly one status from
:data:`STATUSES`; a :class:`Candidate` is one proposal through that whole pipeline, and a
:class:`CycleRecord` is everything one cycle produced, as hooks and the store see it.
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any

import numpy as np

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
    """Why generation ended: eos, fence (the fenced answer closed), hunks (a hunk begun past
    max_hunks, cut off), length (token budget spent); empty for samplers that do not generate text."""
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


@dataclass
class Candidate:
    """One proposal through the whole pipeline, with exactly one final ``status``."""

    cand: int
    baseline: str
    parent_cycle: int  # cycle the baseline was born in; -1 for a zoo architecture
    prompt: str = ""
    response: str = ""
    delta: str = ""
    code: str = ""
    apply_tier: str = ""
    status: str = ""
    message: str = ""
    novelty: float = math.nan  # max Jaccard to the archive; NaN when never checked
    results: list[EvalResult] = field(default_factory=list)  # proxy runs, scoring seed first
    prompt_tokens: int = 0
    completion_tokens: int = 0
    gen_seconds: float = math.nan
    delta_lines: int = 0
    code_lines: int = 0
    is_elite: bool = False
    stop_reason: str = ""  # why generation ended (eos, fence, hunks, length); "" for a sampler that does not generate
    is_new: bool = False  # a new architecture: archived under this candidate's name, trained
    twin: str = ""  # name of the archived architecture this is a repeat of; "" when it is none
    inherited: EvalResult | None = None  # the twin's scoring result, in either reading
    hint: str = ""  # the kind of edit the prompt asked for (cem_nas.sampler.hints); "" without hints
    redraws: int = 0  # draws the sampler discarded before this one because they left the parent unchanged

    @property
    def score_source(self) -> str:
        """Where the score came from: ``proxy`` (trained here), ``archive`` (a repeat's twin), "" (none)."""
        if self.twin and self.results:
            return "archive"
        return "proxy" if self.results else ""

    def reading(self, duplicates: str) -> tuple[str, float]:
        """(status, score) when repeats are read as ``duplicates`` says: ``inherit``, a
        repeat has its twin's status and score; ``reject``, it is an unscored duplicate."""
        if not self.twin or self.inherited is None:
            return self.status, self.score
        if duplicates == "reject":
            return "duplicate", math.nan
        r = self.inherited
        return r.status, (r.accuracy if r.scored else math.nan)

    @property
    def score(self) -> float:
        """Proxy accuracy of the scoring run; NaN unless the candidate was trained and scored."""
        return self.results[0].accuracy if self.results and self.results[0].scored else math.nan

    def rep_scores(self, reps: int) -> list[float]:
        """Proxy accuracy per replicate seed (rep 0 = score); NaN where not taken or not scored."""
        out = [r.accuracy if r.scored else math.nan for r in self.results[:reps]]
        return out + [math.nan] * (reps - len(out))

    def first(self, name: str, missing: Any) -> Any:
        """An EvalResult field of the scoring run, or ``missing`` when never evaluated."""
        return getattr(self.results[0], name) if self.results else missing


@dataclass
class CycleRecord:
    """Everything one cycle produced, as hooks and the store see it."""

    cycle: int
    candidates: list[Candidate]
    gamma: float  # elite threshold gamma_t: lowest elite score; NaN when no elites
    update: UpdateStats
    seconds: dict[str, float]  # phase -> wall seconds: sample, apply, evaluate, update
    baselines: list[str]
    alpha: float = math.nan  # the sampler's known smoothing step; NaN when it has none (LLM without smoothing)
    replicates: int = 1  # replicate proxy runs per replicated candidate (rep dim length)
    neutral_diversity: float = math.nan  # of the sampler's neutral control coordinate; NaN when it has none
    zoo: dict[str, EvalResult] = field(default_factory=dict)  # scoring result of each zoo baseline (run start)

    def scores(self) -> np.ndarray:
        return np.array([c.score for c in self.candidates], dtype=float)

    def statuses(self) -> np.ndarray:
        return np.array([c.status for c in self.candidates], dtype=object)

    def rep_matrix(self) -> np.ndarray:
        """(cand, rep) proxy accuracies; NaN where a replicate was not taken."""
        return np.array([c.rep_scores(self.replicates) for c in self.candidates], dtype=float).reshape(
            len(self.candidates), self.replicates)
