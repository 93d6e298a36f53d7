"""Shared-prefix decoding against transformers' own generate and logits processors."""
from __future__ import annotations

import pytest
import torch

from cem_nas.sampler.decode import (
    STOP_EOS, STOP_FENCE, STOP_LENGTH, SamplingRule, decode, next_tokens,
)
from cem_nas.sampler.lora import lora_folded

torch.set_num_threads(1)
PROMPTS = [[5, 6, 7, 8, 9, 10, 11], [12, 13, 14], [20, 21, 22, 23, 24]]  # unequal: the prefix is padded


@pytest.fixture(scope="module")
def model():
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(0)
    # 6 query heads on 2 key/value heads: grouped-query attention, as in SmolLM2 (9 on 3)
    config = LlamaConfig(vocab_size=60, hidden_size=48, intermediate_size=64, num_hidden_layers=2,
                         num_attention_heads=6, num_key_value_heads=2, initializer_range=0.3,
                         pad_token_id=0, eos_token_id=1, bos_token_id=None)
    return LlamaForCausalLM(config).eval()


def reference(model, prompt: list[int], steps: int) -> list[int]:
    from transformers import GenerationConfig

    config = GenerationConfig(do_sample=False, max_new_tokens=steps, eos_token_id=1, pad_token_id=0)
    with torch.no_grad():
        return model.generate(input_ids=torch.tensor([prompt]), generation_config=config)[0, len(prompt):].tolist()


def test_greedy_rows_equal_transformers_generate(model):
    """Every row of every prompt (k rows share one prefill) decodes what generate decodes alone."""
    out = decode(model, PROMPTS, [2, 3, 1], SamplingRule(temperature=0), 15, {1}, torch.Generator(), "cpu")
    for prompt, rows in zip(PROMPTS, out):
        expected = reference(model, prompt, 15)
        assert [r.tokens for r in rows] == [expected] * len(rows)
        assert all(r.stop_reason == STOP_LENGTH for r in rows)


def test_stop_reasons_and_dropped_rows(model):
    """EOS ends a row without keeping the token, the stop test ends it with it; the other
    rows (their layout compacted when rows finish) still decode exactly."""
    expected = [reference(model, p, 12) for p in PROMPTS]
    eos = expected[0][3]  # first prompt's 4th greedy token: an end token for this call
    fence = expected[1][5]
    out = decode(model, PROMPTS, [2, 2, 2], SamplingRule(temperature=0), 12, {eos}, torch.Generator(), "cpu",
                 stop=lambda tokens: STOP_FENCE, stop_candidates={fence})
    first = expected[0][: expected[0].index(eos)]
    assert [(r.tokens, r.stop_reason) for r in out[0]] == [(first, STOP_EOS)] * 2
    cut = min(i for i, t in enumerate(expected[1]) if t in (eos, fence))
    reason = STOP_EOS if expected[1][cut] == eos else STOP_FENCE
    kept = expected[1][: cut + (reason == STOP_FENCE)]
    assert [(r.tokens, r.stop_reason) for r in out[1]] == [(kept, reason)] * 2
    for r in out[2]:  # the third prompt's rows are unaffected by the others leaving
        n = len(r.tokens)
        assert r.tokens == expected[2][:n] and (r.stop_reason == STOP_LENGTH) == (n == 12)


def test_sampling_is_seeded(model):
    rule = SamplingRule(temperature=1.0, top_p=0.9)

    def run(seed):
        out = decode(model, PROMPTS, [3, 3, 3], rule, 10, {1}, torch.Generator().manual_seed(seed), "cpu")
        return [[r.tokens for r in rows] for rows in out]

    assert run(3) == run(3) and run(3) != run(4)


