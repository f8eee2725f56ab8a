"""Dataset containers, the dataset registry and the seeded, stratified splits (numpy only).

Every reader registered in ``DATASETS`` is ``fn(cfg: DataConfig) -> (train, test, classes, mean, std)``
and returns uint8 NCHW images, in memory (``Split``) or, for data too large to hold, on disk
(``edgekd.data.files.FileSplit``, streamed by the loader). ``build_dataset`` turns that into a ``DatasetBundle``: it carves the
validation split out of the training set (seeded, stratified; used for model selection) and takes the
optional ``train_subset`` / ``test_subset``. The test set is never used to select anything.

No torch here: the check stage evaluates ONNX models in a CI job that has only numpy and onnxruntime.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Callable, Sequence, Union

import numpy as np

from ..config import DataConfig
from ..errors import ConfigError
from ..registry import Registry

if TYPE_CHECKING:
    from .files import FileSplit

# Random streams derived from the run seed; distinct ids keep the val split independent of the subsets.
_STREAM_VAL, _STREAM_TRAIN_SUBSET, _STREAM_TEST_SUBSET = 1, 2, 3


@dataclass
class Split:
    """Images uint8 [N, C, H, W] and labels int64 [N], held in memory."""

    images: np.ndarray
    labels: np.ndarray

    def __post_init__(self) -> None:
        if self.images.ndim != 4 or self.images.dtype != np.uint8:
            raise ValueError(f"Split.images must be uint8 [N,C,H,W], got {self.images.dtype} {self.images.shape}")
        if self.labels.shape != (len(self.images),):
            raise ValueError(f"Split.labels must be [N={len(self.images)}], got {self.labels.shape}")
        self.labels = self.labels.astype(np.int64, copy=False)

    def __len__(self) -> int:
        return len(self.labels)

    def take(self, indices: np.ndarray) -> "Split":
        """A new Split holding copies of the rows ``indices`` (in that order)."""
        return Split(self.images[indices], self.labels[indices])

    def class_counts(self, num_classes: int) -> np.ndarray:
        """Number of samples per class, length ``num_classes``."""
        return np.bincount(self.labels, minlength=num_classes)


@dataclass
class DatasetBundle:
    """A dataset ready for training and evaluation: three splits plus what a model needs to know."""

    name: str
    classes: list[str]
    channels: int
    image_size: tuple[int, int]
    mean: tuple[float, ...]
    std: tuple[float, ...]
    train: "AnySplit"  # a FileSplit (edgekd.data.files) when the images are streamed from disk
    val: Split
    test: Split

    @property
    def num_classes(self) -> int:
        return len(self.classes)


# A split in memory (Split) or on disk (edgekd.data.files.FileSplit: paths decoded on demand).
AnySplit = Union[Split, "FileSplit"]
ReaderResult = tuple[AnySplit, AnySplit, Sequence[str], Sequence[float], Sequence[float]]
Reader = Callable[[DataConfig], ReaderResult]
DATASETS: Registry[Reader] = Registry("dataset")


def stratified_indices(labels: np.ndarray, n: int, rng: np.random.Generator) -> np.ndarray:
    """Pick ``n`` indices so that each class keeps its share of ``labels`` (largest-remainder quotas).

    Which samples of a class are picked is random under ``rng``; the result is sorted, so it is a
    pure function of (labels, n, rng state).
    """
    total = len(labels)
    if not 0 <= n <= total:
        raise ValueError(f"cannot pick {n} of {total} samples")
    classes, counts = np.unique(labels, return_counts=True)
    exact = counts * (n / total)
    quota = np.floor(exact).astype(np.int64)
    # hand the leftover picks to the classes with the largest remainders (ties: lower class id)
    leftover = n - int(quota.sum())
    order = np.lexsort((classes, -(exact - quota)))
    quota[order[:leftover]] += 1
    picked = []
    for c, q in zip(classes, quota):
        members = np.flatnonzero(labels == c)
        picked.append(rng.permutation(members)[:q])
    return np.sort(np.concatenate(picked)) if picked else np.zeros(0, dtype=np.int64)


def _rng(seed: int, stream: int) -> np.random.Generator:
    return np.random.default_rng(np.random.SeedSequence([seed, stream]))


def in_memory(split: "AnySplit") -> Split:
    """``split`` as an in-memory Split (a streamed FileSplit is decoded; a Split is returned as is)."""
    return split if isinstance(split, Split) else split.materialize()


def split_train_val(train: "AnySplit", val_size: int, seed: int) -> tuple["AnySplit", Split]:
    """Carve a stratified, seeded validation split of ``val_size`` samples out of ``train``.

    The validation split is always held in memory; the rest keeps ``train``'s kind (a streamed
    FileSplit stays on disk)."""
    if not 0 < val_size < len(train):
        raise ConfigError(
            f"data.val_size={val_size} must be between 1 and the training set size - 1 ({len(train) - 1})",
            "set data.val_size to a smaller positive number (it is taken from the training set)",
        )
    val_idx = stratified_indices(train.labels, val_size, _rng(seed, _STREAM_VAL))
    keep = np.ones(len(train), dtype=bool)
    keep[val_idx] = False
    return train.take(np.flatnonzero(keep)), in_memory(train.take(val_idx))


def _subset(split: "AnySplit", n: int | None, seed: int, stream: int, key: str) -> "AnySplit":
    if n is None:
        return split.take(np.arange(len(split)))  # a private, writable copy (reader caches are read-only)
    if not 0 < n <= len(split):
        raise ConfigError(
            f"{key}={n} must be between 1 and the {len(split)} samples available",
            f"set {key} to at most {len(split)}, or to null for all of them",
        )
    return split.take(stratified_indices(split.labels, n, _rng(seed, stream)))


def channel_sums(images: np.ndarray, chunk: int = 2048) -> tuple[np.ndarray, np.ndarray, int]:
    """Per-channel sum and sum of squares of uint8 [N, C, H, W] images in [0, 1] units, and the pixel count
    per channel; in chunks, so no float64 copy of the whole set is ever made (8x its uint8 size)."""
    c = images.shape[1]
    s, s2, n = np.zeros(c), np.zeros(c), 0
    for i in range(0, len(images), chunk):
        x = images[i:i + chunk].astype(np.float64) / 255.0
        s += x.sum(axis=(0, 2, 3))
        s2 += np.square(x).sum(axis=(0, 2, 3))
        n += x.shape[0] * x.shape[2] * x.shape[3]
    return s, s2, n


def mean_std_from_sums(s: np.ndarray, s2: np.ndarray, n: int, floor: float = 1e-3) -> tuple[tuple[float, ...], tuple[float, ...]]:
    """Mean and std from :func:`channel_sums`; std floored (a constant channel must not divide by zero)."""
    mean = s / max(n, 1)
    std = np.maximum(np.sqrt(np.maximum(s2 / max(n, 1) - mean ** 2, 0.0)), floor)
    return tuple(float(v) for v in mean), tuple(float(v) for v in std)


def channel_stats(images: np.ndarray) -> tuple[tuple[float, ...], tuple[float, ...]]:
    """Per-channel mean and std of uint8 [N, C, H, W] images, in [0, 1] units (std floored at 1e-3)."""
    return mean_std_from_sums(*channel_sums(images))


def _as_tuple(values: Sequence[float], channels: int, what: str, name: str) -> tuple[float, ...]:
    out = tuple(float(v) for v in values)
    if len(out) != channels:
        raise ValueError(f"dataset '{name}' returned {len(out)} {what} values for {channels} channels")
    return out


def build_dataset(cfg: DataConfig, seed: int) -> DatasetBundle:
    """Read ``cfg.dataset`` and split it: val from train (seeded, stratified), then the optional subsets.

    The validation split is drawn from the full training set first, so it does not change with
    ``train_subset``; the test split only ever shrinks by ``test_subset`` and is never used to select.
    """
    reader = DATASETS.get(cfg.dataset)
    train_full, test_full, classes, mean, std = reader(cfg)
    train, val = split_train_val(train_full, cfg.val_size, seed)
    train = _subset(train, cfg.train_subset, seed, _STREAM_TRAIN_SUBSET, "data.train_subset")
    # the test split is scored by numpy/onnxruntime in the check stage: always in memory (cap it with
    # data.test_subset for a huge folder); only the training split may stay on disk and stream
    test = in_memory(_subset(test_full, cfg.test_subset, seed, _STREAM_TEST_SUBSET, "data.test_subset"))
    _, channels, height, width = train.images.shape if isinstance(train, Split) else train.shape
    return DatasetBundle(
        name=cfg.dataset,
        classes=list(classes),
        channels=int(channels),
        image_size=(int(height), int(width)),
        mean=_as_tuple(mean, channels, "mean", cfg.dataset),
        std=_as_tuple(std, channels, "std", cfg.dataset),
        train=train,
        val=val,
        test=test,
    )
