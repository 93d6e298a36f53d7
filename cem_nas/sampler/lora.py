"""LoRA supervised fine-tuning with the loss on the completion only (the CE step's engine).

An example is a (prompt, completion) pair of strings. Tokens of the prompt get the label
-100, so the objective is the completion's negative log-likelihood given the prompt,
``NLL = -(1/T) sum_t log p_theta(y_t | prompt, y_<t)`` over the T completion tokens:
exactly the quantity the CE update maximises the likelihood of (the elites' completions).
"""
from __future__ import annotations

import logging
from contextlib import contextmanager, nullcontext
from dataclasses import asdict, dataclass, field
from typing import Callable, Iterator, Sequence

import numpy as np

IGNORE = -100  # label that cross_entropy skips (prompt and padding positions)
#: Version of the training path (the loss and how its prompts are encoded), part of the
#: warm-start cache key: the same seed and settings train another adapter when it changes.
#: 2: prompts prefilled in eval mode with the adapter folded, no dropout on them.
TRAINER_VERSION = 2
log = logging.getLogger(__name__)


def _default_targets() -> list[str]:
    return ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]


@dataclass
class LoRASettings:
    """The adapter and the CE update's optimisation."""

    rank: int = 16
    """LoRA rank r of each adapted weight."""
    alpha: float = 32.0
    """LoRA scaling numerator: the update is scaled by alpha / rank."""
    dropout: float = 0.05
    """Dropout on the LoRA branch input during training (the warm start; the CE update
    uses update_dropout)."""
    update_dropout: float = 0.0
    """Dropout on the LoRA branch input during the CE update's steps, in [0, ``dropout``]
    (peft builds no dropout module when that is 0). 0 by default: a 2-step update smoothed
    toward theta_t and mixed with corpus pairs needs no more noise, and on CPU the dropout
    masks cost a fifth of a step's forward (evidence: docs/results.md#update-dropout)."""
    target_modules: list[str] = field(default_factory=_default_targets)
    """Names of the linear modules that get adapters (Llama/Qwen/Mistral naming)."""
    lr: float = 2e-4
    """AdamW learning rate of the CE update."""
    steps: int = 8
    """Optimiser steps per CE update (per cycle)."""
    batch_size: int = 4
    """Examples per optimiser step."""
    max_length: int = 2048
    """Longest tokenised prompt+completion trained on; longer ones are skipped (and counted)."""
    grad_clip: float = 1.0
    """Clip the global gradient norm to this value (0 disables)."""
    fixed_context: bool = True
    """With prompt_grad False: the CE update encodes each prompt once, under the adapter
    current when it is first needed (theta_t for this cycle's generation), and keeps those
    keys and values through its steps, saving one prefill per prompt and step after the
    first. False re-encodes every step's prompts under that step's adapter (the exact loss).
    The warm start always re-encodes. Evidence: docs/results.md#fixed-context."""
    exact_nll_after: bool = False
    """Measure the update's ``elite_nll_after`` with the elites' prompts prefilled again under
    the updated adapter: the exact NLL of the adapter the next cycle samples from, at one
    prompt prefill per distinct elite prompt. False (with fixed_context) keeps the keys and
    values of theta_t the update trained on, so before and after differ through the
    completion positions only: the objective the update's steps minimise, without those
    prefills. Evidence for the difference: docs/results.md#update-time."""
    prompt_grad: bool = False
    """Backpropagate through the prompt positions too. False (default) encodes each
    distinct prompt once without gradient and trains through the completion positions
    only: the same loss, several times cheaper when prompts are long (the baseline
    file) and completions short (a delta), as on CPU; set True for the exact gradient."""
    replay_size: int = 64
    """How many elites from earlier cycles the replay buffer keeps (best scores kept)."""
    replay_share: float = 0.25
    """Share of each update batch drawn from the replay buffer (past elites)."""
    corpus_share: float = 0.25
    """Share of each update batch drawn from the warm-start corpus, to keep the format."""
    smoothing: float = 1.0
    """CE smoothing step alpha on the adapter itself: after the update's steps fit
    theta_fit, the adapter becomes alpha * theta_fit + (1 - alpha) * theta_t (each LoRA
    matrix blended separately); 1 keeps theta_fit. The sampler reports it as its alpha
    for the hooks' smoothing-identity check. In (0, 1]."""

    def __post_init__(self) -> None:
        if self.rank < 1 or self.steps < 0 or self.batch_size < 1 or self.max_length < 2:
            raise ValueError(f"LoRASettings needs rank>=1, steps>=0, batch_size>=1, max_length>=2; got {self}")
        if not (0 <= self.replay_share and 0 <= self.corpus_share and self.replay_share + self.corpus_share < 1):
            raise ValueError(
                "replay_share and corpus_share must be >= 0 with a sum below 1 (the rest are this "
                f"cycle's elites); got {self.replay_share} and {self.corpus_share}"
            )
        if not 0 <= self.update_dropout <= self.dropout < 1:
            raise ValueError(
                f"LoRASettings needs 0 <= update_dropout <= dropout < 1 (peft builds no dropout when dropout is 0); "
                f"got update_dropout={self.update_dropout}, dropout={self.dropout}"
            )
        if not 0 < self.smoothing <= 1:
            raise ValueError(f"smoothing is the CE step alpha in (0, 1] (1: no smoothing); got {self.smoothing}")

    def adapter_fields(self) -> dict:
        """The fields that define the adapter's shape (part of the warm-start cache key)."""
        d = asdict(self)
        return {k: d[k] for k in ("rank", "alpha", "dropout", "target_modules")}


