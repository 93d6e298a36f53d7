"""LoRA supervised fine-tuning with the loss on the completion only (the CE step's engine).

An example is a (prompt, completion) pair of strings. Tokens of the prompt get the label
-100, so the objective is the completion's negative log-likelihood given the prompt,
``NLL = -(1/T) sum_t log p_theta(y_t | prompt, y_<t)`` over the T completion tokens:
exactly the quantity the CE update maximises the likelihood of (the elites' completions).
"""
from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Callable, Sequence

import numpy as np

IGNORE = -100  # label that cross_entropy skips (prompt and padding positions)


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
    """Dropout on the LoRA branch input during training."""
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
    replay_size: int = 64
    """How many elites from earlier cycles the replay buffer keeps (best scores kept)."""
    replay_share: float = 0.25
    """Share of each update batch drawn from the replay buffer (past elites)."""
    corpus_share: float = 0.25
    """Share of each update batch drawn from the warm-start corpus, to keep the format."""

    def __post_init__(self) -> None:
        if self.rank < 1 or self.steps < 0 or self.batch_size < 1 or self.max_length < 2:
            raise ValueError(f"LoRASettings needs rank>=1, steps>=0, batch_size>=1, max_length>=2; got {self}")
        if not (0 <= self.replay_share and 0 <= self.corpus_share and self.replay_share + self.corpus_share < 1):
            raise ValueError(
                "replay_share and corpus_share must be >= 0 with a sum below 1 (the rest are this "
                f"cycle's elites); got {self.replay_share} and {self.corpus_share}"
            )

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


def collate(encoded: Sequence[tuple[list[int], list[int]]], pad_id: int, device) -> dict:
    """Right-pad a list of encoded examples into ``input_ids``, ``attention_mask``, ``labels``."""
    import torch

    width = max(len(ids) for ids, _ in encoded)
    ids = torch.full((len(encoded), width), pad_id, dtype=torch.long)
    labels = torch.full((len(encoded), width), IGNORE, dtype=torch.long)
    mask = torch.zeros((len(encoded), width), dtype=torch.long)
    for row, (x, y) in enumerate(encoded):
        ids[row, : len(x)] = torch.tensor(x)
        labels[row, : len(y)] = torch.tensor(y)
        mask[row, : len(x)] = 1
    return {"input_ids": ids.to(device), "attention_mask": mask.to(device), "labels": labels.to(device)}


def token_nll_sums(model, batch: dict) -> tuple[object, int]:
    """Summed NLL over the labelled (completion) tokens of a batch and their count.

    Logits at position t predict token t+1, hence the shift.
    """
    import torch.nn.functional as F

    logits = model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits
    target = batch["labels"][:, 1:]
    nll = F.cross_entropy(
        logits[:, :-1].reshape(-1, logits.shape[-1]).float(), target.reshape(-1),
        ignore_index=IGNORE, reduction="sum",
    )
    return nll, int((target != IGNORE).sum())


def mean_completion_nll(model, encoded: Sequence, pad_id: int, device, batch_size: int = 4) -> float:
    """Mean NLL per completion token (nats) of ``encoded`` examples, without gradients.

    ``mean = sum_i sum_t nll_it / sum_i T_i`` (pooled over tokens, as the training loss).
    """
    import torch

    if not encoded:
        return float("nan")
    was_training = model.training
    model.eval()
    total, count = 0.0, 0
    with torch.no_grad():
        for start in range(0, len(encoded), batch_size):
            s, n = token_nll_sums(model, collate(encoded[start : start + batch_size], pad_id, device))
            total, count = total + float(s), count + n
    model.train(was_training)
    return total / max(count, 1)


def train_steps(
    model,
    draw_batch: Callable[[np.random.Generator], list],
    steps: int,
    lr: float,
    pad_id: int,
    device,
    rng: np.random.Generator,
    grad_clip: float = 1.0,
) -> list[float]:
    """Run ``steps`` AdamW steps on the trainable (LoRA) parameters; return each step's loss.

    ``draw_batch(rng)`` returns the encoded examples of one step. The loss of a step is the
    token-pooled mean completion NLL of its batch. Torch's RNG (LoRA dropout) is seeded
    from ``rng`` inside a forked RNG state so the caller's global torch state is untouched.
    """
    import torch

    params = [p for p in model.parameters() if p.requires_grad]
    if not params:
        raise ValueError("the model has no trainable parameters; wrap it with a LoRA adapter first")
    optimizer = torch.optim.AdamW(params, lr=lr, weight_decay=0.0)
    losses = []
    devices = [torch.device(device).index or 0] if str(device).startswith("cuda") else []
    with torch.random.fork_rng(devices=devices):
        torch.manual_seed(int(rng.integers(2**62)))
        model.train()
        for _ in range(steps):
            nll, count = token_nll_sums(model, collate(draw_batch(rng), pad_id, device))
            loss = nll / max(count, 1)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            if grad_clip > 0:
                torch.nn.utils.clip_grad_norm_(params, grad_clip)
            optimizer.step()
            losses.append(float(loss.detach()))
        model.eval()
    return losses