@pytest.mark.parametrize("vocab,scale,rule", [
    (50, 3.0, SamplingRule(temperature=0.7, top_p=0.8, top_k=20, repetition_penalty=1.3)),
    (50, 3.0, SamplingRule(temperature=0.5, top_p=0.9)),
    # flat logits: the nucleus is wider than the candidate set, so the full sort is taken
    (1000, 0.3, SamplingRule(temperature=1.0, top_p=0.95)),
    (50, 3.0, SamplingRule(temperature=1.0, top_k=5)),
])
def test_top_p_top_k_and_penalty_match_transformers(vocab, scale, rule):
    """The kept sets are transformers' own, and the draws follow its probabilities."""
    from transformers.generation.logits_process import (
        RepetitionPenaltyLogitsProcessor, TemperatureLogitsWarper, TopKLogitsWarper, TopPLogitsWarper,
    )

    torch.manual_seed(1)
    logits = torch.randn(16, vocab) * scale
    history = torch.randint(vocab, (16, 7))
    seen = torch.zeros(16, vocab, dtype=torch.bool).scatter(1, history, True)
    ref = RepetitionPenaltyLogitsProcessor(rule.repetition_penalty)(history, logits.clone())
    warps = [TemperatureLogitsWarper(rule.temperature)] + ([TopKLogitsWarper(rule.top_k)] if rule.top_k else [])
    for warp in warps + ([TopPLogitsWarper(rule.top_p)] if rule.top_p < 1 else []):
        ref = warp(history, ref)
    allowed = torch.isfinite(ref)
    draws = torch.stack([next_tokens(logits, rule, torch.Generator().manual_seed(s), seen) for s in range(400)])
    assert bool(allowed.gather(1, draws.T).all())
    # the frequencies of tokens with p >= 0.02 (400 p >= 8: the normal approximation holds)
    # are within 5 binomial standard errors of transformers' probabilities
    probs = ref.softmax(-1)
    freq = torch.zeros_like(probs).scatter_add(1, draws.T, torch.ones(16, 400)) / 400
    big = probs >= 0.02
    excess = (freq - probs).abs() - 5 * (probs * (1 - probs) / 400).sqrt()
    assert bool((excess[big] <= 0).all())
    if vocab == 1000:  # this case is meant to take the full-sort path
        from cem_nas.sampler.decode import CANDIDATES

        assert int(allowed.sum(1).min()) > CANDIDATES


def test_folded_lora_gives_the_adapter_logits_and_restores_the_weights(model):
    from peft import LoraConfig, get_peft_model

    peft_model = get_peft_model(model, LoraConfig(r=4, lora_alpha=8, target_modules=["q_proj", "v_proj", "up_proj"]))
    with torch.no_grad():
        for name, p in peft_model.named_parameters():
            if "lora_B" in name:
                p.normal_(std=0.3)  # a trained-looking adapter (peft starts B at 0)
        before = {n: p.clone() for n, p in peft_model.named_parameters()}
        ids = torch.tensor([PROMPTS[0]])
        expected = peft_model(input_ids=ids).logits
        with lora_folded(peft_model):
            folded = peft_model(input_ids=ids).logits
        after = peft_model(input_ids=ids).logits
        with peft_model.disable_adapter():
            plain = peft_model(input_ids=ids).logits
    assert torch.allclose(folded, expected, atol=1e-5) and not torch.allclose(expected, plain, atol=1e-2)
    assert torch.equal(after, expected)
    assert all(torch.equal(p, before[n]) for n, p in peft_model.named_parameters())
    peft_model.unload()


def test_bad_counts_are_refused(model):
    with pytest.raises(ValueError, match="count"):
        decode(model, PROMPTS, [1, 1], SamplingRule(), 4, {1}, torch.Generator(), "cpu")


def test_bf16_prefill_attention_runs_in_float32(model):
    """The prefill (switched to the shared-prefix attention, no prefix yet) stays in bf16
    and, like plain bf16 sdpa, within bf16 rounding of the float32 model (weights and
    activations rounded to 2^-8 relative; logits of size ~3: both paths measured 0.11-0.13
    off, so 0.2 absolute)."""
    import copy

    from cem_nas.sampler.decode import _attention_switched

    half = copy.deepcopy(model).to(torch.bfloat16)
    ids = torch.tensor([PROMPTS[0]])
    with torch.no_grad():
        exact = model(input_ids=ids).logits
        plain = half(input_ids=ids).logits
        with _attention_switched(half):
            switched = half(input_ids=ids).logits
    assert switched.dtype == torch.bfloat16
    err_switched, err_plain = (float((x.float() - exact).abs().max()) for x in (switched, plain))
    assert err_switched < 0.2 and err_plain < 0.2
