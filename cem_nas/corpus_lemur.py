"""The LEMUR warm-start corpus: (base, more accurate variant) pairs of real architectures.

``sampler.warm_start.corpus = "lemur:PATH"`` warm-starts on files of the LEMUR dataset
(ABrain-One/nn-dataset) instead of grammar mutations of the zoo (:mod:`cem_nas.corpus`), as
the reference pipeline (ABrain-One/nn-gpt) does: a pair is a file and a variant of it from the
same family that the stored curves say is more accurate. ``PATH`` is either

* a folder with ``nn/*.py`` and ``curves.csv.gz`` (the CSV export, as ``../shared/lemur``), or
* a clone of nn-dataset (``ab/nn/nn/*.py`` and ``ab/nn/stat/<task>_<dataset>_<metric>_<nn>/
  <epoch>.json``, each a JSON list of runs with ``accuracy`` and ``uid``), or its ``ab/nn``.

The rules, each decided on the 2,376 files of ``../shared/lemur/nn`` (benchmarks/bench_lemur_corpus.py):

Files. A model file is ``<stem>.py`` (``_*`` files such as ``__init__.py`` are not models); it
is read as UTF-8 and must parse and define a top-level ``class Net``. Anything else is skipped
and counted by reason (:data:`SKIP_REASONS`), never raised: the files are external data. They
are also untrusted code, so nothing is built or run: the check is the parse alone.

Families. Only ``ast-<mutation>-<Base>-<hash>`` and ``<Base>-<suffix>`` names carry their base;
``ga-<n>`` (a genetic search over one AlexNet-like template) and ``rag-<hash>`` (a template
with one retrieved block) do not. A file's family is the first ``-``-separated token of its
stem that is a *base file* (a stem without ``-``), else its first token::

    ast-dimension-AlexNet-9f2c -> AlexNet      C5C-RESNETLSTM-2710 -> RESNETLSTM
    AlexNet-355f849c-...       -> AlexNet      ga-17 -> ga    rag-04b5 -> rag    BayesianNet-1 -> BayesianNet

Accuracy. A file's accuracy on (task, dataset, metric) is the median of its stored runs at
epoch ``epoch`` (default 1: every file with curves has epoch 1 stored, and the ``ast-*``
runs have nothing else). LEMUR's run ids are per file, so the runs of two files cannot be
matched one to one, and files differ in their number of runs (AlexNet has 112 on cifar-10 at
epoch 1, most ``ast-*`` mutants 1 to 4): the best run favours the file with more draws of the
hyperparameters, the median does not (of the 1,090 variants of a base file with curves, 4
beat their base at the best run, 13 at the median). ``v`` *beats* ``b`` when it is strictly
more accurate on more of their shared (task, dataset, metric) than it is strictly less
accurate. The reference pipeline's pairs are one per dataset; merged into one pair of files,
that rule would hold both ways whenever two files split the datasets (769 of the 1,046 pairs
kept at scope architecture have a dataset on which the base is the more accurate). The
majority never holds both ways, and ties (common among runs stuck at chance) count for neither.

Pairs. In a family with a base file, (base, variant) for every member that beats the base.
In a family without one (``ga``, ``rag``, ``BayesianNet``, ...) every member is a base, paired
with its nearest sibling that beats it and passes the filters below ("nearest": fewest changed
lines, bounded from below by the line multisets, then by name); so one pair at most per member
instead of all ~n^2/2 ordered sibling pairs. A candidate is dropped (first reason counted) when

* ``too_long``: the base has more than ``max_lines`` lines (its prompt would not fit);
* ``same_code``: the two files are the same text;
* ``too_many_changed``: the delta removes plus adds more than ``max_changed`` lines;
* ``fixed_parts``: under scope architecture, it changes ``supported_hyperparameters``,
  ``train_setup`` or ``learn`` (:mod:`cem_nas.scope`). The variant's accuracy was measured
  with its own recipe, so transplanting the base's recipe would cut the pair from its
  evidence: such pairs are left out, not repaired.

The kept pairs are :class:`~cem_nas.corpus.CorpusPair` with ``baseline`` the base's stem and
no grammar choices (``choices == ()``); :func:`cem_nas.corpus.first_kind` and the hints classify
them with :func:`cem_nas.edit_kinds.edit_kinds`. :func:`build_lemur_corpus` takes ``n`` of them
in turn over the families (each family's pairs in a seeded order), so the 1,015 ``ga`` pairs
do not crowd out the other families; with ``balance`` in turn over the kind of edit of that
sequence instead (:func:`cem_nas.corpus.balanced`). The result is deterministic given the data and the
seed, and cached like the grammar corpus, keyed by a fingerprint of the files read.
"""
from __future__ import annotations