def lora_config(settings: LoRASettings, model) -> object:
    """A peft LoraConfig for ``model``, keeping only target modules the model really has."""
    from peft import LoraConfig

    present = {name.rsplit(".", 1)[-1] for name, _ in model.named_modules()}
    targets = [t for t in settings.target_modules if t in present]
    if not targets:
        raise ValueError(
            f"none of the LoRA target modules {settings.target_modules} exist in this model; "
            f"set LoRASettings.target_modules to some of its linear layers"
        )
    return LoraConfig(
        r=settings.rank,
        lora_alpha=settings.alpha,
        lora_dropout=settings.dropout,
        target_modules=targets,
        bias="none",
        task_type="CAUSAL_LM",
    )


@contextmanager
def lora_folded(model) -> Iterator[None]:
    """Run ``model`` (a peft model) with each LoRA-adapted weight replaced by
    ``W + scaling * B @ A`` (computed in float32, kept in W's dtype) and the adapters
    switched off; afterwards the original weight tensors are put back untouched.

    A decode step then costs the base model's matmuls only: with rank-16 adapters on the 7
    projections the adapter branches are 2 of every 3 matmul calls of a step (420 of 630
    for SmolLM2, torch.profiler). Costs one copy of the adapted weights while it lasts.
    """
    import torch

    from peft.tuners.lora import LoraLayer

    layers = [m for m in model.modules() if isinstance(m, LoraLayer) and not m.merged and not m.disable_adapters]
    swapped = []
    try:
        with torch.no_grad():
            for m in layers:
                base = m.get_base_layer()
                delta = sum(m.get_delta_weight(name).float() for name in m.active_adapters if name in m.lora_A)
                swapped.append((m, base, base.weight.data))
                base.weight.data = (base.weight.data.float() + delta).to(base.weight.dtype)
                m._disable_adapters = True
        yield
    finally:
        for m, base, original in swapped:
            m._disable_adapters = False
            base.weight.data = original


@contextmanager
def lora_dropout(model, p: float) -> Iterator[None]:
    """Run ``model`` (a peft model) with every LoRA branch's dropout probability set to ``p``;
    afterwards each is put back."""
    import torch

    from peft.tuners.lora import LoraLayer

    drops = [d for m in model.modules() if isinstance(m, LoraLayer)
             for d in m.lora_dropout.values() if isinstance(d, torch.nn.Dropout)]
    before = [d.p for d in drops]
    try:
        for d in drops:
            d.p = p
        yield
    finally:
        for d, q in zip(drops, before):
            d.p = q


def encode_prompt(tokenizer, prompt: str) -> list[int]:
    """Token ids of a rendered prompt.

    A chat-templated prompt already contains its special tokens as text, so none are
    added then; a plain prompt gets the tokenizer's usual ones (e.g. BOS).
    """
    special = not getattr(tokenizer, "chat_template", None)
    return list(tokenizer(prompt, add_special_tokens=special)["input_ids"])


def encode_example(tokenizer, prompt: str, completion: str) -> tuple[list[int], list[int]]:
    """``(input_ids, labels)`` for one pair; prompt positions are labelled ``IGNORE``.

    The completion ends with EOS so that the model learns to stop after its block.
    """
    p = encode_prompt(tokenizer, prompt)
    c = list(tokenizer(completion, add_special_tokens=False)["input_ids"]) + [tokenizer.eos_token_id]
    return p + c, [IGNORE] * len(p) + c


