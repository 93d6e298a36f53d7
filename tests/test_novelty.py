"""Novelty archive: normalisation, whole-archive lookup, serialisation, MinHash estimator error."""
from __future__ import annotations

import json
import math
import re

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from cem_nas import zoo
from cem_nas.novelty import NoveltyArchive, exact_jaccard, minhash, normalised_tokens, shingles

BASE = zoo.source("plainnet")

# The same network: locals and self attributes renamed, comments, a docstring, blank lines,
# a reflowed call. Normalisation must make it identical to BASE.
RENAMED = (BASE.replace("self.features", "self.body").replace("self.classifier", "self.out_layer")
           .replace("inputs", "batch_x").replace("labels", "batch_y").replace("(self, x)", "(self, inp)")
           .replace("x = self.pool", "inp = self.pool").replace("(x)", "(inp)").replace("(x, 1)", "(inp, 1)")
           .replace("    def forward", '    # forward pass\n    def forward')
           .replace("        self.train()\n", '        """One epoch."""\n\n        self.train()  # mode\n')
           .replace("nn.Linear(64, out_shape[0])", "nn.Linear(\n                64,\n                out_shape[0]\n            )"))

# Changes that define another network and must stay visible.
DIFFERENT = {
    "number": BASE.replace("nn.Conv2d(16, 32, 3, padding=1)", "nn.Conv2d(16, 48, 3, padding=1)"),
    "layer type": BASE.replace("nn.ReLU(),\n            nn.MaxPool2d(2),\n            nn.Conv2d(16", "nn.GELU(),\n            nn.MaxPool2d(2),\n            nn.Conv2d(16"),
    "keyword argument": BASE.replace("nn.Conv2d(32, 64, 3, padding=1)", "nn.Conv2d(32, 64, 3, dilation=1)"),
    "torch attribute": BASE.replace("torch.optim.SGD", "torch.optim.Adam"),
}


def test_renamed_copy_normalises_to_the_same_tokens():
    assert RENAMED != BASE and "self.body" in RENAMED and '"""One epoch."""' in RENAMED
    assert normalised_tokens(RENAMED) == normalised_tokens(BASE)


@pytest.mark.parametrize("name", sorted(DIFFERENT))
def test_meaningful_changes_stay_visible(name):
    assert DIFFERENT[name] != BASE
    assert normalised_tokens(DIFFERENT[name]) != normalised_tokens(BASE)


def test_untokenizable_code_still_gets_a_signature():
    broken = "def f(x:\n    return [x  # unclosed\n"
    toks = normalised_tokens(broken)
    assert toks[:4] == ["def", "f", "(", "x"] and "unclosed" not in toks


def test_renamed_copy_of_any_archived_network_is_a_duplicate():
    arch = NoveltyArchive()
    for name in zoo.names():
        arch.add(name, zoo.source(name))
    assert len(arch) == len(zoo.names()) and "plainnet" in arch
    assert arch.check(RENAMED) == (False, 1.0, "plainnet")
    # the archive is the whole population, not only the first entry
    last = zoo.names()[-1]
    renamed = re.sub(r"\bx\b", "feat", zoo.source(last))
    assert renamed != zoo.source(last) and arch.check(renamed) == (False, 1.0, last)


def test_novel_code_passes_and_reports_its_nearest():
    arch = NoveltyArchive()
    assert arch.check(BASE) == (True, 0.0, None)  # empty archive
    arch.add("plainnet", BASE)
    arch.add("mlp", zoo.source("mlp"))
    novel, j, nearest = arch.check(DIFFERENT["layer type"])
    exact = exact_jaccard(shingles(BASE), shingles(DIFFERENT["layer type"]))
    se = math.sqrt(exact * (1 - exact) / arch.num_perm)
    assert nearest == "plainnet" and abs(j - exact) <= 4 * se + 1 / arch.num_perm
    assert novel == (j < arch.threshold)


def test_threshold_decides():
    code = DIFFERENT["torch attribute"]
    j = NoveltyArchive().signature(BASE).jaccard(NoveltyArchive().signature(code))
    assert 0.5 < j < 1.0
    for threshold, novel in ((j, False), (j + 1e-9, True)):
        arch = NoveltyArchive(threshold=min(threshold, 1.0), candidate_threshold=0.5)
        arch.add("base", BASE)
        assert arch.check(code)[0] is novel


def test_lsh_misses_are_negligible_at_the_threshold():
    arch = NoveltyArchive()
    assert arch.miss_probability(arch.threshold) < 1e-6
    # what a band setting at the decision threshold itself would miss: why candidate_threshold exists
    assert NoveltyArchive(candidate_threshold=0.9).miss_probability(0.9) > 0.5


