"""In-memory batch loader (torch): shuffling, batched augmentation and DDP sharding, all seeded.

The whole split lives in one uint8 tensor; a batch is one fancy-index plus batched tensor ops, so
there are no worker processes and no per-sample Python transforms. The order and augmentation of
epoch ``e`` are a pure function of (seed, e) (and the rank): a resumed run sees the same batches.
"""
from __future__ import annotations

import math
from typing import Iterator, Sequence

import numpy as np
import torch

from ..config import AugmentConfig, DataConfig
from .augment import augment_batch, is_active
from .base import DatasetBundle, Split

_STREAM_ORDER, _STREAM_AUGMENT = 11, 12


def _seed(*parts: int) -> int:
    """A well-mixed 63-bit seed from integer parts (SeedSequence hashing, no collisions in practice)."""
    state = np.random.SeedSequence([p % (1 << 63) for p in parts]).generate_state(2, dtype=np.uint32)
    return (int(state[0]) << 31) ^ int(state[1])


def _generator(*parts: int) -> torch.Generator:
    return torch.Generator().manual_seed(_seed(*parts))


class BatchLoader:
    """Iterates ``(x float32 [B,C,H,W] in [0,1], y int64 [B], *extras)`` over ``split``.

    - ``shuffle``: a fresh permutation each epoch, seeded by (seed, epoch); call ``set_epoch(e)``.
    - ``augment``: batched crop / flip / corruption / noise (see ``augment.py``); None disables it.
    - ``rank`` / ``world_size``: DDP sharding. Every rank draws the same epoch permutation and takes a
      disjoint slice of it (strided). With ``drop_last`` the slices have equal size (the remainder
      of the permutation, different each epoch, is skipped); without it they cover every sample
      once and may differ in size by one.
    - ``drop_last`` (default: ``shuffle``): drop the final partial batch, so training steps see full
      batches; it is kept when it would be the only batch, so a tiny split still yields one batch.
    - ``extras``: per-sample tensors aligned with ``split`` (e.g. cached teacher logits), returned
      after ``y`` and permuted the same way.
    - ``device``: where the images are held and batches are produced (default CPU).
    """

    def __init__(
        self,
        split: Split,
        batch_size: int,
        shuffle: bool,
        augment: AugmentConfig | None = None,
        seed: int = 0,
        rank: int = 0,
        world_size: int = 1,
        extras: Sequence[torch.Tensor | np.ndarray] | None = None,
        drop_last: bool | None = None,
        device: torch.device | str | None = None,
    ) -> None:
        if batch_size < 1:
            raise ValueError(f"batch_size must be >= 1, got {batch_size}")
        if world_size < 1 or not 0 <= rank < world_size:
            raise ValueError(f"need 0 <= rank < world_size, got rank={rank}, world_size={world_size}")
        self.split = split
        self.batch_size = int(batch_size)
        self.shuffle = bool(shuffle)
        self.augment = augment if is_active(augment) else None
        self.seed = int(seed)
        self.rank, self.world_size = int(rank), int(world_size)
        self.drop_last = self.shuffle if drop_last is None else bool(drop_last)
        self.device = torch.device(device) if device is not None else torch.device("cpu")
        self.epoch = 0
        # one private copy: the bundle's numpy arrays stay untouched
        self._images = torch.from_numpy(np.array(split.images, dtype=np.uint8, copy=True)).to(self.device)
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
            order = torch.randperm(n, generator=_generator(self.seed, epoch, _STREAM_ORDER))
        else:
            order = torch.arange(n)
        if self.world_size > 1:
            used = (n // self.world_size) * self.world_size if self.drop_last else n
            order = order[:used][self.rank :: self.world_size]
        return order[: len(self) * self.batch_size] if self.drop_last else order

    def __iter__(self) -> Iterator[tuple[torch.Tensor, ...]]:
        order = self.indices().to(self.device)
        for b in range(len(self)):
            idx = order[b * self.batch_size : (b + 1) * self.batch_size]
            x = self._images[idx].float().div_(255.0)
            if self.augment is not None:
                parts = (self.seed, self.epoch, self.rank, b, _STREAM_AUGMENT)
                rng = np.random.default_rng(np.random.SeedSequence([p % (1 << 63) for p in parts]))
                x = augment_batch(x, self.augment, _generator(*parts), rng)
            yield (x, self._labels[idx], *(e[idx] for e in self._extras))


def make_loaders(
    bundle: DatasetBundle,
    cfg: DataConfig,
    seed: int,
    rank: int = 0,
    world_size: int = 1,
    device: torch.device | str | None = None,
) -> tuple[BatchLoader, BatchLoader, BatchLoader]:
    """(train, val, test) loaders.

    Train: shuffled, augmented with ``cfg.augment``, ``drop_last``, sharded over DDP ranks.
    Val / test: in order, unaugmented, every sample on every rank, so each rank computes the same
    exact metrics (no padding duplicates, no collective needed to agree on the best epoch).
    """
    train = BatchLoader(bundle.train, cfg.batch_size, shuffle=True, augment=cfg.augment, seed=seed,
                        rank=rank, world_size=world_size, drop_last=True, device=device)
    val = BatchLoader(bundle.val, cfg.eval_batch_size, shuffle=False, seed=seed, drop_last=False, device=device)
    test = BatchLoader(bundle.test, cfg.eval_batch_size, shuffle=False, seed=seed, drop_last=False, device=device)
    return train, val, test