def by_prompt(encoded: Sequence[tuple[list[int], list[int]]]) -> list[list]:
    """``encoded`` examples grouped by their prompt, groups in order of first appearance:
    the examples of one group share one prompt prefill (:func:`completion_nll_sum`)."""
    groups: dict[tuple, list] = {}
    for e in encoded:
        groups.setdefault(tuple(e[0][: prompt_length(e[1])]), []).append(e)
    return list(groups.values())


def prompt_length(labels: Sequence[int]) -> int:
    """Number of leading prompt positions (labelled ``IGNORE``) of an encoded example."""
    return next((i for i, y in enumerate(labels) if y != IGNORE), len(labels))


def collate(encoded: Sequence[tuple[list[int], list[int]]], pad_id: int, device) -> dict:
    """Left-pad encoded examples into ``input_ids``, ``attention_mask``, ``labels``, ``position_ids``.

    Left padding puts every completion at the end of its row, so the logits are only
    needed for the last ``keep`` positions (``keep`` = longest completion + 1): the
    prompt positions never pay for the vocabulary projection. Position ids count real
    tokens only, so a padded row is computed as if it were alone.
    """
    import torch

    width = max(len(ids) for ids, _ in encoded)
    ids = torch.full((len(encoded), width), pad_id, dtype=torch.long)
    labels = torch.full((len(encoded), width), IGNORE, dtype=torch.long)
    mask = torch.zeros((len(encoded), width), dtype=torch.long)
    for row, (x, y) in enumerate(encoded):
        ids[row, width - len(x) :] = torch.tensor(x)
        labels[row, width - len(y) :] = torch.tensor(y)
        mask[row, width - len(x) :] = 1
    keep = max(len(y) - prompt_length(y) for _, y in encoded) + 1
    positions = (mask.cumsum(1) - 1).clamp(min=0)
    to = {"input_ids": ids, "attention_mask": mask, "labels": labels, "position_ids": positions}
    return {k: v.to(device) for k, v in to.items()} | {"keep": min(keep, width)}


def _nll_full(model, encoded: Sequence, pad_id: int, device) -> tuple[object, int]:
    """Summed completion NLL with gradients through every position (prompt included)."""
    import torch.nn.functional as F

    batch = collate(encoded, pad_id, device)
    keep = batch["keep"]
    logits = model(
        input_ids=batch["input_ids"], attention_mask=batch["attention_mask"],
        position_ids=batch["position_ids"], logits_to_keep=keep,
    ).logits
    # logits at position t predict token t+1: the kept window [W-keep, W) predicts [W-keep+1, W)
    target = batch["labels"][:, -keep + 1 :] if keep > 1 else batch["labels"][:, :0]
    nll = F.cross_entropy(
        logits[:, :-1].reshape(-1, logits.shape[-1]).float(), target.reshape(-1), ignore_index=IGNORE, reduction="sum"
    )
    return nll, int((target != IGNORE).sum())


def _prompt_caches(model, prompts: Sequence[tuple], k: Sequence[int], device, prompt_kv=None) -> list:
    """Key/value caches of each prompt but its last token, repeated ``k[j]`` times, without gradient.

    The prefill runs with the adapter folded into the weights and the model in eval mode:
    it is a detached context, so LoRA dropout would only add noise to it, and the folded
    weights make it cost the base model's matmuls (under a third of a train-mode forward with the
    adapter branches and all positions' logits: docs/results.md#update-prefill).
    Only the last position's logits are computed. A prompt already in
    ``prompt_kv`` (a :class:`~cem_nas.sampler.prompt_kv.PromptKV`: prefilled under the same
    adapter, e.g. by this cycle's generation) is not prefilled again, new ones are added,
    and when every prompt is stored the adapter is not folded at all.
    """
    import torch

    stored = [prompt_kv.get(model, p, len(p) - 1) if prompt_kv is not None and len(p) > 1 else None for p in prompts]
    missing = [j for j, p in enumerate(prompts) if stored[j] is None and len(p) > 1]
    if missing:  # folding copies every adapted weight: only worth it for a prefill
        was_training = model.training
        try:
            model.eval()
            with torch.no_grad(), lora_folded(model):
                for j in missing:
                    out = model(input_ids=torch.tensor([prompts[j][:-1]], device=device), use_cache=True, logits_to_keep=1)
                    stored[j] = [(layer.keys, layer.values) for layer in out.cache.layers]
                    if prompt_kv is not None:
                        prompt_kv.put(model, prompts[j], stored[j])
        finally:
            model.train(was_training)
    return [None if layers is None else cache_of(model, layers, copies) for layers, copies in zip(stored, k)]


