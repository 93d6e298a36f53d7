"""The mutation grammar: a fixed list of coordinates, each a categorical over edits.

A *choice vector* has one index per coordinate of :data:`GRAMMAR`; index 0 is always
"keep". :func:`render` turns a baseline source and a choice vector into new source by
source-level edits: the AST locates the calls, and only their text spans are replaced, so
the rest of the file (comments, layout) is untouched and the unified diff stays small.

The edits rely on the zoo's conventions (see :mod:`cem_nas.zoo`). A choice that finds
nothing to edit in a given baseline (``pooling=max_to_avg`` in a net without max pooling,
``norm=add_bn`` where every conv already has one, ``optimizer=SGD`` on an SGD net) renders
as a no-op; :func:`render_detail` records which coordinates were no-ops.

Coordinates are applied in :data:`GRAMMAR` order, so later edits see earlier ones (an
added block is widened by ``width``, its activation changed by ``activation``).
``tag`` is the *neutral* coordinate: it only writes a ``# variant: <x>`` comment line, so
it cannot change the network, and its drift under the CE update measures genetic drift.

>>> from cem_nas import zoo
>>> code = render(zoo.source("plainnet"), {"activation": "GELU", "tag": "b"})
>>> code.splitlines()[0], code.count("nn.GELU()"), code.count("nn.ReLU()")
('# variant: b', 3, 0)
"""
from __future__ import annotations

import ast
import functools
import re
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass

ACTIVATIONS = ("ReLU", "GELU", "SiLU", "LeakyReLU", "Tanh", "ELU", "ReLU6", "Hardswish", "Mish", "Sigmoid")
OPTIMIZERS = {
    "SGD": "torch.optim.SGD({params}, lr={lr}, momentum=prm['momentum'])",
    "Adam": "torch.optim.Adam({params}, lr={lr})",
    "AdamW": "torch.optim.AdamW({params}, lr={lr}, weight_decay=0.01)",
}
ADDED_RESIDUAL = '''class AddedResidual(nn.Module):
    def __init__(self, c_in, c_out):
        super().__init__()
        self.body = nn.Sequential(
            nn.Conv2d(c_in, c_out, 3, padding=1),
            nn.BatchNorm2d(c_out),
            nn.ReLU(),
            nn.Conv2d(c_out, c_out, 3, padding=1),
            nn.BatchNorm2d(c_out),
        )
        self.act = nn.ReLU()

    def forward(self, x):
        return self.act(x + self.body(x))


'''
_TAG = re.compile(r"# variant: \w+\n")


class MutationError(ValueError):
    """A choice vector or a baseline the grammar cannot work with."""


# --- source editing: AST nodes located as byte spans of the original text ---------------

class _Source:
    def __init__(self, text: str):
        self.text = text
        self.data = text.encode("utf-8")
        try:
            self.tree = ast.parse(text)
        except SyntaxError as err:
            raise MutationError(f"baseline source is not valid Python ({err}); fix it before mutating") from err
        self._nn_calls: dict[str, list[ast.Call]] | None = None
        self.line_starts = [0]
        for line in self.data.splitlines(keepends=True):
            self.line_starts.append(self.line_starts[-1] + len(line))

    def start(self, node: ast.AST) -> int:
        return self.line_starts[node.lineno - 1] + node.col_offset

    def end(self, node: ast.AST) -> int:
        return self.line_starts[node.end_lineno - 1] + node.end_col_offset

    def segment(self, node: ast.AST) -> str:
        return self.data[self.start(node):self.end(node)].decode("utf-8")

    def calls(self, name: str) -> list[ast.Call]:
        """Calls of ``nn.<name>`` (or ``torch.nn.<name>``)."""
        if self._nn_calls is None:  # one walk serves every lookup of this source
            self._nn_calls = {}
            for node in ast.walk(self.tree):
                if isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute) and _is_nn_call(
                        node, node.func.attr):
                    self._nn_calls.setdefault(node.func.attr, []).append(node)
        return self._nn_calls.get(name, [])

    def local_classes(self) -> set[str]:
        return {n.name for n in self.tree.body if isinstance(n, ast.ClassDef) and n.name != "Net"}

    def alone_on_line(self, node: ast.AST) -> tuple[bool, int]:
        """Whether ``node`` (plus an optional comma) fills its lines, and the end offset
        of the node including that comma."""
        before = self.data[self.line_starts[node.lineno - 1]:self.start(node)]
        after = self.data[self.end(node):self.line_starts[node.end_lineno]]
        stripped = after.lstrip(b" \t")
        comma = stripped.startswith(b",")
        stop = self.end(node) + len(after) - len(stripped) + 1 if comma else self.end(node)
        return not before.strip() and after.strip() in (b"", b","), stop


