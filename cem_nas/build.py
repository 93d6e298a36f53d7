"""From a proposal to a model file, or to the status that stops it: one rule for every caller.

The loop (:meth:`cem_nas.cem.CEM.prepare`), the LLM sampler's redraws and the benches all
ask the same question of a proposal, so they share this function. In pipeline order:

* ``parse_error``: no delta (delta mode) or no file (full mode) came out of the response;
* ``apply_error`` (or the applier's own kind): the delta does not apply to its parent;
* ``unchanged``: the file is its parent (an empty delta, or one that rewrites lines as they were);
* ``syntax_error``: the file is not valid Python;
* ``out_of_scope``: under architecture scope the file changes the fixed training recipe
  or only a dropout rate, one of the recipe's hyperparameters (:mod:`cem_nas.scope`);

and otherwise an empty status: a new file ready for the archive and the sandbox.
Completeness of a delta was decided once by the sampler (``proposal.complete``) and is
passed on, never re-guessed here.
"""
from __future__ import annotations

from dataclasses import dataclass

from cem_nas.delta import DeltaError, apply_delta
from cem_nas.records import Proposal
from cem_nas.scope import check_scope, fixed_parts_changed

#: Statuses of answers that propose no architecture in the search space although they were
#: written well: a sampler may draw them again (the CE density truncated to the feasible set).
INFEASIBLE = ("unchanged", "out_of_scope")


@dataclass(frozen=True)
class Built:
    """What a proposal builds: ``status`` empty when ``code`` is a new file to evaluate."""

    status: str
    message: str = ""
    code: str | None = None
    """The file, once one exists (a file that fails the syntax or scope check is kept)."""
    tier: str = ""
    """The applier tier that made the delta apply (delta mode)."""


def build(parent: str, proposal: Proposal, mode: str, scope: str = "architecture") -> Built:
    """The file ``proposal`` makes of ``parent`` in ``mode`` (delta or full), or why none.

    >>> from cem_nas.records import Proposal
    >>> parent = "class Net:\\n    def train_setup(self, prm):\\n        opt = 'SGD'\\n"
    >>> build(parent, Proposal("p", "", "", delta=None), "delta").status
    'parse_error'
    >>> build(parent, Proposal("p", "", "", code=parent), "full").status
    'unchanged'
    >>> build(parent, Proposal("p", "", "", code=parent.replace("SGD", "AdamW")), "full").status
    'out_of_scope'
    >>> build(parent, Proposal("p", "", "", code=parent.replace("SGD", "AdamW")), "full", "file").status
    ''
    """
    check_scope(scope)
    if mode == "delta":
        if proposal.delta is None:
            return Built("parse_error", proposal.meta.get("parse_error", "no unified diff found in the response"))
        if not proposal.delta:
            code, tier = parent, ""
        else:
            try:
                applied = apply_delta(parent, proposal.delta, complete=proposal.complete)
            except DeltaError as e:
                return Built(e.kind, str(e))
            code, tier = applied.code, applied.tier
    elif not proposal.code:
        return Built("parse_error", proposal.meta.get("parse_error", "no model file found in the response"))
    else:
        code, tier = proposal.code, ""
    if code == parent:
        what = "delta" if mode == "delta" else "file"
        return Built("unchanged", f"the {what} leaves its parent {proposal.baseline} as it was: nothing new to train",
                     code, tier)
    try:
        compile(code, "net.py", "exec")
    except (SyntaxError, ValueError) as e:
        return Built("syntax_error", f"{type(e).__name__}: {e}", code, tier)
    if scope == "architecture":
        changed = fixed_parts_changed(parent, code)
        if changed:
            return Built("out_of_scope", f"changes {', '.join(changed)}, which search.scope = architecture keeps "
                                         "fixed (the proxy's training recipe): not trained", code, tier)
    return Built("", "", code, tier)
