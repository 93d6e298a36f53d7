"""The LEMUR warm-start corpus (cem_nas.corpus_lemur) on a small LEMUR folder the tests
write: pair direction, families, malformed files, scope, the changed-lines cap, determinism,
both layouts, the cache and the config field; and (slow) the real folder in ../shared/lemur."""
import csv
import gzip
import json
import os
import statistics
from pathlib import Path
from types import SimpleNamespace

import pytest

from cem_nas import config as C
from cem_nas import corpus_lemur as L
from cem_nas.cache import CACHE_ENV
from cem_nas.corpus import CorpusError, changed_lines, first_kind
from cem_nas.delta import apply_delta, make_delta
from cem_nas.sampler.hints import corpus_pair_kinds
from cem_nas.sampler.settings import WarmStartSettings
from cem_nas.scope import fixed_parts_changed

REAL = Path(os.environ.get("CEM_NAS_LEMUR", Path(__file__).resolve().parents[2] / "shared" / "lemur"))


def model(width: int = 16, act: str = "ReLU", optimizer: str = "SGD", extra_layers: int = 0) -> str:
    """A model file in the zoo's interface (cem_nas/zoo style)."""
    extra = "".join(f"            nn.Conv2d({width}, {width}, 3, padding=1),\n" for _ in range(extra_layers))
    return f'''import torch
from torch import nn


def supported_hyperparameters():
    return {{'lr', 'momentum'}}


class Net(nn.Module):
    def __init__(self, in_shape: tuple, out_shape: tuple, prm: dict, device: torch.device) -> None:
        super().__init__()
        self.device = device
        self.features = nn.Sequential(
            nn.Conv2d(in_shape[1], {width}, 3, padding=1),
            nn.{act}(),
{extra}            nn.AdaptiveAvgPool2d(1),
        )
        self.classifier = nn.Linear({width}, out_shape[0])

    def forward(self, x):
        return self.classifier(torch.flatten(self.features(x), 1))

    def train_setup(self, prm):
        self.to(self.device)
        self.criteria = (nn.CrossEntropyLoss().to(self.device),)
        self.optimizer = torch.optim.{optimizer}(self.parameters(), lr=prm['lr'])

    def learn(self, train_data):
        self.train()
        for inputs, labels in train_data:
            inputs, labels = inputs.to(self.device), labels.to(self.device)
            self.optimizer.zero_grad()
            self.criteria[0](self(inputs), labels).backward()
            self.optimizer.step()
'''


UUID = "0a1b2c3d-0000-4000-8000-00000000000"
#: stem -> (source, {dataset: [run accuracies at epoch 1]})
MODELS = {
    "Base": (model(), {"cifar-10": [0.40, 0.50, 0.60], "mnist": [0.90]}),
    f"Base-{UUID}1": (model(width=32), {"cifar-10": [0.55, 0.58], "mnist": [0.95]}),  # wider, better: a pair
    f"Base-{UUID}2": (model(act="GELU"), {"cifar-10": [0.30], "mnist": [0.80]}),  # worse: no pair
    "ast-activation-Base-9f2c": (model(act="SiLU"), {"cifar-10": [0.52]}),  # better on the one shared dataset
    f"Base-{UUID}3": (model(optimizer="Adam"), {"cifar-10": [0.70], "mnist": [0.97]}),  # better, recipe changed
    f"Base-{UUID}4": (model(extra_layers=45), {"cifar-10": [0.71], "mnist": [0.98]}),  # better, 45 lines added
    f"Base-{UUID}5": (model(width=24), {"cifar-10": [0.60], "mnist": [0.85]}),  # 1 win, 1 loss: no pair
    "Other": (model(width=8), {"cifar-10": [0.20]}),
    "Other-1": (model(width=12), {"cifar-10": [0.90]}),  # beats Other, and Base too: but not of Base's family
    # siblings without a base file: each member -> its nearest sibling that beats it (ga-1 for both)
    "ga-0": (model(width=64), {"cifar-10": [0.30]}),
    "ga-1": (model(width=64, act="GELU"), {"cifar-10": [0.50]}),
    "ga-2": (model(width=96), {"cifar-10": [0.40]}),
    f"Lonely-{UUID}6": (model(width=48), {"cifar-10": [0.99]}),  # a family of one: nothing to pair
}
MALFORMED = {"broken.py": b"class Net(:\n", "latin.py": "# caf\xe9\nclass Net: pass\n".encode("latin-1"),
             "nonet.py": b"def supported_hyperparameters():\n    return set()\n"}


