"""Training curves: the test accuracy of many configurations after each epoch, as one Dataset.

A configuration is (task, dataset, metric, nn, prm_id): one architecture trained once
with one hyperparameter setting (LEMUR's ``uid``). Two layouts are read:

- the CSV export (``source_repo, task, dataset, metric, nn, prm_id, epoch, accuracy``,
  one row per stored epoch of one configuration; ``.csv`` or ``.csv.gz``), as in
  ``../shared/lemur/curves.csv.gz``;
- LEMUR's own folder (a clone of ABrain-One/nn-dataset, or its ``ab/nn/stat``):
  ``<task>_<dataset>_<metric>_<nn>/<epoch>.json``, each a JSON list of trial records
  with at least ``accuracy`` and ``uid``. The same uid across the epoch files of one
  folder is one training run seen after successive epochs.

:func:`read_curves` returns dims (configuration, epoch), variable ``accuracy`` (NaN where
an epoch is not stored) and per-configuration coordinates task, dataset, metric, nn,
prm_id and source_repo. Epochs are kept as stored (LEMUR numbers most runs from 1, a few
generated families from 0). A malformed file or row is a :class:`CurvesError` naming the
file and line. Two records for one (configuration, epoch) are never averaged: they are an
error that lists where they are, or, with ``duplicates="drop"``, the configuration is left
out and counted in the attrs (its epochs cannot be paired: which record continues which?).
"""
from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pandas as pd
import xarray as xr
from tqdm import tqdm

#: What identifies one configuration (one training run).
CONFIG_KEYS = ("task", "dataset", "metric", "nn", "prm_id")
#: Columns of the CSV layout.
CSV_COLUMNS = ("source_repo", *CONFIG_KEYS, "epoch", "accuracy")
#: Metrics whose values are shares in [0, 1] (anything else is only checked to be finite).
SHARE_METRICS = ("acc",)
#: Locations listed in an error message before "... and N more".
MAX_LISTED = 5
#: Where LEMUR keeps its per-epoch statistics inside a clone of nn-dataset.
LEMUR_STAT = Path("ab") / "nn" / "stat"


class CurvesError(ValueError):
    """Training curves that cannot be read; the message names the file and line and what to do."""


def read_curves(path: str | Path, duplicates: str = "error", progress: bool = False) -> xr.Dataset:
    """Read a CSV export or a LEMUR folder into a (configuration x epoch) Dataset.

    ``duplicates``: ``"error"`` (default) refuses two records of one (configuration,
    epoch) and lists them; ``"drop"`` leaves such configurations out and records how
    many in ``attrs["dropped_duplicate_configurations"]``. ``progress`` shows a bar over
    a LEMUR folder's subfolders (a full clone has tens of thousands).
    """
    if duplicates not in ("error", "drop"):
        raise ValueError(f"duplicates must be 'error' or 'drop'; got {duplicates!r}")
    path = Path(path)
    if not path.exists():
        raise CurvesError(f"{path}: no such file or folder; give the CSV export (curves.csv.gz) "
                          "or a clone of ABrain-One/nn-dataset")
    if path.is_dir():
        records, layout = read_lemur_folder(path, progress), "lemur-stat"
    else:
        records, layout = read_curves_csv(path), "csv"
    return curves_dataset(records, duplicates=duplicates, source=str(path), layout=layout)


# --------------------------------------------------------------------------- CSV layout

def _fail_rows(path: Path, lines: np.ndarray, what: str, values) -> None:
    listed = ", ".join(f"line {int(n)} ({v!r})" for n, v in zip(lines[:MAX_LISTED], values[:MAX_LISTED]))
    more = f" and {len(lines) - MAX_LISTED} more" if len(lines) > MAX_LISTED else ""
    raise CurvesError(f"{path}: {what} at {listed}{more}")


def read_curves_csv(path: str | Path) -> pd.DataFrame:
    """Records of the CSV layout, checked, with ``file`` and ``line`` of each row.

    Line numbers count the header as line 1 (the file has no multi-line fields).
    """
    path = Path(path)
    try:
        raw = pd.read_csv(path, dtype=str, keep_default_na=False, skip_blank_lines=False)
    except (pd.errors.ParserError, pd.errors.EmptyDataError, UnicodeDecodeError, OSError, EOFError) as e:
        raise CurvesError(f"{path}: not a readable curves CSV ({e})") from e
    missing = [c for c in CSV_COLUMNS if c not in raw.columns]
    if missing:
        raise CurvesError(f"{path}: line 1: missing column(s) {', '.join(missing)}; the header must name "
                          f"{', '.join(CSV_COLUMNS)} (found {', '.join(map(str, raw.columns))})")
    lines = np.arange(len(raw)) + 2
    for col in ("source_repo", *CONFIG_KEYS):
        empty = (raw[col].str.strip() == "").to_numpy()
        if empty.any():
            _fail_rows(path, lines[empty], f"empty {col}", raw[col].to_numpy()[empty])
    epoch = pd.to_numeric(raw["epoch"], errors="coerce").to_numpy(dtype=float)
    bad = ~np.isfinite(epoch) | (epoch < 0) | (epoch != np.floor(epoch))
    if bad.any():
        _fail_rows(path, lines[bad], "epoch is not an integer >= 0", raw["epoch"].to_numpy()[bad])
    accuracy = pd.to_numeric(raw["accuracy"], errors="coerce").to_numpy(dtype=float)
    records = raw[list(CSV_COLUMNS[:-2])].copy()
    records["epoch"] = epoch.astype(np.int64)
    records["accuracy"] = accuracy
    records["file"] = str(path)
    records["line"] = lines
    _check_accuracy(records, raw["accuracy"].to_numpy())
    return records


