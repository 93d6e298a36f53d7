"""The mutation grammar (cem_nas.mutations) and the exact-CEM grammar sampler."""
import ast
from pathlib import Path

import numpy as np
import pytest
import torch

from cem_nas import mutations as m
from cem_nas import zoo
from cem_nas.delta import apply_delta
from cem_nas.records import Baseline, Elite
from cem_nas.sampler.base import Sampler
from cem_nas.sampler.grammar import GrammarSampler
from theory import cem as theory_cem

torch.set_num_threads(1)

SINGLE_CHOICES = [(c.name, i) for c in m.GRAMMAR for i in range(1, len(c.choices))]


@pytest.mark.parametrize("name", zoo.names())
def test_every_single_choice_renders_valid_python_that_builds(name):
    source = zoo.source(name)
    for coord, index in SINGLE_CHOICES:
        rendered = m.render_detail(source, {coord: index})
        ast.parse(rendered.code)
        assert (rendered.code == source) == (coord in rendered.noops)
        if rendered.noops:
            continue
        for in_shape, classes in [((1, 28, 28), 10), ((3, 32, 32), 100)]:
            zoo.check_output(zoo.build(rendered.code, in_shape, classes), in_shape, classes)


@pytest.mark.parametrize("name", zoo.names())
def test_keep_vector_is_the_identity(name):
    assert m.render(zoo.source(name), [0] * len(m.GRAMMAR)) == zoo.source(name)


def test_every_non_neutral_coordinate_changes_some_baseline():
    for coord, index in SINGLE_CHOICES:
        assert any(m.render(zoo.source(n), {coord: index}) != zoo.source(n) for n in zoo.names()), (coord, index)


def test_neutral_coordinate_only_writes_a_comment():
    assert [c.name for c in m.GRAMMAR if c.neutral] == [m.NEUTRAL]
    source = zoo.source("resnet")
    for index in range(1, len(m.GRAMMAR[-1].choices)):
        code = m.render(source, {m.NEUTRAL: index})
        assert ast.dump(ast.parse(code)) == ast.dump(ast.parse(source))
        assert code != source
    # re-tagging replaces the line rather than stacking comments
    twice = m.render(m.render(source, {m.NEUTRAL: "a"}), {m.NEUTRAL: "b"})
    assert twice == m.render(source, {m.NEUTRAL: "b"})


def test_width_scales_every_hidden_width_consistently():
    code = m.render(zoo.source("densenet"), {"width": "x2"})
    assert "DenseBlock(32, 96)" in code and "nn.Linear(128, out_shape[0])" in code
    assert zoo.describe(code)["params"] > 3 * zoo.describe("densenet")["params"]


def test_kernel_keeps_same_padding():
    code = m.render(zoo.source("vgg"), {"kernel": "5"})
    assert code.count("5, padding=2)") == 5 and "3, padding=1" not in code


def test_norm_remove_then_add_restores_plainnet():
    source = zoo.source("plainnet")
    removed = m.render(source, {"norm": "remove_bn"})
    assert source.count("nn.BatchNorm2d(") == 3 and "BatchNorm" not in removed
    assert m.render(removed, {"norm": "add_bn"}) == source


def test_block_adds_one_layer_at_the_trunk_width():
    residual = m.render(zoo.source("mobilenet"), {"block": "residual"})
    assert "AddedResidual(128, 128)," in residual and residual.count("class AddedResidual") == 1
    again = m.render(residual, {"block": "residual"})
    assert again.count("class AddedResidual") == 1 and again.count("AddedResidual(128, 128)") == 2
    hidden = m.render(zoo.source("mlp"), {"block": "conv"})
    assert "nn.Linear(64, 64)," in hidden


def test_optimizer_and_lr_edit_train_setup_only():
    code = m.render(zoo.source("vgg"), {"optimizer": "AdamW", "lr": "x0.3"})
    assert "torch.optim.AdamW(self.parameters(), lr=prm['lr'] * 0.3, weight_decay=0.01)" in code
    net = zoo.build(code, (1, 28, 28), 10)
    net.train_setup(zoo.DEFAULT_PRM)
    assert isinstance(net.optimizer, torch.optim.AdamW)
    assert net.optimizer.param_groups[0]["lr"] == pytest.approx(0.003)


