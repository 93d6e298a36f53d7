"""LLM sampler on a tiny random Llama with a byte-level BPE tokenizer built here (offline)."""
from __future__ import annotations

import dataclasses
import json
import math

import numpy as np
import pytest
import torch

from cem_nas.records import Baseline, Elite, TaskSpec
from cem_nas.sampler import lora as lora_sft
from cem_nas.sampler.base import Sampler
from cem_nas.sampler.decode import STOP_REASONS
from cem_nas.sampler.llm import GenerationSettings, LLMSampler, LoRASettings, WarmStartSettings, _FenceStop
from cem_nas.sampler.model import LoadedModel

torch.set_num_threads(1)

TASK = TaskSpec("mnist5k", (1, 28, 28), 10)
CODE_A = "import torch\nclass Net(torch.nn.Module):\n    def forward(self, x):\n        return x\n"
CODE_B = "import torch.nn as nn\nfc = nn.Linear(784, 10)\n"
DELTA_A = "--- a/net.py\n+++ b/net.py\n@@ -3,2 +3,2 @@\n     def forward(self, x):\n-        return x\n+        return x * 2\n"
DELTA_B = "--- a/net.py\n+++ b/net.py\n@@ -1,2 +1,2 @@\n import torch.nn as nn\n-fc = nn.Linear(784, 10)\n+fc = nn.Linear(784, 10, bias=False)\n"
CORPUS = [("a", CODE_A, CODE_A.replace("return x\n", "return x * 2\n"), DELTA_A), ("b", CODE_B, CODE_B, DELTA_B)]
TRAIN_TEXT = CODE_A + CODE_B + DELTA_A + DELTA_B + "Dataset shape batch classes logits output PyTorch model file diff answer ```"


@pytest.fixture(scope="module")
def tokenizer():
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=400, special_tokens=["<pad>", "<eos>"], initial_alphabet=pre_tokenizers.ByteLevel.alphabet()
    )
    tok.train_from_iterator([TRAIN_TEXT] * 4, trainer)
    fast = PreTrainedTokenizerFast(tokenizer_object=tok, eos_token="<eos>", pad_token="<pad>")
    fast.padding_side = "left"
    return fast


def tiny_model(tokenizer, seed: int = 0) -> LoadedModel:
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(seed)
    config = LlamaConfig(
        vocab_size=len(tokenizer), hidden_size=32, intermediate_size=64, num_hidden_layers=2,
        num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=1024,
        pad_token_id=tokenizer.pad_token_id, eos_token_id=tokenizer.eos_token_id, bos_token_id=None,
        initializer_range=0.2,  # frozen lm_head rows of norm ~0.2*sqrt(32) can still reach peaked logits
    )
    return LoadedModel(LlamaForCausalLM(config).eval(), tokenizer, "cpu", "tiny-llama")


def make_sampler(tokenizer, mode="delta", steps=20, lr=1e-2, prompt_grad=False, **kw) -> LLMSampler:
    return LLMSampler(
        TASK, tiny_model(tokenizer), mode=mode,
        lora=LoRASettings(rank=4, alpha=8, dropout=0.0, steps=steps, lr=lr, batch_size=4, prompt_grad=prompt_grad),
        generation=kw.pop("generation", GenerationSettings(max_new_tokens=12, max_new_tokens_full=12, batch_size=3)),
        warm_start=kw.pop("warm_start", WarmStartSettings(enabled=False)),
        corpus=kw.pop("corpus", CORPUS), seed=1, **kw,
    )


def elites_for(sampler: LLMSampler, cycle: int = 0) -> list[Elite]:
    return [
        Elite("a", sampler.prompt_for(CODE_A), DELTA_A, 0.9, cycle),
        Elite("b", sampler.prompt_for(CODE_B), DELTA_B, 0.8, cycle),
    ]


def logits_of(sampler: LLMSampler, text: str) -> torch.Tensor:
    ids = sampler.tokenizer(text, return_tensors="pt")
    with torch.no_grad():
        return sampler.model(**ids).logits