def _is_nn_call(node: ast.AST, name: str) -> bool:
    if not (isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute) and node.func.attr == name):
        return False
    owner = node.func.value
    return (isinstance(owner, ast.Name) and owner.id == "nn") or (
        isinstance(owner, ast.Attribute) and owner.attr == "nn" and isinstance(owner.value, ast.Name)
        and owner.value.id == "torch")


def _call_name(node: ast.AST) -> str | None:
    if isinstance(node, ast.Call):
        if isinstance(node.func, ast.Attribute):
            return node.func.attr
        if isinstance(node.func, ast.Name):
            return node.func.id
    return None


def _int_literal(node: ast.AST | None) -> int | None:
    if isinstance(node, ast.Constant) and type(node.value) is int:
        return node.value
    return None


def _keyword(call: ast.Call, name: str) -> ast.keyword | None:
    return next((k for k in call.keywords if k.arg == name), None)


def _splice(src: _Source, edits: list[tuple[int, int, str]]) -> str:
    """Apply (start, end, replacement) byte-span edits, which must not overlap."""
    data = src.data
    last = len(data) + 1
    for start, end, new in sorted(edits, key=lambda e: (e[0], e[1]), reverse=True):
        if end > last:
            raise AssertionError("overlapping source edits")  # a bug in an edit function
        data = data[:start] + new.encode("utf-8") + data[end:]
        last = start
    return data.decode("utf-8")


def _insert_after(src: _Source, node: ast.AST, elements: list[str]) -> tuple[int, int, str]:
    """Edit that inserts ``elements`` after ``node`` in an argument list: on new lines with
    the same indent when the node has a line of its own, inline otherwise."""
    alone, stop = src.alone_on_line(node)
    has_comma = stop > src.end(node)
    if alone:
        line = src.data[src.line_starts[node.lineno - 1]:].decode("utf-8")
        indent = line[:len(line) - len(line.lstrip())]
        text = ("" if has_comma else ",") + "".join(f"\n{indent}{e}," for e in elements)
        return stop, stop, text
    return src.end(node), src.end(node), "".join(f", {e}" for e in elements)


def _remove_element(src: _Source, args: list[ast.AST], index: int) -> tuple[int, int, str]:
    """Edit that removes ``args[index]`` from an argument list, with its comma."""
    node = args[index]
    alone, stop = src.alone_on_line(node)
    if alone:
        start = src.line_starts[node.lineno - 1]
        return start, src.line_starts[node.end_lineno], ""
    if stop > src.end(node):  # "node, " inline: drop through the following spaces
        rest = src.data[stop:]
        return src.start(node), stop + len(rest) - len(rest.lstrip(b" ")), ""
    if index > 0:  # last inline element: drop the comma before it
        return src.end(args[index - 1]), src.end(node), ""
    return src.start(node), src.end(node), ""


# --- the coordinates ---------------------------------------------------------------------

