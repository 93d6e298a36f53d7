"""The curated warm-start corpus: (baseline, before, after, delta) pairs from the zoo.

Each pair is a random mutation of a zoo baseline: 1 to 3 non-neutral coordinates of the
grammar (:mod:`cem_nas.mutations`) set to a random choice among those that change that
baseline (see :func:`applicable_choices`); the stored choice vector leaves out any that
still turned out to be no-ops in combination. A pair is kept only if

* the mutation changed the source,
* its ``after`` is not a copy of an earlier pair's,
* ``after`` builds and gives (1, num_classes) outputs for (1, 28, 28) and (3, 32, 32)
  inputs with 10 classes (trusted code: built in-process by :func:`cem_nas.zoo.build`;
  checked once per :func:`cem_nas.mutations.build_key`, since build-safe coordinates
  cannot change the outcome),
* ``after`` is novel under a :class:`~cem_nas.novelty.NoveltyArchive` of the pairs kept so
  far from the same baseline (MinHash Jaccard below ``threshold``): the structural
  diversity filter.

Candidates come from one seeded stream and are accepted in order, so the corpus is
deterministic given the seed and ``build_corpus(n)`` is a prefix of ``build_corpus(m)``
for n < m. Results are cached as JSON under ``$CEM_NAS_CACHE/corpus`` (default
``~/.cache/cem_nas/corpus``), keyed by seed, n, threshold, max_edits, context, max_changed and a hash of the
sources that decide the result (zoo, grammar, delta, novelty and this module).
"""
from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path
from typing import NamedTuple

import numpy as np

from cem_nas import delta, mutations, novelty, scope, zoo
from cem_nas.cache import cache_root
from cem_nas.edit_kinds import edit_kinds
from cem_nas.scope import check_scope, fixed_parts_changed

#: (in_shape, num_classes) every kept ``after`` must build for.
CHECK_SHAPES = (((1, 28, 28), 10), ((3, 32, 32), 10))
#: Default novelty threshold. Mutations of one baseline share most of its file: on the
#: plain net the exact shingle Jaccard of two files one literal apart (dropout 0.1 vs 0.3)
#: is 0.964, of two activations 0.949, of x2 vs x0.5 widths 0.856. At 0.97 the filter
#: drops pairs closer than about one literal edit to a kept pair of the same family (with
#: MinHash error, sd ~0.017 at 128 permutations); 0.9 leaves only ~300 pairs in all.
DEFAULT_THRESHOLD = 0.97


class CorpusPair(NamedTuple):
    """One training pair; ``choices`` is the grammar choice vector that made ``after`` (empty for
    a LEMUR pair, :mod:`cem_nas.corpus_lemur`)."""

    baseline: str
    before: str
    after: str
    delta: str
    choices: tuple[int, ...]


class CorpusError(RuntimeError):
    """The corpus could not be built as asked."""


def sources_hash() -> str:
    """SHA-256 over every source that decides the corpus (part of the cache key)."""
    digest = hashlib.sha256()
    for name in zoo.names():
        digest.update(name.encode() + b"\0" + zoo.source(name).encode() + b"\0")
    for module in (mutations, delta, novelty, scope):
        digest.update(Path(module.__file__).read_bytes())
    digest.update(Path(__file__).read_bytes())
    return digest.hexdigest()


def builds_with_right_shapes(code: str) -> bool:
    """Whether ``code`` builds and gives the right output shape for every CHECK_SHAPES entry."""
    try:
        for in_shape, classes in CHECK_SHAPES:
            zoo.check_output(zoo.build(code, in_shape, classes), in_shape, classes)
    except Exception:  # noqa: BLE001 - any failure to build or run means "not valid"
        return False
    return True


def applicable_choices(source: str, scope: str = "file") -> dict[int, list[int]]:
    """For each non-neutral coordinate, the non-keep choices that change ``source`` when
    applied alone (coordinates without any are left out); under ``scope`` architecture only
    those that leave the fixed training recipe as it is (:mod:`cem_nas.scope`).

    >>> from cem_nas import zoo
    >>> names = lambda scope: {mutations.GRAMMAR[j].name for j in applicable_choices(zoo.source("vgg"), scope)}
    >>> sorted(names("file") - names("architecture"))
    ['dropout', 'lr', 'optimizer']
    """
    check_scope(scope)
    out = {}
    for j, coord in enumerate(mutations.GRAMMAR):
        if coord.neutral:
            continue
        renders = {i: mutations.render(source, {coord.name: i}) for i in range(1, len(coord.choices))}
        changing = [i for i, code in renders.items()
                    if code != source and (scope == "file" or not fixed_parts_changed(source, code))]
        if changing:
            out[j] = changing
    return out