def test_completion_only_loss_mask(tokenizer):
    ids, labels = lora_sft.encode_example(tokenizer, "prompt text ", "```diff\n-a\n```")
    n_prompt = len(lora_sft.encode_prompt(tokenizer, "prompt text "))
    assert labels[:n_prompt] == [lora_sft.IGNORE] * n_prompt
    assert labels[n_prompt:] == ids[n_prompt:] and ids[-1] == tokenizer.eos_token_id
    short = (ids[: n_prompt + 2], labels[: n_prompt + 2])
    batch = lora_sft.collate([(ids, labels), short], tokenizer.pad_token_id, "cpu")
    pad = len(ids) - len(short[0])
    assert batch["labels"][1, :pad].eq(lora_sft.IGNORE).all() and batch["attention_mask"][1].sum() == len(short[0])
    assert batch["position_ids"][1, pad:].tolist() == list(range(len(short[0])))
    assert batch["keep"] == len(ids) - n_prompt + 1


def test_shared_prompt_nll_equals_full_nll(tokenizer):
    """Both loss paths give the same value (the shared one just skips prompt gradients)."""
    loaded = tiny_model(tokenizer)
    pairs = [("prompt one ", "```diff\n-a\n```"), ("prompt one ", "```diff\n+bb\n```"), ("two ", "x = 1")]
    encoded = [lora_sft.encode_example(tokenizer, p, c) for p, c in pairs]
    with torch.no_grad():
        full, n_full = lora_sft.completion_nll_sum(loaded.model, encoded, tokenizer.pad_token_id, "cpu", True)
        shared, n_shared = lora_sft.completion_nll_sum(loaded.model, encoded, tokenizer.pad_token_id, "cpu", False)
    assert n_full == n_shared == sum(len(y) - lora_sft.prompt_length(y) for _, y in encoded)
    assert float(shared) == pytest.approx(float(full), rel=1e-5)


def test_left_padded_batch_matches_single_prompts(tokenizer):
    """Left padding + attention mask: a short prompt in a batch gives its unpadded result."""
    greedy = GenerationSettings(temperature=0.0, max_new_tokens=10, batch_size=2)
    sampler = make_sampler(tokenizer, generation=greedy)
    long_prompt, short_prompt = sampler.prompt_for(CODE_A), sampler.prompt_for(CODE_B)
    assert len(tokenizer(long_prompt)["input_ids"]) > len(tokenizer(short_prompt)["input_ids"])
    batched = sampler.generate([long_prompt, short_prompt])
    single = [sampler.generate([long_prompt])[0], sampler.generate([short_prompt])[0]]
    assert batched == single
    assert all(0 < n_c <= 10 for _, _, n_c, _ in batched)
    assert batched[1][1] == len(lora_sft.encode_prompt(tokenizer, short_prompt))


def test_shared_prefix_decoder_equals_transformers_generate(tokenizer):
    """Greedy: the shared-prefix decoder (one prefill per distinct prompt) gives what
    transformers' generate gives row by row, stop reasons included."""
    prompts = None
    results = {}
    for decoder in ("shared_prefix", "hf"):
        greedy = GenerationSettings(temperature=0.0, max_new_tokens=10, batch_size=4, decoder=decoder)
        sampler = make_sampler(tokenizer, generation=greedy)
        assert sampler.decoder() == decoder
        prompts = prompts or [sampler.prompt_for(CODE_A), sampler.prompt_for(CODE_B), sampler.prompt_for(CODE_A)]
        results[decoder] = sampler.generate(prompts)
    assert results["shared_prefix"] == results["hf"]
    assert all(r.stop_reason in ("eos", "fence", "length") for r in results["hf"])


def test_fence_stop_criterion(tokenizer):
    prompt = tokenizer("question ")["input_ids"]
    closed = torch.tensor([prompt + tokenizer("```diff\n-a\n+b\n```")["input_ids"]])
    open_ = torch.tensor([prompt + tokenizer("```diff\n-a\n+b\n")["input_ids"]])
    stop = _FenceStop(tokenizer, len(prompt))
    assert stop(closed, None).tolist() == [True] and stop(open_, None).tolist() == [False]


def test_the_llm_sampler_is_a_sampler(tokenizer):
    sampler = make_sampler(tokenizer)
    assert isinstance(sampler, Sampler) and not sampler.warm_started
    assert math.isnan(sampler.alpha) and math.isnan(sampler.neutral_diversity)


