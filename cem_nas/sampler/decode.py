"""Shared-prefix decoding: k completions of one prompt from one prompt encoding.

Proposals of a cycle share few prompts (one per baseline), so the decode loop here
prefills each distinct prompt once and keeps its keys/values once, as a *prefix* of
shape (groups, kv_heads, prompt_len, head_dim). Every decode step feeds one token per
row; a row's attention is split into the prefix part (one batched matmul per layer
against the shared prefix, the query heads of a grouped-query model folded onto their
key/value head, so no key/value head is ever expanded or copied per row) and the part
over its own generated tokens (a preallocated per-row buffer written in place, never
concatenated). The two parts share one softmax, so the result is exact attention.

It plugs into any transformers model whose attention goes through
``ALL_ATTENTION_FUNCTIONS`` (Llama, Mistral, Qwen2/3, ...): during decoding the model's
attention implementation is switched to :data:`ATTENTION_NAME`, and the model is called
without a transformers cache, with explicit position ids and the :class:`PrefixKV` state
passed as the keyword ``shared_prefix`` (transformers hands unknown keywords through to
the attention function).

Rows stop on EOS, on a stop test (the fenced answer closed) or at the token limit, and
the stop reason is returned per row. Finished rows are dropped from the batch whenever
that shrinks the (groups x rows-per-group) layout, so a step costs what the live rows
cost.
"""
from __future__ import annotations

from contextlib import contextmanager, nullcontext
from dataclasses import dataclass
from typing import Callable, Iterator, Sequence

from cem_nas.sampler.lora import cache_of, lora_folded

ATTENTION_NAME = "cem_shared_prefix"
#: Model families whose attention modules follow the Llama layout this loop relies on.
SUPPORTED_MODEL_TYPES = ("llama", "mistral", "qwen2", "qwen3", "olmo", "olmo2", "granite")

STOP_EOS, STOP_FENCE, STOP_HUNKS, STOP_LENGTH = "eos", "fence", "hunks", "length"
#: Why a completion ended: EOS (or pad) token, the stop test (fenced block closed, or a hunk
#: begun past the sampler's max_hunks), token limit.
STOP_REASONS = (STOP_EOS, STOP_FENCE, STOP_HUNKS, STOP_LENGTH)


@dataclass
class SamplingRule:
    """How the next token is drawn from a row's logits (transformers' order of processors)."""

    temperature: float = 1.0
    """0 means greedy (argmax)."""
    top_p: float = 1.0
    """Nucleus mass kept (1.0: all)."""
    top_k: int = 0
    """Keep the k largest logits (0: no cut)."""
    repetition_penalty: float = 1.0
    """CTRL-style penalty on tokens already in the row (prompt included); 1.0: none."""


def supports_shared_prefix(model) -> str:
    """Empty when :func:`decode` can drive ``model``, else why not (the caller falls back)."""
    config = getattr(model, "config", None)
    kind = getattr(config, "model_type", None)
    if kind not in SUPPORTED_MODEL_TYPES:
        return f"model type {kind!r} is not one of {SUPPORTED_MODEL_TYPES}"
    if getattr(config, "sliding_window", None) and getattr(config, "use_sliding_window", True):
        return "sliding-window attention"
    if getattr(config, "attn_logit_softcapping", None):
        return "attention logit soft-capping"
    return ""


#: Largest logits examined before falling back to a full sort for the nucleus.
CANDIDATES = 256


def next_tokens(logits, rule: SamplingRule, generator, seen=None):
    """One token per row of ``logits`` (rows x vocab, float32) under ``rule``.

    ``seen`` (rows x vocab bool) marks tokens the repetition penalty applies to. Top-p keeps
    the smallest set of tokens whose probability reaches ``top_p`` (at least one), as
    transformers' TopPLogitsWarper does. The nucleus is looked for among the
    :data:`CANDIDATES` largest logits (a full sort of the vocabulary only when some row's
    nucleus is wider), and a token is drawn by inverse CDF with one uniform per row: on a
    CPU a full-vocabulary sort and multinomial cost far more than the decode step's
    candidates (docs/results.md#top-p).
    """
    import torch

    if rule.repetition_penalty != 1.0 and seen is not None:
        p = rule.repetition_penalty
        logits = torch.where(seen, torch.where(logits < 0, logits * p, logits / p), logits)
    if rule.temperature == 0:
        return logits.argmax(-1)
    logits = logits / rule.temperature
    vocab = logits.shape[-1]
    k = min(rule.top_k, vocab) if rule.top_k else vocab
    if rule.top_p >= 1.0 and k == vocab:  # the whole distribution
        return _inverse_cdf(logits.softmax(-1), None, generator)
    width = k if k < vocab or rule.top_p >= 1.0 else min(CANDIDATES, vocab)
    # without a top-k cut the nucleus is normalised over the whole vocabulary: one fused
    # softmax, then the largest probabilities (2.3 + 7.6 ms at 50 rows x 152k tokens on this
    # CPU, against 5.2 ms more for a separate logsumexp over the logits)
    ranked = logits if k < vocab else logits.softmax(-1)
    while True:
        values, index = torch.topk(ranked, width, dim=-1)  # descending
        probs = (values - torch.logsumexp(values, -1, keepdim=True)).exp() if k < vocab else values
        if rule.top_p >= 1.0:
            break
        keep = probs.cumsum(-1) - probs < rule.top_p  # the mass ranked above a token is below top_p
        if width == k or bool((probs.sum(-1) >= rule.top_p).all()):
            probs = probs * keep
            break
        width = k  # some row's nucleus reaches past the candidates
    return _inverse_cdf(probs, index, generator)


