"""Datasets as in-memory tensors: one call, any size from a smoke test to the full protocol.

``load_dataset(name, ...)`` returns a :class:`Dataset`: float32 NCHW images normalised
with the per-channel mean and std of the (subsetted, resized) training split, int64
labels, the input shape and the class count. The result is cached on disk
(``$CEM_NAS_CACHE/data``, default ``~/.cache/cem_nas/data``), keyed by the dataset, the options and
a fingerprint of the source files, so a run prepares each variant once.

Datasets (``names()``): ``mnist5k`` (the offline default) and ``digits`` ship inside
installed packages (:mod:`cem_nas.data_bundled`); ``cifar10``, ``cifar100``, ``mnist``,
``svhn``, ``imagenette`` and ``celeba`` are read from torchvision's on-disk formats under
``root`` (default ``<cache dir>/raw``; :mod:`cem_nas.data_torchvision`), downloaded when
``download=True`` and the machine can reach the source. Otherwise
:class:`~cem_nas.data_sources.DatasetUnavailable` names the directory and the files
expected in it.

Shapes: ``resize`` is ``None`` (native size; 32x32 for the variable-size image folders
imagenette and celeba, which are center-cropped to the target aspect ratio first), an
int (square), ``(H, W)``, or ``(C, H, W)`` which also sets the channel count (1 -> 3
repeats the grey channel; 3 -> 1 takes the ITU-R BT.601 luma, as PIL's "L" mode).
Array datasets are resized with antialiased bilinear interpolation.

Subsets: ``max_train`` / ``max_test`` draw a stratified sample (per-class quotas by
largest remainder) with ``seed``; the training split is returned in a seeded random
order, the test split in source order.
"""
from __future__ import annotations

import hashlib
import importlib.metadata
import importlib.util
import json
import numbers
import os
import tempfile
import time
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from cem_nas.cache import cache_root
from cem_nas.data_bundled import BUNDLED_SOURCES
from cem_nas.data_sources import DatasetUnavailable, Source, Split, stratified_sample
from cem_nas.data_torchvision import TORCHVISION_SOURCES
from cem_nas.records import TaskSpec

#: Bumped whenever the prepared tensors would change for the same options.
FORMAT_VERSION = 1

_LUMA = (0.299, 0.587, 0.114)  # ITU-R BT.601, the weights of PIL's RGB -> "L"

#: Every dataset by name, the offline ones first.
_SOURCES: dict[str, Source] = {**BUNDLED_SOURCES, **TORCHVISION_SOURCES}


@dataclass(repr=False)
class Dataset:
    """A dataset prepared as tensors: images float32 NCHW normalised, labels int64."""

    name: str
    x_train: torch.Tensor
    y_train: torch.Tensor
    x_test: torch.Tensor
    y_test: torch.Tensor
    in_shape: tuple[int, int, int]
    num_classes: int
    mean: tuple[float, ...]
    std: tuple[float, ...]
    info: dict[str, Any] = field(default_factory=dict)

    def task_spec(self) -> TaskSpec:
        """What a candidate network must fit: input shape (C, H, W) and class count."""
        return TaskSpec(dataset=self.name, in_shape=self.in_shape, num_classes=self.num_classes)

    def __repr__(self) -> str:
        return (f"Dataset({self.name!r}, train={len(self.y_train)}, test={len(self.y_test)}, "
                f"in_shape={self.in_shape}, num_classes={self.num_classes})")


def names() -> list[str]:
    """The known dataset names, offline ones first.

    >>> names()[:2]
    ['mnist5k', 'digits']
    """
    return list(_SOURCES)


# ------------------------------------------------------------------------ availability


def _anchor(root: Path, pattern: str) -> Path:
    """The path an expected pattern stands for: "<dir>/*.ext" or "<dir>/<wnid>/..." is <dir>."""
    return root / pattern.split("/<")[0].split("/*")[0]


def _present(root: Path, pattern: str) -> bool:
    return _anchor(root, pattern).exists()


