"""Any folder of images, ``root/<class>/<image>``: held in memory when it fits, else streamed from disk.

Layout (``data.root``):

- ``root/train/<class>/*`` and ``root/test/<class>/*``: the given train/test split is used as is;
  class names come from ``train/``, and ``test/`` may not hold a class that ``train/`` lacks.
- otherwise ``root/<class>/*`` is split into train/test here: stratified, ``TEST_FRACTION`` of each
  class to test, with the fixed ``SPLIT_SEED`` (not the run seed), so every run and every baseline
  is scored on the same test images.

Size and colour: the images keep their native size (the most common one; others are resized to it)
unless ``data.image_size`` is set, then all are resized to that square (bilinear, aspect ratio not
kept). One colour mode for the whole dataset: grayscale when every image is grayscale, otherwise RGB
(an alpha channel is dropped). Files with other extensions and hidden files are ignored; unreadable
files follow ``data.on_corrupt`` (``edgekd.data.files``).

Memory: when the decoded training images (N x C x H x W bytes) fit in ``data.in_memory_mb`` they are
decoded once into memory; otherwise the training split stays on disk and the loader streams it
(``data.workers`` decoding processes). Validation and test images are always held in memory.
"""
from __future__ import annotations

import os
from pathlib import Path
from typing import Callable

import numpy as np

from ..config import DataConfig
from ..errors import DataError
from .base import DATASETS, ReaderResult, channel_stats, stratified_indices
from .files import FileSplit, common_mode, native_size, scan

EXTENSIONS = {".png", ".jpg", ".jpeg", ".bmp", ".gif", ".webp", ".tif", ".tiff", ".ppm", ".pgm"}
TEST_FRACTION = 0.2
SPLIT_SEED = 0
STATS_SAMPLE = 5000  # streamed data: mean/std from this many training images (seeded), not a whole extra epoch


def _image_files(folder: Path) -> list[str]:
    """Image files under ``folder`` (recursive, hidden ones skipped), sorted, as str: a folder of a
    million files keeps a million short strings, not a million Path objects."""
    found = []
    for parent, dirs, names in os.walk(folder):
        dirs[:] = [d for d in dirs if not d.startswith(".")]
        found.extend(os.path.join(parent, n) for n in names
                     if not n.startswith(".") and os.path.splitext(n)[1].lower() in EXTENSIONS)
    return sorted(found)


def list_images(tree: Path) -> tuple[list[str], list[tuple[str, str]]]:
    """Class names (sorted sub-folder names) and (file, class name) pairs of ``tree``."""
    classes = sorted(p.name for p in tree.iterdir() if p.is_dir() and not p.name.startswith("."))
    files = []
    for name in classes:
        found = _image_files(tree / name)
        if not found:
            raise DataError(
                f"class folder {tree / name} holds no images ({', '.join(sorted(EXTENSIONS))})",
                "add images to it or remove the folder",
            )
        files.extend((p, name) for p in found)
    return classes, files


def check_root(root_value: str | None) -> Path:
    """``data.root`` as an existing folder, or a DataError saying what to set."""
    if not root_value:
        raise DataError("the image_folder dataset needs data.root", "set data.root to a folder of <class>/<image> files")
    root = Path(root_value).expanduser()
    if not root.is_dir():
        what = "is not a folder" if root.exists() else "does not exist"
        raise DataError(f"data.root {root} {what}; expected a folder of <class>/<image> (or train/ and test/) files",
                        "set data.root to an existing image folder")
    return root


def split_files(root: Path) -> tuple[list[str], list[tuple[str, str]], list[tuple[str, str]]]:
    """(classes, train files, test files) of ``root``: its own train/ and test/, or a fixed stratified split."""
    if (root / "train").is_dir() and (root / "test").is_dir():
        classes, train_files = list_images(root / "train")
        test_classes, test_files = list_images(root / "test")
        extra = sorted(set(test_classes) - set(classes))
        if extra:
            raise DataError(f"{root / 'test'} has classes missing from {root / 'train'}: {extra}", "add them to train/ or remove them")
    else:
        classes, files = list_images(root)
        index = {c: i for i, c in enumerate(classes)}
        labels = np.array([index[c] for _, c in files])
        n_test = int(round(TEST_FRACTION * len(files)))
        test_idx = set(stratified_indices(labels, n_test, np.random.default_rng(SPLIT_SEED)).tolist())
        train_files = [f for i, f in enumerate(files) if i not in test_idx]
        test_files = [f for i, f in enumerate(files) if i in test_idx]
    if len(classes) < 2:
        raise DataError(f"image folder {root} has {len(classes)} class folder(s); a classifier needs 2 or more",
                        "lay the images out as root/<class>/<image> with one folder per class")
    return classes, train_files, test_files


def open_folder(cfg: DataConfig, log: Callable[[str], None] | None = None) -> tuple[FileSplit, FileSplit, list[str]]:
    """Scan ``data.root``: (train, test, classes) as on-disk splits, corrupt files handled per policy."""
    root = check_root(cfg.root)
    classes, train_files, test_files = split_files(root)
    # one scan of both splits: one warning lists every skipped file
    keep, headers = scan([p for p, _ in train_files + test_files], cfg.on_corrupt, log)
    n_train = len(train_files)
    test_files = [test_files[i - n_train] for i in keep if i >= n_train]
    train_files = [train_files[i] for i in keep if i < n_train]
    if not train_files or not test_files:
        raise DataError(f"image folder {root} has too few readable images to form a train and a test split", "add images")
    mode = common_mode(headers)
    size = (cfg.image_size, cfg.image_size) if cfg.image_size else native_size(headers)
    index = {c: i for i, c in enumerate(classes)}

    def split(files: list[tuple[str, str]]) -> FileSplit:
        return FileSplit([p for p, _ in files], np.array([index[c] for _, c in files], dtype=np.int64), mode, size)

    return split(train_files), split(test_files), classes


def fits_in_memory(split: FileSplit, limit_mb: float) -> bool:
    """Whether the decoded uint8 images of ``split`` take at most ``limit_mb`` MB."""
    n, c, h, w = split.shape
    return n * c * h * w <= limit_mb * 1e6


@DATASETS.register("image_folder")
def image_folder(cfg: DataConfig) -> ReaderResult:
    """Read ``data.root`` (see the module docstring): in-memory Splits, or a streamed training FileSplit."""
    train, test, classes = open_folder(cfg)
    if fits_in_memory(train, cfg.in_memory_mb):
        train_mem = train.materialize()
        mean, std = channel_stats(train_mem.images)
        return train_mem, test, classes, mean, std
    # streamed: the statistics come from a seeded sample (they set the model's input normalization)
    pick = np.sort(np.random.default_rng(SPLIT_SEED).permutation(len(train))[:STATS_SAMPLE])
    mean, std = channel_stats(train.load(pick))
    return train, test, classes, mean, std
