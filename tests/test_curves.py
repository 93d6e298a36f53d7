"""cem_nas.curves: both layouts into one (configuration x epoch) Dataset; malformed input
named by file and line; duplicated epochs reported, never averaged."""
from __future__ import annotations

import gzip
import json

import numpy as np
import pytest

from cem_nas.curves import CSV_COLUMNS, CurvesError, last_stored_epoch, read_curves

#: (task, dataset, metric, nn, uid, {epoch: accuracy}); nn "Net_v2" has an underscore.
RUNS = [
    ("img-classification", "cifar-10", "acc", "AlexNet", "u1", {1: 0.31, 2: 0.42, 3: 0.5}),
    ("img-classification", "cifar-10", "acc", "AlexNet", "u2", {1: 0.1}),
    ("img-classification", "cifar-10", "acc", "Net_v2", "u1", {1: 0.2, 3: 0.6}),
    ("img-classification", "mnist", "acc", "AlexNet", "u3", {1: 0.9, 2: 0.95, 3: 0.97}),
]


def csv_text(runs=RUNS, extra: str = "") -> str:
    rows = [",".join(CSV_COLUMNS)]
    for task, ds, metric, nn, uid, curve in runs:
        rows += [f"me/nn-dataset,{task},{ds},{metric},{nn},{uid},{e},{a}" for e, a in curve.items()]
    return "\n".join(rows) + "\n" + extra


def lemur_tree(root, runs=RUNS):
    """A clone-shaped tree: root/ab/nn/stat/<task>_<dataset>_<metric>_<nn>/<epoch>.json."""
    stat = root / "ab" / "nn" / "stat"
    files = {}
    for task, ds, metric, nn, uid, curve in runs:
        for e, a in curve.items():
            files.setdefault(stat / f"{task}_{ds}_{metric}_{nn}" / f"{e}.json", []).append(
                {"accuracy": a, "batch": 64, "lr": 0.01, "transform": "norm_32", "uid": uid})
    for path, records in files.items():
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps(records, indent=4))
    return stat


def test_csv_reads_into_configuration_by_epoch(tmp_path):
    path = tmp_path / "curves.csv.gz"
    with gzip.open(path, "wt") as f:
        f.write(csv_text())
    ds = read_curves(path)
    assert ds.sizes == {"configuration": 4, "epoch": 3} and list(ds["epoch"].values) == [1, 2, 3]
    one = ds.where((ds.nn == "Net_v2"), drop=True)
    assert one["accuracy"].values.tolist() == [[0.2, pytest.approx(np.nan, nan_ok=True), 0.6]]
    assert set(ds["dataset"].values) == {"cifar-10", "mnist"} and set(ds["prm_id"].values) == {"u1", "u2", "u3"}
    assert ds.attrs["records"] == 9 and ds.attrs["dropped_duplicate_configurations"] == 0
    assert sorted(last_stored_epoch(ds).values.tolist()) == [1, 3, 3, 3]


def test_lemur_folder_gives_the_same_dataset_as_the_csv(tmp_path):
    stat = lemur_tree(tmp_path / "nn-dataset")
    (stat / "README.md").write_text("not a folder")  # stray files are ignored
    (tmp_path / "c.csv").write_text(csv_text())
    from_csv = read_curves(tmp_path / "c.csv")
    for where in (tmp_path / "nn-dataset", stat):
        ds = read_curves(where)
        assert ds.attrs["layout"] == "lemur-stat"
        for key in ("task", "dataset", "metric", "nn", "prm_id"):
            assert ds[key].values.tolist() == from_csv[key].values.tolist()
        np.testing.assert_array_equal(ds["accuracy"].values, from_csv["accuracy"].values)


@pytest.mark.parametrize("row, match", [
    ("me/nn-dataset,img-classification,mnist,acc,AlexNet,u9,1,oops\n", r"c\.csv:11 \('oops'\)"),
    ("me/nn-dataset,img-classification,mnist,acc,AlexNet,u9,1.5,0.3\n", r"epoch is not an integer >= 0 at line 11"),
    ("me/nn-dataset,img-classification,mnist,acc,,u9,1,0.3\n", r"empty nn at line 11"),
    ("me/nn-dataset,img-classification,mnist,acc,AlexNet,u9,1,95.2\n", r"outside \[0, 1\].*percentage.*c\.csv:11"),
    ("me/nn-dataset,img-classification,mnist,acc,AlexNet,u9,1,0.3,extra\n", r"line 11"),
    ("\n", r"line 11"),
])
def test_a_malformed_csv_row_is_named_by_file_and_line(tmp_path, row, match):
    path = tmp_path / "c.csv"
    path.write_text(csv_text(extra=row))  # header + 9 rows: the bad row is line 11
    with pytest.raises(CurvesError, match=match):
        read_curves(path)


