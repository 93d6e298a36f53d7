"""The static policy: what candidate code may contain, checked before anything executes.

This is the sandbox's first layer (:mod:`cem_nas.sandbox` lists them all, with the threat
model). :func:`check_policy` is a static AST check: imports only from
:data:`ALLOWED_MODULES`; no ``open``/``exec``/``eval``/``compile``/``__import__``/
``globals``...; no dunder attribute access beyond :data:`ALLOWED_DUNDERS`; no frame or
code object attributes; no ``getattr``-family call with a dunder name. A child enforces
the import rule again at run time (:func:`cem_nas.confinement.guarded_import`), so an
import name built dynamically cannot get past it.
"""
from __future__ import annotations

import ast

#: Top-level modules candidate code may import (submodules of these are allowed too).
ALLOWED_MODULES = frozenset({"torch", "math", "typing", "collections", "functools", "dataclasses",
                             "__future__"})

#: Builtins that give file, code or namespace access; refused by name.
FORBIDDEN_NAMES = frozenset({
    "open", "exec", "eval", "compile", "__import__", "globals", "locals", "vars",
    "breakpoint", "input", "help", "exit", "quit", "memoryview", "__builtins__", "__loader__",
    "__spec__", "__file__",
})

#: Dunder attributes a model file legitimately uses (``super().__init__(...)``).
ALLOWED_DUNDERS = frozenset({"__init__", "__name__", "__call__", "__len__", "__doc__"})

#: Attributes of frames, tracebacks, generators and code objects: the classic ways from
#: an object back to some module's globals.
FORBIDDEN_ATTRIBUTES = frozenset({
    "f_globals", "f_locals", "f_builtins", "f_back", "f_code", "tb_frame", "tb_next",
    "gi_frame", "gi_code", "cr_frame", "cr_code", "ag_frame", "ag_code", "co_code",
    "func_globals",
})

#: getattr-family builtins: a constant dunder name passed to them is attribute access.
ATTRIBUTE_FUNCTIONS = frozenset({"getattr", "setattr", "delattr", "hasattr"})


class PolicyViolation(Exception):
    """Candidate code breaks the sandbox policy (statically or at run time).

    ``lineno`` is the 1-based line in the candidate source (0 when unknown), ``what`` the
    offending construct and ``why`` the rule it breaks.
    """

    def __init__(self, lineno: int, what: str, why: str) -> None:
        super().__init__(f"line {lineno}: {what}: {why}")
        self.lineno, self.what, self.why = lineno, what, why


def _is_dunder(name: str) -> bool:
    return len(name) > 4 and name.startswith("__") and name.endswith("__")


def _check_import(node: ast.AST, name: str, level: int = 0) -> None:
    if level:
        raise PolicyViolation(node.lineno, "relative import", "candidate code is a single file")
    root = name.split(".")[0]
    if root not in ALLOWED_MODULES:
        raise PolicyViolation(node.lineno, f"import {name}",
                              f"only {', '.join(sorted(ALLOWED_MODULES - {'__future__'}))} "
                              "and their submodules may be imported")


def check_policy(code: str) -> None:
    """Raise :class:`PolicyViolation` at the first construct the sandbox refuses.

    A :class:`SyntaxError` propagates unchanged (the caller reports ``syntax_error``).

    >>> check_policy("import torch.nn as nn\\nx = nn.Linear(2, 3)")
    >>> check_policy("import os")
    Traceback (most recent call last):
    ...
    cem_nas.policy.PolicyViolation: line 1: import os: only collections, dataclasses, functools, math, torch, typing and their submodules may be imported
    """
    tree = ast.parse(code, filename="<candidate>")
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            for alias in node.names:
                _check_import(node, alias.name)
        elif isinstance(node, ast.ImportFrom):
            _check_import(node, node.module or "", node.level)
        elif isinstance(node, ast.Name) and node.id in FORBIDDEN_NAMES:
            raise PolicyViolation(node.lineno, node.id, "file, code and namespace access are refused")
        elif isinstance(node, ast.Name) and _is_dunder(node.id) and node.id not in ALLOWED_DUNDERS:
            raise PolicyViolation(node.lineno, node.id, "dunder names are refused")
        elif isinstance(node, ast.Attribute):
            if _is_dunder(node.attr) and node.attr not in ALLOWED_DUNDERS:
                raise PolicyViolation(node.lineno, f".{node.attr}",
                                      "dunder attribute access can reach interpreter internals")
            if node.attr in FORBIDDEN_ATTRIBUTES:
                raise PolicyViolation(node.lineno, f".{node.attr}",
                                      "frame and code attributes can reach module globals")
        elif (isinstance(node, ast.Call) and isinstance(node.func, ast.Name)
              and node.func.id in ATTRIBUTE_FUNCTIONS and len(node.args) >= 2
              and isinstance(node.args[1], ast.Constant) and isinstance(node.args[1].value, str)
              and (_is_dunder(node.args[1].value) or node.args[1].value in FORBIDDEN_ATTRIBUTES)
              and node.args[1].value not in ALLOWED_DUNDERS):
            raise PolicyViolation(node.lineno, f"{node.func.id}(..., {node.args[1].value!r})",
                                  "dunder attribute access can reach interpreter internals")