def _inverse_cdf(probs, index, generator):
    """A draw per row from (unnormalised) ``probs``; ``index`` maps columns to token ids."""
    import torch

    cdf = probs.cumsum(-1)
    u = torch.rand(cdf.shape[0], 1, generator=generator, device=cdf.device, dtype=cdf.dtype) * cdf[:, -1:]
    col = torch.searchsorted(cdf, u, right=True).clamp_(max=cdf.shape[-1] - 1)
    return (col if index is None else index.gather(1, col))[:, 0]


class PrefixKV:
    """Keys/values of the shared prompts and of each row's generated tokens, per layer.

    Rows are laid out as ``groups x per_group`` (row ``j * per_group + i`` is the i-th row
    of prompt group j); a row past its group's live rows repeats a live row and is ignored.
    """

    def __init__(self, prefix: list[tuple], lengths: Sequence[int], per_group: int, max_new: int):
        import torch

        self.prefix = prefix  # per layer: (keys, values), each (groups, kv_heads, P_max, head_dim)
        self.per_group, self.step = per_group, 0
        keys = prefix[0][0]
        groups, heads, width, dim = keys.shape
        rows = groups * per_group
        self.suffix = [(keys.new_zeros(rows, heads, max_new, dim), keys.new_zeros(rows, heads, max_new, dim))
                       for _ in prefix]
        lengths_t = torch.tensor(list(lengths), device=keys.device)
        # additive mask of the padded prefix positions (None when all prompts are equally long)
        pad = torch.arange(width, device=keys.device)[None, :] >= lengths_t[:, None]
        self.bias = None if not bool(pad.any()) else keys.new_zeros(pad.shape, dtype=torch.float32).masked_fill(
            pad, float("-inf"))[:, None, None, :]

    def select(self, groups, rows, per_group: int) -> None:
        """Keep prefix ``groups`` and suffix ``rows`` (indices into the current layout)."""
        self.prefix = [(k.index_select(0, groups), v.index_select(0, groups)) for k, v in self.prefix]
        self.suffix = [(k.index_select(0, rows), v.index_select(0, rows)) for k, v in self.suffix]
        if self.bias is not None:
            self.bias = self.bias.index_select(0, groups)
        self.per_group = per_group

    def attend(self, layer: int, query, key, value, scaling: float):
        """Exact attention of one new token per row over its prefix and its own suffix.

        ``query`` (rows, heads, 1, d); ``key``/``value`` (rows, kv_heads, 1, d), written
        into the suffix buffer at the current step. Returns (rows, 1, heads, d).
        """
        import torch

        pk, pv = self.prefix[layer]
        sk, sv = self.suffix[layer]
        t = self.step
        sk[:, :, t] = key[:, :, 0]
        sv[:, :, t] = value[:, :, 0]
        groups, kv_heads, width, dim = pk.shape
        rows, heads = query.shape[0], query.shape[1]
        rep, k = heads // kv_heads, self.per_group
        q = query.reshape(groups, k, kv_heads, rep, dim)
        # prefix part: the group's rows x query heads of one kv head against that head's keys
        qp = q.permute(0, 2, 1, 3, 4).reshape(groups, kv_heads, k * rep, dim)
        scores_p = (qp @ pk.transpose(-1, -2)).float() * scaling  # (groups, kv_heads, k*rep, P)
        if self.bias is not None:
            scores_p = scores_p + self.bias
        scores_s = (q.reshape(rows, kv_heads, rep, dim) @ sk[:, :, : t + 1].transpose(-1, -2)).float() * scaling
        scores_p = scores_p.reshape(groups, kv_heads, k, rep, width).permute(0, 2, 1, 3, 4).reshape(
            rows, kv_heads, rep, width)
        probs = torch.cat([scores_p, scores_s], dim=-1).softmax(-1).to(pv.dtype)
        probs_p = probs[..., :width].reshape(groups, k, kv_heads, rep, width).permute(0, 2, 1, 3, 4).reshape(
            groups, kv_heads, k * rep, width)
        out_p = (probs_p @ pv).reshape(groups, kv_heads, k, rep, dim).permute(0, 2, 1, 3, 4).reshape(
            rows, kv_heads, rep, dim)
        out = out_p + probs[..., width:] @ sv[:, :, : t + 1]
        return out.reshape(rows, 1, heads, dim)


