"""The support benchmark's bookkeeping: what counts as built, new and distinct."""
from __future__ import annotations

import pytest

from benchmarks.bench_support import built_code, support_curve
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
    rows = support_curve(Cycling(), baselines, draws=12, chunk=6, seed=0)
    # per chunk of 6: 2 edits that build, 2 no-ops, 2 that do not compile
    assert [r["built"] for r in rows] == pytest.approx([2 / 6, 2 / 6])
    # the second chunk repeats the first one's two files: nothing new
    assert [r["new"] for r in rows] == pytest.approx([2 / 6, 0.0])
    assert [r["distinct"] for r in rows] == [2, 2]


def test_a_delta_that_does_not_apply_builds_nothing():
    code = zoo.source("mlp")
    stray = Proposal("mlp", "p", "r", delta="--- a/net.py\n+++ b/net.py\n@@ -1,1 +1,1 @@\n-nothing here\n+x\n", complete=True)
    assert built_code(code, stray) is None
    assert built_code(code, Proposal("mlp", "p", "r", delta=None)) is None


def test_an_edit_of_the_training_recipe_builds_nothing_under_architecture_scope():
    code = zoo.source("mlp")
    recipe = Proposal("mlp", "p", "r", delta=make_delta(code, code.replace("torch.optim.Adam(", "torch.optim.AdamW(")),
                      complete=True)
    assert built_code(code, recipe) is None and built_code(code, recipe, "file") is not None
