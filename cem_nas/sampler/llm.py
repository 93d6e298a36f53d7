"""The LLM sampler: p_theta is a causal LM plus a LoRA adapter theta.

``propose`` samples deltas (or whole files in full mode) for baselines; ``update`` is the
CE step: LoRA SFT on the elites' (prompt, completion) pairs with the loss on the
completion, mixed with replayed past elites and warm-start corpus pairs so the format
survives the update (see DESIGN.md, "What is known about small LLMs writing diffs").
Before the first proposal the adapter is warm-started on the curated corpus, once per
(model, mode, task, corpus, settings), and cached.
"""
from __future__ import annotations

import hashlib
import json
import logging
import math
import os
import re
import shutil
import time
import warnings
from contextlib import nullcontext
from dataclasses import asdict
from pathlib import Path
from collections.abc import Collection
from typing import Callable, NamedTuple

import numpy as np

from cem_nas.build import INFEASIBLE, build
from cem_nas.delta import cut_after_hunks
from cem_nas.progress import QUIET, Progress, StepReporter
from cem_nas.records import Baseline, Elite, Proposal, TaskSpec, UpdateStats
from cem_nas.repeats import exact_key
from cem_nas.sampler import lora as lora_sft
from cem_nas.sampler.hints import HintSettings, KindDistribution, applicable_kinds, corpus_pair_kinds, hint_text
from cem_nas.sampler.decode import (
    STOP_EOS, STOP_FENCE, STOP_HUNKS, STOP_LENGTH, SamplingRule, decode, supports_shared_prefix,
)
from cem_nas.sampler.embedded import DEFAULT_MODEL
from cem_nas.sampler.lora import LoRASettings
from cem_nas.sampler.model import LoadedModel, cache_root, load_model
from cem_nas.sampler.openai_engine import OpenAIEngine, OpenAISettings
from cem_nas.sampler.prompt_kv import PromptKV
from cem_nas.sampler.settings import ENGINES, GenerationSettings, WarmStartSettings
from cem_nas.scope import check_scope
from cem_nas.sampler.prompts import (
    TEMPLATE_VERSION, check_mode, closes_block, cut_after_block, format_completion, render_prompt,
)

__all__ = ["GenerationSettings", "HintSettings", "LLMSampler", "LoRASettings", "WarmStartSettings"]

STATE_VERSION = 1
log = logging.getLogger(__name__)


class Generated(NamedTuple):
    """One sampled completion."""

    text: str
    """The decoded completion, cut after its first closed fenced block."""
    prompt_tokens: int
    completion_tokens: int
    """New tokens, EOS and padding excluded."""
    stop_reason: str
    """eos, fence (the fenced block closed), hunks (a hunk begun past max_hunks, cut off) or
    length (the token budget ran out)."""


class _FenceStop:
    """Stopping criterion: a row is done once its completion closes its fenced block.

    ``on_step(tokens, finished)`` (optional) hears, every step, the tokens that step added
    and the rows finished so far (fence closed, EOS or pad), as the shared-prefix decoder reports.
    """

    def __init__(self, tokenizer, prompt_width: int, on_step: Callable[[int, int], None] | None = None):
        self.tokenizer, self.start, self.on_step = tokenizer, prompt_width, on_step
        self.ends = {tokenizer.eos_token_id, tokenizer.pad_token_id}
        self.finished: set[int] = set()

    def __call__(self, input_ids, scores, **kwargs):
        import torch

        done, added = [], 0
        for r, row in enumerate(input_ids[:, self.start :]):
            # decoding the whole completion every step is wasteful; only a backtick can close
            tail = self.tokenizer.decode(row[-1:])
            done.append("`" in tail and closes_block(self.tokenizer.decode(row, skip_special_tokens=True)))
            if r not in self.finished:
                added += int(row[-1]) not in self.ends
                if done[-1] or int(row[-1]) in self.ends:
                    self.finished.add(r)
        if self.on_step is not None:
            self.on_step(added, len(self.finished))
        return torch.tensor(done, dtype=torch.bool, device=input_ids.device)


def _update_stats(losses: list[float], nll_before: float, nll_after: float, examples: int, t0: float) -> UpdateStats:
    """UpdateStats of a training run: first/last step loss, NLL before/after, time since t0."""
    return UpdateStats(
        loss_before=losses[0] if losses else float("nan"),
        loss_after=losses[-1] if losses else float("nan"),
        elite_nll_before=nll_before,
        elite_nll_after=nll_after,
        steps=len(losses),
        examples=examples,
        seconds=time.perf_counter() - t0,
    )


def _slug(text: str) -> str:
    return re.sub(r"[^A-Za-z0-9]+", "-", Path(text).name or text).strip("-").lower()[:40] or "model"


