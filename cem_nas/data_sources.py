"""A dataset as read from its source, before subsetting and normalisation.

Every reader (:mod:`cem_nas.data_bundled`, :mod:`cem_nas.data_torchvision`) returns a
:class:`Raw`: two :class:`Split` s whose images are produced on demand for the indices
:func:`cem_nas.data.load_dataset` picks, as float NCHW in [0, 1], so a subset never
decodes or resizes the whole source. A :class:`Source` says how to find, fetch and read
one dataset.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

import numpy as np
import torch
import torch.nn.functional as F

#: Target (H, W) of the image-folder datasets when ``resize`` is None.
FOLDER_DEFAULT_HW = (32, 32)

_RESIZE_CHUNK = 2048  # images per interpolate call: bounds the temporary memory


class DatasetUnavailable(FileNotFoundError):
    """The files of a dataset are not where they must be and could not be downloaded."""


@dataclass
class Split:
    """Labels of one split and a function giving float [0, 1] NCHW images for indices."""

    labels: np.ndarray
    images: Callable[[np.ndarray, tuple[int, int] | None], torch.Tensor]


@dataclass
class Raw:
    """One dataset as read from its source, before subsetting and normalisation."""

    train: Split
    test: Split
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


def array_split(images: np.ndarray | torch.Tensor, labels: np.ndarray, scale: float) -> Split:
    """A split held as an NCHW array whose full intensity is ``scale``."""
    data = torch.as_tensor(images)

    def take(idx: np.ndarray, hw: tuple[int, int] | None) -> torch.Tensor:
        picked = data[torch.from_numpy(idx)].to(torch.float32) / scale
        return _resized(picked, hw)

    return Split(np.asarray(labels, dtype=np.int64), take)


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


def file_split(paths: list[str], labels: np.ndarray) -> Split:
    """A split held as image files, decoded only for the requested indices."""

    def take(idx: np.ndarray, hw: tuple[int, int] | None) -> torch.Tensor:
        hw = hw or FOLDER_DEFAULT_HW
        if len(idx) == 0:
            return torch.zeros((0, 3, *hw))
        stacked = np.stack([_decode_image(paths[i], hw) for i in idx])
        return torch.from_numpy(stacked).to(torch.float32) / 255.0

    return Split(np.asarray(labels, dtype=np.int64), take)


@dataclass(frozen=True)
class Source:
    """How to find, fetch and read one dataset."""

    read: Callable[[Path, dict], Raw]
    target: str
    expected: Callable[[dict], list[str]] | None = None  # paths under root; None: bundled
    download: Callable[[Path, dict], None] | None = None
    obtain: str = ""  # where the files come from, for the error message
    options: dict[str, Any] = field(default_factory=dict)  # option -> default
    default_hw: tuple[int, int] | None = None
    package: str = ""  # bundled: the distribution whose version fingerprints the data