def test_propose_is_seeded_and_keeps_global_rng(tokenizer):
    sampler = make_sampler(tokenizer)
    baselines = [Baseline("a", CODE_A), Baseline("b", CODE_B)]
    torch.manual_seed(123)
    expected_next = torch.rand(1)
    torch.manual_seed(123)
    first = sampler.propose(baselines, 5, np.random.default_rng(7))
    assert torch.equal(torch.rand(1), expected_next)  # propose did not consume the global RNG
    again = sampler.propose(baselines, 5, np.random.default_rng(7))
    other = sampler.propose(baselines, 5, np.random.default_rng(8))
    assert [p.response for p in first] == [p.response for p in again]
    assert [p.response for p in first] != [p.response for p in other]
    assert sorted(p.baseline for p in first).count("a") in (2, 3)  # spread evenly over baselines
    for p in first:
        assert p.prompt_tokens > 0 and 0 <= p.completion_tokens <= 12 and p.gen_seconds > 0
        assert p.stop_reason in STOP_REASONS and (p.stop_reason == "length") == (p.completion_tokens == 12)
        # a random model writes no diff: the parse error is kept for the loop, delta is None
        assert p.delta is None and p.code is None and p.meta["parse_error"]


def test_update_raises_elite_likelihood(tokenizer):
    sampler = make_sampler(tokenizer, steps=25)
    # every step's prompts encoded afresh (25 steps at lr 1e-2 move the prompts' keys/values
    # far: a fixed context leaves the exact NLL 0.5-1.1 nats lower, not 3.3-3.4, over 6 seeds)
    # and the NLL after measured exactly: compared below with a fresh NLL of the new adapter
    sampler.lora.fixed_context, sampler.lora.exact_nll_after = False, True
    elites = elites_for(sampler)
    stats = sampler.update(elites)
    assert stats.steps == 25 and stats.examples == 2 and stats.seconds > 0
    # a random model starts near (or above) log(vocab) nats/token; a deterministic drop of
    # 1 nat per token is far beyond float noise and needs the completions to be learnt
    assert stats.elite_nll_before > math.log(len(tokenizer)) - 1.0
    assert stats.elite_nll_after < stats.elite_nll_before - 1.0
    encoded, _ = sampler._encode([(e.prompt, sampler.completion_for(e.completion)) for e in elites])
    assert sampler._nll(encoded) == pytest.approx(stats.elite_nll_after)
    assert [r["score"] for r in sampler.replay] == [0.9, 0.8] and sampler.updates == 1


def test_parameter_smoothing_blends_the_fit_with_the_previous_adapter(tokenizer):
    plain, smoothed = make_sampler(tokenizer, steps=5), make_sampler(tokenizer, steps=5)
    smoothed.lora.smoothing = 0.25
    smoothed.lora.exact_nll_after = True
    before = lora_sft.trainable_state(smoothed.model)
    plain.update(elites_for(plain))
    stats = smoothed.update(elites_for(smoothed))
    # same seed, same draws: the smoothed sampler fitted what the plain one kept, then moved a quarter of the way
    fit = lora_sft.trainable_state(plain.model)
    after = lora_sft.trainable_state(smoothed.model)
    assert any(not torch.equal(fit[k], before[k]) for k in fit)
    for k in fit:
        assert torch.allclose(after[k], 0.25 * fit[k] + 0.75 * before[k], atol=1e-6)
    encoded, _ = smoothed._encode([(e.prompt, smoothed.completion_for(e.completion)) for e in elites_for(smoothed)])
    assert stats.elite_nll_after == pytest.approx(smoothed._nll(encoded))  # of the adapter sampled next
    assert smoothed.alpha == 0.25 and math.isnan(plain.alpha)
    for bad in (0.0, 1.5, -0.1):
        with pytest.raises(ValueError, match="smoothing"):
            LoRASettings(smoothing=bad)