def _edit_block(src: _Source, choice: str) -> list[tuple[int, int, str]]:
    features = next((n.value for n in ast.walk(src.tree) if isinstance(n, ast.Assign)
                     and any(ast.unparse(t) == "self.features" for t in n.targets)
                     and _is_nn_call(n.value, "Sequential")), None)
    if features is None or not features.args:
        return []
    local = src.local_classes()
    for element in reversed(features.args):
        name = _call_name(element)
        if name in ("Conv2d", "Linear") or name in local:
            break
    else:
        return []
    if len(element.args) < 2:
        return []
    width = src.segment(element.args[1])
    last = features.args[-1]
    if name == "Linear":
        if choice != "conv":
            return []
        return [_insert_after(src, last, [f"nn.Linear({width}, {width})", "nn.ReLU()"])]
    if choice == "conv":
        return [_insert_after(src, last, [f"nn.Conv2d({width}, {width}, 3, padding=1)", "nn.ReLU()"])]
    edits = [_insert_after(src, last, [f"AddedResidual({width}, {width})"])]
    if "AddedResidual" not in local:
        net = next((n for n in src.tree.body if isinstance(n, ast.ClassDef) and n.name == "Net"), None)
        if net is None:
            return []
        at = src.start(net.decorator_list[0] if net.decorator_list else net) - net.col_offset
        edits.append((at, at, ADDED_RESIDUAL))
    return edits


def _sequential_args(src: _Source) -> list[list[ast.AST]]:
    return [call.args for call in src.calls("Sequential")]


def _edit_norm(src: _Source, choice: str) -> list[tuple[int, int, str]]:
    edits = []
    for args in _sequential_args(src):
        for i, node in enumerate(args):
            if choice == "add_bn" and _is_nn_call(node, "Conv2d"):
                following = args[i + 1] if i + 1 < len(args) else None
                out = node.args[1] if len(node.args) > 1 else getattr(_keyword(node, "out_channels"), "value", None)
                if out is not None and not _is_nn_call(following, "BatchNorm2d"):
                    edits.append(_insert_after(src, node, [f"nn.BatchNorm2d({src.segment(out)})"]))
            elif choice == "remove_bn" and _is_nn_call(node, "BatchNorm2d"):
                edits.append(_remove_element(src, args, i))
    return edits


def _edit_width(src: _Source, choice: str) -> list[tuple[int, int, str]]:
    factor = float(choice[1:])
    local = src.local_classes()
    edits = []
    for node in ast.walk(src.tree):
        if _is_nn_call(node, "Conv2d") or _is_nn_call(node, "Linear") or (
                isinstance(node, ast.Call) and isinstance(node.func, ast.Name) and node.func.id in local):
            positions = node.args[:2]
        elif _is_nn_call(node, "BatchNorm2d"):
            positions = node.args[:1]
        else:
            continue
        for arg in positions:
            value = _int_literal(arg)
            if value is not None and value > 3:  # 1 and 3 are image channels, never hidden widths
                edits.append((src.start(arg), src.end(arg), str(max(1, round(value * factor)))))
    return edits