def _attention(module, query, key, value, attention_mask, scaling=None, dropout=0.0, shared_prefix=None, **kwargs):
    if shared_prefix is None:  # the prefill: sdpa, in float32 on CPU
        import torch
        from transformers.integrations.sdpa_attention import sdpa_attention_forward

        dtype = query.dtype
        if query.device.type == "cpu" and dtype == torch.bfloat16:
            # torch 2.14's CPU flash kernel is slower in bf16 than in fp32, and the prefill's
            # attention costs as much as its matmuls (docs/results.md#prefill-attention)
            query, key, value = query.float(), key.float(), value.float()
            attention_mask = attention_mask if attention_mask is None or attention_mask.dtype == torch.bool \
                else attention_mask.float()
        out, weights = sdpa_attention_forward(module, query, key, value, attention_mask, scaling=scaling,
                                              dropout=dropout, **kwargs)
        return out.to(dtype), weights
    return shared_prefix.attend(module.layer_idx, query, key, value, scaling), None


def _register() -> None:
    from transformers import AttentionInterface

    AttentionInterface.register(ATTENTION_NAME, _attention)


@contextmanager
def _attention_switched(model) -> Iterator[None]:
    _register()
    config = model.config
    old = config._attn_implementation
    config._attn_implementation = ATTENTION_NAME
    try:
        yield
    finally:
        config._attn_implementation = old


def _prefill(model, prompt: list[int], device, head: list[tuple] | None = None):
    """Last-position logits and per-layer (keys, values) of one prompt, (1, kv_heads, P, d).

    ``head``, the stored keys/values of all but the prompt's last token, turns the prefill
    into that one token's forward."""
    import torch

    if head is None:
        out = model(input_ids=torch.tensor([prompt], device=device), use_cache=True, logits_to_keep=1)
    else:
        out = model(input_ids=torch.tensor([prompt[-1:]], device=device), cache=cache_of(model, head), use_cache=True)
    cache = out.cache
    return out.logits[0, -1].float(), [(layer.keys, layer.values) for layer in cache.layers]


def _stack(prefixes: list[list[tuple]], width: int) -> list[tuple]:
    """Per layer, the groups' keys and values right-padded to ``width`` and stacked."""
    import torch
    import torch.nn.functional as F

    def stacked(layer: int, which: int):
        return torch.cat([F.pad(p[layer][which], (0, 0, 0, width - p[layer][which].shape[2])) for p in prefixes])

    return [(stacked(layer, 0), stacked(layer, 1)) for layer in range(len(prefixes[0]))]


@dataclass
class Completion:
    """One decoded row: its new tokens (EOS excluded) and why it stopped."""

    tokens: list[int]
    stop_reason: str


