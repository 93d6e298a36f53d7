"""Prompt keys/values reused across generation and the CE update while the adapter is unchanged."""
from __future__ import annotations

import dataclasses

import numpy as np
import pytest
import torch

from cem_nas.sampler import lora as lora_sft
from cem_nas.sampler.prompt_kv import PromptKV, adapter_state
from tests.test_llm_sampler import CODE_A, CODE_B, DELTA_A, DELTA_B, elites_for, make_sampler, tokenizer  # noqa: F401

torch.set_num_threads(1)


def trained_looking(sampler) -> None:
    with torch.no_grad():
        for name, p in sampler.model.named_parameters():
            if "lora_B" in name:
                p.normal_(std=0.3)  # peft starts B at 0: give the adapter an effect on the keys/values


def encoded_pairs(sampler) -> list:
    pairs = [(sampler.prompt_for(CODE_A), sampler.completion_for(DELTA_A)),
             (sampler.prompt_for(CODE_B), sampler.completion_for(DELTA_B)),
             (sampler.prompt_for(CODE_A), sampler.completion_for(DELTA_B))]
    return [lora_sft.encode_example(sampler.tokenizer, p, c) for p, c in pairs]


def test_adapter_state_changes_with_every_in_place_write(tokenizer):
    sampler = make_sampler(tokenizer)
    before = adapter_state(sampler.model)
    assert adapter_state(sampler.model) == before
    lora_sft.smooth_parameters(sampler.model, lora_sft.trainable_state(sampler.model), 0.5)
    after_smoothing = adapter_state(sampler.model)
    assert after_smoothing != before
    sampler.model.load_state_dict(sampler.model.state_dict())
    assert adapter_state(sampler.model) != after_smoothing


def test_store_crops_and_empties_when_the_adapter_changes(tokenizer):
    sampler = make_sampler(tokenizer)
    store = PromptKV(max_prompts=2)
    layers = [(torch.randn(1, 2, 5, 8), torch.randn(1, 2, 5, 8))]
    store.put(sampler.model, [1, 2, 3, 4, 5], layers)
    got = store.get(sampler.model, [1, 2, 3, 4, 5], 4)
    assert got is not None and torch.equal(got[0][0], layers[0][0][:, :, :4])
    assert store.get(sampler.model, [1, 2, 3, 4, 5], 6) is None  # longer than stored
    assert store.get(sampler.model, [9, 9], 1) is None
    for extra in ([7], [8]):
        store.put(sampler.model, extra, layers)
    assert store.get(sampler.model, [1, 2, 3, 4, 5], 4) is None  # the oldest went past max_prompts
    with torch.no_grad():
        next(p for p in sampler.model.parameters() if p.requires_grad).add_(1.0)
    assert store.get(sampler.model, [7], 1) is None  # stale: the adapter moved
    with pytest.raises(ValueError, match="max_prompts"):
        PromptKV(0)
    small = PromptKV(max_bytes=layers[0][0].numel() * 4 * 2 * 2)  # room for two entries of (keys, values)
    for prompt in ([1], [2], [3]):
        small.put(sampler.model, prompt, layers)
    assert small.get(sampler.model, [1], 1) is None and small.get(sampler.model, [3], 1) is not None
    assert small.nbytes() <= small.max_bytes


def test_nll_from_stored_prompts_equals_a_fresh_prefill(tokenizer):
    sampler = make_sampler(tokenizer)
    trained_looking(sampler)
    encoded = encoded_pairs(sampler)
    pad = tokenizer.pad_token_id
    fresh = lora_sft.mean_completion_nll(sampler.model, encoded, pad, "cpu", batch_size=4)
    store = PromptKV()
    filled = lora_sft.mean_completion_nll(sampler.model, encoded, pad, "cpu", 4, store)
    assert (store.hits, store.misses) == (0, 2)  # two distinct prompts, each prefilled once
    reused = lora_sft.mean_completion_nll(sampler.model, encoded, pad, "cpu", 4, store)
    assert store.hits == 2
    assert reused == pytest.approx(fresh, rel=1e-5) and filled == pytest.approx(fresh, rel=1e-5)
    with torch.no_grad():
        full, count = lora_sft.completion_nll_sum(sampler.model, encoded, pad, "cpu", prompt_grad=True)
    assert reused == pytest.approx(float(full) / count, rel=1e-4)