def write_csv_layout(root: Path, bad_row: bool = True) -> Path:
    (root / "nn").mkdir(parents=True)
    for stem, (code, _) in MODELS.items():
        (root / "nn" / f"{stem}.py").write_text(code)
    for name, raw in MALFORMED.items():
        (root / "nn" / name).write_bytes(raw)
    (root / "nn" / "unreadable.py").mkdir()  # a folder named like a file: reading it fails
    (root / "nn" / "__init__.py").write_text("")  # not a model: neither read nor counted
    with gzip.open(root / "curves.csv.gz", "wt", newline="") as f:
        w = csv.writer(f)
        w.writerow(["source_repo", "task", "dataset", "metric", "nn", "prm_id", "epoch", "accuracy"])
        for stem, (_, runs) in MODELS.items():
            for dataset, values in runs.items():
                for i, acc in enumerate(values):
                    w.writerow(["test", "img-classification", dataset, "acc", stem, f"{stem}-{i}", 1, acc])
                    w.writerow(["test", "img-classification", dataset, "acc", stem, f"{stem}-{i}", 2, 1.0 - acc])
        if bad_row:
            w.writerow(["test", "img-classification", "cifar-10", "acc", "Base", "x", 1, "n/a"])
    return root


def write_stat_layout(root: Path) -> Path:
    """The same data as a clone of nn-dataset (ab/nn/nn, ab/nn/stat/<task>_<dataset>_<metric>_<nn>/<epoch>.json)."""
    csv_root = write_csv_layout(root / "csv", bad_row=False)
    ab = root / "clone" / "ab" / "nn"
    ab.mkdir(parents=True)
    os.rename(csv_root / "nn", ab / "nn")
    for stem, (_, runs) in MODELS.items():
        for dataset, values in runs.items():
            folder = ab / "stat" / f"img-classification_{dataset}_acc_{stem}"
            folder.mkdir(parents=True)
            (folder / "1.json").write_text(json.dumps([{"accuracy": a, "uid": f"u{i}"} for i, a in enumerate(values)]))
            (folder / "2.json").write_text(json.dumps([{"accuracy": 1.0 - a, "uid": f"u{i}"} for i, a in enumerate(values)]))
    bad = ab / "stat" / "img-classification_svhn_acc_Base"
    bad.mkdir()
    (bad / "1.json").write_text("[{\"accuracy\": 0.5, ")  # cut short
    return root / "clone"


@pytest.fixture
def lemur(tmp_path):
    return write_csv_layout(tmp_path / "lemur")


def stems(pool):
    return [(p.baseline, v) for p, v in zip(pool.pairs, pool.variant)]


def test_pairs_go_from_a_file_to_a_more_accurate_variant_of_its_family(lemur):
    pool = L.lemur_pool(lemur, scope="file")
    assert sorted(stems(pool)) == sorted([
        ("Base", f"Base-{UUID}1"), ("Base", "ast-activation-Base-9f2c"), ("Base", f"Base-{UUID}3"),
        ("Other", "Other-1"),
        ("ga-0", "ga-1"), ("ga-2", "ga-1")])  # ga-0's nearest better sibling: ga-1 (2 changed lines), not ga-2 (4)
    bases = {"Base", "Other"}
    for pair, variant, family in zip(pool.pairs, pool.variant, pool.family):
        assert pair.before == MODELS[pair.baseline][0] and pair.after == MODELS[variant][0]
        assert L.family_of(variant, bases) == family == L.family_of(pair.baseline, bases)
        assert pair.choices == () and apply_delta(pair.before, pair.delta).code == pair.after
        base_acc, var_acc = (MODELS[s][1] for s in (pair.baseline, variant))
        shared = base_acc.keys() & var_acc.keys()
        wins = sum(statistics.median(var_acc[d]) > statistics.median(base_acc[d]) for d in shared)
        losses = sum(statistics.median(var_acc[d]) < statistics.median(base_acc[d]) for d in shared)
        assert wins > losses  # on most of the shared datasets, at the median run