def _ensure_files(name: str, source: Source, root: Path, options: dict, download: bool) -> None:
    """Raise DatasetUnavailable naming root and the layout unless the files are there."""
    expected = source.expected(options)
    if all(_present(root, p) for p in expected):
        return
    failure = "download=False"
    if download:
        try:
            source.download(root, options)
        except Exception as err:  # noqa: BLE001 -- any failure becomes the message below
            failure = f"download failed: {type(err).__name__}: {err}"
        else:
            if all(_present(root, p) for p in expected):
                return
            failure = "download finished but the files are still missing"
    missing = [p for p in expected if not _present(root, p)]
    which = "all missing" if missing == expected else f"missing: {', '.join(missing)}"
    raise DatasetUnavailable(
        f"{name}: files missing under {root} ({failure}). Expected there: "
        f"{', '.join(expected)} ({which}). To provide them, "
        f"{source.obtain}, or pass root= the directory that holds them.")


def missing_files(name: str, root: str | os.PathLike | None = None) -> tuple[list[str], Path, str]:
    """What :func:`load_dataset` would have to download for ``name`` (default options).

    Returns the expected paths missing under the root (empty for a bundled dataset or
    one already on disk), the root itself, and where the files come from; it reads
    nothing and fetches nothing, so a run can refuse early instead of failing mid-load.
    """
    if name not in _SOURCES:
        raise ValueError(f"unknown dataset {name!r}; known datasets: {', '.join(names())}")
    source = _SOURCES[name]
    root_path = Path(root).expanduser().resolve() if root is not None else cache_dir() / "raw"
    if source.expected is None:
        return [], root_path, ""
    return [p for p in source.expected(dict(source.options)) if not _present(root_path, p)], root_path, source.obtain


def _fingerprint(source: Source, root: Path, options: dict) -> list:
    """What identifies the source files: package version, or size and mtime of each path."""
    if source.expected is None:
        try:
            return [source.package, importlib.metadata.version(source.package)]
        except importlib.metadata.PackageNotFoundError:
            return [source.package, None]
    stats = []
    for pattern in source.expected(options):
        stat = _anchor(root, pattern).stat()
        stats.append([pattern, stat.st_size, stat.st_mtime_ns])
    return stats


# ------------------------------------------------------------------------------- cache


def cache_dir() -> Path:
    """Directory of prepared datasets: ``<cache_root()>/data``."""
    return cache_root() / "data"


def label_files(dataset: Any) -> list[str]:
    """Paths that hold a dataset's labels, test labels included: the whole cache root
    (prepared tensors, the default raw folder), the source file or folder it was read
    from, and scikit-learn's bundled data folder for ``digits``. The sandbox makes them
    unreadable to candidate code; a dataset built elsewhere needs its own files passed as
    ``protect`` as well.

    >>> str(cache_root()) in label_files(object())
    True
    """
    info = getattr(dataset, "info", None) or {}
    paths = [str(cache_root())]
    for key in ("source", "cache_file"):
        if isinstance(info.get(key), str) and os.path.exists(info[key]):
            paths.append(info[key])
    if getattr(dataset, "name", "") == "digits":
        spec = importlib.util.find_spec("sklearn")
        paths += [os.path.join(folder, "datasets", "data") for folder in (spec.submodule_search_locations or [])
                  ] if spec else []
    return paths


def _save_atomic(path: Path, payload: dict) -> None:
    """torch.save to a temporary file in the same directory, then rename over ``path``."""
    path.parent.mkdir(parents=True, exist_ok=True)
    handle = tempfile.NamedTemporaryFile(dir=path.parent, prefix=path.name, suffix=".tmp",
                                         delete=False)
    try:
        with handle:
            torch.save(payload, handle)
            handle.flush()
            os.fsync(handle.fileno())
        os.chmod(handle.name, 0o644)  # NamedTemporaryFile creates 0600; a cache may be shared
        os.replace(handle.name, path)
    except BaseException:
        Path(handle.name).unlink(missing_ok=True)
        raise


def _to_payload(ds: Dataset) -> dict:
    meta = {"name": ds.name, "in_shape": list(ds.in_shape), "num_classes": ds.num_classes,
            "mean": list(ds.mean), "std": list(ds.std), "info": ds.info}
    return {"x_train": ds.x_train, "y_train": ds.y_train, "x_test": ds.x_test,
            "y_test": ds.y_test, "meta": json.dumps(meta)}