def test_adapter_loads_with_plain_peft(tokenizer, tmp_path):
    from peft import PeftModel

    sampler = make_sampler(tokenizer, steps=3)
    sampler.update(elites_for(sampler))
    sampler.save(tmp_path / "adapter")
    reloaded = PeftModel.from_pretrained(tiny_model(tokenizer).model, str(tmp_path / "adapter")).eval()
    ids = tokenizer("def forward", return_tensors="pt")
    with torch.no_grad():
        assert torch.allclose(reloaded(**ids).logits, logits_of(sampler, "def forward"), atol=1e-6)
    fresh = make_sampler(tokenizer)
    assert not torch.allclose(logits_of(fresh, "def forward"), logits_of(sampler, "def forward"))
    fresh.load(tmp_path / "adapter")
    assert torch.allclose(logits_of(fresh, "def forward"), logits_of(sampler, "def forward"), atol=1e-6)


def test_resume_reproduces_the_next_update(tokenizer, tmp_path):
    a = make_sampler(tokenizer, steps=3, prompt_grad=True)
    a.update(elites_for(a, cycle=0))
    state = json.loads(json.dumps(a.state_dict()))
    a.save(tmp_path)
    b = make_sampler(tokenizer, steps=3, prompt_grad=True)
    b.load_state_dict(state)
    b.load(tmp_path)
    assert b.replay == a.replay and b.updates == 1
    stats_a, stats_b = a.update(elites_for(a, cycle=1)), b.update(elites_for(b, cycle=1))
    for field in ("loss_before", "loss_after", "elite_nll_before", "elite_nll_after"):
        assert getattr(stats_a, field) == pytest.approx(getattr(stats_b, field), rel=1e-5)
    assert torch.allclose(logits_of(a, "import torch"), logits_of(b, "import torch"), atol=1e-5)
    with pytest.raises(ValueError, match="mode"):
        make_sampler(tokenizer, mode="full").load_state_dict(state)


def test_warm_start_is_cached(tokenizer, tmp_path, monkeypatch):
    monkeypatch.setenv("CEM_NAS_CACHE", str(tmp_path))
    warm = WarmStartSettings(steps=15, lr=1e-2, batch_size=2)
    first = make_sampler(tokenizer, mode="full", warm_start=warm)
    stats = first.warm_start()
    assert stats.steps == 15 and stats.elite_nll_after < stats.elite_nll_before
    assert (first.warm_start_dir() / "adapter_config.json").is_file()
    second = make_sampler(tokenizer, mode="full", warm_start=warm)
    assert second.warm_start() == stats and second.warm_started
    assert torch.allclose(logits_of(first, "x"), logits_of(second, "x"), atol=1e-6)
    assert make_sampler(tokenizer, mode="delta", warm_start=warm).warm_start_dir() != first.warm_start_dir()


def test_a_step_s_corpus_pairs_share_one_prompt_and_each_pair_keeps_its_chance(tokenizer, monkeypatch):
    """The update draws a step's corpus pairs from one prompt (one prefill per step); each
    pair is still drawn with probability 1/len(corpus)."""
    corpus = CORPUS + [("a2", CODE_A, CODE_A.replace("return x\n", "return -x\n"),
                        DELTA_A.replace("+        return x * 2", "+        return -x"))]
    sampler = make_sampler(tokenizer, steps=1, corpus=corpus)
    sampler.lora = dataclasses.replace(sampler.lora, corpus_share=0.75, replay_share=0.0)
    pairs = {tuple(ids): i for i, (ids, _) in enumerate(sampler._encode(sampler.corpus_examples())[0])}
    drawn, prompts_per_step = [], []

    def record(draw, steps, lr, bar, fixed_context=False):
        rng = np.random.default_rng(0)
        for _ in range(2000):
            batch = [pairs[tuple(ids)] for ids, _ in draw(rng) if tuple(ids) in pairs]
            drawn.extend(batch)
            prompts_per_step.append(len({corpus[i][1] for i in batch}))
        return [0.0]

    monkeypatch.setattr(sampler, "_train", record)
    elite = Elite("e", sampler.prompt_for(CODE_B), DELTA_B.replace("bias=False", "bias=True"), 0.9, 0)  # no corpus pair
    sampler.update([elite])
    assert max(prompts_per_step) == 1
    counts = np.bincount(drawn, minlength=len(corpus))
    n = len(drawn)  # each count ~ Binomial(n, 1/3); 4 standard deviations
    assert np.all(np.abs(counts - n / 3) < 4 * math.sqrt(n * (1 / 3) * (2 / 3))), counts

