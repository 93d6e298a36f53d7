"""Edit hints: the kind distribution's CE step, hinted prompts, the balanced corpus."""
from __future__ import annotations

import math
from collections import Counter

import numpy as np
import pytest

from cem_nas import corpus, mutations, zoo
from cem_nas.records import Baseline, Elite
from cem_nas.sampler.hints import KINDS, HintSettings, KindDistribution, applicable_kinds, hint_text, pair_kinds
from tests.test_llm_sampler import CODE_A, CODE_B, DELTA_A, DELTA_B, make_sampler, tokenizer  # noqa: F401


def test_kinds_are_the_grammars_non_neutral_coordinates():
    assert list(KINDS) == [c.name for c in mutations.GRAMMAR if not c.neutral]


def test_kind_step_is_the_smoothed_ce_update_and_keeps_every_kind():
    w = KindDistribution(alpha=0.3)
    p = np.full(len(KINDS), 1 / len(KINDS))
    for elites in (["activation", "activation", "pooling"], ["activation"], ["width", "width"]):
        f = np.array([elites.count(k) for k in KINDS]) / len(elites)
        p = 0.3 * f + 0.7 * p
        w.update(elites)
        assert np.allclose(list(w.weights.values()), p) and math.isclose(sum(w.weights.values()), 1.0)
    assert min(w.weights.values()) == pytest.approx(0.7**3 / 9)  # never-seen kinds keep (1-alpha)^t w_0
    w.update([])  # no elites: no step
    assert np.allclose(list(w.weights.values()), p)
    with pytest.raises(ValueError, match="unknown kinds"):
        w.update(["colour"])
    frozen = KindDistribution(alpha=0.0)
    frozen.update(["dropout"])
    assert set(frozen.weights.values()) == {1 / 9}


def test_kind_draws_follow_the_weights_within_the_allowed_kinds():
    w = KindDistribution(alpha=0.5)
    w.update(["activation"])  # activation 0.5 + 0.5/9, the others 0.5/9
    rng = np.random.default_rng(0)
    allowed = ("activation", "pooling", "dropout")
    n = 9000
    counts = Counter(w.sample(rng, allowed) for _ in range(n))
    assert set(counts) == set(allowed)
    expected = (0.5 + 0.5 / 9) / (0.5 + 3 * 0.5 / 9)  # 0.8
    sd = math.sqrt(expected * (1 - expected) / n)
    assert abs(counts["activation"] / n - expected) < 4 * sd
    with pytest.raises(ValueError, match="no known kind"):
        w.sample(rng, ["colour"])


def test_state_round_trip_and_bad_state():
    w = KindDistribution(alpha=0.3)
    w.update(["lr", "norm"])
    other = KindDistribution(alpha=0.3)
    other.load_state_dict(w.state_dict())
    assert other.weights == w.weights
    with pytest.raises(ValueError, match="saved hint weights"):
        other.load_state_dict({"weights": {"lr": 1.0}})
    with pytest.raises(ValueError, match="smoothing step"):
        HintSettings(alpha=1.5)


def test_applicable_kinds_of_zoo_files():
    for name in zoo.names():
        kinds = applicable_kinds(zoo.source(name))
        found = {mutations.GRAMMAR[j].name for j in corpus.applicable_choices(zoo.source(name))}
        assert set(kinds) == found - {mutations.NEUTRAL}
    # a file the grammar cannot read (a broken candidate) may take any edit
    assert applicable_kinds("def f(:\n") == tuple(KINDS)
    assert hint_text(pair_kinds(corpus.build_corpus(1, cache=False, max_edits=1)[0].choices)).startswith("Change only ")


def test_balanced_corpus_spreads_the_kinds():
    plain = corpus.build_corpus(48, 0, cache=False, max_edits=1, context=1, max_changed=8)
    balanced = corpus.build_corpus(48, 0, cache=False, max_edits=1, context=1, max_changed=8, balance=True)
    plain_kinds = Counter(corpus.first_kind(p) for p in plain)
    kinds = Counter(corpus.first_kind(p) for p in balanced)
    assert len(balanced) == 48 and len({p.after for p in balanced}) == 48
    # round-robin: no kind has more than its even share (+1 for the ones left by a used-up kind)
    assert max(kinds.values()) <= math.ceil(48 / len(kinds)) + 1 < max(plain_kinds.values())
    with pytest.raises(corpus.CorpusError, match="only"):
        corpus.build_corpus(400, 0, cache=False, max_edits=1, context=1, max_changed=4, balance=True)


