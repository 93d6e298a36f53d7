"""The datasets read from torchvision's on-disk formats under a root folder.

``cifar10``, ``cifar100`` (fine labels), ``mnist``, ``svhn`` (digit 0 relabelled from 10
to 0, as torchvision does), ``imagenette`` (10 ImageNet classes, the 160px variant by
default) and ``celeba`` (binary target: one of the 40 attributes, ``Smiling`` by default;
train = partition 0, test = partition 2 of ``list_eval_partition.txt``), downloaded by
torchvision when the caller allows it and the machine can reach the source.

Reading: MNIST and ImageNette go through torchvision's own dataset classes. For
CIFAR, SVHN and CelebA torchvision's classes refuse any file whose md5 differs from the
official one, so this module reads their (simple) formats itself -- the same code for
real and test files -- checks the md5s torchvision knows, records the outcome in
``info["md5"]`` and warns on a mismatch; torchvision is used to download them.
"""
from __future__ import annotations

import pickle
import warnings
from pathlib import Path
from typing import Any

import numpy as np

from cem_nas.data_sources import FOLDER_DEFAULT_HW, Raw, Source, Split, array_split, file_split

#: CelebA attribute used as the binary target when ``celeba_attribute`` is None.
CELEBA_DEFAULT_ATTRIBUTE = "Smiling"
#: ImageNette variant (torchvision ``size``) when ``imagenette_size`` is None.
IMAGENETTE_DEFAULT_SIZE = "160px"


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
    def read(root: Path, options: dict) -> Raw:
        import torchvision.datasets as tvd

        def batches(files: list[str]) -> Split:
            entries = [_unpickle(root / folder / f) for f in files]
            data = np.concatenate([np.asarray(e["data"], dtype=np.uint8) for e in entries])
            labels = np.concatenate([np.asarray(e[label_key], dtype=np.int64) for e in entries])
            return array_split(data.reshape(-1, 3, 32, 32), labels, 255.0)

        cls = getattr(tvd, tv_class)
        checks = [(f"{folder}/{f}", md5) for f, md5 in cls.train_list + cls.test_list]
        checks.append((f"{folder}/{cls.meta['filename']}", cls.meta["md5"]))
        return Raw(train=batches(train_files), test=batches(test_files),
                    classes=list(_unpickle(root / folder / meta_file)[names_key]),
                    source=str(root / folder), split="official train / test batches",
                    md5=_md5_report(tv_class, root, checks))
    return read


def _read_svhn(root: Path, options: dict) -> Raw:
    import scipy.io
    from torchvision.datasets import SVHN

    def split(filename: str) -> Split:
        mat = scipy.io.loadmat(str(root / filename))
        images = np.transpose(mat["X"], (3, 2, 0, 1))  # (H, W, C, N) -> (N, C, H, W)
        labels = mat["y"].astype(np.int64).reshape(-1)
        labels[labels == 10] = 0  # SVHN files label the digit 0 as 10
        return array_split(np.ascontiguousarray(images), labels, 255.0)

    checks = [(SVHN.split_list[s][1], SVHN.split_list[s][2]) for s in ("train", "test")]
    return Raw(train=split("train_32x32.mat"), test=split("test_32x32.mat"),
                classes=[str(d) for d in range(10)], source=str(root),
                split="official train / test (extra not used)", md5=_md5_report("SVHN", root, checks))


def _read_mnist(root: Path, options: dict) -> Raw:
    from torchvision.datasets import MNIST

    splits = [MNIST(str(root), train=train, download=False) for train in (True, False)]
    train, test = (array_split(ds.data.unsqueeze(1), ds.targets.numpy(), 255.0) for ds in splits)
    return Raw(train=train, test=test, classes=[str(d) for d in range(10)],
                source=str(root / "MNIST" / "raw"), split="official train / t10k",
                md5="not checked (torchvision keeps md5s of the .gz archives only)")


def _read_imagenette(root: Path, options: dict) -> Raw:
    from torchvision.datasets import Imagenette

    def split(name: str) -> tuple[Split, list]:
        # loader=str: list (path, label) pairs without decoding; decoding happens per index.
        ds = Imagenette(str(root), split=name, size=options["imagenette_size"], loader=str)
        pairs = [ds[i] for i in range(len(ds))]
        return file_split([p for p, _ in pairs], np.array([lab for _, lab in pairs])), ds.classes

    (train, classes), (test, _) = split("train"), split("val")
    return Raw(train=train, test=test, classes=[c[0] for c in classes],
                source=str(root / _imagenette_folder(options)), split="official train / val",
                md5="not checked (torchvision checks the archive at download only)")