def _edit_kernel(src: _Source, choice: str) -> list[tuple[int, int, str]]:
    """Only "same"-padded spatial convs (literal k > 1 with padding=k // 2) change, so the
    feature-map sizes, and hence the rest of the net, stay as they were."""
    k = int(choice)
    edits = []
    for conv in src.calls("Conv2d"):
        kernel = conv.args[2] if len(conv.args) > 2 else getattr(_keyword(conv, "kernel_size"), "value", None)
        padding = _keyword(conv, "padding")
        old = _int_literal(kernel)
        if old is None or old <= 1 or old == k or padding is None or _int_literal(padding.value) != old // 2:
            continue
        edits.append((src.start(kernel), src.end(kernel), str(k)))
        edits.append((src.start(padding.value), src.end(padding.value), str(k // 2)))
    return edits


def _edit_activation(src: _Source, choice: str) -> list[tuple[int, int, str]]:
    return [(src.start(call), src.end(call), f"nn.{choice}()")
            for name in ACTIVATIONS for call in src.calls(name)
            if src.segment(call) != f"nn.{choice}()"]


def _edit_pooling(src: _Source, choice: str) -> list[tuple[int, int, str]]:
    old, new = ("MaxPool2d", "AvgPool2d") if choice == "max_to_avg" else ("AvgPool2d", "MaxPool2d")
    return [(src.start(call.func), src.end(call.func), f"nn.{new}") for call in src.calls(old)]


def _edit_dropout(src: _Source, choice: str) -> list[tuple[int, int, str]]:
    return [(src.start(call), src.end(call), f"nn.Dropout({choice})")
            for call in src.calls("Dropout") if src.segment(call) != f"nn.Dropout({choice})"]


def _optimizer_call(src: _Source) -> ast.Call | None:
    for node in ast.walk(src.tree):
        if (isinstance(node, ast.Assign) and isinstance(node.value, ast.Call)
                and any(ast.unparse(t) == "self.optimizer" for t in node.targets)):
            return node.value
    return None


def _edit_optimizer(src: _Source, choice: str) -> list[tuple[int, int, str]]:
    call = _optimizer_call(src)
    if call is None or _call_name(call) == choice:
        return []
    lr = _keyword(call, "lr")
    params = src.segment(call.args[0]) if call.args else "self.parameters()"
    text = OPTIMIZERS[choice].format(params=params, lr=src.segment(lr.value) if lr else "prm['lr']")
    return [(src.start(call), src.end(call), text)]


def _edit_lr(src: _Source, choice: str) -> list[tuple[int, int, str]]:
    call = _optimizer_call(src)
    lr = _keyword(call, "lr") if call is not None else None
    if lr is None:
        return []
    old = src.segment(lr.value)
    if not isinstance(lr.value, (ast.Constant, ast.Name, ast.Attribute, ast.Subscript, ast.Call)) and not (
            isinstance(lr.value, ast.BinOp) and isinstance(lr.value.op, (ast.Mult, ast.Div))):
        old = f"({old})"
    return [(src.start(lr.value), src.end(lr.value), f"{old} * {choice[1:]}")]


def _edit_tag(src: _Source, choice: str) -> list[tuple[int, int, str]]:
    match = _TAG.match(src.text)
    line = f"# variant: {choice}\n"
    if match is None:
        return [(0, 0, line)]
    return [] if match.group(0) == line else [(0, len(match.group(0).encode()), line)]


@dataclass(frozen=True)
class Coordinate:
    """One categorical coordinate of the grammar; ``choices[0]`` is always "keep"."""

    name: str
    choices: tuple[str, ...]
    edit: Callable[[_Source, str], list[tuple[int, int, str]]]
    neutral: bool = False
    #: The edits only change hyperparameter literals, train_setup or comments, so they can
    #: neither break ``Net(...)`` nor change output shapes (callers may skip a rebuild).
    build_safe: bool = False
    #: The edits change the training recipe (train_setup, or a rate the recipe's prm sets),
    #: which search.scope = architecture keeps fixed (:mod:`cem_nas.scope`): such
    #: coordinates stay at keep there.
    recipe: bool = False


#: The grammar, in render order.
GRAMMAR: tuple[Coordinate, ...] = (
    Coordinate("block", ("keep", "conv", "residual"), _edit_block),
    Coordinate("norm", ("keep", "add_bn", "remove_bn"), _edit_norm),
    Coordinate("width", ("keep", "x0.5", "x2"), _edit_width),
    Coordinate("kernel", ("keep", "3", "5"), _edit_kernel),
    Coordinate("activation", ("keep", "ReLU", "GELU", "SiLU", "LeakyReLU", "Tanh"), _edit_activation),
    Coordinate("pooling", ("keep", "max_to_avg", "avg_to_max"), _edit_pooling),
    Coordinate("dropout", ("keep", "0.0", "0.1", "0.3", "0.5"), _edit_dropout, build_safe=True, recipe=True),
    Coordinate("optimizer", ("keep", "SGD", "Adam", "AdamW"), _edit_optimizer, build_safe=True, recipe=True),
    Coordinate("lr", ("keep", "x0.1", "x0.3", "x3"), _edit_lr, build_safe=True, recipe=True),
    Coordinate("tag", ("keep", "a", "b", "c"), _edit_tag, neutral=True, build_safe=True),
)
#: Name of the neutral coordinate (its choices never change the network).
NEUTRAL = next(c.name for c in GRAMMAR if c.neutral)


def build_key(choices: Mapping[str, int | str] | Sequence[int]) -> tuple[int, ...]:
    """The choice vector with build-safe coordinates reset to keep: renders with equal keys
    (on one baseline) build alike and have the same output shapes.

    >>> build_key({"width": "x2", "lr": "x3", "tag": "a"})
    (0, 0, 2, 0, 0, 0, 0, 0, 0, 0)
    """
    return tuple(0 if c.build_safe else i for c, i in zip(GRAMMAR, choice_vector(choices)))


def coordinate_names() -> list[str]:
    return [c.name for c in GRAMMAR]


def cardinalities() -> list[int]:
    """Number of choices per coordinate, in :data:`GRAMMAR` order."""
    return [len(c.choices) for c in GRAMMAR]


def choice_vector(choices: Mapping[str, int | str] | Sequence[int]) -> tuple[int, ...]:
    """Normalise choices to a tuple of indices, one per coordinate (missing = keep).

    >>> choice_vector({"width": "x2", "lr": 3})
    (0, 0, 2, 0, 0, 0, 0, 0, 3, 0)
    """
    if isinstance(choices, Mapping):
        by_name = {c.name: c for c in GRAMMAR}
        unknown = set(choices) - set(by_name)
        if unknown:
            raise MutationError(f"unknown coordinates {sorted(unknown)}; the grammar has {coordinate_names()}")
        vector = []
        for coord in GRAMMAR:
            value = choices.get(coord.name, 0)
            if isinstance(value, str):
                if value not in coord.choices:
                    raise MutationError(f"{coord.name}={value!r} is not a choice; choose one of {coord.choices}")
                value = coord.choices.index(value)
            vector.append(value)
    else:
        vector = list(choices)
        if len(vector) != len(GRAMMAR):
            raise MutationError(f"a choice vector needs {len(GRAMMAR)} indices ({coordinate_names()}), "
                                f"got {len(vector)}")
    for coord, value in zip(GRAMMAR, vector):
        if not (isinstance(value, int) and 0 <= value < len(coord.choices)):
            raise MutationError(f"{coord.name} index {value!r} out of range 0..{len(coord.choices) - 1}")
    return tuple(int(v) for v in vector)


def describe_choices(choices: Mapping[str, int | str] | Sequence[int]) -> str:
    """Short text of the non-keep choices, e.g. ``"width=x2, lr=x3"`` (``"keep"`` if none).

    >>> describe_choices({"width": "x2", "lr": 3})
    'width=x2, lr=x3'
    """
    vector = choice_vector(choices)
    parts = [f"{c.name}={c.choices[i]}" for c, i in zip(GRAMMAR, vector) if i]
    return ", ".join(parts) or "keep"


@dataclass(frozen=True)
class Rendered:
    """The result of :func:`render_detail`: the new source, the normalised choice vector,
    and the coordinates whose (non-keep) choice left the source unchanged."""

    code: str
    choices: tuple[int, ...]
    noops: tuple[str, ...]


def render_detail(source: str, choices: Mapping[str, int | str] | Sequence[int]) -> Rendered:
    """Apply the choices to ``source`` coordinate by coordinate (in :data:`GRAMMAR` order)."""
    vector = choice_vector(choices)
    code, noops = source, []
    for j, index in enumerate(vector):
        if index == 0:
            continue
        new = _apply(code, j, index)
        if new == code:
            noops.append(GRAMMAR[j].name)
        code = new
    return Rendered(code, vector, tuple(noops))


@functools.lru_cache(maxsize=4096)
def _apply(code: str, coordinate: int, index: int) -> str:
    """One coordinate's edit; memoised because samplers render the same baselines and
    the same first edits over and over."""
    coord = GRAMMAR[coordinate]
    src = _Source(code)
    edits = coord.edit(src, coord.choices[index])
    return _splice(src, edits) if edits else code


def render(source: str, choices: Mapping[str, int | str] | Sequence[int]) -> str:
    """New source: ``source`` with the choices applied (see :func:`render_detail`)."""
    return render_detail(source, choices).code