def cache_of(model, layers: Sequence[tuple], copies: int = 1):
    """A ``DynamicCache`` holding per-layer ``(keys, values)`` of one prompt, each repeated
    ``copies`` times along the batch (copies: the stored tensors are left as they are)."""
    from transformers import DynamicCache

    cache = DynamicCache(config=model.config)
    for i, (keys, values) in enumerate(layers):
        cache.update(keys.repeat_interleave(copies, 0), values.repeat_interleave(copies, 0), i)
    return cache


def _nll_shared_prompt(model, encoded: Sequence, pad_id: int, device, prompt_kv=None) -> tuple[object, int]:
    """Summed completion NLL, the prompt encoded once per distinct prompt and without gradient.

    Examples are grouped by prompt; each group's prompt (minus its last token) runs once
    (:func:`_prompt_caches`) and its key/value cache is repeated over the group's
    completions, which run with gradients. In eval mode the loss value equals
    :func:`_nll_full`'s (up to the rounding of the folded weights); the gradient omits the
    path through the prompt tokens' keys and values (their LoRA terms), which makes a step
    cost about the completions' length instead of prompt + completion.
    """
    import torch
    import torch.nn.functional as F

    groups = by_prompt(encoded)
    prompts = [tuple(ids[: prompt_length(labels)]) for ids, labels in (g[0] for g in groups)]
    if not all(prompts):
        raise ValueError("an example needs at least one prompt token")
    caches = _prompt_caches(model, prompts, [len(g) for g in groups], device, prompt_kv)
    total, count = None, 0
    for prompt, group, cache in zip(prompts, groups, caches):
        completions = [ids[len(prompt) :] for ids, _ in group]
        k = len(completions)
        width = max(len(c) for c in completions) + 1
        ids = torch.full((k, width), pad_id, dtype=torch.long)
        labels = torch.full((k, width), IGNORE, dtype=torch.long)
        mask = torch.zeros((k, len(prompt) - 1 + width), dtype=torch.long)
        mask[:, : len(prompt) - 1] = 1
        for row, c in enumerate(completions):
            ids[row, : len(c) + 1] = torch.tensor([prompt[-1], *c])
            labels[row, : len(c)] = torch.tensor(c)
            mask[row, len(prompt) - 1 : len(prompt) + len(c)] = 1
        logits = model(
            input_ids=ids.to(device), attention_mask=mask.to(device), cache=cache, use_cache=cache is not None
        ).logits
        nll = F.cross_entropy(
            logits.reshape(-1, logits.shape[-1]).float(), labels.to(device).reshape(-1), ignore_index=IGNORE, reduction="sum"
        )
        total = nll if total is None else total + nll
        count += int((labels != IGNORE).sum())
    return total, count


def completion_nll_sum(
    model, encoded: Sequence, pad_id: int, device, prompt_grad: bool = True, prompt_kv=None
) -> tuple[object, int]:
    """Summed NLL over the completion tokens of ``encoded`` examples, and their count.

    ``sum_i sum_t -log p(y_it | prompt_i, y_i,<t)``; ``prompt_grad=False`` uses the
    shared-prompt path (same value, cheaper, gradient only through completion positions),
    which takes prompts already prefilled under the current adapter from ``prompt_kv``.
    """
    if not encoded:
        raise ValueError("completion_nll_sum needs at least one example")
    if prompt_grad:
        return _nll_full(model, encoded, pad_id, device)
    return _nll_shared_prompt(model, encoded, pad_id, device, prompt_kv)


def mean_completion_nll(model, encoded: Sequence, pad_id: int, device, batch_size: int = 4, prompt_kv=None) -> float:
    """Mean NLL per completion token (nats) of ``encoded`` examples, without gradients.

    ``mean = sum_i sum_t nll_it / sum_i T_i`` (pooled over tokens, as the training loss).
    Uses the shared-prompt path: without gradients it gives the same value, cheaper. The
    adapter is folded into the weights only when a prompt has to be prefilled: for the
    completions alone, copying every adapted weight costs more than the adapter branches.
    """
    import torch

    if not encoded:
        return float("nan")
    prompts = {tuple(ids[: prompt_length(labels)]) for ids, labels in encoded}
    fold = prompt_kv is None or not all(prompt_kv.holds(model, p, len(p) - 1) for p in prompts)
    was_training = model.training
    model.eval()
    total, count = 0.0, 0
    with torch.no_grad(), (lora_folded(model) if fold else nullcontext()):
        for start in range(0, len(encoded), batch_size):
            s, n = completion_nll_sum(model, encoded[start : start + batch_size], pad_id, device, False, prompt_kv)
            total, count = total + float(s), count + n
    model.train(was_training)
    return total / max(count, 1)