def test_bad_settings_are_refused(tokenizer):
    with pytest.raises(ValueError, match="mode"):
        make_sampler(tokenizer, mode="patch")
    with pytest.raises(ValueError, match="replay_share"):
        LoRASettings(replay_share=0.6, corpus_share=0.5)
    with pytest.raises(ValueError, match="top_p"):
        GenerationSettings(top_p=0.0)
    with pytest.raises(ValueError, match="target modules"):
        LLMSampler(TASK, tiny_model(tokenizer), lora=LoRASettings(target_modules=["nope"]),
                   warm_start=WarmStartSettings(enabled=False))
    for bad in ({"max_edits": 0}, {"context": -1}, {"max_changed": -1}, {"lr": 0.0}, {"batch_size": 0}):
        with pytest.raises(ValueError, match="WarmStartSettings"):
            WarmStartSettings(**bad)


@pytest.mark.slow
def test_embedded_smollm2_warm_start_update_and_proposals():
    """The embedded model after the (cached) warm start writes fenced unified diffs.

    Uses the default warm start, as ``python -m benchmarks.bench_llm`` does, so both share
    the cached adapter (cold: ~8 min on this loaded 2-core box). After the default 24-step
    warm start on the short-delta corpus the benchmark saw 29 of 50 deltas apply and build
    (13 apply errors), so at least one of 8 applying is asserted here (all 8 failing at
    that rate has probability about 0.3^8 < 1e-4).
    """
    from cem_nas import zoo
    from cem_nas.delta import DeltaError, apply_delta

    sampler = LLMSampler(TASK, "smollm2", device="cpu")
    warm = sampler.warm_start()
    assert warm.elite_nll_after < warm.elite_nll_before
    baselines = [Baseline(n, zoo.source(n)) for n in zoo.names()]
    proposals = sampler.propose(baselines, 8, np.random.default_rng(0))
    parsed = [p for p in proposals if p.delta is not None]
    assert parsed, [p.response[:200] for p in proposals]
    by_name = {b.name: b.code for b in baselines}
    applied = 0
    for p in parsed:
        try:
            apply_delta(by_name[p.baseline], p.delta)
            applied += 1
        except DeltaError:
            pass
    print(f"parsed {len(parsed)}/8, applied {applied}/8")
    assert applied >= 1
    elites = [Elite(f"c{i}", pr, c, 1.0, 0) for i, (pr, c) in enumerate(sampler.corpus_examples()[:2])]
    stats = sampler.update(elites)
    assert stats.steps == sampler.lora.steps and stats.elite_nll_after < stats.elite_nll_before


def test_elite_completion_is_the_extracted_answer(tokenizer):
    from cem_nas.delta import extract_delta
    from cem_nas.sampler.prompts import format_completion

    sampler = make_sampler(tokenizer)
    raw = "Sure, here it is:\n```diff\n" + DELTA_A + "```\nHope this helps."
    assert sampler.completion_for(raw) == format_completion("delta", extract_delta(raw))
    assert "Hope" not in sampler.completion_for(raw) and sampler.completion_for(raw).startswith("```diff\n")
    with pytest.raises(ValueError, match="no delta answer"):
        sampler.completion_for("I would add a layer.")


def test_corpus_pairs_are_trained_in_the_elites_format(tokenizer):
    sampler = make_sampler(tokenizer)
    for (prompt, completion), item in zip(sampler.corpus_examples(), CORPUS):
        assert prompt == sampler.prompt_for(item[1])
        # the same text an elite with this delta would be trained on
        assert completion == sampler.completion_for(item[3])
        assert completion == "```diff\n" + item[3] + "```"