def test_not_applicable_choices_are_recorded_as_noops():
    rendered = m.render_detail(zoo.source("mlp"), {"kernel": "5", "pooling": "max_to_avg", "dropout": "0.5"})
    assert rendered.noops == ("kernel", "pooling")
    assert "nn.Dropout(0.5)" in rendered.code


def test_bad_choices_raise_clear_errors():
    with pytest.raises(m.MutationError, match="unknown coordinates"):
        m.choice_vector({"depth": 1})
    with pytest.raises(m.MutationError, match="not a choice"):
        m.choice_vector({"activation": "Swish"})
    with pytest.raises(m.MutationError, match="out of range"):
        m.choice_vector({"width": 7})
    with pytest.raises(m.MutationError, match="needs 10 indices"):
        m.choice_vector([0, 1])
    with pytest.raises(m.MutationError, match="not valid Python"):
        m.render("def broken(:\n", {"width": "x2"})


# --- the grammar sampler: an exact CEM -------------------------------------------------

BASELINES = [Baseline(n, zoo.source(n)) for n in ("plainnet", "resnet", "mlp")]


def _elites(proposals, score, rho, rng):
    scores = [score(p.meta["choices"]) for p in proposals]
    return [Elite(proposals[i].baseline, proposals[i].prompt, proposals[i].response, scores[i], 0,
                  dict(proposals[i].meta)) for i in theory_cem.elite_indices(scores, rho, rng)]


def test_is_a_sampler_whose_proposals_apply_to_their_baseline():
    sampler = GrammarSampler(alpha=0.5)
    assert isinstance(sampler, Sampler) and sampler.mode == "delta"
    assert sampler.warm_started and sampler.warm_start().steps == 0 and sampler.dtype == ""
    proposals = sampler.propose(BASELINES, 6, np.random.default_rng(0))
    assert [p.baseline for p in proposals] == ["plainnet", "resnet", "mlp"] * 2
    for p in proposals:
        before = zoo.source(p.baseline)
        assert p.response == p.delta and p.code is None and p.completion_tokens > 0
        after = m.render(before, p.meta["choices"])
        assert p.prompt.endswith(m.describe_choices(p.meta["choices"]))
        if after != before:
            assert apply_delta(before, p.delta).code == after
    full = GrammarSampler(mode="full").propose(BASELINES[:1], 1, np.random.default_rng(0))[0]
    assert full.delta is None and full.code == m.render(BASELINES[0].code, full.meta["choices"])


def test_noise_free_elite_probability_follows_the_geometric_law():
    # score: coordinate "width" at x2 dominates, other coordinates only break ties; with
    # 10% elites of 40 and P(width = x2) >= 1/3, every elite lies in E = {width = x2}.
    alpha, rho, j = 0.3, 0.1, m.coordinate_names().index("width")
    in_set = np.array([False, False, True])
    sampler, rng = GrammarSampler(alpha=alpha), np.random.default_rng(1)

    def score(choices):
        return 10.0 * (choices[j] == 2) + 0.01 * sum(choices)

    p = [theory_cem.elite_probability(sampler.probs[j, :3], in_set)]
    for _ in range(5):
        elites = _elites(sampler.propose(BASELINES, 40, rng), score, rho, rng)
        q = theory_cem.elite_share_in_set([e.meta["choices"][j] == 2 for e in elites])
        assert q == 1.0
        stats = sampler.update(elites)
        assert stats.elite_nll_after < stats.elite_nll_before and stats.examples == 4
        p.append(theory_cem.elite_probability(sampler.probs[j, :3], in_set))
    p = np.array(p)
    assert np.allclose(1 - p[1:], (1 - alpha) * (1 - p[:-1]), rtol=0, atol=1e-12)
    assert np.allclose(1 - p, (1 - alpha) ** np.arange(6) * (2 / 3), rtol=0, atol=1e-12)


def test_noisy_score_keeps_the_smoothing_identity_with_measured_q():
    alpha, rho, j = 0.5, 0.2, m.coordinate_names().index("activation")
    sampler, rng = GrammarSampler(alpha=alpha), np.random.default_rng(2)
    noise = np.random.default_rng(3)
    in_set = np.array([False, False, True, False, False, False])  # activation = GELU
    for _ in range(4):
        proposals = sampler.propose(BASELINES[:1], 30, rng)
        elites = _elites(proposals, lambda c: float(c[j] == 2) + noise.normal(0, 1.0), rho, rng)
        q = theory_cem.elite_share_in_set([e.meta["choices"][j] == 2 for e in elites])
        before = theory_cem.elite_probability(sampler.probs[j, :6], in_set)
        sampler.update(elites)
        after = theory_cem.elite_probability(sampler.probs[j, :6], in_set)
        assert abs(theory_cem.identity_residual(before, q, after, alpha)) < 1e-12