def trainable_state(model) -> dict:
    """Copies of the trainable (LoRA) parameters by name: theta_t before an update."""
    return {name: p.detach().clone() for name, p in model.named_parameters() if p.requires_grad}


def smooth_parameters(model, previous: dict, alpha: float) -> None:
    """In place: theta <- alpha * theta + (1 - alpha) * previous, for every trainable parameter.

    The CE smoothing step ``theta_{t+1} = alpha theta_fit + (1 - alpha) theta_t``
    ("smoothed updating", de Boer, Kroese, Mannor & Rubinstein, A Tutorial on the
    Cross-Entropy Method, Ann. Oper. Res. 134, 2005). On a LoRA adapter the blend is per
    matrix (A and B), so the weight change B A is not the blend of the two products.

    >>> import torch
    >>> m = torch.nn.Linear(1, 1, bias=False)
    >>> before = trainable_state(m)
    >>> with torch.no_grad():
    ...     _ = m.weight.add_(1.0)
    >>> smooth_parameters(m, before, 0.25)
    >>> round(float(m.weight - before["weight"]), 6)
    0.25
    """
    import torch

    if not 0 < alpha <= 1:
        raise ValueError(f"alpha must be in (0, 1]; got {alpha}")
    with torch.no_grad():
        for name, p in model.named_parameters():
            if p.requires_grad:
                p.mul_(alpha).add_(previous[name].to(p.device, p.dtype), alpha=1 - alpha)


def train_steps(
    model,
    draw_batch: Callable[[np.random.Generator], list],
    steps: int,
    lr: float,
    pad_id: int,
    device,
    rng: np.random.Generator,
    grad_clip: float = 1.0,
    prompt_grad: bool = True,
    on_step: Callable[[int, float], None] | None = None,
    prompt_kv=None,
    fixed_context: bool = False,
) -> list[float]:
    """Run ``steps`` AdamW steps on the trainable (LoRA) parameters; return each step's loss.

    ``on_step(step, loss)`` is called after every step (1-based), e.g. for a progress bar.

    ``draw_batch(rng)`` returns the encoded examples of one step. The loss of a step is the
    token-pooled mean completion NLL of its batch (``prompt_grad``: see
    :func:`completion_nll_sum`; ``prompt_kv`` serves the first step's prompts when they
    were prefilled under the adapter the update starts from; with ``fixed_context`` every
    step's, see :attr:`LoRASettings.fixed_context`). Torch's RNG (LoRA dropout) is seeded
    from ``rng`` inside a forked RNG state so the caller's global torch state is untouched.
    """
    import torch

    params = [p for p in model.parameters() if p.requires_grad]
    if not params:
        raise ValueError("the model has no trainable parameters; wrap it with a LoRA adapter first")
    optimizer = torch.optim.AdamW(params, lr=lr, weight_decay=0.0)
    pin = fixed_context and not prompt_grad
    if pin and prompt_kv is None:
        from cem_nas.sampler.prompt_kv import PromptKV

        prompt_kv = PromptKV()
    losses = []
    devices = [torch.device(device).index or 0] if str(device).startswith("cuda") else []
    pinned = prompt_kv.pinned(model) if pin else nullcontext()
    with torch.random.fork_rng(devices=devices), pinned:
        torch.manual_seed(int(rng.integers(2**62)))
        model.train()
        for _ in range(steps):
            nll, count = completion_nll_sum(model, draw_batch(rng), pad_id, device, prompt_grad, prompt_kv)
            loss = nll / max(count, 1)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            if grad_clip > 0:
                torch.nn.utils.clip_grad_norm_(params, grad_clip)
            optimizer.step()
            losses.append(float(loss.detach()))
            log.info("LoRA step %d/%d: loss %.4f over %d completion tokens", len(losses), steps, losses[-1], count)
            if on_step is not None:
                on_step(len(losses), losses[-1])
        model.eval()
    return losses