def test_malformed_files_are_skipped_and_counted_never_raised(lemur):
    pool = L.lemur_pool(lemur)
    s = pool.summary
    assert s.skipped == {"syntax_error": 1, "not_utf8": 1, "no_net_class": 1, "unreadable": 1}
    assert s.files == len(MODELS) + 4  # __init__.py is not a model
    assert s.curves_skipped == {"malformed_curve_rows": 1}
    assert s.families == 3  # Base, Other, ga (Lonely has one member)
    assert "1 syntax_error" in s.line() and "6 kept" in s.line()


def test_scope_architecture_drops_pairs_that_change_the_recipe(lemur):
    full, arch = L.lemur_pool(lemur, scope="file"), L.lemur_pool(lemur, scope="architecture")
    assert f"Base-{UUID}3" in full.variant and f"Base-{UUID}3" not in arch.variant
    assert arch.summary.dropped.get("fixed_parts") == 1 and "fixed_parts" not in full.summary.dropped
    assert all(not fixed_parts_changed(p.before, p.after) for p in arch.pairs)


def test_the_cap_on_changed_lines_holds(lemur):
    pool = L.lemur_pool(lemur, max_changed=20)
    assert f"Base-{UUID}4" not in pool.variant and pool.summary.dropped["too_many_changed"] == 1
    assert all(changed_lines(p.delta) <= 20 for p in pool.pairs)
    assert f"Base-{UUID}4" in L.lemur_pool(lemur, max_changed=None).variant
    tight = L.lemur_pool(lemur, max_changed=2)
    assert tight.pairs and all(changed_lines(p.delta) <= 2 for p in tight.pairs)
    assert L.lemur_pool(lemur, max_lines=10).pairs == []  # every base is longer than 10 lines


def test_the_lower_bound_never_exceeds_the_delta(lemur):
    sources, _ = L.read_models(lemur / "nn")
    texts = [sources[m] for m in sorted(sources)]
    bounds = L.LineBounds(texts)
    for i, a in enumerate(texts):
        for j, b in enumerate(texts):
            assert bounds.row(i)[j] <= changed_lines(make_delta(a, b, 1))
    assert bounds.row(0)[0] == 0 and bounds.row(0).max() > 0


def test_deterministic_given_the_seed_and_cached(lemur, tmp_path, monkeypatch):
    monkeypatch.setenv(CACHE_ENV, str(tmp_path / "cache"))
    a = L.build_lemur_corpus(lemur, 4, seed=1, cache=False)
    assert a == L.build_lemur_corpus(lemur, 4, seed=1, cache=False)
    assert len(a) == 4 and len({p.after for p in a}) == 4
    # in turn over the families: every family appears among the first three
    assert {L.family_of(p.baseline, {"Base", "Other"}) for p in a[:3]} == {"Base", "Other", "ga"}
    cached = L.build_lemur_corpus(lemur, 4, seed=1)
    assert cached == a and list((tmp_path / "cache" / "corpus").glob("lemur-*.json"))
    monkeypatch.setattr(L, "lemur_pool", lambda *a, **k: pytest.fail("the cache was not used"))
    assert L.build_lemur_corpus(lemur, 4, seed=1) == a
    (lemur / "nn" / "ga-2.py").write_text(model(width=80))  # another file: another fingerprint
    with pytest.raises(pytest.fail.Exception):
        L.build_lemur_corpus(lemur, 4, seed=1)


def test_too_few_pairs_is_a_clear_error(lemur):
    with pytest.raises(CorpusError, match="only 6 of 50 LEMUR pairs"):
        L.build_lemur_corpus(lemur, 50, cache=False)