class LLMSampler:
    """A CE sampling distribution backed by a causal LM with a LoRA adapter.

    ``model`` is an embedded model's name (:mod:`cem_nas.sampler.embedded`), a hub id, a local path, or
    an already :class:`~cem_nas.sampler.model.LoadedModel` (tests). ``corpus`` overrides
    the warm-start corpus (a list of ``(name, before, after, delta, ...)`` tuples); by
    default it is ``cem_nas.corpus.build_corpus(warm_start.corpus_size, warm_start.corpus_seed)``,
    or :func:`cem_nas.corpus_lemur.build_lemur_corpus` for ``warm_start.corpus = "lemur:PATH"``.
    ``seed`` seeds the update's batch draws and dropout (proposals use the ``rng`` passed in).
    ``dtype`` (auto, float32, bfloat16: :func:`~cem_nas.sampler.model.resolve_dtype`) applies
    when the model is loaded here; a LoadedModel keeps its own. ``engine`` ``openai``
    samples on the server ``openai`` names (the update stays in-process; each new adapter
    is handed to the server, :mod:`cem_nas.sampler.openai_engine`). ``hints`` puts a kind of
    edit in every prompt (:mod:`cem_nas.sampler.hints`); None: no hints. ``scope`` is the
    search space (:mod:`cem_nas.scope`): the prompts, the warm-start corpus and the redraws follow it.
    """

    def __init__(
        self,
        task: TaskSpec,
        model: str | LoadedModel = DEFAULT_MODEL,
        mode: str = "delta",
        lora: LoRASettings | None = None,
        generation: GenerationSettings | None = None,
        warm_start: WarmStartSettings | None = None,
        device: str = "auto",
        seed: int = 0,
        load_in_4bit: bool = False,
        corpus: list | None = None,
        dtype: str = "auto",
        engine: str = "hf",
        openai: OpenAISettings | None = None,
        hints: HintSettings | None = None,
        scope: str = "architecture",
    ):
        from peft import get_peft_model

        self.task = task
        self.mode = check_mode(mode)
        self.scope = check_scope(scope)
        self.lora = lora or LoRASettings()
        self.generation = generation or GenerationSettings()
        self.warm = warm_start or WarmStartSettings()
        self.hints = hints or HintSettings(enabled=False)
        self.kinds = KindDistribution(self.hints.alpha)
        self.loaded = model if isinstance(model, LoadedModel) else load_model(model, device, load_in_4bit, dtype)
        self.tokenizer = self.loaded.tokenizer
        with warnings.catch_warnings():
            # peft (0.21.2, the newest) reads the model's deprecated `is_gradient_checkpointing`
            # property inside get_peft_model; transformers warns from its own module. The
            # project makes no such call, so only this warning of this one call is silenced.
            warnings.filterwarnings("ignore", message=".*is_gradient_checkpointing.*", category=FutureWarning,
                                    module="transformers.modeling_utils")
            self.model = get_peft_model(self.loaded.model, lora_sft.lora_config(self.lora, self.loaded.model))
        self.model.eval()
        self._corpus = corpus
        self.rng = np.random.default_rng(seed)
        self.replay: list[dict] = []
        self.updates = 0
        self.warm_started = False
        self.warm_stats: UpdateStats | None = None
        self.dtype = self.loaded.dtype
        if engine not in ENGINES:
            raise ValueError(f"engine must be one of {ENGINES}; got {engine!r}")
        self.remote = OpenAIEngine(openai or OpenAISettings()) if engine == "openai" else None
        self._served = 0  # adapters handed to the server so far
        self._stale = True  # the server does not have the current adapter yet (openai engine)
        self._fallback_logged = False
        self._stop_tokens: frozenset | None = None
        # prompts the generation prefilled, for the update's first passes under the same adapter
        self.prompt_kv = PromptKV()
        self.progress: Progress = QUIET  # the loop installs its own: warm start and update show their steps
        self.on_decode_step: Callable[[int, int], None] | None = None  # (tokens added, rows finished) per step
        self.seen: Callable[[str], bool] | None = None  # installed by the loop with search.redraw_repeats

    def describe(self) -> str:
        """Model, device, dtype (and why), decoder: one line for the run's log."""
        where = self.loaded
        return f"{where.name} on {where.device}, {where.dtype} ({where.dtype_reason or 'given'}), decoder {self.decoder()}"

    # -- examples -------------------------------------------------------------------
    def prompt_for(self, code: str, examples: list[str] | tuple = (), kinds: list[str] | tuple = ()) -> str:
        """The rendered prompt for a baseline's source (with few-shot example deltas and,
        when hints are on, the sentence asking for ``kinds`` of edit)."""
        hint = hint_text(kinds) if kinds and self.hints.enabled else ""
        return render_prompt(self.tokenizer, self.task, code, self.mode, examples, hint, self.scope)

    def _corpus_items(self) -> list:
        if self._corpus is None:
            from cem_nas.corpus import build_corpus
            from cem_nas.corpus_lemur import build_lemur_corpus, corpus_source

            w = self.warm
            lemur = corpus_source(w.corpus)
            if lemur is None:
                self._corpus = build_corpus(w.corpus_size, w.corpus_seed, max_edits=w.max_edits, context=w.context,
                                            max_changed=w.max_changed or None, balance=w.balance or self.hints.enabled,
                                            scope=self.scope)
            else:
                self._corpus = build_lemur_corpus(w.corpus[len("lemur:"):].strip(), w.corpus_size, w.corpus_seed,
                                                  context=w.context, max_changed=w.lemur_max_changed or None,
                                                  scope=self.scope, balance=w.balance or self.hints.enabled)
        return self._corpus

    def few_shot_examples(self, baseline: str, rng: np.random.Generator) -> list[str]:
        """``generation.few_shot`` corpus deltas drawn without replacement, from baselines
        other than ``baseline`` when there are any (a delta of the same file could be
        copied verbatim instead of inspiring an edit)."""
        k = self.generation.few_shot
        if not k:
            return []
        items = self._corpus_items()
        others = [item for item in items if item[0] != baseline] or items
        picks = rng.choice(len(others), size=min(k, len(others)), replace=False)
        return [others[int(i)][3] for i in picks]

    def completion_for(self, text: str) -> str:
        """The fenced completion trained on, from a bare delta/file or a raw response.

        The delta (or file) is extracted first, so chatter around it is not learnt. The
        loop should pass the canonical delta of an elite (``make_delta(before, after)``):
        a response's own ``@@`` numbers may be wrong even when it applied.
        """
        from cem_nas.delta import DeltaError, extract_code, extract_delta

        try:
            body = extract_delta(text) if self.mode == "delta" else extract_code(text)
        except DeltaError as err:
            raise ValueError(f"an elite's completion holds no {self.mode} answer ({err}); pass the delta or code") from err
        return format_completion(self.mode, body)

    def corpus_examples(self) -> list[tuple[str, str]]:
        """(prompt, completion) pairs of the warm-start corpus for this mode."""
        # through completion_for, as elites are: one format (extract_delta's) for both; a
        # pair's hint names the kinds it edits (corpus_pair_kinds; only read with hints on)
        return [(self.prompt_for(item[1], kinds=corpus_pair_kinds(item) if self.hints.enabled else ()),
                 self.completion_for(item[3] if self.mode == "delta" else item[2]))
                for item in self._corpus_items()]

    def _encode(self, pairs) -> tuple[list, int]:
        """Encode pairs, dropping those longer than ``lora.max_length``; returns (kept, dropped)."""
        encoded = [lora_sft.encode_example(self.tokenizer, p, c) for p, c in pairs]
        kept = [e for e in encoded if len(e[0]) <= self.lora.max_length]
        return kept, len(encoded) - len(kept)

    def _nll(self, encoded, bar=None) -> float:
        if bar is not None:  # seconds on CPU: say what the bar is waiting for
            bar.set_postfix_str(f"NLL of {len(encoded)} pairs", refresh=True)
        return lora_sft.mean_completion_nll(
            self.model, encoded, self.tokenizer.pad_token_id, self.loaded.device, self.lora.batch_size, self.prompt_kv
        )

    def _train(self, draw, steps: int, lr: float, bar, fixed_context: bool = False) -> list[float]:
        return lora_sft.train_steps(
            self.model, draw, steps, lr, self.tokenizer.pad_token_id, self.loaded.device, self.rng,
            self.lora.grad_clip, self.lora.prompt_grad, on_step=StepReporter(bar), prompt_kv=self.prompt_kv,
            fixed_context=fixed_context,
        )

    # -- warm start -------------------------------------------------------------------
    def warm_start_key(self) -> str:
        """Cache key of the warm-started adapter: model, mode, task, corpus, settings, template."""
        spec = {
            "model": self.loaded.name,
            "mode": self.mode,
            "scope": self.scope,
            "task": [self.task.dataset, list(self.task.in_shape), self.task.num_classes],
            # balance only when set, so that the keys of unbalanced corpora stay as they were
            "warm": self._warm_key_fields(),
            "lora": self.lora.adapter_fields(),
            "max_length": self.lora.max_length,
            "template": TEMPLATE_VERSION,
            "trainer": lora_sft.TRAINER_VERSION,
            # the pairs themselves: a change to the zoo, the grammar or the scope rules that
            # changes what the corpus holds trains another adapter (for LEMUR: the files, not where they lay)
            "corpus": hashlib.sha256(repr(self._corpus_items()).encode()).hexdigest(),
        }
        if self.loaded.dtype != "float32":  # trained in another dtype: another adapter (fp32 keys unchanged)
            spec["dtype"] = self.loaded.dtype
        if self.hints.enabled:  # hinted prompts, balanced corpus: another adapter (keys without hints unchanged)
            spec["hints"] = True
        digest = hashlib.sha256(json.dumps(spec, sort_keys=True).encode()).hexdigest()[:16]
        return f"{_slug(self.loaded.name)}-{self.mode}-c{self.warm.corpus_seed}-{digest}"

    def _warm_key_fields(self) -> dict:
        """The warm-start settings in the adapter key: balance only when set, and the LEMUR
        fields only for a LEMUR corpus, so that the keys of earlier grammar runs stay as they
        were; a LEMUR path enters as ``lemur`` (its pairs' hash is in the key instead)."""
        fields = {k: v for k, v in asdict(self.warm).items() if k != "balance" or v} | {"cache": None, "enabled": None}
        if self.warm.corpus == "grammar":
            del fields["corpus"], fields["lemur_max_changed"]
        else:
            fields["corpus"] = "lemur"
        return fields

    def warm_start_dir(self) -> Path:
        return cache_root() / "adapters" / self.warm_start_key()

    def warm_start(self) -> UpdateStats:
        """LoRA fine-tune on the corpus (or load the cached result); returns what it did.

        Each step trains on ``warm.batch_size`` pairs of one baseline, the baseline drawn
        with probability proportional to its number of pairs (so pairs are equally likely).

        ``elite_nll_*`` here is the corpus' mean completion NLL before/after (on up to 8
        pairs of the baseline with the most pairs); when the adapter came from the cache, the stats saved with it.
        """
        target = self.warm_start_dir()
        if self.warm.cache and (target / "warm_start.json").is_file():
            self.load(target)
            self.warm_stats = UpdateStats(**json.loads((target / "warm_start.json").read_text()))
            self.warm_started = True
            return self.warm_stats
        t0 = time.perf_counter()
        encoded, _ = self._encode(self.corpus_examples())
        if not encoded:
            raise ValueError(
                f"no warm-start example fits in LoRASettings.max_length={self.lora.max_length} tokens; raise it"
            )
        # one baseline per step: the batch shares its prompt, which the shared-prompt loss
        # path then encodes once (a step costs ~ its completions, not batch x prompt)
        members = lora_sft.by_prompt(encoded)
        # the probe is the largest baseline's pairs: on CPU a ~800-token prompt forward
        # costs seconds, so 8 pairs under one prompt cost 2 of them, not 8
        probe = max(members, key=len)[:8]
        weights = np.array([len(m) for m in members], dtype=float) / len(encoded)

        def draw(rng: np.random.Generator) -> list:
            group = members[int(rng.choice(len(members), p=weights))]
            return [group[int(i)] for i in rng.integers(len(group), size=self.warm.batch_size)]

        with self.progress.bar(self.warm.steps, "warm start (LoRA on the diff corpus)", unit="step") as bar:
            before = self._nll(probe, bar)
            bar.reset()  # the rate and time left are the steps', not the probe's
            losses = self._train(draw, self.warm.steps, self.warm.lr, bar)
            after = self._nll(probe, bar)
        stats = _update_stats(losses, before, after, len(encoded), t0)
        if self.warm.cache:
            # one temporary directory per process: helpers sharing a cache may warm-start the
            # same key at once, and the first to finish publishes its adapter
            tmp = target.with_name(f"{target.name}.tmp{os.getpid()}")
            self.save(tmp)
            (tmp / "warm_start.json").write_text(json.dumps(asdict(stats)))
            try:
                tmp.rename(target)
            except OSError:  # another process published this key first
                shutil.rmtree(tmp, ignore_errors=True)
        self.warm_stats, self.warm_started = stats, True
        self._stale = True
        return stats

    # -- sampling ----------------------------------------------------------------------
    def _generation_config(self):
        from transformers import GenerationConfig

        g = self.generation
        sample = g.temperature > 0
        return GenerationConfig(
            do_sample=sample,
            temperature=g.temperature if sample else 1.0,
            top_p=g.top_p if sample else 1.0,
            top_k=g.top_k if sample else 0,
            max_new_tokens=self._max_new_tokens(),
            repetition_penalty=g.repetition_penalty,
            eos_token_id=self.tokenizer.eos_token_id,
            pad_token_id=self.tokenizer.pad_token_id,
        )

    def decoder(self) -> str:
        """The decoder :meth:`generate` uses: ``generation.decoder``, or ``hf`` where the
        shared-prefix loop does not know the model family (logged once)."""
        if self.generation.decoder == "hf":
            return "hf"
        why = supports_shared_prefix(self.loaded.model)
        if why and not self._fallback_logged:
            log.warning("shared-prefix decoding is not available (%s); using transformers' generate", why)
            self._fallback_logged = True
        return "hf" if why else "shared_prefix"

    def generate(self, prompts: list[str]) -> list[Generated]:
        """Sample one completion per prompt (equal prompts share one prefill with the
        shared-prefix decoder). The text is cut after the first closed fenced block and, in
        delta mode, before a hunk begun past ``generation.max_hunks`` changing hunks.

        Uses torch's global RNG: seed it (``propose`` does, inside a forked RNG state).
        """
        if self.remote is not None:
            return [self._limited(g) for g in self._generate_remote(prompts)]
        encoded = [lora_sft.encode_prompt(self.tokenizer, p) for p in prompts]
        done = self._generate_hf(encoded) if self.decoder() == "hf" else self._generate_shared(encoded)
        return [self._limited(g) for g in done]

    def _hunk_limit(self) -> int:
        return self.generation.max_hunks if self.mode == "delta" else 0

    def _limited(self, out: Generated) -> Generated:
        """``out`` ended after its last allowed hunk (``max_hunks``, ``max_context_after``),
        whichever engine wrote it (the shared-prefix decoder also stops there, the others run on)."""
        cut = self._cut(out.text)
        return out if cut is None else out._replace(text=cut, stop_reason=STOP_HUNKS)

    def _max_new_tokens(self) -> int:
        g = self.generation
        return g.max_new_tokens if self.mode == "delta" else g.max_new_tokens_full

    def _closes_block(self, tokens: list[int]) -> bool:
        return closes_block(self.tokenizer.decode(tokens, skip_special_tokens=True))

    def _stop_reason(self, tokens: list[int]) -> str | None:
        """fence when the completion closed its block, hunks when it went past its last allowed hunk."""
        text = self.tokenizer.decode(tokens, skip_special_tokens=True)
        if closes_block(text):
            return STOP_FENCE
        return STOP_HUNKS if self._cut(text) is not None else None

    def _cut(self, text: str) -> str | None:
        """``text`` ended after its last allowed hunk (see ``cut_after_hunks``), or None."""
        n = self._hunk_limit()
        return cut_after_hunks(text, n, self.generation.max_context_after) if n else None

    def _stop_ids(self) -> frozenset:
        """Token ids whose text holds a backtick, an @ or a newline (byte-level BPE writes it
        Ċ): only those can close a fenced block, begin a hunk header or end a line, so only
        after them is the completion decoded and tested."""
        if self._stop_tokens is None:
            pieces = self.tokenizer.convert_ids_to_tokens(list(range(len(self.tokenizer))))
            marks = ("`", "@", "\n", "Ċ")
            self._stop_tokens = frozenset(i for i, t in enumerate(pieces)
                                          if t and (any(m in t for m in marks) or t in ("<0x60>", "<0x40>", "<0x0A>")))
        return self._stop_tokens

    def _generate_shared(self, encoded: list[list[int]]) -> list[Generated]:
        import torch

        groups: dict[tuple, list[int]] = {}
        for row, e in enumerate(encoded):
            groups.setdefault(tuple(e), []).append(row)
        g = self.generation
        rule = SamplingRule(temperature=g.temperature, top_p=g.top_p, top_k=g.top_k,
                            repetition_penalty=g.repetition_penalty)
        device = self.loaded.device
        generator = torch.Generator(device=device).manual_seed(int(torch.randint(2**62, (1,))))
        done = decode(self.model, list(groups), [len(rows) for rows in groups.values()], rule, self._max_new_tokens(),
                      {self.tokenizer.eos_token_id, self.tokenizer.pad_token_id}, generator, device,
                      stop=self._stop_reason, stop_candidates=self._stop_ids(), on_step=self.on_decode_step,
                      fold_lora=device == "cpu",  # on CPU the adapter branches' op overhead dominates a step
                      prompt_kv=self.prompt_kv)
        results: list[Generated | None] = [None] * len(encoded)
        for prompt, rows, completions in zip(groups, groups.values(), done):
            for row, c in zip(rows, completions):
                text = self.tokenizer.decode(c.tokens, skip_special_tokens=True)
                results[row] = Generated(cut_after_block(text), len(prompt), len(c.tokens), c.stop_reason)
        return results  # type: ignore[return-value]

    def _generate_remote(self, prompts: list[str]) -> list[Generated]:
        """Completions from the OpenAI-compatible server, cut and classified as in-process."""
        import torch

        if self._stale:
            self._hand_off()
        g = self.generation
        params = {"temperature": g.temperature, "top_p": g.top_p, "top_k": g.top_k or self.remote.settings.top_k_off,
                  "max_tokens": self._max_new_tokens()}
        if g.repetition_penalty != 1.0:
            params["repetition_penalty"] = g.repetition_penalty
        seed = int(torch.randint(2**31 - 1, (1,)))
        results = []
        for prompt, c in zip(prompts, self.remote.complete(prompts, params, seed)):
            text = cut_after_block(c.text)
            reason = STOP_FENCE if closes_block(c.text) else STOP_LENGTH if c.finish_reason == "length" else STOP_EOS
            n_new = len(self.tokenizer(text, add_special_tokens=False)["input_ids"])
            results.append(Generated(text, len(lora_sft.encode_prompt(self.tokenizer, prompt)), n_new, reason))
        return results

    def _hand_off(self) -> None:
        """Write the current adapter where the server reads and load it there (openai engine)."""
        self._stale = False
        if self.remote is None or self.remote.settings.adapter_api == "none":
            return
        root = Path(self.remote.settings.adapter_dir or cache_root() / "served_adapters")
        name = f"cem-{os.getpid()}-{id(self) % 10**6}-{self._served}"
        self.save(root / name)
        self.remote.load_adapter(name, root / name)
        self._served += 1

    def _generate_hf(self, encoded: list[list[int]]) -> list[Generated]:
        """transformers' generate on one left-padded batch (one row, one prefill per prompt)."""
        import torch
        from transformers import StoppingCriteriaList

        width = max(len(e) for e in encoded)
        pad = self.tokenizer.pad_token_id
        ids = torch.full((len(encoded), width), pad, dtype=torch.long)
        mask = torch.zeros((len(encoded), width), dtype=torch.long)
        for row, e in enumerate(encoded):
            ids[row, width - len(e) :] = torch.tensor(e)
            mask[row, width - len(e) :] = 1
        with torch.no_grad():
            out = self.model.generate(
                input_ids=ids.to(self.loaded.device),
                attention_mask=mask.to(self.loaded.device),
                generation_config=self._generation_config(),
                stopping_criteria=StoppingCriteriaList([_FenceStop(self.tokenizer, width, self.on_decode_step)]),
            )
        ends = {self.tokenizer.eos_token_id, pad}
        results = []
        for row, e in enumerate(encoded):
            new = out[row, width:].tolist()
            cut = next((i for i, t in enumerate(new) if t in ends), len(new))
            # a row stopped by the fence is padded after it, so the fence is asked first
            reason = STOP_FENCE if self._closes_block(new[:cut]) else STOP_EOS if cut < len(new) else STOP_LENGTH
            text = self.tokenizer.decode(new[:cut], skip_special_tokens=True)
            results.append(Generated(cut_after_block(text), len(e), cut, reason))
        return results

    def _extract(self, response: str, stop: str) -> tuple[str | None, str | None, dict]:
        """The delta (or file) of a raw response; whether it is whole is decided here,
        once, from the stop reason (a closed block or EOS proves it, the token limit
        refutes a last hunk that runs to the end)."""
        from cem_nas.delta import DeltaError, extract_code, extract_delta

        try:
            if self.mode == "delta":
                return extract_delta(response, complete=stop != STOP_LENGTH if stop else None), None, {}
            return None, extract_code(response), {}
        except DeltaError as err:
            return None, None, {"parse_error": str(err)}

    def propose(self, baselines: list[Baseline], n: int, rng: np.random.Generator) -> list[Proposal]:
        """Draw ``n`` proposals, spread evenly over ``baselines`` in an ``rng``-shuffled order.

        Generation is seeded from ``rng`` (torch's RNG is forked, so global state is kept).
        ``gen_seconds`` is the batch's time divided by its size.
        """
        import torch

        if n < 0:
            raise ValueError(f"n must be >= 0, got {n}")
        if n and not baselines:
            raise ValueError("propose needs at least one baseline")
        if self.warm.enabled and not self.warm_started:
            self.warm_start()
        order = rng.permutation(len(baselines)) if baselines else []
        assigned = [int(order[i % len(baselines)]) for i in range(n)]
        # one kind of edit per proposal ("" without hints)
        kinds = ([self.kinds.sample(rng, applicable_kinds(baselines[b].code, self.scope)) for b in assigned]
                 if self.hints.enabled else [""] * n)
        if self.generation.few_shot:  # one prompt per proposal, examples drawn in slot order
            prompts = [self.prompt_for(baselines[b].code, self.few_shot_examples(baselines[b].name, rng), [k] if k else ())
                       for b, k in zip(assigned, kinds)]
        else:  # equal (baseline, kind) prompts share one prefill
            shared = {key: self.prompt_for(baselines[key[0]].code, kinds=[key[1]] if key[1] else ())
                      for key in set(zip(assigned, kinds))}
            prompts = [shared[key] for key in zip(assigned, kinds)]
        slots = sorted(range(n), key=lambda i: assigned[i])  # equal prompts share a batch: less padding
        seed = int(rng.integers(2**62))
        proposals: list[Proposal | None] = [None] * n
        devices = [torch.device(self.loaded.device).index or 0] if self.loaded.device.startswith("cuda") else []
        names = [baselines[b].name for b in assigned]
        with torch.random.fork_rng(devices=devices):
            torch.manual_seed(seed)
            self._draw(slots, prompts, names, kinds, seed, proposals)
            parents = [baselines[b].code for b in assigned]
            again: list[int] = []
            for _ in range(self.generation.redraw_unchanged):
                again = self.redraw_slots(slots, proposals, parents, again)
                if not again:
                    break
                redraws = {i: proposals[i].meta.get("redraws", 0) + 1 for i in again}
                self._draw(again, prompts, names, kinds, seed, proposals)
                for i, k in redraws.items():
                    proposals[i].meta["redraws"] = k
        return proposals  # type: ignore[return-value]

    def infeasible(self, proposal: Proposal, parent: str) -> bool:
        """Whether ``proposal`` is well written but proposes nothing new in the search space: it
        leaves ``parent`` as it was, changes the fixed training recipe (:data:`cem_nas.build.INFEASIBLE`)
        or, with ``seen`` installed, builds a file the run has seen. An answer that does not
        parse or apply is not: it is a failure of its own."""
        return bool(self.redraw_slots([0], [proposal], [parent]))

    def redraw_slots(self, slots: list[int], proposals: list, parents: list[str], last: Collection[int] = ()) -> list[int]:
        """The slots whose answers are drawn again: the infeasible ones (:meth:`infeasible`) and,
        with ``seen`` installed, an answer that builds the same file as another of the batch
        (equal by :func:`cem_nas.repeats.exact_key`, as the loop tells repeats): the loop would
        read it as a repeat of its sibling. Of equal files the one kept is an answer not drawn
        in the ``last`` round, then the first in slot order."""
        again, files = [], set()
        for i in sorted(slots, key=lambda i: i in last):
            built = build(parents[i], proposals[i], self.mode, self.scope)
            if built.status in INFEASIBLE:
                again.append(i)
            elif not built.status and self.seen is not None:
                key = exact_key(built.code)
                if key in files or self.seen(built.code):
                    again.append(i)
                files.add(key)
        return sorted(again)

    def _draw(self, slots: list[int], prompts: list[str], names: list[str], kinds: list[str], seed: int,
              proposals: list) -> None:
        """Generate one answer for each slot in ``slots`` (batches of ``generation.batch_size``)
        and put its proposal in ``proposals[slot]``."""
        size = self.generation.batch_size
        for start in range(0, len(slots), size):
            batch = slots[start : start + size]
            t0 = time.perf_counter()
            outs = self.generate([prompts[i] for i in batch])
            seconds = time.perf_counter() - t0
            for i, out in zip(batch, outs):
                delta, code, meta = self._extract(out.text, out.stop_reason)
                meta |= {"seed": seed, "batch_seconds": seconds, "batch_size": len(batch)}
                if kinds[i]:
                    meta["hint"] = kinds[i]
                spent = proposals[i].gen_seconds if proposals[i] is not None else 0.0
                proposals[i] = Proposal(
                    baseline=names[i], prompt=prompts[i], response=out.text,
                    delta=delta, code=code, prompt_tokens=out.prompt_tokens,
                    completion_tokens=out.completion_tokens, gen_seconds=spent + seconds / len(batch),
                    stop_reason=out.stop_reason, meta=meta, complete=True if delta is not None else None,
                )

    # -- the CE update -------------------------------------------------------------------
    @property
    def alpha(self) -> float:
        """The CE smoothing step ``lora.smoothing`` when it is < 1 (the hooks then check the
        smoothing identity with it); NaN without smoothing, where the step of a few SFT
        steps is unknown and the hooks report the implied alpha instead."""
        return float(self.lora.smoothing) if self.lora.smoothing < 1 else math.nan

    @property
    def neutral_diversity(self) -> float:
        """NaN: an LLM has no neutral control coordinate to read genetic drift off."""
        return math.nan

    def update(self, elites: list[Elite]) -> UpdateStats:
        """LoRA SFT toward ``elites``, with replay of past elites and corpus pairs.

        Each training example is drawn as: a past elite with probability ``replay_share``
        (when the buffer has any), a corpus pair with probability ``corpus_share``, else one
        of this cycle's elites. With ``lora.smoothing`` alpha < 1 the fitted adapter is then
        blended with the one before the update (:func:`~cem_nas.sampler.lora.smooth_parameters`).
        With hints, the distribution over kinds takes its smoothed CE step toward the
        elites' kinds (:class:`~cem_nas.sampler.hints.KindDistribution`).
        ``elite_nll_before/after`` is this cycle's elites' mean completion-token NLL
        before/after (the CE objective; after = of the adapter the next cycle samples from, on
        the prompts' keys/values of theta_t unless ``lora.exact_nll_after``);
        ``loss_before/after`` are the first and last step's batch losses. An elite's
        completion should be its canonical delta (see :meth:`completion_for`). The elites
        then join the replay buffer.
        """
        t0 = time.perf_counter()
        current, dropped = self._encode([(e.prompt, self.completion_for(e.completion)) for e in elites])
        if not current:
            return UpdateStats(examples=0, seconds=time.perf_counter() - t0)
        replayed, _ = self._encode([(r["prompt"], r["completion"]) for r in self.replay])
        corpus, _ = self._encode(self.corpus_examples()) if self.lora.corpus_share > 0 else ([], 0)
        share_r, share_c = self.lora.replay_share, self.lora.corpus_share
        # a step's corpus pairs come from one prompt, drawn by its number of pairs (each pair
        # as likely as before): one prefill per step instead of one per distinct corpus prompt
        corpus_groups = lora_sft.by_prompt(corpus)
        corpus_weights = np.array([len(g) for g in corpus_groups], dtype=float) / max(len(corpus), 1)

        def draw(rng: np.random.Generator) -> list:
            group = corpus_groups[int(rng.choice(len(corpus_groups), p=corpus_weights))] if corpus_groups else []
            batch = []
            for u in rng.random(self.lora.batch_size):
                pool = replayed if u < share_r and replayed else group if share_r <= u < share_r + share_c and group else current
                batch.append(pool[int(rng.integers(len(pool)))])
            return batch

        previous = lora_sft.trainable_state(self.model) if self.lora.smoothing < 1 else None
        # without exact_nll_after the elites' prompts keep theta_t's keys/values through the NLL after
        pin = (self.prompt_kv is not None and self.lora.fixed_context and not self.lora.prompt_grad
               and not self.lora.exact_nll_after)
        with self.progress.bar(self.lora.steps, "update (LoRA on the elites)", unit="step") as bar, \
                (self.prompt_kv.pinned(self.model) if pin else nullcontext()):
            before = self._nll(current, bar)
            bar.reset()
            with lora_sft.lora_dropout(self.model, self.lora.update_dropout):
                losses = self._train(draw, self.lora.steps, self.lora.lr, bar, self.lora.fixed_context)
            if previous is not None:
                lora_sft.smooth_parameters(self.model, previous, self.lora.smoothing)
            after = self._nll(current, bar)
        stats = _update_stats(losses, before, after, len(current), t0)
        if self.hints.enabled:
            self.kinds.update([e.meta["hint"] for e in elites if e.meta.get("hint")])
        self._remember(elites)
        self.updates += 1
        self._stale = True
        return stats

    def _remember(self, elites: list[Elite]) -> None:
        """Add elites to the replay buffer, keeping the ``replay_size`` best by score."""
        for e in elites:
            self.replay.append({
                "baseline": e.baseline, "prompt": e.prompt, "completion": self.completion_for(e.completion),
                "score": float(e.score), "cycle": int(e.cycle),
            })
        self.replay.sort(key=lambda r: -r["score"] if np.isfinite(r["score"]) else np.inf)
        del self.replay[self.lora.replay_size :]

    # -- resume ------------------------------------------------------------------------
    def state_dict(self) -> dict:
        """JSON-able state: replay buffer, counters, the update RNG (weights: see ``save``)."""
        return {
            "version": STATE_VERSION,
            "mode": self.mode,
            "model": self.loaded.name,
            "updates": self.updates,
            "warm_started": self.warm_started,
            "replay": [dict(r) for r in self.replay],
            "rng": self.rng.bit_generator.state,
            "kinds": self.kinds.state_dict(),
        }

    def load_state_dict(self, state: dict) -> None:
        if state.get("version") != STATE_VERSION:
            raise ValueError(f"sampler state version {state.get('version')!r} is not {STATE_VERSION}")
        if state["mode"] != self.mode:
            raise ValueError(f"state was saved in mode {state['mode']!r}, this sampler runs {self.mode!r}")
        self.updates = int(state["updates"])
        self.warm_started = bool(state["warm_started"])
        self.replay = [dict(r) for r in state["replay"]]
        self.rng.bit_generator.state = state["rng"]
        if "kinds" in state:  # saved before hints existed: the kind distribution stays uniform
            self.kinds.load_state_dict(state["kinds"])

    def save(self, directory: Path) -> None:
        """Write the LoRA adapter; ``PeftModel.from_pretrained(base, directory)`` reads it."""
        self.model.save_pretrained(str(directory))

    def load(self, directory: Path) -> None:
        """Load adapter weights written by :meth:`save` into this sampler's adapter."""
        from peft import set_peft_model_state_dict
        from peft.utils import load_peft_weights

        directory = Path(directory)
        config = json.loads((directory / "adapter_config.json").read_text())
        if config.get("r") != self.lora.rank:
            raise ValueError(f"adapter in {directory} has rank {config.get('r')}, this sampler uses {self.lora.rank}")
        weights = load_peft_weights(str(directory), device=self.loaded.device)
        result = set_peft_model_state_dict(self.model, weights)
        unexpected = getattr(result, "unexpected_keys", [])
        if unexpected:
            raise ValueError(f"adapter in {directory} does not match this model: unexpected keys {unexpected[:3]}")
        self.model.eval()
        self._stale = True
