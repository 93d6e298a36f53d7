"""What kind of edit turns one model file into another, in the grammar's vocabulary.

The kinds are the mutation grammar's non-neutral coordinates (:mod:`cem_nas.mutations`):
block, norm, width, kernel, activation, pooling, dropout, optimizer, lr; anything else a
file can change (a stride, a skip connection written in ``forward``, a new argument) is
``other``. The classifier reads the calls both files make (``nn.Conv2d(16, 32, 3)``,
``torch.optim.SGD(...)``, a local block class) as multisets and looks at what differs:

* a layer type whose count changes: activation, pooling, norm or dropout by its family,
  ``block`` for convolutions, linear layers, ``nn.Sequential`` and local classes, and
  ``optimizer`` for ``torch.optim``;
* the same layer type with other arguments: ``width`` (the channel arguments of a
  convolution, a linear layer or a norm), ``kernel`` (a convolution's third argument or
  ``kernel_size``), ``dropout`` (its rate), ``lr`` (an optimizer's ``lr``), else ``other``.

It is a measuring instrument for what a sampler proposes (bench_support, the kinds per
cycle), not a judge: an edit the grammar cannot make still gets a kind.

>>> before = "net = nn.Sequential(nn.Conv2d(1, 16, 3), nn.ReLU(), nn.MaxPool2d(2))"
>>> edit_kinds(before, before.replace("ReLU", "GELU"))
('activation',)
>>> edit_kinds(before, before.replace("16, 3", "32, 5"))
('width', 'kernel')
>>> edit_kinds(before, before.replace("nn.ReLU(),", "nn.ReLU(), nn.BatchNorm2d(16),"))
('norm',)
>>> edit_kinds(before, before + "\\nx = 1")
('other',)
"""
from __future__ import annotations

import ast
import copy
from collections import Counter

KINDS = ("block", "norm", "width", "kernel", "activation", "pooling", "dropout", "optimizer", "lr", "other")
_ACTIVATIONS = {"ReLU", "GELU", "SiLU", "LeakyReLU", "Tanh", "ELU", "ReLU6", "Hardswish", "Mish", "Sigmoid",
                "PReLU", "SELU", "CELU", "Softplus", "Hardtanh", "Hardsigmoid", "Softsign", "Tanhshrink", "GLU",
                "relu", "gelu", "silu", "leaky_relu", "tanh", "elu", "relu6", "hardswish", "mish", "sigmoid"}
_POOLS = ("Pool",)
_NORMS = ("Norm",)
_CONTAINERS = {"Sequential", "ModuleList", "ModuleDict"}
_LAYERS = {"Conv2d", "Conv1d", "ConvTranspose2d", "Linear", "Identity"} | _CONTAINERS


def _name(func: ast.AST) -> str:
    return func.attr if isinstance(func, ast.Attribute) else func.id if isinstance(func, ast.Name) else ""


def _shallow(node: ast.AST) -> str:
    """An argument's text with the calls inside it reduced to their names: a container
    (``nn.Sequential(...)``) does not change because a layer inside it did."""
    class Names(ast.NodeTransformer):
        def visit_Call(self, call: ast.Call) -> ast.AST:
            return ast.Name(id=f"<{_name(call.func)}>")

    return ast.unparse(Names().visit(copy.deepcopy(node)))


def _calls(code: str) -> tuple[Counter, set[str]]:
    """The file's calls as a multiset of (name, args text, is optimizer), and its local class names."""
    tree = ast.parse(code)
    local = {n.name for n in ast.walk(tree) if isinstance(n, ast.ClassDef)}
    calls: Counter = Counter()
    for node in ast.walk(tree):
        if isinstance(node, ast.Call):
            name = _name(node.func)
            optim = isinstance(node.func, ast.Attribute) and "optim" in ast.unparse(node.func.value)
            args = tuple(_shallow(a) for a in node.args)
            kwargs = tuple(sorted((k.arg or "**", _shallow(k.value)) for k in node.keywords))
            calls[(name, args, kwargs, optim)] += 1
    return calls, local


def _family(name: str, optim: bool, local: set[str]) -> str | None:
    """The kind an added or removed call of this name stands for (None: not a layer)."""
    if optim:
        return "optimizer"
    if name in _ACTIVATIONS:
        return "activation"
    if any(p in name for p in _POOLS):
        return "pooling"
    if any(p in name for p in _NORMS):
        return "norm"
    if name.startswith("Dropout") or name == "dropout":
        return "dropout"
    if name in _LAYERS or name in local:
        return "block"
    return None


def _changed_args(name: str, old: tuple, new: tuple, optim: bool, local: bool) -> set[str]:
    """Kinds of a call of one type whose arguments changed from ``old`` to ``new`` (args,
    kwargs); ``local``: the type is a class of the file (a block taking its channels first)."""
    (a0, k0), (a1, k1) = old, new
    kw0, kw1 = dict(k0), dict(k1)
    if optim:
        return {"lr"} if kw0.get("lr") != kw1.get("lr") else {"optimizer"}
    if name.startswith("Dropout"):
        return {"dropout"}
    kinds = set()
    if "Conv" in name:
        if a0[:2] != a1[:2] or kw0.get("in_channels") != kw1.get("in_channels") or \
                kw0.get("out_channels") != kw1.get("out_channels"):
            kinds.add("width")
        if a0[2:3] != a1[2:3] or kw0.get("kernel_size") != kw1.get("kernel_size"):
            kinds.add("kernel")
    elif name == "Linear" or local or any(p in name for p in _NORMS):
        if a0[:2] != a1[:2]:
            kinds.add("width")
    return kinds or {"other"}


def edit_kinds(before: str, after: str) -> tuple[str, ...]:
    """The kinds of edit (in :data:`KINDS` order) that make ``after`` of ``before``; ``()``
    when the two are the same code, ``('other',)`` when a file does not parse or the edit
    changes no call."""
    if before == after:
        return ()
    try:
        (old, local0), (new, local1) = _calls(before), _calls(after)
    except (SyntaxError, ValueError):
        return ("other",)
    local = local0 | local1
    removed, added = old - new, new - old
    kinds: set[str] = set()
    by_type: dict[tuple[str, bool], list[list]] = {}
    for side, calls in enumerate((removed, added)):
        for (name, args, kwargs, optim), count in calls.items():
            by_type.setdefault((name, optim), [[], []])[side].extend([(args, kwargs)] * count)
    counted: set[str] = set()
    for (name, optim), (gone, came) in by_type.items():
        family = _family(name, optim, local)
        if name not in _CONTAINERS:  # a container's arguments are the layers it holds
            for old_args, new_args in zip(gone, came):  # the same type with other arguments
                kinds |= _changed_args(name, old_args, new_args, optim, name in local)
        if len(gone) != len(came):  # a type that appears more or less often
            counted.add(family or "other")
    if "block" in counted:  # an added or removed block brings its own activations and norms
        counted -= {"activation", "norm"}
    if counted - {"other"} or kinds:  # calls of no layer family (super(), self.act(x)) go with the layers
        counted.discard("other")
    kinds |= counted
    return tuple(k for k in KINDS if k in kinds) or ("other",)
