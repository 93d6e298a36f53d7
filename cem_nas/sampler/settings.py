"""How the LLM sampler samples and warm-starts: the [sampler.generation] and
[sampler.warm_start] sections of a run's config."""
from __future__ import annotations

from dataclasses import dataclass

DECODERS = ("shared_prefix", "hf")
#: Where proposals are generated: in-process with transformers, or on an OpenAI-compatible server.
ENGINES = ("hf", "openai")



@dataclass
class GenerationSettings:
    """How proposals are sampled."""

    temperature: float = 0.5
    """Softmax temperature, >= 0; 0 means greedy decoding. Lower keeps a small model on the
    diff format it was warm-started on, higher varies the edits but fewer build
    (evidence: docs/results.md#supply)."""
    top_p: float = 0.9
    """Nucleus sampling mass, in (0, 1]; 1.0 disables it."""
    top_k: int = 0
    """Top-k cut-off; 0 disables it (otherwise transformers' default 50 would apply)."""
    max_new_tokens: int = 288
    """Token budget of one delta-mode answer, >= 1: about 20% over the p99 of the warm-start
    completions stops runaway answers early; raise it with a longer corpus (evidence:
    docs/results.md#delta-lengths)."""
    max_new_tokens_full: int = 1024
    """Token budget of one full-mode answer (a whole file)."""
    max_hunks: int = 1
    """Delta mode: an answer ends when it begins a hunk after this many hunks that change
    something (stop reason ``hunks``), >= 0; 0: no limit. Asked for one change, the 0.5B
    writes it, then hunks that repeat or misremember the file until its token limit; those
    cost most of the decode time and make most apply errors (evidence:
    docs/results.md#one-hunk)."""
    max_context_after: int = 3
    """Delta mode, with max_hunks: the answer also ends once this many unchanged lines follow
    the last change of its last allowed hunk, >= 0; 0: no limit. The warm start shows 3 lines
    of context; a warm-started 0.5B may go on copying the rest of the file as context until
    its token limit, and that answer is then refused as truncated (evidence:
    docs/results.md#one-hunk)."""
    batch_size: int = 64
    """Rows decoded together, >= 1. With the shared-prefix decoder a step grows far slower
    than the rows, so the default takes a whole cycle in one batch (evidence:
    docs/results.md#decode-step-rows)."""
    decoder: str = "shared_prefix"
    """shared_prefix: one prefill per distinct prompt, k completions from its keys/values
    (cem_nas.sampler.decode; falls back to hf for model families it does not know);
    hf: transformers' generate, one left-padded row per proposal (the earlier path)."""
    repetition_penalty: float = 1.0
    """transformers' repetition penalty; 1.0 disables it."""
    few_shot: int = 0
    """Warm-start corpus deltas of other baselines shown in each prompt as examples, drawn
    afresh per proposal, >= 0 (0: none); prompts grow by ~100 tokens per example. Meant for
    larger models or a warm start with examples: SmolLM2-135M copied the examples' context
    lines (evidence: docs/results.md#few-shot-validity)."""
    redraw_unchanged: int = 0
    """Rounds in which a proposal outside the search space is drawn again from the same
    prompt: one that leaves its parent unchanged (its delta applies and changes nothing, or
    its file is the parent's) or, under search.scope = architecture, changes the fixed
    training recipe (status out_of_scope). The sampler then draws from p_theta restricted to
    the feasible answers, by acceptance-rejection (as for a CE density truncated to a
    feasible set: Rubinstein & Kroese, The Cross-Entropy Method, 2004). Answers that do not
    parse or apply are kept, so format failures stay visible. What remains infeasible after
    the last round is kept; every proposal counts its discarded draws (store variable
    ``redraws``). 0 keeps every first draw."""

    def __post_init__(self) -> None:
        if self.temperature < 0 or not 0 < self.top_p <= 1 or self.top_k < 0 or self.batch_size < 1:
            raise ValueError(f"GenerationSettings needs temperature>=0, 0<top_p<=1, top_k>=0, batch_size>=1; got {self}")
        if self.decoder not in DECODERS:
            raise ValueError(f"GenerationSettings.decoder must be one of {DECODERS}; got {self.decoder!r}")
        if self.few_shot < 0:
            raise ValueError(f"few_shot must be >= 0; got {self.few_shot}")
        if self.max_new_tokens < 1 or self.max_new_tokens_full < 1:
            raise ValueError(f"max_new_tokens and max_new_tokens_full must be >= 1; got {self}")
        if self.max_hunks < 0 or self.max_context_after < 0:
            raise ValueError(f"max_hunks and max_context_after must be >= 0 (0: no limit); got {self.max_hunks}, "
                             f"{self.max_context_after}")
        if self.redraw_unchanged < 0:
            raise ValueError(f"redraw_unchanged is a number of rounds >= 0; got {self.redraw_unchanged}")