def _check_accuracy(records: pd.DataFrame, shown) -> None:
    """Finite accuracies, and shares inside [0, 1] for share metrics."""
    acc = records["accuracy"].to_numpy(dtype=float)
    bad = ~np.isfinite(acc)
    share = records["metric"].isin(SHARE_METRICS).to_numpy()
    out = share & ~bad & ((acc < 0) | (acc > 1))
    for mask, what in ((bad, "accuracy is not a finite number"),
                       (out, "accuracy of a share metric outside [0, 1] (a percentage? divide by 100)")):
        if mask.any():
            first = np.flatnonzero(mask)
            where = [f"{records['file'].iloc[i]}:{records['line'].iloc[i]} ({shown[i]!r})" for i in first[:MAX_LISTED]]
            more = f" and {len(first) - MAX_LISTED} more" if len(first) > MAX_LISTED else ""
            raise CurvesError(f"{what} at {', '.join(where)}{more}")


# --------------------------------------------------------------------------- LEMUR folder layout

def _json_records(path: Path) -> list[tuple[int, object]]:
    """(line, element) of each element of the JSON list in ``path``, or a CurvesError."""
    try:
        text = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as e:
        raise CurvesError(f"{path}: cannot be read ({e})") from e
    decoder = json.JSONDecoder()
    out: list[tuple[int, object]] = []

    def skip(i: int) -> int:
        while i < len(text) and text[i] in " \t\r\n":
            i += 1
        return i

    def line_at(i: int) -> int:
        return text.count("\n", 0, i) + 1

    i = skip(0)
    if i >= len(text) or text[i] != "[":
        raise CurvesError(f"{path}:{line_at(i)}: expected a JSON list of trial records ('[' ...)")
    i = skip(i + 1)
    if i < len(text) and text[i] == "]":
        i = skip(i + 1)
    else:
        while True:
            try:
                element, end = decoder.raw_decode(text, i)
            except json.JSONDecodeError as e:
                raise CurvesError(f"{path}:{e.lineno}: not valid JSON ({e.msg})") from e
            out.append((line_at(i), element))
            i = skip(end)
            if i < len(text) and text[i] == ",":
                i = skip(i + 1)
            elif i < len(text) and text[i] == "]":
                i = skip(i + 1)
                break
            else:
                raise CurvesError(f"{path}:{line_at(i)}: expected ',' or ']' after a trial record")
    if i != len(text):
        raise CurvesError(f"{path}:{line_at(i)}: unexpected text after the JSON list")
    return out


def _stat_folder(path: Path) -> Path:
    """The folder holding ``<task>_<dataset>_<metric>_<nn>`` subfolders."""
    if (path / LEMUR_STAT).is_dir():
        return path / LEMUR_STAT
    return path