import ast
import contextlib
import hashlib
import json
import logging
import math
import os
import warnings
from collections import Counter
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import NamedTuple

import numpy as np

log = logging.getLogger(__name__)

#: Why a model file is skipped, in the order they are checked.
SKIP_REASONS = ("unreadable", "not_utf8", "syntax_error", "no_net_class")
#: Why a candidate pair is dropped, in the order they are checked.
DROP_REASONS = ("too_long", "same_code", "too_many_changed", "fixed_parts")
#: The stored epoch compared by default: the one every LEMUR run has.
DEFAULT_EPOCH = 1
#: Default cap on a LEMUR delta's removed plus added lines (warm_start.lemur_max_changed).
DEFAULT_MAX_CHANGED = 40
#: Default cap on a base file's lines: at ~10 tokens a line, 150 lines leave room for the
#: prompt template and the delta in LoRASettings.max_length (2048 tokens).
DEFAULT_MAX_LINES = 150
EXPECTED = ("a clone of ABrain-One/nn-dataset (ab/nn/nn/*.py and ab/nn/stat/<task>_<dataset>_<metric>_<nn>/"
            "<epoch>.json), its ab/nn folder, or a folder with nn/*.py and curves.csv.gz (as ../shared/lemur)")
CSV_NAMES = ("curves.csv.gz", "curves.csv")


class LemurError(ValueError):
    """A LEMUR path or curves file that cannot be used; the message names it and what is expected."""


class LemurSource(NamedTuple):
    """Where a LEMUR corpus is read from: the model files and the curves (CSV or stat folder)."""

    models: Path
    curves: Path
    layout: str
    """``csv`` (a curves CSV export) or ``stat`` (LEMUR's own ab/nn/stat folder)."""


def locate(path: str | Path) -> LemurSource:
    """The model folder and curves of a LEMUR ``path`` (see the module docstring), or a
    LemurError naming the path and what is expected there.

    >>> locate("/no/such/lemur")
    Traceback (most recent call last):
    ...
    cem_nas.corpus_lemur.LemurError: the LEMUR folder /no/such/lemur does not exist; expected a clone of ...
    """
    given = Path(path).expanduser()
    if not given.is_dir():
        what = "is not a folder" if given.exists() else "does not exist"
        raise LemurError(f"the LEMUR folder {given} {what}; expected {EXPECTED}")
    for root in (given / "ab" / "nn", given):
        if (root / "nn").is_dir() and (root / "stat").is_dir():
            return LemurSource(root / "nn", root / "stat", "stat")
    if (given / "nn").is_dir():
        for name in CSV_NAMES:
            if (given / name).is_file():
                return LemurSource(given / "nn", given / name, "csv")
    raise LemurError(f"the LEMUR folder {given} holds neither ab/nn/nn with ab/nn/stat nor nn/ with "
                     f"curves.csv.gz; expected {EXPECTED}")


