"""Prompt keys/values kept while the adapter is unchanged, so a prompt is prefilled once per adapter.

A CE cycle prefills the same prompts several times under one adapter theta_t: the
generation prefills each baseline's prompt, then the update's elite NLL and its first
optimiser step prefill the prompts of the elites and of the drawn corpus pairs, which (with
fixed baselines) are the same files. Keys and values depend on the prompt and on the
weights only, so those of theta_t can be reused until a parameter changes.

A change is detected from the trainable parameters' in-place version counters
(``Tensor._version``, which every optimiser step, smoothing blend and ``load_state_dict``
bumps) and their identities, so no caller has to remember to invalidate.
"""
from __future__ import annotations

from contextlib import contextmanager
from typing import Iterator, Sequence


def adapter_state(model) -> tuple:
    """An identity of the model's trainable parameters' current values: ``(id, version)`` per
    parameter. It changes whenever one of them is written in place or replaced."""
    return tuple((id(p), p._version) for p in model.parameters() if p.requires_grad)


class PromptKV:
    """Per-layer ``(keys, values)`` of whole prompts, each ``(1, kv_heads, P, head_dim)``,
    valid for one adapter state; a lookup under another state empties the store.

    ``max_prompts`` and ``max_bytes`` bound the memory (a 900-token prompt is ~20 MB for
    SmolLM2-135M in bf16, ~120 MB for a 7B Llama with 8 KV heads in bf16; few-shot prompts are
    all distinct): past either, the oldest entries go.
    """

    def __init__(self, max_prompts: int = 64, max_bytes: int = 2 * 2**30):
        if max_prompts < 1 or max_bytes < 1:
            raise ValueError(f"max_prompts and max_bytes must be >= 1; got {max_prompts}, {max_bytes}")
        self.max_prompts, self.max_bytes = max_prompts, max_bytes
        self._state: tuple | None = None
        self._entries: dict[tuple, list[tuple]] = {}
        self._pinned = False
        self.hits = self.misses = 0

    @contextmanager
    def pinned(self, model) -> Iterator["PromptKV"]:
        """Within the block the entries stay valid whatever happens to the adapter: each
        prompt keeps the keys/values of the adapter under which it was first prefilled (the
        CE update's fixed context, ``LoRASettings.fixed_context``). After the block, the
        first lookup under an adapter that has moved since the entry empties the store, so
        a prompt prefilled under a later adapter inside the block is never served outside it.
        Blocks nest: an inner block's end leaves the outer one pinned."""
        self._check(model)
        outer, self._pinned = self._pinned, True
        try:
            yield self
        finally:
            self._pinned = outer

    def _check(self, model) -> None:
        if self._pinned:
            return
        state = adapter_state(model)
        if state != self._state:
            self._entries.clear()
            self._state = state

    def get(self, model, prompt: Sequence[int], length: int) -> list[tuple] | None:
        """The layers' keys/values of the first ``length`` tokens of ``prompt`` under
        ``model``'s current weights, or None when not stored (or the weights changed)."""
        if not self.holds(model, prompt, length):
            self.misses += 1
            return None
        self.hits += 1
        return [(k[:, :, :length], v[:, :, :length]) for k, v in self._entries[tuple(prompt)]]

    def holds(self, model, prompt: Sequence[int], length: int) -> bool:
        """Whether :meth:`get` would return the first ``length`` tokens' keys/values (not counted)."""
        self._check(model)
        layers = self._entries.get(tuple(prompt))
        return layers is not None and layers[0][0].shape[2] >= length

    def put(self, model, prompt: Sequence[int], layers: list[tuple]) -> None:
        """Store the layers' keys/values of (a leading part of) ``prompt`` under the current weights."""
        self._check(model)
        key = tuple(prompt)
        old = self._entries.pop(key, None)
        if old is not None and old[0][0].shape[2] > layers[0][0].shape[2]:
            layers = old  # keep the longer one
        self._entries[key] = layers
        while len(self._entries) > 1 and (len(self._entries) > self.max_prompts or self.nbytes() > self.max_bytes):
            self._entries.pop(next(iter(self._entries)))

    def nbytes(self) -> int:
        """Bytes the stored keys and values take."""
        return sum(t.numel() * t.element_size() for layers in self._entries.values() for kv in layers for t in kv)