def test_a_csv_without_the_layouts_columns_says_which(tmp_path):
    path = tmp_path / "c.csv"
    path.write_text("task,dataset,accuracy\nimg,mnist,0.3\n")
    with pytest.raises(CurvesError, match=r"line 1: missing column\(s\) source_repo, metric, nn, prm_id, epoch"):
        read_curves(path)
    with pytest.raises(CurvesError, match="no such file"):
        read_curves(tmp_path / "absent.csv")


def test_duplicated_epochs_are_listed_or_dropped_never_averaged(tmp_path):
    path = tmp_path / "c.csv"
    path.write_text(csv_text(extra="me/nn-dataset,img-classification,cifar-10,acc,AlexNet,u1,2,0.44\n"))
    with pytest.raises(CurvesError, match=r"1 \(configuration, epoch\) pairs .*AlexNet u1 \(cifar-10\) epoch 2: "
                                          r".*c\.csv:3, .*c\.csv:11.*duplicates='drop'"):
        read_curves(path)
    ds = read_curves(path, duplicates="drop")
    assert ds.sizes["configuration"] == 3 and ds.attrs["dropped_duplicate_configurations"] == 1
    assert not ((ds.nn == "AlexNet") & (ds.prm_id == "u1") & (ds.dataset == "cifar-10")).any()
    assert 0.44 not in ds["accuracy"].values and 0.43 not in np.round(ds["accuracy"].values, 2)
    with pytest.raises(ValueError, match="duplicates must be"):
        read_curves(path, duplicates="mean")


def test_lemur_duplicate_uid_in_one_epoch_file_is_named_with_its_lines(tmp_path):
    stat = lemur_tree(tmp_path)
    f = stat / "img-classification_mnist_acc_AlexNet" / "2.json"
    records = json.loads(f.read_text())
    f.write_text(json.dumps(records + [dict(records[0], accuracy=0.5)], indent=4))
    with pytest.raises(CurvesError, match=r"AlexNet u3 \(mnist\) epoch 2: .*2\.json:2, .*2\.json:9"):  # 7 lines a record
        read_curves(tmp_path)
    assert read_curves(tmp_path, duplicates="drop").sizes["configuration"] == 3


@pytest.mark.parametrize("text, match", [
    ('[\n  {"accuracy": 0.5, "uid": "a"},\n  {"accuracy": 0.5 "uid": "b"}\n]', r"1\.json:3: not valid JSON"),
    ('[\n  {"accuracy": 0.5, "uid": "a"},\n  {"accuracy": 0.5}\n]', r"1\.json:3: trial record without a uid"),
    ('[\n  {"accuracy": "high", "uid": "a"}\n]', r"1\.json:2: trial record a has accuracy 'high'"),
    ('[\n  {"accuracy": NaN, "uid": "a"}\n]', r"1\.json:2: .*need a finite number"),
    ('[\n  3\n]', r"1\.json:2: a trial record must be a JSON object"),
    ('{"accuracy": 0.5, "uid": "a"}', r"1\.json:1: expected a JSON list"),
    ('[{"accuracy": 0.5, "uid": "a"}] trailing', r"1\.json:1: unexpected text"),
])
def test_a_malformed_lemur_file_is_named_by_file_and_line(tmp_path, text, match):
    folder = tmp_path / "img-classification_mnist_acc_Net"
    folder.mkdir()
    (folder / "1.json").write_text(text)
    with pytest.raises(CurvesError, match=match):
        read_curves(tmp_path)


def test_lemur_layout_errors_name_the_folder_or_file(tmp_path):
    bad = tmp_path / "img-classification_mnist"
    bad.mkdir()
    (bad / "1.json").write_text("[]")
    with pytest.raises(CurvesError, match=r"img-classification_mnist: folder name is not <task>_<dataset>_<metric>_<nn>"):
        read_curves(tmp_path)
    (bad / "1.json").unlink()
    odd = tmp_path / "img-classification_mnist_acc_Net"
    odd.mkdir()
    (odd / "best.json").write_text("[]")
    with pytest.raises(CurvesError, match=r"best\.json: an epoch file must be named <epoch>\.json"):
        read_curves(tmp_path)
    (odd / "best.json").unlink()
    with pytest.raises(CurvesError, match="no <task>_<dataset>_<metric>_<nn>/<epoch>.json files"):
        read_curves(tmp_path)