def corpus_source(spec: str) -> LemurSource | None:
    """What ``warm_start.corpus`` names: None for ``grammar``, the located folder for
    ``lemur:PATH``; a ValueError for anything else.

    >>> corpus_source("grammar") is None
    True
    >>> corpus_source("zoo")
    Traceback (most recent call last):
    ...
    ValueError: warm_start.corpus must be 'grammar' or 'lemur:PATH' (PATH a clone of ABrain-One/nn-dataset ...); got 'zoo'
    """
    if spec == "grammar":
        return None
    if isinstance(spec, str) and spec.startswith("lemur:"):
        path = spec[len("lemur:"):].strip()
        if not path:
            raise LemurError(f"warm_start.corpus = 'lemur:' names no path; give lemur:PATH, PATH {EXPECTED}")
        try:
            return locate(path)
        except LemurError as e:
            raise LemurError(f"warm_start.corpus = {spec!r}: {e}") from None
    raise ValueError(f"warm_start.corpus must be 'grammar' or 'lemur:PATH' (PATH {EXPECTED}); got {spec!r}")


# --------------------------------------------------------------------------- files and families

def read_models(folder: str | Path) -> tuple[dict[str, str], Counter]:
    """The model files of ``folder`` (stem -> source, sorted by stem) and the count of files
    skipped per :data:`SKIP_REASONS` reason."""
    sources: dict[str, str] = {}
    skipped: Counter = Counter()
    for file in sorted(Path(folder).glob("*.py")):
        if file.name.startswith("_"):
            continue
        try:
            raw = file.read_bytes()
        except OSError:
            skipped["unreadable"] += 1
            continue
        try:
            text = raw.decode("utf-8")
        except UnicodeDecodeError:
            skipped["not_utf8"] += 1
            continue
        try:
            tree = ast.parse(text)
        except (SyntaxError, ValueError, RecursionError, MemoryError):  # ValueError: a NUL byte
            skipped["syntax_error"] += 1
            continue
        if not any(isinstance(node, ast.ClassDef) and node.name == "Net" for node in tree.body):
            skipped["no_net_class"] += 1
            continue
        sources[file.stem] = text
    return sources, skipped


def family_of(stem: str, bases: set[str] | frozenset[str]) -> str:
    """The family of a file: the first ``-`` token of its stem that is a base file's stem
    (``bases``), else the first token.

    >>> bases = {"AlexNet", "RESNETLSTM"}
    >>> [family_of(s, bases) for s in ("AlexNet", "ast-dimension-AlexNet-9f2c", "C5C-RESNETLSTM-27", "ga-17")]
    ['AlexNet', 'AlexNet', 'RESNETLSTM', 'ga']
    """
    tokens = stem.split("-")
    return next((t for t in tokens if t in bases), tokens[0])


def families(stems) -> dict[str, list[str]]:
    """Family -> its member stems (sorted; a family's base file among them)."""
    stems = sorted(stems)
    bases = frozenset(s for s in stems if "-" not in s)
    out: dict[str, list[str]] = {}
    for stem in stems:
        out.setdefault(family_of(stem, bases), []).append(stem)
    return dict(sorted(out.items()))


# --------------------------------------------------------------------------- accuracies

Key = tuple[str, str, str]  # (task, dataset, metric)
Runs = dict[str, dict[Key, list[float]]]  # nn -> key -> the accuracies of its runs at the epoch


def _csv_runs(path: Path, epoch: int, stems: set[str]) -> tuple[Runs, Counter]:
    import pandas as pd

    from cem_nas.curves import CSV_COLUMNS

    try:
        raw = pd.read_csv(path, dtype=str, keep_default_na=False)
    except (pd.errors.ParserError, pd.errors.EmptyDataError, UnicodeDecodeError, OSError, EOFError) as e:
        raise LemurError(f"{path}: not a readable curves CSV ({e}); expected the columns {', '.join(CSV_COLUMNS)}") from e
    missing = [c for c in CSV_COLUMNS if c not in raw.columns]
    if missing:
        raise LemurError(f"{path}: missing column(s) {', '.join(missing)}; expected {', '.join(CSV_COLUMNS)}")
    ep = pd.to_numeric(raw["epoch"], errors="coerce").to_numpy(dtype=float)
    acc = pd.to_numeric(raw["accuracy"], errors="coerce").to_numpy(dtype=float)
    bad = ~np.isfinite(ep) | ~np.isfinite(acc)
    skipped = Counter({"malformed_curve_rows": int(bad.sum())} if bad.any() else {})
    keep = ~bad & (ep == epoch) & raw["nn"].isin(stems).to_numpy()
    runs: Runs = {}
    for nn, task, dataset, metric, value in zip(raw["nn"][keep], raw["task"][keep], raw["dataset"][keep],
                                                raw["metric"][keep], acc[keep]):
        runs.setdefault(nn, {}).setdefault((task, dataset, metric), []).append(float(value))
    return runs, skipped