def _from_payload(payload: dict) -> Dataset:
    meta = json.loads(payload["meta"])
    return Dataset(name=meta["name"], x_train=payload["x_train"], y_train=payload["y_train"],
                   x_test=payload["x_test"], y_test=payload["y_test"],
                   in_shape=tuple(meta["in_shape"]), num_classes=meta["num_classes"],
                   mean=tuple(meta["mean"]), std=tuple(meta["std"]), info=meta["info"])


def _load_cached(path: Path) -> Dataset | None:
    if not path.is_file():
        return None
    try:
        return _from_payload(torch.load(path, weights_only=True))
    except Exception as err:  # noqa: BLE001 -- a damaged cache file is rebuilt, not fatal
        warnings.warn(f"ignoring unreadable dataset cache {path}: {err}", stacklevel=3)
        return None


# ----------------------------------------------------------------------------- options


def _check_count(label: str, value: Any) -> int | None:
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, numbers.Integral):
        raise TypeError(f"{label} must be a positive int or None, got {value!r}")
    if value < 1:
        raise ValueError(f"{label} must be >= 1 (or None for the whole split), got {value}")
    return int(value)


def _check_resize(resize: Any) -> tuple[int | None, tuple[int, int] | None]:
    """(channels or None, (H, W) or None) from None, an int, (H, W) or (C, H, W)."""
    if resize is None:
        return None, None
    dims = [resize] if isinstance(resize, numbers.Integral) else list(resize)
    if (len(dims) not in (1, 2, 3) or any(isinstance(d, bool) or not isinstance(d, numbers.Integral)
                                          or d < 1 for d in dims)):
        raise ValueError(f"resize must be None, a positive int, (H, W) or (C, H, W); got {resize!r}")
    dims = [int(d) for d in dims]
    if len(dims) == 1:
        return None, (dims[0], dims[0])
    if len(dims) == 3 and dims[0] not in (1, 3):
        raise ValueError(f"resize channels must be 1 or 3, got {dims[0]} in {resize!r}")
    return (dims[0] if len(dims) == 3 else None), (dims[-2], dims[-1])


def _resolve_options(name: str, source: Source, given: dict[str, Any]) -> dict[str, Any]:
    options = dict(source.options)
    for key, value in given.items():
        if value is None:
            continue
        if key not in source.options:
            raise ValueError(f"{key} applies only to the datasets that use it, not to {name!r}")
        options[key] = value
    if options.get("imagenette_size", "full") not in ("full", "320px", "160px"):
        raise ValueError(f"imagenette_size must be 'full', '320px' or '160px', "
                         f"got {options['imagenette_size']!r}")
    return options


def _converted_channels(x: torch.Tensor, channels: int | None) -> torch.Tensor:
    """Grey -> RGB by repetition, RGB -> grey by BT.601 luma; unchanged otherwise."""
    if channels is None or x.shape[1] == channels:
        return x
    if channels == 3 and x.shape[1] == 1:
        return x.repeat(1, 3, 1, 1)
    if channels == 1 and x.shape[1] == 3:
        return torch.einsum("nchw,c->nhw", x, torch.tensor(_LUMA)).unsqueeze(1)
    raise ValueError(f"cannot convert {x.shape[1]} channels to {channels}")


# -------------------------------------------------------------------------------- main