@dataclass
class WarmStartSettings:
    """The LoRA fine-tune on the curated corpus before cycle 0."""

    enabled: bool = True
    """Warm-start before the first proposal (an untuned small model writes prose, not diffs)."""
    corpus: str = "grammar"
    """Where the warm-start pairs come from: grammar (random grammar edits of the zoo baselines,
    cem_nas.corpus) or lemur:PATH (real LEMUR architectures, a file and a more accurate variant
    of the same family, cem_nas.corpus_lemur; PATH a clone of ABrain-One/nn-dataset or a folder
    with nn/*.py and curves.csv.gz such as ../shared/lemur). max_edits and max_changed apply to
    grammar pairs, lemur_max_changed to LEMUR pairs; context to both."""
    corpus_size: int = 48
    """Number of (before, after, delta) pairs drawn from the corpus."""
    corpus_seed: int = 0
    """Seed of the corpus (part of the cache key)."""
    max_edits: int = 1
    """Grammar coordinates one corpus pair changes (1..max_edits): single edits give short deltas."""
    context: int = 1
    """Context lines of each corpus delta (1: short completions, still enough to anchor a hunk)."""
    max_changed: int = 4
    """Drop corpus pairs whose delta removes plus adds more lines than this (0: keep all)."""
    lemur_max_changed: int = 40
    """Drop LEMUR corpus pairs whose delta removes plus adds more lines than this (0: keep all).
    At 40, 45 of 1,107 candidate pairs of ../shared/lemur are dropped (benchmarks/bench_lemur_corpus.py)."""
    balance: bool = False
    """Take the corpus pairs in turn over the kind of edit (``build_corpus(balance=True)``),
    so that the shortest kinds (dropout and optimizer literals) do not dominate what the
    warm-started model knows; hints always use a balanced corpus."""
    steps: int = 24
    """Optimiser steps of the warm start."""
    batch_size: int = 4
    """Examples per warm-start step."""
    lr: float = 2e-3
    """AdamW learning rate of the warm start, > 0 (chosen for SmolLM2-135M, which learned
    the format with rank-16 LoRA in tens of steps at 1e-3 to 3e-3)."""
    cache: bool = True
    """Reuse (and write) the warm-started adapter under the user cache."""

    def __post_init__(self) -> None:
        if self.corpus_size < 1 or self.max_edits < 1 or self.context < 0 or self.max_changed < 0:
            raise ValueError(f"WarmStartSettings needs corpus_size>=1, max_edits>=1, context>=0, max_changed>=0; got {self}")
        if self.steps < 0 or self.batch_size < 1 or not self.lr > 0:
            raise ValueError(f"WarmStartSettings needs steps>=0, batch_size>=1, lr>0; got {self}")
        if self.lemur_max_changed < 0:
            raise ValueError(f"lemur_max_changed must be >= 0 (0: keep all); got {self.lemur_max_changed}")
        if self.corpus != "grammar":
            # imported here: grammar runs never load the LEMUR reader; a lemur:PATH that is not
            # there fails when the config is read, not at the warm start after the model loaded
            from cem_nas.corpus_lemur import corpus_source

            corpus_source(self.corpus)