def _stat_files(stat: Path, epoch: int, stems: set[str]) -> list[tuple[Path, Key, str]]:
    """(epoch file, key, nn) of every ``<task>_<dataset>_<metric>_<nn>/<epoch>.json`` of a model stem."""
    out = []
    for folder in sorted(p for p in stat.iterdir() if p.is_dir()):
        parts = folder.name.split("_", 3)
        if len(parts) == 4 and all(parts) and parts[3] in stems and (folder / f"{epoch}.json").is_file():
            out.append((folder / f"{epoch}.json", (parts[0], parts[1], parts[2]), parts[3]))
    return out


def _stat_runs(stat: Path, epoch: int, stems: set[str]) -> tuple[Runs, Counter]:
    from cem_nas.curves import CurvesError, _json_records

    runs: Runs = {}
    skipped: Counter = Counter()
    for file, key, nn in _stat_files(stat, epoch, stems):
        try:
            records = _json_records(file)
        except CurvesError:
            skipped["malformed_curve_files"] += 1
            continue
        for _, rec in records:
            acc = rec.get("accuracy") if isinstance(rec, dict) else None
            if isinstance(acc, bool) or not isinstance(acc, (int, float)) or not math.isfinite(acc):
                skipped["malformed_curve_records"] += 1
                continue
            runs.setdefault(nn, {}).setdefault(key, []).append(float(acc))
    return runs, skipped


#: How a file's runs at the epoch are summed up: the median (the corpus' rule) or the best run.
STATISTICS = {"median": np.median, "max": np.max}


def read_accuracies(source: LemurSource, epoch: int, stems, statistic: str = "median"
                    ) -> tuple[dict[str, dict[Key, float]], Counter]:
    """Each stem's median (or best) run accuracy per (task, dataset, metric) at ``epoch``, and
    the count of curve rows, files or records skipped as malformed."""
    if statistic not in STATISTICS:
        raise ValueError(f"statistic must be one of {sorted(STATISTICS)}; got {statistic!r}")
    reduce = STATISTICS[statistic]
    stems = set(stems)
    read = _csv_runs if source.layout == "csv" else _stat_runs
    runs, skipped = read(source.curves, epoch, stems)
    return {nn: {key: float(reduce(values)) for key, values in sorted(by_key.items())}
            for nn, by_key in sorted(runs.items())}, skipped


def beats(v: dict[Key, float], b: dict[Key, float]) -> bool:
    """Whether accuracies ``v`` beat ``b``: strictly higher on more of the shared keys than
    strictly lower (so never both ways).

    >>> b = {("c", "mnist", "acc"): 0.8, ("c", "svhn", "acc"): 0.6, ("c", "cifar-10", "acc"): 0.3}
    >>> v = {("c", "mnist", "acc"): 0.9, ("c", "svhn", "acc"): 0.5, ("c", "cifar-10", "acc"): 0.4}
    >>> beats(v, b), beats(b, v), beats(b, b), beats(v, {})
    (True, False, False, False)
    """
    shared = v.keys() & b.keys()
    return sum(v[k] > b[k] for k in shared) > sum(v[k] < b[k] for k in shared)


# --------------------------------------------------------------------------- pairs