def test_state_dict_round_trips_through_json():
    arch = NoveltyArchive(threshold=0.85, shingle=5, seed=3)
    for name in zoo.names()[:4]:
        arch.add(name, zoo.source(name))
    state = json.loads(json.dumps(arch.state_dict()))
    back = NoveltyArchive.from_state_dict(state)
    assert (len(back), back.threshold, back.shingle, back.seed) == (4, 0.85, 5, 3)
    for code in [RENAMED, *DIFFERENT.values(), zoo.source(zoo.names()[2])]:
        assert back.check(code) == arch.check(code)
    back.add("new", BASE)
    assert back.check(RENAMED)[2] == "new"


@pytest.mark.parametrize(
    "mutate, error",
    [
        (lambda s: {**s, "format": "other"}, "not a novelty archive"),
        (lambda s: {**s, "scheme": "legacy"}, "scheme"),
        (lambda s: {**s, "keys": s["keys"][:-1]}, "keys but"),
        (lambda s: {**s, "hashvalues": [h[:10] for h in s["hashvalues"]]}, "num_perm"),
    ],
)
def test_bad_state_is_refused(mutate, error):
    arch = NoveltyArchive()
    arch.add("a", BASE)
    arch.add("b", zoo.source("mlp"))
    with pytest.raises(ValueError, match=error):
        NoveltyArchive.from_state_dict(mutate(arch.state_dict()))


def test_bad_arguments_are_refused():
    arch = NoveltyArchive()
    arch.add("a", BASE)
    with pytest.raises(ValueError, match="already in the archive"):
        arch.add("a", RENAMED)
    with pytest.raises(TypeError, match="key must be str"):
        arch.add(3, BASE)
    with pytest.raises(TypeError, match="code must be str"):
        arch.check(None)
    for kwargs in ({"threshold": 0}, {"threshold": 1.5}, {"num_perm": 1}, {"shingle": 0}, {"candidate_threshold": 0.95}):
        with pytest.raises(ValueError):
            NoveltyArchive(**kwargs)


def test_never_fails_open(monkeypatch):
    arch = NoveltyArchive()
    arch.add("a", BASE)

    def broken(_):
        raise RuntimeError("index unavailable")

    monkeypatch.setattr(arch._lsh, "query", broken)
    with pytest.raises(RuntimeError, match="index unavailable"):
        arch.check(RENAMED)


def test_minhash_error_matches_its_standard_error():
    """(J_hat - J) / sqrt(J(1-J)/k) over n pairs: mean 0 +- 4/sqrt(n), mean square 1 +- 4 sqrt(2/n).

    Each estimate is the share of k=128 agreeing minima, Binomial(k, J)/k for ideal hashing,
    so its standard error is sqrt(J(1-J)/k) (Broder 1997). Pairs use disjoint element
    sets, hence independent errors; sets of 200 elements with J on a grid in 0.1..0.9.
    """
    rng = np.random.default_rng(0)
    k, size, reps = 128, 200, 60
    z = []
    for j_target in np.arange(0.1, 0.95, 0.1):
        for rep in range(reps):
            shared = round(j_target * size)
            only_a = int(rng.integers(0, size - shared + 1))
            names = [f"{j_target:.1f}/{rep}/{i}".encode() for i in range(size)]
            a = set(names[:shared]) | set(names[shared : shared + only_a])
            b = set(names[:shared]) | set(names[shared + only_a :])
            j = exact_jaccard(a, b)
            est = minhash(a, k).jaccard(minhash(b, k))
            z.append((est - j) / math.sqrt(j * (1 - j) / k))
    z = np.array(z)
    n = len(z)
    assert abs(z.mean()) < 4 / math.sqrt(n)
    assert abs((z**2).mean() - 1) < 4 * math.sqrt(2 / n)


def test_nearest_is_the_most_similar_entry():
    arch = NoveltyArchive()
    for key, code in [("base", BASE), *DIFFERENT.items(), ("mlp", zoo.source("mlp"))]:
        arch.add(key, code)
    probe = DIFFERENT["keyword argument"].replace("self.features", "self.trunk")
    assert arch.check(probe) == (False, 1.0, "keyword argument")
    # exact Jaccard to every entry agrees that this is the closest one
    exact = {key: exact_jaccard(shingles(probe), shingles(code)) for key, code in [("base", BASE), *DIFFERENT.items()]}
    assert max(exact, key=exact.get) == "keyword argument"


BASE_ARCHIVE = NoveltyArchive()
BASE_ARCHIVE.add("base", BASE)


@settings(max_examples=200, deadline=None)
@given(st.one_of(st.text(max_size=200), st.lists(st.sampled_from(BASE.split("\n") + ['"""', "#", "(", "\t", "\\"]), max_size=30).map("\n".join)))
def test_any_text_gets_a_signature(code):
    novel, j, nearest = BASE_ARCHIVE.check(code)
    assert 0.0 <= j <= 1.0 and novel == (j < BASE_ARCHIVE.threshold) and nearest in (None, "base")