def test_the_clone_layout_gives_the_same_pairs(tmp_path):
    clone = write_stat_layout(tmp_path)
    csv_pool = L.lemur_pool(write_csv_layout(tmp_path / "again", bad_row=False))
    for where in (clone, clone / "ab" / "nn"):
        pool = L.lemur_pool(where)
        assert L.locate(where).layout == "stat"
        assert stems(pool) == stems(csv_pool) and pool.pairs == csv_pool.pairs
        assert pool.summary.curves_skipped == {"malformed_curve_files": 1}


def test_lemur_pairs_get_kinds_from_their_files(lemur):
    pairs = {v: p for p, v in zip(L.lemur_pool(lemur).pairs, L.lemur_pool(lemur).variant)}
    assert first_kind(pairs[f"Base-{UUID}1"]) == "width"
    assert corpus_pair_kinds(pairs["ast-activation-Base-9f2c"]) == ["activation"]
    balanced = L.build_lemur_corpus(lemur, 3, cache=False, balance=True)
    assert len({first_kind(p) for p in balanced}) == 3


def test_the_config_field_names_what_is_wrong(lemur, tmp_path):
    assert WarmStartSettings(corpus=f"lemur:{lemur}").corpus == f"lemur:{lemur}"
    with pytest.raises(ValueError, match="'lemur:' names no path"):
        WarmStartSettings(corpus="lemur:")
    missing = tmp_path / "no-such-clone"
    with pytest.raises(ValueError, match=f"{missing} does not exist; expected a clone of ABrain-One/nn-dataset"):
        WarmStartSettings(corpus=f"lemur:{missing}")
    with pytest.raises(ValueError, match="holds neither ab/nn/nn with ab/nn/stat nor nn/ with curves.csv.gz"):
        WarmStartSettings(corpus=f"lemur:{tmp_path}")
    with pytest.raises(ValueError, match="must be 'grammar' or 'lemur:PATH'"):
        WarmStartSettings(corpus="zoo")
    with pytest.raises(C.ConfigError, match=r"\[sampler.warm_start\] warm_start.corpus = 'lemur:.*does not exist"):
        C.apply_overrides(C.RunConfig(), {"sampler.warm_start.corpus": f"lemur:{missing}"})


def test_the_command_line_takes_a_lemur_corpus(lemur):
    from experiments.cem_run import parser, resolve

    cfg, _ = resolve(parser().parse_args(["--warm-start.corpus", f"lemur:{lemur}", "--lemur-max-changed", "12"]))
    assert cfg.sampler.warm_start.corpus == f"lemur:{lemur}" and cfg.sampler.warm_start.lemur_max_changed == 12


def test_the_adapter_key_keeps_grammar_keys_and_hides_the_lemur_path(lemur):
    from dataclasses import asdict

    from cem_nas.sampler.llm import LLMSampler

    grammar = LLMSampler._warm_key_fields(SimpleNamespace(warm=WarmStartSettings()))
    before = {k: v for k, v in asdict(WarmStartSettings()).items() if k not in ("balance", "corpus", "lemur_max_changed")}
    assert grammar == before | {"cache": None, "enabled": None}  # the fields earlier keys were made of
    fields = LLMSampler._warm_key_fields(SimpleNamespace(warm=WarmStartSettings(corpus=f"lemur:{lemur}")))
    assert fields["corpus"] == "lemur" and fields["lemur_max_changed"] == 40


@pytest.mark.slow
@pytest.mark.skipif(not (REAL / "nn").is_dir(), reason=f"no LEMUR folder at {REAL} (set CEM_NAS_LEMUR)")
def test_the_real_lemur_folder():
    pool = L.lemur_pool(REAL, scope="architecture")
    s = pool.summary
    assert s.files >= 2000 and s.kept >= 100 and len(set(pool.family)) >= 5
    assert all(changed_lines(p.delta) <= L.DEFAULT_MAX_CHANGED for p in pool.pairs)
    assert all(not fixed_parts_changed(p.before, p.after) for p in pool.pairs)
