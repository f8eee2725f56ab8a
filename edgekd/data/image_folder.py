"""Any folder of images, ``root/<class>/<image>``, loaded into memory as uint8 (numpy + Pillow).

Layout (``data.root``):

- ``root/train/<class>/*`` and ``root/test/<class>/*``: the given train/test split is used as is;
  class names come from ``train/``, and ``test/`` may not hold a class that ``train/`` lacks.
- otherwise ``root/<class>/*`` is split into train/test here: stratified, ``TEST_FRACTION`` of each
  class to test, with the fixed ``SPLIT_SEED`` (not the run seed), so every run and every baseline
  is scored on the same test images.

Every image is resized to ``data.image_size`` x ``data.image_size`` (bilinear, aspect ratio not kept)
and converted to one colour mode for the whole dataset: grayscale when every image is grayscale,
otherwise RGB (an alpha channel is dropped). Files with other extensions and hidden files are ignored.
Pillow (installed with torchvision) is imported lazily.
"""
from __future__ import annotations

from pathlib import Path

import numpy as np

from ..config import DataConfig
from ..errors import DataError
from .base import DATASETS, ReaderResult, Split, stratified_indices

EXTENSIONS = {".png", ".jpg", ".jpeg", ".bmp", ".gif", ".webp", ".tif", ".tiff", ".ppm", ".pgm"}
GRAY_MODES = {"1", "L", "LA", "I", "I;16", "I;16B", "I;16L", "F"}
TEST_FRACTION = 0.2
SPLIT_SEED = 0


def _pil():  # noqa: ANN202 - the PIL.Image module
    try:
        from PIL import Image
    except ImportError as e:
        raise DataError("image_folder datasets need Pillow, which is not installed", "pip install pillow") from e
    return Image


def list_images(tree: Path) -> tuple[list[str], list[tuple[Path, str]]]:
    """Class names (sorted sub-folder names) and (file, class name) pairs of ``tree``."""
    classes = sorted(p.name for p in tree.iterdir() if p.is_dir() and not p.name.startswith("."))
    files = []
    for name in classes:
        found = sorted(
            p for p in (tree / name).rglob("*")
            if p.is_file() and p.suffix.lower() in EXTENSIONS and not p.name.startswith(".")
        )
        if not found:
            raise DataError(
                f"class folder {tree / name} holds no images ({', '.join(sorted(EXTENSIONS))})",
                "add images to it or remove the folder",
            )
        files.extend((p, name) for p in found)
    return classes, files


def _unreadable(path: Path, e: Exception) -> DataError:
    return DataError(f"{path}: unreadable image ({type(e).__name__}: {e})", f"delete or replace {path}")


def _mode_of(path: Path) -> str:
    Image = _pil()
    try:
        with Image.open(path) as img:  # reads the header only
            return img.mode
    except (OSError, ValueError, SyntaxError, Image.DecompressionBombError) as e:
        raise _unreadable(path, e) from e


def _load(path: Path, mode: str, size: int) -> np.ndarray:
    """One image as uint8 [C, size, size]."""
    Image = _pil()
    try:
        with Image.open(path) as img:
            img = img.convert(mode).resize((size, size), Image.Resampling.BILINEAR)
            arr = np.asarray(img, dtype=np.uint8)
    except (OSError, ValueError, SyntaxError, Image.DecompressionBombError) as e:
        raise _unreadable(path, e) from e
    return arr[None] if arr.ndim == 2 else arr.transpose(2, 0, 1)


def _to_split(files: list[tuple[Path, str]], class_index: dict[str, int], mode: str, size: int) -> Split:
    images = np.stack([_load(p, mode, size) for p, _ in files])
    labels = np.array([class_index[c] for _, c in files], dtype=np.int64)
    return Split(images, labels)


def _channel_stats(images: np.ndarray) -> tuple[tuple[float, ...], tuple[float, ...]]:
    x = images.astype(np.float64) / 255.0
    mean = x.mean(axis=(0, 2, 3))
    std = np.maximum(x.std(axis=(0, 2, 3)), 1e-3)  # a constant channel must not divide by zero
    return tuple(float(m) for m in mean), tuple(float(s) for s in std)


@DATASETS.register("image_folder")
def image_folder(cfg: DataConfig) -> ReaderResult:
    """Read ``data.root`` (see the module docstring for the layout) into uint8 train/test splits."""
    if not cfg.root:
        raise DataError("the image_folder dataset needs data.root", "set data.root to a folder of <class>/<image> files")
    if not cfg.image_size or cfg.image_size < 1:
        raise DataError(
            "the image_folder dataset needs data.image_size (images are resized to one square size)",
            "set data.image_size, e.g. 64",
        )
    root = Path(cfg.root).expanduser()
    if not root.is_dir():
        what = "is not a folder" if root.exists() else "does not exist"
        raise DataError(f"data.root {root} {what}; expected a folder of <class>/<image> (or train/ and test/) files",
                        "set data.root to an existing image folder")
    if (root / "train").is_dir() and (root / "test").is_dir():
        classes, train_files = list_images(root / "train")
        test_classes, test_files = list_images(root / "test")
        extra = sorted(set(test_classes) - set(classes))
        if extra:
            raise DataError(f"{root / 'test'} has classes missing from {root / 'train'}: {extra}", "add them to train/ or remove them")
    else:
        classes, files = list_images(root)
        labels = np.array([classes.index(c) for _, c in files])
        test_idx = set(stratified_indices(labels, int(round(TEST_FRACTION * len(files))), np.random.default_rng(SPLIT_SEED)).tolist())
        train_files = [f for i, f in enumerate(files) if i not in test_idx]
        test_files = [f for i, f in enumerate(files) if i in test_idx]
    if len(classes) < 2:
        raise DataError(f"image folder {root} has {len(classes)} class folder(s); a classifier needs 2 or more",
                        "lay the images out as root/<class>/<image> with one folder per class")
    if not train_files or not test_files:
        raise DataError(f"image folder {root} has too few images to form a train and a test split", "add images")
    modes = {_mode_of(p) for p, _ in train_files + test_files}
    mode = "L" if modes <= GRAY_MODES else "RGB"
    index = {c: i for i, c in enumerate(classes)}
    train = _to_split(train_files, index, mode, cfg.image_size)
    test = _to_split(test_files, index, mode, cfg.image_size)
    mean, std = _channel_stats(train.images)
    return train, test, classes, mean, std