def random_choices(rng: np.random.Generator, applicable: dict[int, list[int]], max_changes: int = 3
                   ) -> tuple[int, ...]:
    """A choice vector with 1..max_changes coordinates of ``applicable`` set to one of their
    applicable choices (uniformly), the rest kept."""
    vector = [0] * len(mutations.GRAMMAR)
    movable = sorted(applicable)
    size = min(int(rng.integers(1, max_changes + 1)), len(movable))
    for j in rng.choice(movable, size=size, replace=False):
        vector[j] = applicable[j][int(rng.integers(len(applicable[j])))]
    return tuple(vector)


def changed_lines(diff: str) -> int:
    """Number of removed plus added lines of a unified diff (headers not counted).

    >>> changed_lines("--- a/net.py\\n+++ b/net.py\\n@@ -1 +1 @@\\n-a\\n+b\\n")
    2
    """
    return sum(1 for line in diff.splitlines()
               if line[:1] in "+-" and not line.startswith(("+++ ", "--- ")))


def _generate(n: int | None, seed: int, threshold: float, max_attempts: int, max_edits: int, context: int,
              max_changed: int | None, scope: str = "file") -> list[CorpusPair]:
    """Pairs accepted in stream order: the first ``n``, or all within ``max_attempts`` (None)."""
    rng = np.random.default_rng(seed)
    baselines = zoo.names()
    sources = {name: zoo.source(name) for name in baselines}
    # One archive per baseline: mutations of different baselines share little (their
    # Jaccard is far below any useful threshold), and a single archive would compare every
    # candidate with every kept pair of every family (the check is linear in LSH hits).
    archives = {name: novelty.NoveltyArchive(threshold=threshold) for name in baselines}
    seen_choices: set[tuple[str, tuple[int, ...]]] = set()
    seen_code = set(sources.values())
    applicable: dict[str, dict[int, list[int]]] = {}
    valid: dict[tuple[str, tuple[int, ...]], bool] = {}  # building is the cost: once per build key
    pairs: list[CorpusPair] = []
    for _ in range(max_attempts):
        if len(pairs) == n:
            return pairs
        name = baselines[int(rng.integers(len(baselines)))]
        if name not in applicable:
            applicable[name] = applicable_choices(sources[name], scope)
        choices = random_choices(rng, applicable[name], max_edits)
        if (name, choices) in seen_choices:
            continue
        seen_choices.add((name, choices))
        rendered = mutations.render_detail(sources[name], choices)
        after = rendered.code
        if after in seen_code:
            continue
        # A coordinate that was a no-op at its turn left every later step unchanged, so
        # dropping it from the vector renders the same file: record only what acted.
        choices = tuple(0 if c.name in rendered.noops else i for c, i in zip(mutations.GRAMMAR, choices))
        seen_code.add(after)
        diff = delta.make_delta(sources[name], after, context)
        if max_changed is not None and changed_lines(diff) > max_changed:
            continue
        if not archives[name].check(after)[0]:
            continue
        key = (name, mutations.build_key(choices))
        if key not in valid:
            valid[key] = builds_with_right_shapes(after)
        if not valid[key]:
            continue
        archives[name].add(str(len(pairs)), after)
        pairs.append(CorpusPair(name, sources[name], after, diff, choices))
    if n is not None and len(pairs) < n:
        raise CorpusError(f"only {len(pairs)} of {n} pairs passed the filters in {max_attempts} attempts; "
                          f"ask for fewer pairs or raise the novelty threshold ({threshold})")
    return pairs