def test_examples_of_several_prompts_give_each_example_s_nll_and_gradient_as_if_alone(tokenizer):
    """Examples of different prompt and completion lengths in one call (prompts grouped,
    completions padded within a group) give each example's NLL and LoRA gradient as if it
    ran alone: no padding or position leaks between rows."""
    sampler = make_sampler(tokenizer)
    trained_looking(sampler)
    encoded = encoded_pairs(sampler)
    assert len({lora_sft.prompt_length(y) for _, y in encoded}) == 2
    assert len({len(y) - lora_sft.prompt_length(y) for _, y in encoded}) >= 2
    pad = tokenizer.pad_token_id
    params = [p for p in sampler.model.parameters() if p.requires_grad]
    joint, count = lora_sft.completion_nll_sum(sampler.model, encoded, pad, "cpu", prompt_grad=False)
    joint_grads = torch.autograd.grad(joint, params)
    alone = [lora_sft.completion_nll_sum(sampler.model, [e], pad, "cpu", prompt_grad=False) for e in encoded]
    alone_grads = torch.autograd.grad(sum(nll for nll, _ in alone), params)
    assert count == sum(n for _, n in alone)
    assert float(joint) == pytest.approx(sum(float(nll) for nll, _ in alone), rel=1e-5)
    for a, b in zip(joint_grads, alone_grads):  # fp32 sums in another order: rounding of ~1e-6 of the largest entry
        torch.testing.assert_close(a, b, rtol=1e-3, atol=1e-4 * float(b.abs().max()))


def test_generation_fills_the_store_the_update_reads_and_a_step_invalidates_it(tokenizer):
    sampler = make_sampler(tokenizer, steps=2)
    trained_looking(sampler)
    sampler.generate([sampler.prompt_for(CODE_A), sampler.prompt_for(CODE_B)])
    encoded = encoded_pairs(sampler)
    pad = tokenizer.pad_token_id
    expected = lora_sft.mean_completion_nll(sampler.model, encoded, pad, "cpu", 4)
    assert lora_sft.mean_completion_nll(sampler.model, encoded, pad, "cpu", 4, sampler.prompt_kv) == \
        pytest.approx(expected, rel=1e-5)
    assert (sampler.prompt_kv.hits, sampler.prompt_kv.misses) == (2, 0)  # both prompts came from generation
    lora_sft.train_steps(sampler.model, lambda rng: encoded, 1, 1e-2, pad, "cpu", np.random.default_rng(0),
                         prompt_grad=False, prompt_kv=sampler.prompt_kv)
    hits = sampler.prompt_kv.hits
    moved = lora_sft.mean_completion_nll(sampler.model, encoded, pad, "cpu", 4, sampler.prompt_kv)
    assert sampler.prompt_kv.hits == hits  # the step changed the adapter: prefilled afresh
    assert moved == pytest.approx(lora_sft.mean_completion_nll(sampler.model, encoded, pad, "cpu", 4), rel=1e-5)
    assert moved != pytest.approx(expected, rel=1e-3)


def test_update_gives_the_same_adapter_with_and_without_the_store(tokenizer):
    """The store changes the cost of an update, not its result."""
    results = []
    for reuse in (True, False):
        sampler = make_sampler(tokenizer, steps=3)
        sampler.lora = dataclasses.replace(sampler.lora, exact_nll_after=True)
        trained_looking(sampler)
        if not reuse:
            sampler.prompt_kv = None  # every prompt prefilled afresh
        sampler.generate([sampler.prompt_for(CODE_A), sampler.prompt_for(CODE_B)])
        stats = sampler.update(elites_for(sampler))
        results.append((stats, lora_sft.trainable_state(sampler.model)))
    (a, theta_a), (b, theta_b) = results
    assert a.elite_nll_before == pytest.approx(b.elite_nll_before, rel=1e-5)
    assert a.elite_nll_after == pytest.approx(b.elite_nll_after, rel=1e-4)
    assert all(torch.allclose(theta_a[k], theta_b[k], atol=1e-5) for k in theta_a)


def test_the_nll_after_keeps_theta_t_s_context_unless_exact(tokenizer):
    """Without exact_nll_after the update's NLL after reads the elites' prompts as theta_t
    encoded them (the objective its steps minimise) and prefills nothing again; with it, the
    NLL of the new adapter from scratch. The adapter is the same either way."""
    results = {}
    for exact in (False, True):
        sampler = make_sampler(tokenizer, steps=3)
        sampler.lora = dataclasses.replace(sampler.lora, exact_nll_after=exact)
        trained_looking(sampler)
        elites = elites_for(sampler)
        encoded = [lora_sft.encode_example(tokenizer, e.prompt, sampler.completion_for(e.completion)) for e in elites]
        pad = tokenizer.pad_token_id
        sampler.generate([e.prompt for e in elites])
        theta_t = PromptKV()
        with theta_t.pinned(sampler.model):  # the prompts as theta_t encodes them, kept through the update
            lora_sft.mean_completion_nll(sampler.model, encoded, pad, "cpu", 4, theta_t)
            stats = sampler.update(elites)
            on_theta_t = lora_sft.mean_completion_nll(sampler.model, encoded, pad, "cpu", 4, theta_t)
        fresh = lora_sft.mean_completion_nll(sampler.model, encoded, pad, "cpu", 4)
        results[exact] = stats, lora_sft.trainable_state(sampler.model), sampler.prompt_kv.misses
        assert stats.elite_nll_after == pytest.approx(fresh if exact else on_theta_t, rel=1e-4)
        assert stats.elite_nll_after != pytest.approx(on_theta_t if exact else fresh, rel=1e-3)
    (fixed, theta_f, misses_f), (exact, theta_e, misses_e) = results[False], results[True]
    assert fixed.elite_nll_before == pytest.approx(exact.elite_nll_before, rel=1e-6)
    assert all(torch.allclose(theta_f[k], theta_e[k], atol=1e-6) for k in theta_f)
    assert (misses_f, misses_e) == (0, 2)  # the two elite prompts, prefilled again only for the exact NLL


