"""The support benchmark's bookkeeping: what counts as built, new and distinct."""
from __future__ import annotations

import pytest

from collections import Counter

from benchmarks.bench_support import support_curve
from cem_nas.build import build
from cem_nas import zoo
from cem_nas.delta import make_delta
from cem_nas.records import Baseline, Proposal


class Cycling:
    """Per call: the same edit of each baseline, a no-op and an edit that does not compile."""

    scope = "architecture"

    def propose(self, baselines, n, rng):
        out = []
        for i in range(n):
            b = baselines[i % len(baselines)]
            edit = [b.code + "\nEXTRA = 1\n", b.code, b.code + "\ndef broken(:\n"][(i // len(baselines)) % 3]
            out.append(Proposal(b.name, "p", "r", delta=make_delta(b.code, edit), complete=True))
        return out


def test_only_files_that_build_and_were_not_seen_count_as_new():
    baselines = [Baseline(name, zoo.source(name)) for name in ("mlp", "plainnet")]
    kinds, statuses = Counter(), Counter()
    rows = support_curve(Cycling(), baselines, draws=12, chunk=6, seed=0, kinds=kinds, statuses=statuses)
    assert statuses == {"built": 4, "unchanged": 4, "syntax_error": 4} and kinds == {"other": 4}
    # per chunk of 6: 2 edits that build, 2 no-ops, 2 that do not compile
    assert [r["built"] for r in rows] == pytest.approx([2 / 6, 2 / 6])
    # the second chunk repeats the first one's two files: nothing new
    assert [r["new"] for r in rows] == pytest.approx([2 / 6, 0.0])
    assert [r["distinct"] for r in rows] == [2, 2]


def test_an_edit_of_the_training_recipe_is_out_of_scope_under_architecture_scope():
    code = zoo.source("mlp")
    recipe = Proposal("mlp", "p", "r", delta=make_delta(code, code.replace("torch.optim.Adam(", "torch.optim.AdamW(")),
                      complete=True)
    assert build(code, recipe, "delta").status == "out_of_scope" and build(code, recipe, "delta", "file").status == ""


@pytest.mark.parametrize("name", zoo.names())
def test_retuning_a_dropout_rate_is_out_of_scope_and_removing_the_layer_is_not(name):
    """prm['dropout'] is a recipe hyperparameter: a rate edit of any zoo file is out of scope
    under architecture scope (and kept under file scope); replacing the layer changes the net."""
    code = zoo.source(name)
    if "nn.Dropout(prm['dropout'])" not in code:
        pytest.skip(f"{name} has no dropout layer")
    for new in ("nn.Dropout(0.1)", "nn.Dropout(p=prm['dropout'] / 2)", "nn.Dropout2d(prm['dropout'])"):
        edit = Proposal(name, "p", "r", delta=make_delta(code, code.replace("nn.Dropout(prm['dropout'])", new, 1)),
                        complete=True)
        built = build(code, edit, "delta")
        expected = "" if "2d" in new else "out_of_scope"  # a different layer type is an architecture edit
        assert built.status == expected and (not expected or "dropout rate" in built.message)
        assert build(code, edit, "delta", "file").status == ""
    removed = Proposal(name, "p", "r", delta=make_delta(code, code.replace("nn.Dropout(prm['dropout'])", "nn.Identity()", 1)),
                       complete=True)
    assert build(code, removed, "delta").status == ""