def load_dataset(name: str = "mnist5k", root: str | os.PathLike | None = None,
                 max_train: int | None = None, max_test: int | None = None,
                 resize: int | tuple[int, ...] | None = None, seed: int = 0,
                 download: bool = True, *, celeba_attribute: str | None = None,
                 imagenette_size: str | None = None, cache: bool = True) -> Dataset:
    """Load dataset ``name`` as normalised in-memory tensors (see the module docstring).

    ``root``: where torchvision-format files live (default ``<cache_dir()>/raw``; ignored
    by the bundled mnist5k and digits). ``max_train``/``max_test``: stratified subset
    sizes (None: the whole split; more than the split holds is an error). ``resize``:
    None, int, (H, W) or (C, H, W). ``seed``: subsets and training order. ``download``:
    let torchvision fetch missing files. ``celeba_attribute``: CelebA target attribute
    (default ``Smiling``). ``imagenette_size``: 'full', '320px' or '160px' (default).
    ``cache=False`` neither reads nor writes the disk cache.
    """
    if name not in _SOURCES:
        raise ValueError(f"unknown dataset {name!r}; known datasets: {', '.join(names())}")
    source = _SOURCES[name]
    max_train = _check_count("max_train", max_train)
    max_test = _check_count("max_test", max_test)
    channels, hw = _check_resize(resize)
    if isinstance(seed, bool) or not isinstance(seed, numbers.Integral) or seed < 0:
        raise ValueError(f"seed must be a non-negative int, got {seed!r}")
    options = _resolve_options(name, source, {"celeba_attribute": celeba_attribute,
                                              "imagenette_size": imagenette_size})
    root_path = Path(root).expanduser().resolve() if root is not None else cache_dir() / "raw"
    if source.expected is not None:
        _ensure_files(name, source, root_path, options, download)
    hw = hw or source.default_hw
    key = {"name": name, "format": FORMAT_VERSION, "max_train": max_train,
           "max_test": max_test, "channels": channels, "hw": hw, "seed": int(seed),
           "options": options, "root": None if source.expected is None else str(root_path),
           "fingerprint": _fingerprint(source, root_path, options)}
    digest = hashlib.sha256(json.dumps(key, sort_keys=True).encode()).hexdigest()[:16]
    path = cache_dir() / f"{name}-{digest}.pt"
    if cache:
        hit = _load_cached(path)
        if hit is not None:
            hit.info["cache"] = "hit"
            return hit
    started = time.perf_counter()
    dataset = _prepare(name, source, root_path, options, max_train, max_test, channels, hw,
                       int(seed))
    dataset.info["prepare_seconds"] = round(time.perf_counter() - started, 3)
    if cache:
        dataset.info["cache_file"] = str(path)
        _save_atomic(path, _to_payload(dataset))
    dataset.info["cache"] = "miss" if cache else "off"
    return dataset


def _subset(name: str, label: str, split: Split, n: int | None,
            rng: np.random.Generator) -> np.ndarray:
    available = len(split.labels)
    if n is None:
        return np.arange(available)
    if n > available:
        raise ValueError(f"{label}={n} exceeds the {available} examples of {name}'s "
                         f"{label.removeprefix('max_')} split; use at most {available} "
                         "or None for the whole split")
    return stratified_sample(split.labels, n, rng)


def _prepare(name: str, source: Source, root: Path, options: dict, max_train: int | None,
             max_test: int | None, channels: int | None, hw: tuple[int, int] | None,
             seed: int) -> Dataset:
    raw = source.read(root, options)
    rng = np.random.default_rng(seed)
    train_idx = rng.permutation(_subset(name, "max_train", raw.train, max_train, rng))
    test_idx = _subset(name, "max_test", raw.test, max_test, rng)
    x_train = _converted_channels(raw.train.images(train_idx, hw), channels)
    x_test = _converted_channels(raw.test.images(test_idx, hw), channels)
    std, mean = torch.std_mean(x_train, dim=(0, 2, 3), correction=0)
    # A constant channel (std 0) is only centred: dividing by zero would make NaNs.
    std = torch.where(std > 0, std, torch.ones_like(std))
    for x in (x_train, x_test):
        x.sub_(mean.view(1, -1, 1, 1)).div_(std.view(1, -1, 1, 1))
    y_train = torch.from_numpy(raw.train.labels[train_idx]).to(torch.int64)
    y_test = torch.from_numpy(raw.test.labels[test_idx]).to(torch.int64)
    info = {"source": raw.source, "target": source.target, "classes": raw.classes,
            "split": raw.split, "n_train": len(y_train), "n_test": len(y_test),
            "n_train_available": len(raw.train.labels), "n_test_available": len(raw.test.labels),
            "max_train": max_train, "max_test": max_test, "seed": seed,
            "resize": {"channels": channels, "hw": list(hw) if hw else None},
            "options": options, "md5": raw.md5}
    return Dataset(name=name, x_train=x_train.contiguous(), y_train=y_train,
                   x_test=x_test.contiguous(), y_test=y_test,
                   in_shape=tuple(int(s) for s in x_train.shape[1:]),
                   num_classes=len(raw.classes), mean=tuple(mean.tolist()),
                   std=tuple(std.tolist()), info=info)