class LineBounds:
    """Lower bounds of the changed lines of every delta between the files of one family, a
    row at a time (a family of n files never holds an n x n matrix): the size of the
    symmetric difference of the two files' line multisets. A diff keeps only equal lines, at
    most the intersection of the multisets, and removes or adds every other line.

    Each file is a sparse indicator row whose k-th copy of a line is its own column, so the
    dot product of two rows is the size of the intersection of their multisets.

    >>> LineBounds(["x\\ny\\ny\\n", "y\\nz\\n"]).row(0).tolist()
    [0, 3]
    """

    def __init__(self, texts: list[str]):
        from scipy import sparse

        columns: dict[tuple[str, int], int] = {}
        rows, cols = [], []
        for i, text in enumerate(texts):
            seen: Counter = Counter()
            for line in text.splitlines():
                cols.append(columns.setdefault((line, seen[line]), len(columns)))
                rows.append(i)
                seen[line] += 1
        self.matrix = sparse.csr_matrix((np.ones(len(rows)), (rows, cols)), shape=(len(texts), max(len(columns), 1)))
        self.sizes = np.asarray(self.matrix.sum(axis=1)).ravel()

    def row(self, i: int) -> np.ndarray:
        """The bounds from file ``i`` to every file."""
        overlap = (self.matrix[i] @ self.matrix.T).toarray().ravel()
        return (self.sizes[i] + self.sizes - 2 * overlap).round().astype(int)


@dataclass
class LemurSummary:
    """What a LEMUR folder gave: files read, skipped, families, candidate pairs, kept pairs."""

    path: str = ""
    files: int = 0
    """Model files read (``_*`` files not counted)."""
    skipped: dict[str, int] = field(default_factory=dict)
    """Model files skipped, by :data:`SKIP_REASONS` reason."""
    curves_skipped: dict[str, int] = field(default_factory=dict)
    """Curve rows (CSV) or files and records (stat folder) skipped as malformed."""
    without_accuracy: int = 0
    """Readable model files with no stored accuracy at the epoch."""
    families: int = 0
    """Families with at least two readable members."""
    candidates: int = 0
    """Pairs the accuracies order (a base beaten by its variant) before the filters; in a
    family without a base file, one per member that some sibling beats."""
    dropped: dict[str, int] = field(default_factory=dict)
    """Candidates dropped, by :data:`DROP_REASONS` reason."""
    kept: int = 0
    taken: int = 0
    """Pairs taken into the corpus (build_lemur_corpus)."""

    def line(self) -> str:
        """The one-line summary the builder logs."""
        def counts(d: dict[str, int]) -> str:
            return ", ".join(f"{v} {k}" for k, v in sorted(d.items())) or "none"

        return (f"LEMUR corpus from {self.path}: {self.files} model files (skipped {counts(self.skipped)}; "
                f"{self.without_accuracy} without accuracy; curves skipped {counts(self.curves_skipped)}), "
                f"{self.families} families, {self.candidates} candidate pairs, dropped {counts(self.dropped)}, "
                f"{self.kept} kept, {self.taken} taken")


class LemurPool(NamedTuple):
    """Every kept pair (in family order), the family and variant stem of each, and the summary."""

    pairs: list
    family: list[str]
    variant: list[str]
    summary: LemurSummary


def lemur_pool(path: str | Path, epoch: int = DEFAULT_EPOCH, context: int = 1,
               max_changed: int | None = DEFAULT_MAX_CHANGED, scope: str = "file",
               max_lines: int | None = DEFAULT_MAX_LINES) -> LemurPool:
    """All pairs of the LEMUR folder ``path`` that pass the rules of the module docstring."""
    from cem_nas.scope import check_scope

    check_scope(scope)
    with quiet_parsing():
        return _lemur_pool(path, epoch, context, max_changed, scope, max_lines)


