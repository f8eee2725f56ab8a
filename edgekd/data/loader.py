"""Batch loader (torch): shuffling, batched augmentation and DDP sharding, all seeded.

An in-memory split lives in one uint8 tensor; a batch is one fancy-index plus batched tensor ops, no
per-sample Python transforms. A split on disk (``FileSplit``, a large image folder) is decoded batch
by batch by worker processes (``edgekd.data.streaming``) and then goes through the same steps. The order and augmentation of
epoch ``e`` are a pure function of (seed, e) (and the rank): a resumed run sees the same batches.
"""
from __future__ import annotations

import math
from typing import Iterator, Literal, Sequence

import numpy as np
import torch

from ..config import AugmentConfig, DataConfig
from .augment import Augmenter, is_active, seeded_generator
from ..pixels import to_float
from .base import AnySplit, DatasetBundle
from .files import FileSplit
from .streaming import stream_batches

_STREAM_ORDER = 11
Photometric = Literal["input", "student"]


class BatchLoader:
    """Iterates ``(x float32 [B,C,H,W] in [0,1], y int64 [B], *extras)`` over ``split``.

    - ``shuffle``: a fresh permutation each epoch, seeded by (seed, epoch); call ``set_epoch(e)``.
    - ``augment``: batched crop / flip / corruption / noise (the :class:`~edgekd.data.augment.Augmenter`,
      seeded by (seed, epoch, rank, batch)); None disables it.
    - ``photometric``: where the photometric part (corruption / noise) goes. ``"input"``: onto ``x``
      (one model trains on it). ``"student"`` (KD): ``x`` keeps only the geometric part (the teacher's
      view) and the photometric view is yielded LAST, as ``x_student``, when that part is on:
      ``(x, y, *extras, x_student)``.
    - ``rank`` / ``world_size``: DDP sharding. Every rank draws the same epoch permutation and takes a
      disjoint slice of it (strided). With ``drop_last`` the slices have equal size (the remainder
      of the permutation, different each epoch, is skipped); without it they cover every sample
      once and may differ in size by one.
    - ``drop_last`` (default: ``shuffle``): drop the final partial batch, so training steps see full
      batches; it is kept when it would be the only batch, so a tiny split still yields one batch.
    - ``extras``: per-sample tensors aligned with ``split`` (e.g. cached teacher logits), returned
      after ``y`` and permuted the same way.
    - ``device``: where the images are held and batches are produced (default CPU).
    - ``workers``: for a split on disk (``FileSplit``), the decoding processes (0: decode in this one).
    """

    def __init__(
        self,
        split: AnySplit,
        batch_size: int,
        shuffle: bool,
        augment: AugmentConfig | None = None,
        seed: int = 0,
        rank: int = 0,
        world_size: int = 1,
        extras: Sequence[torch.Tensor | np.ndarray] | None = None,
        drop_last: bool | None = None,
        device: torch.device | str | None = None,
        photometric: Photometric = "input",
        workers: int = 0,
    ) -> None:
        assert photometric in ("input", "student"), photometric
        if batch_size < 1:
            raise ValueError(f"batch_size must be >= 1, got {batch_size}")
        if world_size < 1 or not 0 <= rank < world_size:
            raise ValueError(f"need 0 <= rank < world_size, got rank={rank}, world_size={world_size}")
        self.split = split
        self.batch_size = int(batch_size)
        self.shuffle = bool(shuffle)
        self.augment = augment if is_active(augment) else None
        self.augmenter = Augmenter(augment, seed) if self.augment is not None else None
        self.photometric = photometric
        self.seed = int(seed)
        self.rank, self.world_size = int(rank), int(world_size)
        self.drop_last = self.shuffle if drop_last is None else bool(drop_last)
        self.device = torch.device(device) if device is not None else torch.device("cpu")
        self.epoch = 0
        self.workers = int(workers)
        # in memory: one private copy, the bundle's numpy arrays stay untouched; on disk: decoded per batch
        self._images = None if isinstance(split, FileSplit) else torch.from_numpy(
            np.array(split.images, dtype=np.uint8, copy=True)).to(self.device)
        self._labels = torch.from_numpy(np.array(split.labels, dtype=np.int64, copy=True)).to(self.device)
        self._extras = [self._as_extra(e, i) for i, e in enumerate(extras or [])]

    def _as_extra(self, extra: torch.Tensor | np.ndarray, i: int) -> torch.Tensor:
        t = torch.as_tensor(extra)
        if t.ndim == 0 or t.shape[0] != len(self.split):
            raise ValueError(f"extras[{i}] has {tuple(t.shape)}; its first axis must be the split size {len(self.split)}")
        return t.to(self.device)

    def set_epoch(self, epoch: int) -> None:
        """Select the epoch whose order and augmentation the next iteration produces."""
        self.epoch = int(epoch)

    @property
    def image_shape(self) -> tuple[int, int, int]:
        """(C, H, W) of the float batches ``x`` (augmentation keeps the size)."""
        if isinstance(self.split, FileSplit):
            return (self.split.channels, *self.split.size)
        c, h, w = self.split.images.shape[1:]
        return int(c), int(h), int(w)

    @property
    def num_samples(self) -> int:
        """Samples this rank sees per epoch, before batching."""
        n = len(self.split)
        if self.world_size == 1:
            return n
        if self.drop_last:
            return n // self.world_size
        return len(range(self.rank, n, self.world_size))

    def __len__(self) -> int:
        n = self.num_samples
        if self.drop_last and n >= self.batch_size:
            return n // self.batch_size
        return math.ceil(n / self.batch_size)

    def indices(self, epoch: int | None = None) -> torch.Tensor:
        """The sample indices this rank visits in ``epoch`` (default: the current one), in order."""
        epoch = self.epoch if epoch is None else epoch
        n = len(self.split)
        if self.shuffle:
            order = torch.randperm(n, generator=seeded_generator(self.seed, epoch, _STREAM_ORDER))
        else:
            order = torch.arange(n)
        if self.world_size > 1:
            used = (n // self.world_size) * self.world_size if self.drop_last else n
            order = order[:used][self.rank :: self.world_size]
        return order[: len(self) * self.batch_size] if self.drop_last else order

    def __iter__(self) -> Iterator[tuple[torch.Tensor, ...]]:
        order = self.indices().to(self.device)
        batches = [order[b * self.batch_size : (b + 1) * self.batch_size] for b in range(len(self))]
        if self._images is None:
            streamed = stream_batches(self.split, [i.cpu().numpy() for i in batches], self.workers)
            pixels = (u8.to(self.device) for u8 in streamed)
        else:
            pixels = (self._images[idx] for idx in batches)
        for b, (idx, u8) in enumerate(zip(batches, pixels)):
            x = to_float(u8)
            extras = [e[idx] for e in self._extras]
            if self.augmenter is not None:
                geometric, photometric = self.augmenter.views(x, self.epoch, b, self.rank)
                if self.photometric == "input":
                    x = photometric
                else:  # KD: the teacher sees the geometric view, the student also the photometric part
                    x = geometric
                    if self.augmenter.photometric_on:
                        extras.append(photometric)
            yield (x, self._labels[idx], *extras)


def make_loaders(
    bundle: DatasetBundle,
    cfg: DataConfig,
    seed: int,
    rank: int = 0,
    world_size: int = 1,
    device: torch.device | str | None = None,
    photometric: Photometric = "input",
) -> tuple[BatchLoader, BatchLoader, BatchLoader]:
    """(train, val, test) loaders.

    Train: shuffled, augmented with ``cfg.augment`` (its photometric part on ``x`` or, with
    ``photometric="student"``, on a student-only view; see :class:`BatchLoader`), ``drop_last``,
    sharded over DDP ranks.
    Val / test: in order, unaugmented, every sample on every rank, so each rank computes the same
    exact metrics (no padding duplicates, no collective needed to agree on the best epoch).
    """
    train = BatchLoader(bundle.train, cfg.batch_size, shuffle=True, augment=cfg.augment, seed=seed,
                        rank=rank, world_size=world_size, drop_last=True, device=device, photometric=photometric,
                        workers=cfg.workers)
    val = BatchLoader(bundle.val, cfg.eval_batch_size, shuffle=False, seed=seed, drop_last=False, device=device)
    test = BatchLoader(bundle.test, cfg.eval_batch_size, shuffle=False, seed=seed, drop_last=False, device=device)
    return train, val, test
