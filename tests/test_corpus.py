"""The warm-start corpus: filters, determinism, cache, and the delta round trip."""
import json

import pytest
import torch

from cem_nas.cache import CACHE_ENV
from cem_nas import corpus, mutations, zoo
from cem_nas.delta import apply_delta
from cem_nas.novelty import NoveltyArchive

torch.set_num_threads(1)
N = 40


@pytest.fixture(scope="module")
def pairs():
    return corpus.build_corpus(N, seed=3, cache=False)


def test_pairs_are_real_mutations_that_build(pairs):
    assert len(pairs) == N
    assert {p.baseline for p in pairs} <= set(zoo.names())
    assert len({p.baseline for p in pairs}) >= 5  # spread over the zoo
    for p in pairs:
        assert p.before == zoo.source(p.baseline) and p.after != p.before
        changed = [c for c, i in zip(mutations.GRAMMAR, p.choices) if i]
        assert 1 <= len(changed) <= 3 and not any(c.neutral for c in changed)
        rendered = mutations.render_detail(p.before, p.choices)
        assert rendered.code == p.after and rendered.noops == ()  # every recorded choice acted
        for in_shape, classes in corpus.CHECK_SHAPES:
            zoo.check_output(zoo.build(p.after, in_shape, classes), in_shape, classes)


def test_round_trip_through_the_applier(pairs):
    for p in pairs:
        assert apply_delta(p.before, p.delta).code == p.after


def test_pairs_are_unique_and_novel_within_their_family(pairs):
    assert len({p.after for p in pairs}) == N
    for name in {p.baseline for p in pairs}:
        archive = NoveltyArchive(threshold=corpus.DEFAULT_THRESHOLD)
        for i, p in enumerate(q for q in pairs if q.baseline == name):
            assert archive.check(p.after)[0]
            archive.add(str(i), p.after)


def test_deterministic_prefix_and_seed_dependent(pairs):
    assert corpus.build_corpus(N // 2, seed=3, cache=False) == pairs[: N // 2]
    assert corpus.build_corpus(5, seed=4, cache=False) != pairs[:5]


def test_disk_cache_round_trip(tmp_path, monkeypatch, pairs):
    monkeypatch.setenv(CACHE_ENV, str(tmp_path))
    first = corpus.build_corpus(10, seed=3)
    files = list((tmp_path / "corpus").glob("seed3-n10-*.json"))
    assert first == pairs[:10] and len(files) == 1
    # the cache is what is read back: doctor it and see the change
    doctored = json.loads(files[0].read_text())
    doctored[0][2] = "# cached\n"
    files[0].write_text(json.dumps(doctored))
    assert corpus.build_corpus(10, seed=3)[0].after == "# cached\n"
    assert corpus.build_corpus(10, seed=3, cache=False) == pairs[:10]


def test_impossible_requests_fail_clearly():
    with pytest.raises(ValueError, match="positive integer"):
        corpus.build_corpus(0)
    with pytest.raises(ValueError, match="threshold"):
        corpus.build_corpus(5, threshold=1.5)
    with pytest.raises(corpus.CorpusError, match="raise the novelty threshold"):
        # at the LSH candidate threshold every two mutations of one baseline collide
        corpus.build_corpus(30, seed=0, threshold=0.5, cache=False, max_attempts=40)


def test_build_check_rejects_broken_code():
    broken = zoo.source("plainnet").replace("nn.Conv2d(32, 64", "nn.Conv2d(48, 64")
    assert not corpus.builds_with_right_shapes(broken)
    assert corpus.builds_with_right_shapes(zoo.source("plainnet"))


@pytest.mark.slow
def test_full_default_corpus_round_trips():
    full = corpus.build_corpus(cache=False)
    assert len(full) == 3000
    for p in full:
        assert apply_delta(p.before, p.delta).code == p.after


def test_short_delta_settings_give_single_edits_with_small_context():
    short = corpus.build_corpus(12, seed=3, cache=False, max_edits=1, context=1, max_changed=4)
    assert len(short) == 12
    for p in short:
        assert sum(1 for i in p.choices if i) == 1
        assert corpus.changed_lines(p.delta) <= 4
        assert apply_delta(p.before, p.delta).code == p.after
        # context 1: no hunk opens with two unchanged lines before its first change
        for hunk in p.delta.split("@@")[2::2]:
            body = hunk.split("\n")[1:]
            assert not (body[0].startswith(" ") and body[1].startswith(" "))
    default_lengths = sorted(corpus.changed_lines(p.delta) for p in corpus.build_corpus(12, seed=3, cache=False))
    assert default_lengths[-1] > 4  # the cap does bite: the default corpus has longer deltas


def test_cache_key_names_the_short_delta_settings(tmp_path, monkeypatch):
    monkeypatch.setenv(CACHE_ENV, str(tmp_path))
    default = corpus.build_corpus(4, seed=3)
    short = corpus.build_corpus(4, seed=3, max_edits=1, context=1, max_changed=4)
    assert default != short
    assert len(list((tmp_path / "corpus").glob("seed3-n4-*.json"))) == 2
    assert corpus.build_corpus(4, seed=3, max_edits=1, context=1, max_changed=4) == short


def test_bad_short_delta_settings_fail_clearly():
    for bad in ({"max_edits": 0}, {"context": -1}, {"max_changed": 0}):
        with pytest.raises(ValueError, match=next(iter(bad))):
            corpus.build_corpus(3, cache=False, **bad)