def test_few_shot_prompts_show_other_baselines_deltas(tokenizer):
    sampler = make_sampler(tokenizer, generation=GenerationSettings(max_new_tokens=4, batch_size=4, few_shot=1))
    baselines = [Baseline("a", CODE_A), Baseline("b", CODE_B)]
    proposals = sampler.propose(baselines, 4, np.random.default_rng(3))
    for p in proposals:
        # the example is the other baseline's corpus delta, never the file's own
        own, other = (DELTA_A, DELTA_B) if p.baseline == "a" else (DELTA_B, DELTA_A)
        assert other in p.prompt and own not in p.prompt
        code = CODE_A if p.baseline == "a" else CODE_B
        assert p.prompt == sampler.prompt_for(code, [other])
    again = sampler.propose(baselines, 4, np.random.default_rng(3))
    assert [p.prompt for p in again] == [p.prompt for p in proposals]
    # without few-shot the prompt is the plain template (the warm-start cache stays valid)
    plain = make_sampler(tokenizer)
    assert plain.propose(baselines[:1], 1, np.random.default_rng(3))[0].prompt == plain.prompt_for(CODE_A)
    assert "Examples" not in plain.prompt_for(CODE_A)
    with pytest.raises(ValueError, match="few_shot"):
        GenerationSettings(few_shot=-1)


NOOP_A = "--- a/net.py\n+++ b/net.py\n@@ -3,2 +3,2 @@\n     def forward(self, x):\n-        return x\n+        return x\n"


@pytest.mark.parametrize("rounds", [0, 1, 3])
def test_redraw_unchanged_draws_no_ops_again_and_keeps_failures(tokenizer, rounds):
    """A no-op is drawn again (up to ``rounds`` times) from its own prompt; a response without a diff is kept."""
    from cem_nas.sampler.llm import Generated

    sampler = make_sampler(tokenizer, generation=GenerationSettings(max_new_tokens=12, batch_size=8,
                                                                    redraw_unchanged=rounds))
    calls = []

    def scripted(prompts):  # the a-rows answer a no-op twice, then a real edit; b-rows never give a diff
        calls.append(len(prompts))
        a_text = f"```diff\n{NOOP_A if len(calls) <= 2 else DELTA_A}```"
        return [Generated(a_text if "return x" in p else "no diff here", 10, 5, "fence") for p in prompts]

    sampler.generate = scripted
    base = [Baseline("a", CODE_A), Baseline("b", CODE_B)]
    proposals = sampler.propose(base, 4, np.random.default_rng(0))
    a_rows = [p for p in proposals if p.baseline == "a"]
    assert len(a_rows) == 2 and all(p.delta is None for p in proposals if p.baseline == "b")
    assert calls == [4] + [2] * min(rounds, 2)  # only the no-op rows are drawn again
    assert all(p.meta.get("redraws", 0) == min(rounds, 2) for p in a_rows)
    assert all(sampler.infeasible(p, CODE_A) for p in a_rows) == (rounds < 2)
    assert all(p.meta.get("redraws", 0) == 0 for p in proposals if p.baseline == "b")


CODE_R = CODE_A + "    def learn(self, data):\n        opt = 'SGD'\n"
RECIPE_EDIT = ("--- a/net.py\n+++ b/net.py\n@@ -5,2 +5,2 @@\n     def learn(self, data):\n"
               "-        opt = 'SGD'\n+        opt = 'AdamW'\n")


@pytest.mark.parametrize("scope", ["architecture", "file"])
def test_edits_of_the_training_recipe_are_drawn_again_under_architecture_scope(tokenizer, scope):
    from cem_nas.sampler.llm import Generated

    sampler = make_sampler(tokenizer, generation=GenerationSettings(max_new_tokens=12, redraw_unchanged=1))
    sampler.scope = scope
    calls = []

    def scripted(prompts):  # first a recipe edit, then an architecture edit
        calls.append(len(prompts))
        return [Generated(f"```diff\n{RECIPE_EDIT if len(calls) == 1 else DELTA_A}```", 10, 5, "fence") for _ in prompts]

    sampler.generate = scripted
    proposals = sampler.propose([Baseline("r", CODE_R)], 3, np.random.default_rng(0))
    assert calls == ([3, 3] if scope == "architecture" else [3])
    assert all((p.delta == DELTA_A) == (scope == "architecture") for p in proposals)


