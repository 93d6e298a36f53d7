"""The baseline zoo: plain-source model files in the LEMUR (nn-dataset) interface.

Each ``<name>.py`` here is *data*: the LLM reads it and writes a delta against it. A file
defines ``supported_hyperparameters()`` and ``class Net(nn.Module)`` with
``__init__(self, in_shape, out_shape, prm, device)`` (``in_shape = (batch, C, H, W)``,
``out_shape = (num_classes,)``), ``forward``, ``train_setup(prm)`` (sets ``self.criteria``
and ``self.optimizer``) and ``learn(train_data)`` (one epoch, gradient norm clipped at 3).
Zoo files import only ``torch``.

The files share a small convention so that :mod:`cem_nas.mutations` can edit every one of
them at source level:

* the trunk is ``self.features = nn.Sequential(...)``, one element per line, ending in a
  layer that sets the channel count (``nn.Conv2d``, ``nn.Linear`` or a local block);
* channel counts are integer literals (multiples of 8) only in the first two positional
  arguments of ``nn.Conv2d``/``nn.Linear``/local block classes and the first of
  ``nn.BatchNorm2d``; every other width is derived from those, so scaling the literals
  scales the net consistently;
* local block classes take ``(c_in, c_out, ...)`` positionally and everything else
  (stride, layers) by keyword;
* spatial convolutions are ``nn.Conv2d(a, b, k, ..., padding=k // 2)`` with literal k;
* activations are ``nn.ReLU()``-style constructors (never ``F.relu``), pooling is
  ``nn.MaxPool2d``/``nn.AvgPool2d`` and a final adaptive pool, dropout is
  ``nn.Dropout(prm['dropout'])`` in the classifier, and every normalisation layer sits in
  an ``nn.Sequential``;
* the optimizer is one ``self.optimizer = torch.optim.X(self.parameters(), lr=..., ...)``.

:func:`build` execs source in this process: use it for trusted code only (the zoo, the
grammar's renders). Candidate code an LLM wrote goes through :mod:`cem_nas.sandbox`.
"""
from __future__ import annotations

import functools
import types
from importlib import resources

import torch
from torch import nn

#: Hyperparameters used when a caller gives none (the evaluation defaults).
DEFAULT_PRM = {"lr": 0.01, "momentum": 0.9, "dropout": 0.2}


def names() -> list[str]:
    """Names of the zoo baselines, sorted (the file stems)."""
    files = resources.files(__name__).iterdir()
    return sorted(f.name[:-3] for f in files if f.name.endswith(".py") and not f.name.startswith("_"))


def source(name: str) -> str:
    """The source text of baseline ``name``."""
    known = names()
    if name not in known:
        raise KeyError(f"no zoo baseline named {name!r}; known baselines: {', '.join(known)}")
    return resources.files(__name__).joinpath(f"{name}.py").read_text(encoding="utf-8")


def _code(code_or_name: str) -> str:
    if code_or_name in names():
        return source(code_or_name)
    if "class Net" not in code_or_name:
        raise ValueError(
            f"{code_or_name[:60]!r} is neither a zoo baseline name ({', '.join(names())}) "
            "nor model source defining `class Net`"
        )
    return code_or_name


@functools.lru_cache(maxsize=256)
def _compiled(code: str) -> types.CodeType:
    """Bytecode of a model file (a shape check builds the same file at several shapes)."""
    return compile(code, "<net.py>", "exec")


def build(code: str, in_shape: tuple[int, int, int], num_classes: int, prm: dict | None = None,
          device: torch.device | str = "cpu") -> nn.Module:
    """Exec ``code`` (a model file or a zoo name) in a fresh module and return its ``Net``.

    Trusted code only: nothing here limits what the code does (see the module docstring).
    ``in_shape`` is (C, H, W); the net receives LEMUR's (1, C, H, W).
    """
    module = types.ModuleType("cem_nas_candidate")
    exec(_compiled(_code(code)), module.__dict__)  # noqa: S102 (trusted code only)
    net_class = getattr(module, "Net", None)
    if net_class is None:
        raise ValueError("model source defines no `Net` class")
    return net_class((1, *in_shape), (num_classes,), dict(DEFAULT_PRM, **(prm or {})), torch.device(device))


def check_output(net: nn.Module, in_shape: tuple[int, int, int], num_classes: int, batch: int = 1) -> None:
    """Run one random batch through ``net`` (no grad) and raise ValueError unless the
    output has shape (batch, num_classes)."""
    net.eval()
    with torch.no_grad():
        out = net(torch.randn(batch, *in_shape))
    if tuple(out.shape) != (batch, num_classes):
        raise ValueError(f"output shape {tuple(out.shape)} for input {(batch, *in_shape)}; "
                         f"expected {(batch, num_classes)}")


def describe(code_or_name: str, in_shape: tuple[int, int, int] = (1, 28, 28), num_classes: int = 10) -> dict:
    """Parameter count and FLOPs per sample of a model at ``in_shape`` (C, H, W).

    FLOPs are multiply-adds of ``nn.Conv2d`` and ``nn.Linear`` layers in one forward pass
    of one sample: conv = out_elements * (in_channels / groups) * kh * kw, linear =
    out_elements * in_features. Bias adds, normalisation, activations and pooling are not
    counted (they are small next to these and vary between counting conventions).

    For the plain net at 28x28 (three 3x3 convs at 28, 14 and 7 pixels, then a linear head):

    >>> describe("plainnet", (1, 28, 28), 10)["flops"] == (
    ...     28*28*16*1*9 + 14*14*32*16*9 + 7*7*64*32*9 + 10*64)
    True
    """
    net = build(code_or_name, in_shape, num_classes)
    flops = 0

    def count(module: nn.Module, inputs: tuple, output: torch.Tensor) -> None:
        nonlocal flops
        per_output = (module.in_channels // module.groups * module.kernel_size[0] * module.kernel_size[1]
                      if isinstance(module, nn.Conv2d) else module.in_features)
        flops += output.numel() // output.shape[0] * per_output

    hooks = [m.register_forward_hook(count) for m in net.modules() if isinstance(m, (nn.Conv2d, nn.Linear))]
    try:
        check_output(net, in_shape, num_classes)
    finally:
        for hook in hooks:
            hook.remove()
    return {"params": sum(p.numel() for p in net.parameters()), "flops": int(flops)}