def build_corpus(n: int = 3000, seed: int = 0, threshold: float = DEFAULT_THRESHOLD,
                 cache: bool = True, max_attempts: int | None = None, max_edits: int = 3,
                 context: int = 3, max_changed: int | None = None, balance: bool = False,
                 scope: str = "file") -> list[CorpusPair]:
    """``n`` (baseline, before, after, delta, choices) pairs; see the module docstring.

    ``max_edits`` caps the grammar coordinates one pair changes (1..max_edits, uniform) and
    ``context`` is the number of context lines of each delta; ``max_changed`` (None: no
    cap) drops pairs whose delta removes plus adds more lines than that. Small values give
    short deltas, which a small model learns to write and close far faster (the tokens per
    completion at both settings: docs/results.md#delta-lengths).

    ``balance``: the pairs are taken in turn over the kind of edit (the first grammar
    coordinate a pair changes), from all pairs that pass within ``max_attempts``, so that
    the shortest kinds do not dominate (an unbalanced corpus of short single edits is
    mostly dropout, optimizer and lr pairs: docs/results.md#hints). A balanced corpus is
    not a prefix of a larger one.

    ``scope`` architecture leaves out the edits of the fixed training recipe (the optimizer
    and learning-rate coordinates: :func:`applicable_choices`).

    Raises :class:`CorpusError` when fewer than ``n`` pairs pass the filters within
    ``max_attempts`` random mutations (default ``20 n + 200``).

    >>> pairs = build_corpus(3, seed=0, cache=False)
    >>> [p.after == mutations.render(p.before, p.choices) for p in pairs]
    [True, True, True]
    """
    if not (isinstance(n, int) and n >= 1):
        raise ValueError(f"n must be a positive integer; got {n!r}")
    if not (isinstance(max_edits, int) and max_edits >= 1):
        raise ValueError(f"max_edits must be a positive integer; got {max_edits!r}")
    if not (isinstance(context, int) and context >= 0):
        raise ValueError(f"context must be a non-negative integer; got {context!r}")
    if max_changed is not None and not (isinstance(max_changed, int) and max_changed >= 1):
        raise ValueError(f"max_changed must be None or a positive integer; got {max_changed!r}")
    if not 0.0 < threshold <= 1.0:
        raise ValueError(f"threshold is a Jaccard similarity in (0, 1]; got {threshold!r}")
    check_scope(scope)
    name = (f"seed{seed}-n{n}-t{threshold:g}-e{max_edits}-c{context}-m{max_changed}{'-b' if balance else ''}"
            f"{'-arch' if scope == 'architecture' else ''}")
    path = cache_root() / "corpus" / f"{name}-{sources_hash()[:16]}.json"
    if cache and path.exists():
        return [CorpusPair(*item[:4], tuple(item[4])) for item in json.loads(path.read_text())]
    attempts = 20 * n + 200 if max_attempts is None else max_attempts
    if balance:
        pairs = balanced(_generate(None, seed, threshold, attempts, max_edits, context, max_changed, scope), n)
    else:
        pairs = _generate(n, seed, threshold, attempts, max_edits, context, max_changed, scope)
    if cache:
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_suffix(f".tmp{os.getpid()}")
        tmp.write_text(json.dumps([list(p) for p in pairs]))
        os.replace(tmp, path)
    return pairs


def first_kind(pair: CorpusPair) -> str:
    """Name of the first grammar coordinate the pair changes; for a pair without grammar
    choices (a LEMUR pair, :mod:`cem_nas.corpus_lemur`) the first kind
    :func:`cem_nas.edit_kinds.edit_kinds` reads off its two files (``other`` included).

    >>> first_kind(CorpusPair("m", "a = nn.ReLU()", "a = nn.GELU()", "", ()))
    'activation'
    """
    named = next((c.name for c, i in zip(mutations.GRAMMAR, pair.choices) if i), None)
    return named if named is not None else edit_kinds(pair.before, pair.after)[0]


def balanced(pool: list[CorpusPair], n: int) -> list[CorpusPair]:
    """``n`` pairs of ``pool`` taken in turn over :func:`first_kind` (each kind's pairs in
    pool order), so every kind has as many pairs as the rarer kinds allow.

    >>> pool = [CorpusPair("m", "", str(i), "", (0,) * 6 + (1,) + (0,) * 3) for i in range(5)]
    >>> pool.append(CorpusPair("m", "", "x", "", (0,) * 4 + (1,) + (0,) * 5))
    >>> [first_kind(p) for p in balanced(pool, 3)]
    ['dropout', 'activation', 'dropout']
    """
    by_kind: dict[str, list[CorpusPair]] = {}
    for pair in pool:
        by_kind.setdefault(first_kind(pair), []).append(pair)
    queues = list(by_kind.values())
    out: list[CorpusPair] = []
    while len(out) < n and any(queues):
        for queue in queues:
            if queue and len(out) < n:
                out.append(queue.pop(0))
    if len(out) < n:
        raise CorpusError(f"only {len(out)} of {n} pairs passed the filters; ask for fewer pairs, allow more "
                          "changed lines (max_changed) or raise the novelty threshold")
    return out
