"""The search space: what a proposal may change in a model file.

A NAS proposal changes the architecture. Under ``search.scope = "architecture"`` (the
default) the training recipe of a file in the LEMUR interface is the proxy's and is fixed
for every candidate, as in the reference pipeline's generation prompt: the module-level
``supported_hyperparameters`` and the ``train_setup`` and ``learn`` methods. Without that
restriction switching the optimizer (``SGD -> AdamW``) is every zoo baseline's best
single edit and the CE method converges on it instead of searching architectures.

The comparison is on the parsed code (``ast.dump`` of each fixed part), so comments,
blank lines and layout inside those parts do not count as changes.

>>> before = "def supported_hyperparameters():\\n    return {'lr'}\\n" \\
...          "class Net:\\n    def train_setup(self, prm):\\n        self.o = SGD(lr=1)\\n"
>>> fixed_parts_changed(before, before.replace("SGD", "AdamW"))
['train_setup']
>>> fixed_parts_changed(before, before.replace("class Net:", "class Net:  # wider"))
[]
"""
from __future__ import annotations

import ast

SCOPES = ("architecture", "file")
#: The parts of a model file that are the training recipe, fixed under architecture scope.
FIXED_PARTS = ("supported_hyperparameters", "train_setup", "learn")


def fixed_parts(code: str) -> dict[str, list[str]]:
    """Each fixed part's definitions in ``code`` as ``ast.dump`` strings (a part may be
    defined more than once: in several classes, or redefined); a part the file lacks maps to
    an empty list. Raises SyntaxError for code that does not parse."""
    found: dict[str, list[str]] = {name: [] for name in FIXED_PARTS}
    tree = ast.parse(code)
    for node in ast.walk(tree):
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)) and node.name in found:
            found[node.name].append(ast.dump(node))
        # an assignment can rebind a part as well (train_setup = other_function)
        elif isinstance(node, (ast.Assign, ast.AnnAssign, ast.AugAssign)):
            targets = node.targets if isinstance(node, ast.Assign) else [node.target]
            for target in targets:
                for name in ast.walk(target):
                    label = name.id if isinstance(name, ast.Name) else name.attr if isinstance(name, ast.Attribute) else None
                    if label in found:
                        found[label].append(ast.dump(node))
    return found


def fixed_parts_changed(before: str, after: str) -> list[str]:
    """The fixed parts (:data:`FIXED_PARTS`) whose code differs between ``before`` and
    ``after``, in that order; ``after`` code that does not parse changes nothing here (it
    fails as a syntax error instead)."""
    try:
        new = fixed_parts(after)
    except (SyntaxError, ValueError):
        return []
    old = fixed_parts(before)
    return [name for name in FIXED_PARTS if old[name] != new[name]]


def check_scope(scope: str) -> str:
    """``scope`` if it is one of :data:`SCOPES`, else a ValueError naming them."""
    if scope not in SCOPES:
        raise ValueError(f"search.scope must be one of {SCOPES}; got {scope!r}")
    return scope