def test_the_warm_start_key_changes_with_the_training_path(tokenizer, monkeypatch):
    """An adapter cached by an earlier training path is not taken for this one's."""
    sampler = make_sampler(tokenizer)
    key = sampler.warm_start_key()
    assert make_sampler(tokenizer).warm_start_key() == key
    monkeypatch.setattr(lora_sft, "TRAINER_VERSION", lora_sft.TRAINER_VERSION + 1)
    assert sampler.warm_start_key() != key


@pytest.mark.parametrize("update_dropout", [0.0, 0.1])
def test_the_update_runs_with_its_own_lora_dropout(tokenizer, update_dropout):
    sampler = LLMSampler(
        TASK, tiny_model(tokenizer), lora=LoRASettings(rank=4, alpha=8, dropout=0.2, update_dropout=update_dropout,
                                                       steps=1, batch_size=2),
        generation=GenerationSettings(max_new_tokens=12, batch_size=3), warm_start=WarmStartSettings(enabled=False),
        corpus=CORPUS, seed=1,
    )
    drops = [m for name, m in sampler.model.named_modules() if "lora_dropout" in name and isinstance(m, torch.nn.Dropout)]
    seen = []
    handles = [d.register_forward_pre_hook(lambda m, args: seen.append((m.p, m.training))) for d in drops]
    sampler.update(elites_for(sampler))
    for h in handles:
        h.remove()
    assert drops and {p for p, training in seen if training} == {update_dropout}  # every training forward
    assert all(d.p == 0.2 for d in drops)  # the adapter's own dropout is back after the update
    with pytest.raises(ValueError, match="update_dropout"):
        LoRASettings(dropout=0.0, update_dropout=0.1)



TWO_HUNKS = ("```diff\n@@ -3,2 +3,2 @@\n     def forward(self, x):\n-        return x\n+        return x * 2\n"
             "@@ -1,2 +1,2 @@\n import torch\n-class Net(torch.nn.Module):\n+class Net(nn.Module):\n```")


LONG_CONTEXT = ("```diff\n@@ -1,2 +1,2 @@\n-import torch.nn as nn\n+import torch.nn as tnn\n fc = nn.Linear(784, 10)\n"
                " x = 1\n y = 2\n z = 3\n```")


@pytest.fixture(scope="module")
def two_hunk_writer(tokenizer):
    """A tiny model fitted (all weights) to answer CODE_A's prompt with TWO_HUNKS and
    CODE_B's with LONG_CONTEXT (one change, then the rest of the file as context)."""
    sampler = make_sampler(tokenizer)
    prompt = sampler.prompt_for(CODE_A)
    pairs = [(prompt, TWO_HUNKS), (sampler.prompt_for(CODE_B), LONG_CONTEXT)]
    batch = lora_sft.collate([lora_sft.encode_example(tokenizer, p, c) for p, c in pairs], tokenizer.pad_token_id, "cpu")
    model = sampler.model
    for p in model.parameters():
        p.requires_grad_(True)
    opt = torch.optim.Adam(model.parameters(), lr=1e-2)
    torch.manual_seed(0)
    for _ in range(200):
        opt.zero_grad()
        model(**batch).loss.backward()
        opt.step()
    model.eval()
    return model, prompt


@pytest.mark.parametrize("decoder", ["shared_prefix", "hf"])
@pytest.mark.parametrize("max_hunks", [0, 1, 2])
def test_an_answer_ends_after_max_hunks_changing_hunks(tokenizer, two_hunk_writer, decoder, max_hunks):
    """A model that writes two hunks: with max_hunks = 1 it is stopped at the second header
    (by the shared-prefix decoder, by the cut after generate) and the answer is the first hunk."""
    model, prompt = two_hunk_writer
    sampler = make_sampler(tokenizer, generation=GenerationSettings(
        temperature=0, max_new_tokens=80, batch_size=2, decoder=decoder, max_hunks=max_hunks))
    sampler.model = model
    out = sampler.generate([prompt])[0]
    assert TWO_HUNKS.startswith(out.text), "the fitted model no longer writes TWO_HUNKS: fit it longer"
    if max_hunks == 1:
        assert out.stop_reason == "hunks" and out.text == TWO_HUNKS[: TWO_HUNKS.index("@@ -1,2")]
        if decoder == "shared_prefix":  # stopped at the header, not run on to the fence
            assert out.completion_tokens < len(tokenizer(TWO_HUNKS)["input_ids"])
    else:
        assert out.stop_reason == "fence" and out.text == TWO_HUNKS


