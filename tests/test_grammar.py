"""The mutation grammar (cem_nas.mutations) and the exact-CEM grammar sampler."""
import ast

import pytest
import torch

from cem_nas import mutations as m
from cem_nas import zoo

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


def test_norm_add_then_remove_restores_plainnet():
    source = zoo.source("plainnet")
    added = m.render(source, {"norm": "add_bn"})
    assert added.count("nn.BatchNorm2d(") == 3
    assert m.render(added, {"norm": "remove_bn"}) == source


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