@contextlib.contextmanager
def quiet_parsing():
    """Parse external files without their warnings: an invalid escape sequence in a LEMUR
    file is theirs to fix, not this run's log to show (a SyntaxWarning from Python 3.12 on)."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", SyntaxWarning)
        warnings.simplefilter("ignore", DeprecationWarning)
        yield


def _lemur_pool(path, epoch: int, context: int, max_changed: int | None, scope: str,
                max_lines: int | None) -> LemurPool:
    from cem_nas.corpus import CorpusPair, changed_lines
    from cem_nas.delta import make_delta
    from cem_nas.scope import fixed_parts_changed

    source = locate(path)
    sources, skipped = read_models(source.models)
    accuracy, curves_skipped = read_accuracies(source, epoch, sources)
    summary = LemurSummary(path=str(path), files=len(sources) + sum(skipped.values()), skipped=dict(skipped),
                           curves_skipped=dict(curves_skipped),
                           without_accuracy=sum(1 for s in sources if s not in accuracy))
    dropped: Counter = Counter()
    pairs, family_names, variants = [], [], []

    def verdict(base: str, variant: str, bound: int) -> tuple[str | None, str]:
        """(first failing reason or None, delta)."""
        before, after = sources[base], sources[variant]
        if max_lines is not None and before.count("\n") + (not before.endswith("\n")) > max_lines:
            return "too_long", ""
        if before == after:
            return "same_code", ""
        if max_changed is not None and bound > max_changed:  # exact: the bound never exceeds the delta
            return "too_many_changed", ""
        diff = make_delta(before, after, context)
        if max_changed is not None and changed_lines(diff) > max_changed:
            return "too_many_changed", ""
        if scope == "architecture" and fixed_parts_changed(before, after):
            return "fixed_parts", ""
        return None, diff

    for name, members in families(sources).items():
        if len(members) < 2:
            continue
        summary.families += 1
        scored = [m for m in members if m in accuracy]
        if len(scored) < 2:
            continue
        bounds = LineBounds([sources[m] for m in scored])
        index = {m: i for i, m in enumerate(scored)}
        if name in index:  # a base file: base -> every variant that beats it
            base = name
            bound = bounds.row(index[base])
            for variant in scored:
                if variant == base or not beats(accuracy[variant], accuracy[base]):
                    continue
                summary.candidates += 1
                reason, diff = verdict(base, variant, int(bound[index[variant]]))
                if reason:
                    dropped[reason] += 1
                else:
                    pairs.append(CorpusPair(base, sources[base], sources[variant], diff, ()))
                    family_names.append(name)
                    variants.append(variant)
            continue
        for base in scored:  # no base file: each member -> its nearest sibling that beats it and passes
            bound = bounds.row(index[base])
            better = sorted((int(bound[index[v]]), v) for v in scored
                            if v != base and beats(accuracy[v], accuracy[base]))
            if not better:
                continue
            summary.candidates += 1
            first_reason = None
            for b, variant in better:
                if max_changed is not None and b > max_changed:  # sorted: every later bound is larger still
                    first_reason = first_reason or "too_many_changed"
                    break
                reason, diff = verdict(base, variant, b)
                if reason is None:
                    pairs.append(CorpusPair(base, sources[base], sources[variant], diff, ()))
                    family_names.append(name)
                    variants.append(variant)
                    first_reason = None
                    break
                first_reason = first_reason or reason
                if reason == "too_long":  # the base is too long for any sibling
                    break
            if first_reason:
                dropped[first_reason] += 1
    summary.dropped = {k: dropped[k] for k in DROP_REASONS if dropped[k]}
    summary.kept = len(pairs)
    return LemurPool(pairs, family_names, variants, summary)


def interleaved(pool: LemurPool, seed: int) -> list:
    """The pool's pairs taken in turn over the families (sorted by name), each family's pairs
    in an order drawn from ``seed``."""
    rng = np.random.default_rng(seed)
    by_family: dict[str, list] = {}
    for pair, name in zip(pool.pairs, pool.family):
        by_family.setdefault(name, []).append(pair)
    queues = [[members[int(i)] for i in rng.permutation(len(members))] for _, members in sorted(by_family.items())]
    out = []
    while any(queues):
        for queue in queues:
            if queue:
                out.append(queue.pop(0))
    return out


def sources_hash() -> str:
    """SHA-256 of the code that decides a LEMUR corpus (part of its cache key)."""
    from cem_nas import corpus, curves, delta, edit_kinds, scope

    digest = hashlib.sha256()
    for module in (corpus, curves, delta, edit_kinds, scope):
        digest.update(Path(module.__file__).read_bytes())
    digest.update(Path(__file__).read_bytes())
    return digest.hexdigest()


def fingerprint(source: LemurSource, epoch: int = DEFAULT_EPOCH) -> str:
    """SHA-256 over the files a corpus reads: every model file and the curves (the CSV, or
    the ``<epoch>.json`` files of the model stems in a stat folder), names and contents."""
    digest = hashlib.sha256()
    stems = set()
    for file in sorted(Path(source.models).glob("*.py")):
        if file.name.startswith("_"):
            continue
        stems.add(file.stem)
        try:
            digest.update(file.name.encode() + b"\0" + file.read_bytes() + b"\0")
        except OSError:
            digest.update(file.name.encode() + b"\0unreadable\0")
    curves = [source.curves] if source.layout == "csv" else [f for f, _, _ in _stat_files(source.curves, epoch, stems)]
    for file in curves:
        try:
            digest.update(str(file.relative_to(source.curves.parent)).encode() + b"\0" + file.read_bytes() + b"\0")
        except OSError:
            digest.update(str(file).encode() + b"\0unreadable\0")
    return digest.hexdigest()


def build_lemur_corpus(path: str | Path, n: int, seed: int = 0, context: int = 1,
                       max_changed: int | None = DEFAULT_MAX_CHANGED, scope: str = "file", balance: bool = False,
                       epoch: int = DEFAULT_EPOCH, max_lines: int | None = DEFAULT_MAX_LINES,
                       cache: bool = True) -> list:
    """``n`` LEMUR pairs (:class:`~cem_nas.corpus.CorpusPair`, ``choices == ()``) of the
    folder ``path``, taken in turn over the families (or, with ``balance``, over the kinds
    of edit); logs the one-line :class:`LemurSummary`. Raises
    :class:`~cem_nas.corpus.CorpusError` when fewer than ``n`` pairs pass, and
    :class:`LemurError` for a path or curves file that cannot be read.

    Cached as JSON under ``$CEM_NAS_CACHE/corpus``, keyed by the arguments, a fingerprint of
    the files read (:func:`fingerprint`) and the code that decides the pairs.
    """
    from cem_nas.cache import cache_root
    from cem_nas.corpus import CorpusError, CorpusPair, balanced
    from cem_nas.scope import check_scope

    if not (isinstance(n, int) and n >= 1):
        raise ValueError(f"n must be a positive integer; got {n!r}")
    if max_changed is not None and not (isinstance(max_changed, int) and max_changed >= 1):
        raise ValueError(f"max_changed must be None or a positive integer; got {max_changed!r}")
    check_scope(scope)
    source = locate(path)
    name = (f"lemur-{fingerprint(source, epoch)[:16]}-seed{seed}-n{n}-ep{epoch}-c{context}-m{max_changed}"
            f"-l{max_lines}{'-b' if balance else ''}{'-arch' if scope == 'architecture' else ''}")
    file = cache_root() / "corpus" / f"{name}-{sources_hash()[:16]}.json"
    if cache and file.exists():
        stored = json.loads(file.read_text())
        log.info(LemurSummary(**stored["summary"]).line())
        return [CorpusPair(*item[:4], tuple(item[4])) for item in stored["pairs"]]
    pool = lemur_pool(path, epoch, context, max_changed, scope, max_lines)
    ordered = interleaved(pool, seed)
    if balance:
        with quiet_parsing():  # balanced() reads each pair's kind off its files
            pairs = balanced(ordered, n)
    elif len(ordered) >= n:
        pairs = ordered[:n]
    else:
        raise CorpusError(f"only {len(ordered)} of {n} LEMUR pairs passed the filters ({pool.summary.line()}); "
                          "ask for fewer pairs (warm_start.corpus_size) or allow more changed lines "
                          "(warm_start.lemur_max_changed)")
    pool.summary.taken = len(pairs)
    log.info(pool.summary.line())
    if cache:
        file.parent.mkdir(parents=True, exist_ok=True)
        tmp = file.with_suffix(f".tmp{os.getpid()}")
        tmp.write_text(json.dumps({"summary": asdict(pool.summary), "pairs": [list(p) for p in pairs]}))
        os.replace(tmp, file)
    return pairs
