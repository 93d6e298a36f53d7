"""The baseline zoo: interface, shapes, FLOP counting and training speed."""
import ast
import time

import pytest
import torch
from torch import nn

from cem_nas import zoo

torch.set_num_threads(1)

SHAPES = [((1, 28, 28), 10), ((1, 28, 28), 100), ((3, 32, 32), 10), ((3, 32, 32), 100)]
ALLOWED_IMPORTS = {"torch", "math", "typing", "collections", "functools", "dataclasses"}


def test_registry_lists_at_least_eight_styles():
    assert {"alexnet", "vgg", "resnet", "mobilenet", "densenet", "squeezenet", "plainnet"} <= set(zoo.names())
    assert len(zoo.names()) >= 8


def test_unknown_name_and_bad_code_say_what_is_known():
    with pytest.raises(KeyError, match="resnet"):
        zoo.source("no_such_net")
    with pytest.raises(ValueError, match="class Net"):
        zoo.describe("x = 1")


@pytest.mark.parametrize("name", zoo.names())
def test_file_follows_lemur_interface_and_import_policy(name):
    tree = ast.parse(zoo.source(name))
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            assert all(a.name.split(".")[0] in ALLOWED_IMPORTS for a in node.names)
        if isinstance(node, ast.ImportFrom):
            assert node.module.split(".")[0] in ALLOWED_IMPORTS
    top = {n.name: n for n in tree.body if isinstance(n, (ast.FunctionDef, ast.ClassDef))}
    assert "supported_hyperparameters" in top and "Net" in top
    methods = {f.name for f in top["Net"].body if isinstance(f, ast.FunctionDef)}
    assert {"__init__", "forward", "train_setup", "learn"} <= methods
    init = next(f for f in top["Net"].body if isinstance(f, ast.FunctionDef) and f.name == "__init__")
    assert [a.arg for a in init.args.args] == ["self", "in_shape", "out_shape", "prm", "device"]
    assert 30 <= len(zoo.source(name).splitlines()) <= 75


@pytest.mark.parametrize("name", zoo.names())
def test_builds_with_right_output_shape_and_small_size(name):
    for in_shape, classes in SHAPES:
        net = zoo.build(name, in_shape, classes)
        zoo.check_output(net, in_shape, classes, batch=3)
        d = zoo.describe(name, in_shape, classes)
        assert 5_000 <= d["params"] <= 500_000
        assert 0 < d["flops"] <= 6_000_000


def test_check_output_rejects_a_wrong_shape():
    net = zoo.build("plainnet", (1, 28, 28), 10)
    with pytest.raises(ValueError, match=r"expected \(1, 100\)"):
        zoo.check_output(net, (1, 28, 28), 100)


def test_flops_count_grouped_convolutions():
    # depthwise conv: out (1, 8, 4, 4), each output sees in/groups = 1 channel x 3x3
    code = zoo.source("plainnet").replace(
        "nn.Conv2d(16, 32, 3, padding=1)", "nn.Conv2d(16, 16, 3, padding=1, groups=16)"
    ).replace("nn.BatchNorm2d(32)", "nn.BatchNorm2d(16)").replace("nn.Conv2d(32, 64", "nn.Conv2d(16, 64")
    full, grouped = zoo.describe("plainnet")["flops"], zoo.describe(code)["flops"]
    assert full - grouped == 14 * 14 * 32 * 16 * 9 - 14 * 14 * 16 * 1 * 9 + 7 * 7 * 64 * (32 - 16) * 9


def _batches(n, in_shape, classes, batch=64):
    gen = torch.Generator().manual_seed(0)
    x = torch.randn(n, *in_shape, generator=gen)
    y = torch.randint(0, classes, (n,), generator=gen)
    return [(x[i:i + batch], y[i:i + batch]) for i in range(0, n, batch)]


@pytest.mark.parametrize("name", zoo.names())
def test_train_setup_and_learn_update_the_weights(name):
    torch.manual_seed(0)
    net = zoo.build(name, (1, 28, 28), 10)
    net.train_setup(zoo.DEFAULT_PRM)
    assert isinstance(net.criteria[0], nn.CrossEntropyLoss)
    assert isinstance(net.optimizer, torch.optim.Optimizer)
    before = [p.detach().clone() for p in net.parameters()]
    net.learn(_batches(128, (1, 28, 28), 10))
    assert any(not torch.equal(b, p) for b, p in zip(before, net.parameters()))


@pytest.mark.slow
@pytest.mark.parametrize("name", zoo.names())
def test_one_epoch_of_5000_images_takes_seconds(name):
    torch.manual_seed(0)
    net = zoo.build(name, (1, 28, 28), 10)
    net.train_setup(zoo.DEFAULT_PRM)
    data = _batches(5000, (1, 28, 28), 10)
    start = time.perf_counter()
    net.learn(data)
    assert time.perf_counter() - start < 10.0