def _imagenette_folder(options: dict) -> str:
    size = options["imagenette_size"]  # torchvision's folder is its archive's stem
    return "imagenette2" if size == "full" else f"imagenette2-{size.removesuffix('px')}"


def _read_table(path: Path) -> list[list[str]]:
    with open(path) as handle:
        return [line.split() for line in handle if line.strip()]


def _read_celeba(root: Path, options: dict) -> Raw:
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

    def split(code: int) -> Split:
        files = sorted(f for f, p in partition.items() if p == code)
        return file_split([str(folder / "img_align_celeba" / f) for f in files],
                           np.array([target[f] for f in files]))

    checks = [(f"celeba/{f}", md5) for _, md5, f in CelebA.file_list
              if f in ("list_attr_celeba.txt", "list_eval_partition.txt")]
    return Raw(train=split(0), test=split(2), classes=[f"not {attribute}", attribute],
                source=str(folder),
                split="list_eval_partition.txt: train = 0, test = 2 (valid = 1 not used)",
                md5=_md5_report("CelebA", root, checks))


def _tv_download(tv_class: str, root: Path, *splits: dict[str, Any]) -> None:
    """Let torchvision's class fetch (and md5-check) its archives: built with download=True."""
    import torchvision.datasets as tvd

    for kwargs in splits or ({},):
        getattr(tvd, tv_class)(str(root), download=True, **kwargs)


_CIFAR10_BATCHES = [f"data_batch_{i}" for i in range(1, 6)]

#: The torchvision-format datasets by name.
TORCHVISION_SOURCES: dict[str, Source] = {
    "cifar10": Source(
        _cifar_reader("CIFAR10", "cifar-10-batches-py", "labels", "label_names",
                      _CIFAR10_BATCHES, ["test_batch"], "batches.meta"),
        "object class (10 classes)",
        expected=lambda o: [f"cifar-10-batches-py/{f}"
                            for f in _CIFAR10_BATCHES + ["test_batch", "batches.meta"]],
        download=lambda root, o: _tv_download("CIFAR10", root),
        obtain="extract cifar-10-python.tar.gz (https://www.cs.toronto.edu/~kriz/cifar.html) there"),
    "cifar100": Source(
        _cifar_reader("CIFAR100", "cifar-100-python", "fine_labels", "fine_label_names",
                      ["train"], ["test"], "meta"),
        "fine object class (100 classes)",
        expected=lambda o: [f"cifar-100-python/{f}" for f in ("train", "test", "meta")],
        download=lambda root, o: _tv_download("CIFAR100", root),
        obtain="extract cifar-100-python.tar.gz (https://www.cs.toronto.edu/~kriz/cifar.html) there"),
    "mnist": Source(
        _read_mnist, "digit 0-9 (10 classes)",
        expected=lambda o: [f"MNIST/raw/{f}" for f in (
            "train-images-idx3-ubyte", "train-labels-idx1-ubyte",
            "t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte")],
        download=lambda root, o: _tv_download("MNIST", root),
        obtain="put the four decompressed idx files (https://yann.lecun.com/exdb/mnist/) there"),
    "svhn": Source(
        _read_svhn, "house-number digit 0-9 (10 classes; the files' label 10 is digit 0)",
        expected=lambda o: ["train_32x32.mat", "test_32x32.mat"],
        download=lambda root, o: _tv_download("SVHN", root, {"split": "train"}, {"split": "test"}),
        obtain="put the cropped-digit .mat files (http://ufldl.stanford.edu/housenumbers/) there"),
    "imagenette": Source(
        _read_imagenette, "ImageNet class among 10 (tench ... parachute)",
        expected=lambda o: [f"{_imagenette_folder(o)}/{s}/<wnid>/*.JPEG" for s in ("train", "val")],
        download=lambda root, o: _tv_download("Imagenette", root, {"size": o["imagenette_size"]}),
        obtain="extract the imagenette2 archive of that size "
               "(https://github.com/fastai/imagenette) there",
        options={"imagenette_size": IMAGENETTE_DEFAULT_SIZE}, default_hw=FOLDER_DEFAULT_HW),
    "celeba": Source(
        _read_celeba, "binary: does the face show the chosen attribute (default Smiling)",
        expected=lambda o: ["celeba/img_align_celeba/*.jpg", "celeba/list_attr_celeba.txt",
                            "celeba/list_eval_partition.txt"],
        download=lambda root, o: _tv_download("CelebA", root),
        obtain="put the aligned CelebA images and annotation files "
               "(https://mmlab.ie.cuhk.edu.hk/projects/CelebA.html) there",
        options={"celeba_attribute": CELEBA_DEFAULT_ATTRIBUTE}, default_hw=FOLDER_DEFAULT_HW),
}