def test_neutral_coordinate_drifts_like_wright_fisher():
    # elites drawn without selection: E[H_t] = H_0 (1 - alpha^2/m)^t (theory.cem)
    alpha, m_elite, t, runs = 0.5, 4, 5, 300
    sampler0 = GrammarSampler(alpha=alpha)
    j = sampler0.neutral
    assert m.coordinate_names()[j] == m.NEUTRAL and set(sampler0.marginal(m.NEUTRAL)) == {"keep", "a", "b", "c"}
    rng = np.random.default_rng(4)
    diversity = []
    for _ in range(runs):
        sampler = GrammarSampler(alpha=alpha)
        for _ in range(t):
            sampler.update([Elite("x", "", "", 0.0, 0, {"choices": sampler.sample(rng)}) for _ in range(m_elite)])
        k = len(m.GRAMMAR[j].choices)
        diversity.append(1 - np.sum(sampler.probs[j, :k] ** 2))
    expected = theory_cem.expected_neutral_diversity(0.75, alpha, m_elite, t)
    assert abs(np.mean(diversity) - expected) < 4 * np.std(diversity, ddof=1) / np.sqrt(runs)
    assert expected < 0.75 * 0.8  # drift is material at this size: the test has power


def test_state_round_trip_resumes_the_same_stream(tmp_path):
    a = GrammarSampler(alpha=0.4, seed=7)
    elites = [Elite("plainnet", "", "", 1.0, 0, {"choices": m.choice_vector({"width": "x2"})})]
    a.update(elites)
    a.propose(BASELINES, 2)
    a.save(tmp_path)
    b = GrammarSampler(alpha=0.9, seed=0)
    b.load(tmp_path)
    assert np.array_equal(a.probs, b.probs) and b.alpha == 0.4 and b.updates == 1
    assert [p.meta["choices"] for p in a.propose(BASELINES, 3)] == [p.meta["choices"] for p in b.propose(BASELINES, 3)]


def test_sampler_input_errors():
    with pytest.raises(ValueError, match="alpha"):
        GrammarSampler(alpha=1.5)
    with pytest.raises(ValueError, match="shape"):
        GrammarSampler(probs=np.ones((2, 2)))
    with pytest.raises(ValueError, match="meta\\['choices'\\]"):
        GrammarSampler().update([Elite("x", "", "", 1.0, 0, {})])
    with pytest.raises(ValueError, match="at least one baseline"):
        GrammarSampler().propose([], 1, np.random.default_rng(0))
    with pytest.raises(FileNotFoundError, match="save"):
        GrammarSampler().load(Path("/nonexistent"))
    assert GrammarSampler().update([]).steps == 0


def test_a_vector_that_changes_nothing_gives_an_empty_whole_delta():
    keep_all = np.zeros((len(m.GRAMMAR), max(m.cardinalities())))
    keep_all[:, 0] = 1.0
    p = GrammarSampler(probs=keep_all).propose(BASELINES[:1], 1, np.random.default_rng(0))[0]
    assert p.delta == "" and p.complete is True  # the loop records it as unchanged


def test_random_sampler_draws_uniformly_and_never_moves():
    from scipy import stats

    from cem_nas.sampler.uniform import RandomSampler

    sampler = RandomSampler(seed=1)
    assert isinstance(sampler, Sampler) and sampler.alpha == 0.0
    before = sampler.probs.copy()
    proposals = sampler.propose(BASELINES, 400, np.random.default_rng(0))
    stats_ = sampler.update([Elite(p.baseline, "", "", 1.0, 0, p.meta) for p in proposals[:10]])
    assert (sampler.probs == before).all() and stats_.steps == 0
    assert stats_.elite_nll_before == stats_.elite_nll_after == pytest.approx(-sum(np.log(1 / k) for k in m.cardinalities()))
    draws = np.array([p.meta["choices"] for p in proposals])
    # every coordinate uniform over its choices; Bonferroni over the coordinates at 1e-3
    p_values = [stats.chisquare(np.bincount(draws[:, j], minlength=k)).pvalue for j, k in enumerate(m.cardinalities())]
    assert min(p_values) > 1e-3 / len(p_values)