CORPUS_WITH_KINDS = [  # (name, before, after, delta, choices): a activation edit on a, a dropout edit on b
    ("a", CODE_A, CODE_A.replace("return x\n", "return x * 2\n"), DELTA_A, (0, 0, 0, 0, 2, 0, 0, 0, 0, 0)),
    ("b", CODE_B, CODE_B, DELTA_B, (0, 0, 0, 0, 0, 0, 3, 0, 0, 0)),
]


def test_sampler_hints_prompts_trains_on_hinted_pairs_and_moves_the_kinds(tokenizer):  # noqa: F811
    sampler = make_sampler(tokenizer, hints=HintSettings(enabled=True, alpha=0.5))
    sampler._corpus = CORPUS_WITH_KINDS
    examples = sampler.corpus_examples()
    assert "Change only the activation function." in examples[0][0]
    assert "Change only the dropout rate." in examples[1][0]
    baselines = [Baseline("a", CODE_A), Baseline("b", CODE_B)]
    proposals = sampler.propose(baselines, 6, np.random.default_rng(3))
    for p in proposals:
        code = CODE_A if p.baseline == "a" else CODE_B
        assert p.meta["hint"] in KINDS and p.prompt == sampler.prompt_for(code, kinds=[p.meta["hint"]])
    again = sampler.propose(baselines, 6, np.random.default_rng(3))
    assert [p.prompt for p in again] == [p.prompt for p in proposals]
    elites = [Elite("a", proposals[0].prompt, DELTA_A, 0.9, 0, meta={"hint": "pooling"})]
    sampler.update(elites)
    assert sampler.kinds.weights["pooling"] == pytest.approx(0.5 + 0.5 / 9)
    restored = make_sampler(tokenizer, hints=HintSettings(enabled=True, alpha=0.5))
    restored.load_state_dict(sampler.state_dict())
    assert restored.kinds.weights == sampler.kinds.weights
    # the warm-started adapter of hinted prompts is another cache entry; without hints the key is unchanged
    plain = make_sampler(tokenizer)
    hinted = make_sampler(tokenizer, hints=HintSettings(enabled=True))
    assert plain.warm_start_key() != hinted.warm_start_key()
    assert plain.warm_start_key() == make_sampler(tokenizer, hints=HintSettings(enabled=False)).warm_start_key()
    assert "Change only" not in plain.propose(baselines, 1, np.random.default_rng(3))[0].prompt


def test_hints_and_few_shot_examples_go_together(tokenizer):  # noqa: F811
    from cem_nas.sampler.llm import GenerationSettings

    sampler = make_sampler(tokenizer, hints=HintSettings(enabled=True),
                           generation=GenerationSettings(max_new_tokens=4, batch_size=4, few_shot=1))
    baselines = [Baseline("a", CODE_A), Baseline("b", CODE_B)]
    for p in sampler.propose(baselines, 4, np.random.default_rng(3)):
        other = DELTA_B if p.baseline == "a" else DELTA_A
        code = CODE_A if p.baseline == "a" else CODE_B
        assert p.meta["hint"] in KINDS and p.prompt == sampler.prompt_for(code, [other], [p.meta["hint"]])


def test_balanced_warm_start_without_hints(tokenizer):  # noqa: F811
    """warm_start.balance balances the corpus on its own and is another adapter; unset, the key
    is that of a sampler built before the field existed (no 'balance' entry in it)."""
    from cem_nas.sampler.llm import WarmStartSettings

    def sampler(balance: bool):
        s = make_sampler(tokenizer, warm_start=WarmStartSettings(enabled=False, corpus_size=24, max_changed=8,
                                                                 balance=balance))
        s._corpus = None  # build the real corpus from the settings
        return s

    plain, balanced = sampler(False), sampler(True)
    assert plain.warm_start_key() != balanced.warm_start_key()
    kinds = Counter(corpus.first_kind(p) for p in balanced._corpus_items())
    assert max(kinds.values()) <= math.ceil(24 / len(kinds)) + 1
    assert kinds != Counter(corpus.first_kind(p) for p in plain._corpus_items())