@pytest.mark.parametrize("decoder", ["shared_prefix", "hf"])
@pytest.mark.parametrize("after", [0, 2])
def test_an_answer_ends_a_few_unchanged_lines_after_its_change(tokenizer, two_hunk_writer, decoder, after):
    model, _ = two_hunk_writer
    sampler = make_sampler(tokenizer, generation=GenerationSettings(
        temperature=0, max_new_tokens=80, batch_size=2, decoder=decoder, max_hunks=1, max_context_after=after))
    sampler.model = model
    out = sampler.generate([sampler.prompt_for(CODE_B)])[0]
    assert LONG_CONTEXT.startswith(out.text), "the fitted model no longer writes LONG_CONTEXT: fit it longer"
    if after:
        assert out.stop_reason == "hunks" and out.text.endswith("+import torch.nn as tnn\n fc = nn.Linear(784, 10)\n x = 1\n")
        proposal = sampler._extract(out.text, out.stop_reason)[0]
        assert proposal is not None and proposal.endswith(" x = 1\n")
    else:
        assert out.stop_reason == "fence" and out.text == LONG_CONTEXT


def test_a_proposal_of_a_seen_file_is_drawn_again_when_the_loop_says_what_it_has_seen(tokenizer):
    from cem_nas.delta import apply_delta
    from cem_nas.sampler.llm import Generated

    sampler = make_sampler(tokenizer, generation=GenerationSettings(max_new_tokens=12, batch_size=8, redraw_unchanged=3))
    calls = []

    def scripted(prompts):  # the first two rounds give the seen file, then a new one per row
        calls.append(len(prompts))
        return [Generated(f"```diff\n{DELTA_A if len(calls) <= 2 else DELTA_A.replace('x * 2', f'x * {3 + j}')}```",
                          10, 5, "fence") for j in range(len(prompts))]

    sampler.generate = scripted
    seen_file = apply_delta(CODE_A, DELTA_A).code
    for installed, rounds in ((None, 0), (lambda code: code == seen_file, 2)):
        calls.clear()
        sampler.seen = installed
        proposals = sampler.propose([Baseline("a", CODE_A)], 3, np.random.default_rng(0))
        assert calls == [3] + [3] * rounds
        assert all(p.meta.get("redraws", 0) == rounds for p in proposals)
        assert all(("x * 2" not in p.delta) == bool(rounds) for p in proposals)


def test_answers_that_build_the_same_file_are_drawn_again_but_one(tokenizer):
    """Siblings of one batch that build one file: the loop would read all but one as repeats."""
    from cem_nas.sampler.llm import Generated

    sampler = make_sampler(tokenizer, generation=GenerationSettings(max_new_tokens=12, batch_size=8, redraw_unchanged=2))
    calls = []

    def scripted(prompts):  # round 1: four rows, one file (spaced two ways); then a new file per row
        calls.append(len(prompts))
        if len(calls) == 1:
            return [Generated(f"```diff\n{DELTA_A.replace('x * 2', 'x*2' if j % 2 else 'x * 2')}```", 10, 5, "fence")
                    for j in range(len(prompts))]
        return [Generated(f"```diff\n{DELTA_A.replace('x * 2', f'x * {10 * len(calls) + j}')}```", 10, 5, "fence")
                for j in range(len(prompts))]

    sampler.generate = scripted
    sampler.seen = lambda code: False
    proposals = sampler.propose([Baseline("a", CODE_A)], 4, np.random.default_rng(0))
    assert calls == [4, 3]  # 'x*2' and 'x * 2' are one file to the loop's repeat rule
    assert len({p.delta for p in proposals}) == 4 and sum(p.meta.get("redraws", 0) for p in proposals) == 3
    sampler.seen = None  # without the loop's redraw_repeats siblings stay
    calls.clear()
    assert len({p.delta.replace("x*2", "x * 2") for p in sampler.propose([Baseline("a", CODE_A)], 4, np.random.default_rng(0))}) == 1
