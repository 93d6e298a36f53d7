"""The search space: what a proposal may change in a model file.

A NAS proposal changes the architecture. Under ``search.scope = "architecture"`` (the
default) the training recipe of a file in the LEMUR interface is the proxy's and is fixed
for every candidate, as in the reference pipeline's generation prompt: the module-level
``supported_hyperparameters`` and the ``train_setup`` and ``learn`` methods. Without that
restriction switching the optimizer (``SGD -> AdamW``) is every zoo baseline's best
single edit and the CE method converges on it instead of searching architectures.

The recipe's hyperparameters are fixed too: ``prm['dropout']`` is one of them, so an edit
whose only change is the rate of dropout layers (``nn.Dropout(prm['dropout'])`` ->
``nn.Dropout(0.1)``, ``0.2`` -> ``0.3``) retunes a hyperparameter and is out of scope as
well; adding or removing a dropout layer changes the architecture and is not. (With
parents that move, the CE update otherwise converges on rate edits: they always build and
score within the proxy's noise of their parent, so they fill the elites.)

The comparison is on the parsed code (``ast.dump`` of each fixed part), so comments,
blank lines and layout inside those parts do not count as changes.

>>> before = "def supported_hyperparameters():\\n    return {'lr'}\\n" \\
...          "class Net:\\n    def train_setup(self, prm):\\n        self.o = SGD(lr=1)\\n"
>>> fixed_parts_changed(before, before.replace("SGD", "AdamW"))
['train_setup']
>>> fixed_parts_changed(before, before.replace("class Net:", "class Net:  # wider"))
[]
>>> net = "class Net:\\n    def __init__(self, prm):\\n        self.d = nn.Dropout(prm['dropout'])\\n"
>>> fixed_parts_changed(net, net.replace("prm['dropout']", "0.1"))
['dropout rate']
>>> fixed_parts_changed(net, net.replace("nn.Dropout(prm['dropout'])", "nn.Identity()"))
[]
"""
from __future__ import annotations

import ast

SCOPES = ("architecture", "file")
#: The parts of a model file that are the training recipe, fixed under architecture scope.
FIXED_PARTS = ("supported_hyperparameters", "train_setup", "learn")
#: Layers whose arguments are a recipe hyperparameter (the rate), fixed under architecture scope.
RATE_LAYERS = ("Dropout", "Dropout1d", "Dropout2d", "Dropout3d", "AlphaDropout", "FeatureAlphaDropout")
RATE_PART = "dropout rate"


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


def _rates_blanked(code: str) -> str:
    """``ast.dump`` of ``code`` with the arguments of every :data:`RATE_LAYERS` call removed."""
    tree = ast.parse(code)
    for node in ast.walk(tree):
        if isinstance(node, ast.Call):
            func = node.func
            name = func.attr if isinstance(func, ast.Attribute) else func.id if isinstance(func, ast.Name) else ""
            if name in RATE_LAYERS:
                node.args, node.keywords = [], []
    return ast.dump(tree)


def fixed_parts_changed(before: str, after: str) -> list[str]:
    """The fixed parts (:data:`FIXED_PARTS`) whose code differs between ``before`` and
    ``after``, in that order, then :data:`RATE_PART` when the only change is the rate of
    dropout layers; ``after`` code that does not parse changes nothing here (it fails as
    a syntax error instead)."""
    try:
        new = fixed_parts(after)
    except (SyntaxError, ValueError):
        return []
    old = fixed_parts(before)
    changed = [name for name in FIXED_PARTS if old[name] != new[name]]
    if not changed and ast.dump(ast.parse(before)) != ast.dump(ast.parse(after)) \
            and _rates_blanked(before) == _rates_blanked(after):
        changed.append(RATE_PART)
    return changed


def check_scope(scope: str) -> str:
    """``scope`` if it is one of :data:`SCOPES`, else a ValueError naming them."""
    if scope not in SCOPES:
        raise ValueError(f"search.scope must be one of {SCOPES}; got {scope!r}")
    return scope