def decode(
    model,
    prompts: Sequence[Sequence[int]],
    counts: Sequence[int],
    rule: SamplingRule,
    max_new_tokens: int,
    end_ids: set[int],
    generator,
    device,
    stop: Callable[[list[int]], str | None] | None = None,
    stop_candidates: set[int] | frozenset = frozenset(),
    on_step: Callable[[int, int], None] | None = None,
    fold_lora: bool = False,
    prompt_kv=None,
) -> list[list[Completion]]:
    """``counts[j]`` completions of each prompt ``prompts[j]`` (token ids), prefilled once each.

    A row ends at a token in ``end_ids`` (reason ``eos``, the token not kept), when
    ``stop(tokens)`` names a stop reason after a token from ``stop_candidates``, or after
    ``max_new_tokens`` tokens (``length``). Draws use ``generator`` only (seeded: same
    inputs, same outputs). Returns, per prompt, its completions in row order.
    ``on_step(tokens, finished)`` is called after every step with the tokens that step
    added and the rows finished so far (a progress bar's feed). ``fold_lora`` decodes with
    the adapter folded into the weights (:func:`lora_folded`). Each prompt's keys and values
    are put in ``prompt_kv`` (a :class:`~cem_nas.sampler.prompt_kv.PromptKV`), when given, for
    the CE update that follows under the same adapter, and a prompt it already holds under
    the current adapter is not prefilled again (a redraw round, or a prompt whose keys and
    values the update's NLL computed under the adapter it leaves).
    """
    import torch

    if len(prompts) != len(counts) or any(c < 0 for c in counts) or any(len(p) < 1 for p in prompts):
        raise ValueError("decode needs one count >= 0 per non-empty prompt")
    results: list[list[Completion]] = [[] for _ in prompts]
    live_groups = [j for j, c in enumerate(counts) if c > 0]
    if not live_groups or max_new_tokens < 1:
        return [[Completion([], STOP_LENGTH) for _ in range(c)] for c in counts]
    with torch.no_grad(), (lora_folded(model) if fold_lora else nullcontext()), _attention_switched(model):
        first_logits, prefixes = [], []
        for j in live_groups:
            # holds first: a prompt the generation prefills is not the update's miss
            stored = prompt_kv is not None and len(prompts[j]) > 1 and prompt_kv.holds(model, prompts[j], len(prompts[j]) - 1)
            head = prompt_kv.get(model, prompts[j], len(prompts[j]) - 1) if stored else None
            logits, layers = _prefill(model, list(prompts[j]), device, head)
            if prompt_kv is not None:
                prompt_kv.put(model, prompts[j], layers)
            first_logits.append(logits)
            prefixes.append(layers)
        lengths = [len(prompts[j]) for j in live_groups]
        per_group = max(counts[j] for j in live_groups)
        state = PrefixKV(_stack(prefixes, max(lengths)), lengths, per_group, max_new_tokens)
        del prefixes
        # the layout: row r belongs to group r // per_group; owner[r] = (prompt, slot) or None (filler)
        owner: list[tuple[int, int] | None] = []
        for j in live_groups:
            owner += [(j, i) for i in range(counts[j])] + [None] * (per_group - counts[j])
        for j in live_groups:
            results[j] = [Completion([], STOP_LENGTH) for _ in range(counts[j])]
        vocab = first_logits[0].shape[-1]
        rows = len(owner)
        group_of = torch.arange(rows, device=device) // per_group
        logits = torch.stack(first_logits).index_select(0, group_of)
        seen = None
        if rule.repetition_penalty != 1.0:
            seen = torch.zeros(rows, vocab, dtype=torch.bool, device=device)
            for r in range(rows):
                seen[r, list(prompts[live_groups[r // per_group]])] = True
        positions = torch.tensor(lengths, device=device).index_select(0, group_of)
        live = [o is not None for o in owner]
        _steps(model, state, logits, owner, live, results, positions, seen, rule, generator, max_new_tokens,
               end_ids, stop, stop_candidates, device, on_step)
    return results


def _steps(model, state, logits, owner, live, results, positions, seen, rule, generator, max_new_tokens, end_ids,
           stop, stop_candidates, device, on_step=None) -> None:
    """The decode loop proper: sample, record, drop finished rows, feed the new tokens."""
    import torch

    rows = len(owner)
    finished = 0
    for t in range(max_new_tokens):
        token = next_tokens(logits, rule, generator, seen)
        picked = token.tolist()
        added = 0
        for r, tok in enumerate(picked):
            if not live[r]:
                continue
            j, i = owner[r]
            done = results[j][i]
            if tok in end_ids:
                done.stop_reason, live[r] = STOP_EOS, False
                finished += 1
                continue
            done.tokens.append(tok)
            added += 1
            reason = stop(done.tokens) if tok in stop_candidates and stop is not None else None
            if reason:
                done.stop_reason, live[r] = reason, False
                finished += 1
        if on_step is not None:
            on_step(added, finished)
        if not any(live) or t == max_new_tokens - 1:
            break
        if seen is not None:
            seen[torch.arange(rows, device=device), token] = True
        groups_now = rows // state.per_group
        alive = [[r for r in range(g * state.per_group, (g + 1) * state.per_group) if live[r]]
                 for g in range(groups_now)]
        keep_groups = [g for g in range(groups_now) if alive[g]]
        new_per = max(len(alive[g]) for g in keep_groups)
        if len(keep_groups) < groups_now or new_per < state.per_group:
            picks = [alive[g][i] if i < len(alive[g]) else alive[g][0] for g in keep_groups for i in range(new_per)]
            fresh = [i < len(alive[g]) for g in keep_groups for i in range(new_per)]
            index = torch.tensor(picks, device=device)
            state.select(torch.tensor(keep_groups, device=device), index, new_per)
            owner = [owner[p] if f else None for p, f in zip(picks, fresh)]
            live = list(fresh)
            token, positions = token.index_select(0, index), positions.index_select(0, index)
            seen = None if seen is None else seen.index_select(0, index)
            rows = len(picks)
        out = model(input_ids=token[:, None], position_ids=(positions + t)[:, None], use_cache=False,
                    shared_prefix=state)
        state.step += 1
        logits = out.logits[:, -1].float()