def test_a_pinned_store_serves_through_adapter_changes_and_empties_after(tokenizer):
    sampler = make_sampler(tokenizer)
    store = PromptKV()
    layers = [(torch.randn(1, 2, 5, 8), torch.randn(1, 2, 5, 8))]
    param = next(p for p in sampler.model.parameters() if p.requires_grad)
    with store.pinned(sampler.model):
        store.put(sampler.model, [1, 2, 3, 4, 5], layers)
        with torch.no_grad():
            param.add_(1.0)  # an optimiser step inside the block
        assert store.get(sampler.model, [1, 2, 3, 4, 5], 5) is not None
    assert store.get(sampler.model, [1, 2, 3, 4, 5], 5) is None  # the adapter moved since the block began


@pytest.mark.parametrize("fixed", [True, False])
def test_fixed_context_encodes_each_prompt_once_per_update(tokenizer, fixed):
    sampler = make_sampler(tokenizer, steps=3)
    sampler.lora = dataclasses.replace(sampler.lora, fixed_context=fixed)
    trained_looking(sampler)
    encoded = encoded_pairs(sampler)  # two distinct prompts in every step
    store = PromptKV()
    pad = tokenizer.pad_token_id
    losses = lora_sft.train_steps(sampler.model, lambda rng: encoded, 3, 1e-2, pad, "cpu", np.random.default_rng(0),
                                  prompt_grad=False, prompt_kv=store, fixed_context=fixed)
    assert store.misses == (2 if fixed else 6)  # once per prompt, or once per prompt and step
    assert losses[2] < losses[0]
    exact = lora_sft.mean_completion_nll(sampler.model, encoded, pad, "cpu", 4)
    assert lora_sft.mean_completion_nll(sampler.model, encoded, pad, "cpu", 4, store) == pytest.approx(exact, rel=1e-5)


def test_the_adapter_is_folded_only_when_a_prompt_is_prefilled(tokenizer, monkeypatch):
    sampler = make_sampler(tokenizer)
    trained_looking(sampler)
    encoded = encoded_pairs(sampler)
    pad = tokenizer.pad_token_id
    folds = []
    real = lora_sft.lora_folded

    def counted(model):
        folds.append(1)
        return real(model)

    monkeypatch.setattr(lora_sft, "lora_folded", counted)
    store = PromptKV()
    filled = lora_sft.mean_completion_nll(sampler.model, encoded, pad, "cpu", 4, store)
    assert len(folds) >= 1  # two prompts to prefill
    folds.clear()
    reused = lora_sft.mean_completion_nll(sampler.model, encoded, pad, "cpu", 4, store)
    assert folds == [] and store.hits == 2  # both stored: the completions run with the adapter branches
    assert reused == pytest.approx(filled, rel=1e-5)
    lora_sft.train_steps(sampler.model, lambda rng: encoded, 1, 1e-2, pad, "cpu", np.random.default_rng(0),
                         prompt_grad=False, prompt_kv=store, fixed_context=True)
    assert folds == []  # the step found both prompts stored


def test_a_stored_prompt_is_not_prefilled_again_and_draws_the_same_answers(tokenizer, monkeypatch):
    """A redraw round (or the generation after an update whose NLL prefilled the prompts under
    the adapter it leaves) reads the stored keys/values: one token's forward per prompt."""
    sampler = make_sampler(tokenizer)
    trained_looking(sampler)
    prompts = [sampler.prompt_for(CODE_A), sampler.prompt_for(CODE_B), sampler.prompt_for(CODE_A)]
    widths = []
    forward = sampler.model.forward

    def recorded(*args, **kwargs):
        widths.append(kwargs["input_ids"].shape[1])
        return forward(*args, **kwargs)

    monkeypatch.setattr(sampler.model, "forward", recorded)
    torch.manual_seed(0)
    first = sampler.generate(prompts)
    prefilled = sorted(w for w in widths if w > 1)
    assert len(prefilled) == 2 and sampler.prompt_kv.misses == 0  # two distinct prompts, nothing stored yet
    widths.clear()
    torch.manual_seed(0)
    again = sampler.generate(prompts)
    assert all(w == 1 for w in widths) and sampler.prompt_kv.hits == 2
    assert [g.text for g in again] == [g.text for g in first]
    with torch.no_grad():
        next(p for p in sampler.model.parameters() if p.requires_grad).add_(0.1)
    widths.clear()
    sampler.generate(prompts)
    assert sorted(w for w in widths if w > 1) == prefilled  # the adapter moved: prefilled afresh