def read_lemur_folder(path: str | Path, progress: bool = False) -> pd.DataFrame:
    """Records of LEMUR's ``ab/nn/stat`` layout (or a clone of nn-dataset), checked.

    Each subfolder is ``<task>_<dataset>_<metric>_<nn>`` (the nn name may contain
    underscores; the other three may not); each ``<epoch>.json`` in it is a list of
    records with a numeric ``accuracy`` and a string ``uid``. Other files are ignored.
    """
    root = _stat_folder(Path(path))
    folders = sorted(p for p in root.iterdir() if p.is_dir())
    rows: list[tuple] = []
    for folder in tqdm(folders, desc="reading LEMUR folders", unit="folder", disable=not progress, leave=False):
        epoch_files = sorted(folder.glob("*.json"))
        if not epoch_files:
            continue
        parts = folder.name.split("_", 3)
        if len(parts) != 4 or not all(parts):
            raise CurvesError(f"{folder}: folder name is not <task>_<dataset>_<metric>_<nn> "
                              "(LEMUR's ab/nn/stat layout); point at nn-dataset or its ab/nn/stat folder")
        task, dataset, metric, nn = parts
        for file in epoch_files:
            if not file.stem.isdigit():
                raise CurvesError(f"{file}: an epoch file must be named <epoch>.json with an integer epoch")
            epoch = int(file.stem)
            for line, rec in _json_records(file):
                if not isinstance(rec, dict):
                    raise CurvesError(f"{file}:{line}: a trial record must be a JSON object with accuracy and uid")
                acc, uid = rec.get("accuracy"), rec.get("uid")
                if not isinstance(uid, str) or not uid:
                    raise CurvesError(f"{file}:{line}: trial record without a uid (the hyperparameter setting's id)")
                if isinstance(acc, bool) or not isinstance(acc, (int, float)) or not math.isfinite(acc):
                    raise CurvesError(f"{file}:{line}: trial record {uid} has accuracy {acc!r}; "
                                      "need a finite number")
                rows.append((str(root), task, dataset, metric, nn, uid, epoch, float(acc), str(file), line))
    if not rows:
        raise CurvesError(f"{root}: no <task>_<dataset>_<metric>_<nn>/<epoch>.json files; point at a clone of "
                          "ABrain-One/nn-dataset (or its ab/nn/stat folder) or at a curves CSV")
    records = pd.DataFrame(rows, columns=[*CSV_COLUMNS, "file", "line"])
    _check_accuracy(records, records["accuracy"].to_numpy())
    return records


# --------------------------------------------------------------------------- Dataset

def _duplicates(records: pd.DataFrame, config: np.ndarray, duplicates: str) -> np.ndarray:
    """Configurations (codes) that hold two records for one epoch; raises for ``"error"``."""
    key = pd.DataFrame({"config": config, "epoch": records["epoch"].to_numpy()})
    dup = key.duplicated(keep=False).to_numpy()
    if not dup.any():
        return np.array([], dtype=config.dtype)
    if duplicates == "error":
        shown = records[dup].assign(config=config[dup]).sort_values(["config", "epoch", "line"])
        groups = list(shown.groupby(["config", "epoch"], sort=False))
        listed = []
        for _, g in groups[:MAX_LISTED]:
            first = g.iloc[0]
            where = ", ".join(f"{f}:{n}" for f, n in zip(g["file"], g["line"]))
            listed.append(f"{first['nn']} {first['prm_id']} ({first['dataset']}) epoch {first['epoch']}: {where}")
        more = f"; and {len(groups) - MAX_LISTED} more" if len(groups) > MAX_LISTED else ""
        raise CurvesError(
            f"{len(groups)} (configuration, epoch) pairs have more than one record (the same setting trained "
            f"again?), never averaged: {'; '.join(listed)}{more}. Pass duplicates='drop' "
            "(--duplicates drop) to leave those configurations out")
    return np.unique(config[dup])


def curves_dataset(records: pd.DataFrame, duplicates: str = "error", source: str = "",
                   layout: str = "") -> xr.Dataset:
    """The (configuration x epoch) Dataset of checked records (see :func:`read_curves`)."""
    config = records.groupby(list(CONFIG_KEYS), sort=True).ngroup().to_numpy()
    dropped = _duplicates(records, config, duplicates)
    if len(dropped):
        keep = ~np.isin(config, dropped)
        records, config = records[keep], config[keep]
        config = np.unique(config, return_inverse=True)[1]
    epochs, epoch_index = np.unique(records["epoch"].to_numpy(), return_inverse=True)
    n_config = int(config.max()) + 1 if len(config) else 0
    accuracy = np.full((n_config, len(epochs)), np.nan)
    accuracy[config, epoch_index] = records["accuracy"].to_numpy(dtype=float)
    first = np.unique(config, return_index=True)[1]
    coords = {key: ("configuration", records[key].to_numpy()[first].astype(str))
              for key in ("source_repo", *CONFIG_KEYS)}
    coords["configuration"] = np.arange(n_config)
    coords["epoch"] = epochs.astype(np.int64)
    return xr.Dataset(
        {"accuracy": (("configuration", "epoch"), accuracy,
                      {"description": "metric value after this training epoch; NaN where not stored"})},
        coords=coords,
        attrs={"source": source, "layout": layout, "records": int(len(records)),
               "dropped_duplicate_configurations": int(len(dropped))})


def last_stored_epoch(curves: xr.Dataset) -> xr.DataArray:
    """Per configuration, the last epoch with a stored value (-1 for none)."""
    stored = np.isfinite(curves["accuracy"].transpose("configuration", "epoch").values)
    epochs = curves["epoch"].values
    last = np.where(stored.any(axis=1), epochs[stored.shape[1] - 1 - np.argmax(stored[:, ::-1], axis=1)], -1)
    return xr.DataArray(last, dims="configuration", coords={"configuration": curves["configuration"]})
