"""Batched train-time augmentation on float [0, 1] NCHW tensors (no per-sample Python loops).

All randomness comes from the ``torch.Generator`` (CPU) and ``numpy.random.Generator`` passed in, so a
batch's augmentation is a pure function of the seeds the loader derives from (seed, epoch, rank, batch),
and the same on CPU and GPU: random numbers are drawn on the CPU and moved to the images' device.
"""
from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F

from ..config import AugmentConfig


def is_active(aug: AugmentConfig | None) -> bool:
    """Whether ``aug`` changes anything."""
    return aug is not None and bool(aug.crop_padding or aug.hflip or aug.noise_std > 0 or aug.corruption_prob > 0)


def random_crop(x: torch.Tensor, padding: int, gen: torch.Generator) -> torch.Tensor:
    """Zero-pad by ``padding`` and crop back to H x W at a random offset per sample."""
    if padding <= 0:
        return x
    b, _, h, w = x.shape
    padded = F.pad(x, (padding, padding, padding, padding))
    oy = torch.randint(0, 2 * padding + 1, (b,), generator=gen).to(x.device)
    ox = torch.randint(0, 2 * padding + 1, (b,), generator=gen).to(x.device)
    rows = oy[:, None] + torch.arange(h, device=x.device)  # [B, H]
    cols = ox[:, None] + torch.arange(w, device=x.device)  # [B, W]
    batch = torch.arange(b, device=x.device)[:, None, None]
    out = padded.permute(0, 2, 3, 1)[batch, rows[:, :, None], cols[:, None, :]]  # [B, H, W, C]
    return out.permute(0, 3, 1, 2).contiguous()


def random_hflip(x: torch.Tensor, gen: torch.Generator) -> torch.Tensor:
    """Mirror each sample left-right with probability 1/2.

    Fine for clothes and most objects; wrong for digits or text (a mirrored 2 is not a 2), so it
    is a config switch (``data.augment.hflip``).
    """
    flip = (torch.rand(x.shape[0], generator=gen) < 0.5).to(x.device)
    return torch.where(flip[:, None, None, None], x.flip(-1), x)


def gaussian_noise(x: torch.Tensor, std: float, gen: torch.Generator) -> torch.Tensor:
    """Add N(0, std^2) noise and clip back to [0, 1]."""
    if std <= 0:
        return x
    noise = torch.randn(x.shape, generator=gen).to(x.device, x.dtype)
    return (x + std * noise).clamp_(0.0, 1.0)


def random_corruption(x: torch.Tensor, prob: float, max_severity: int, rng: np.random.Generator) -> torch.Tensor:
    """With probability ``prob`` per batch, apply one random registered corruption at a random
    severity 1..``max_severity`` to the whole batch (numpy, ``edgekd.robustness.corruptions``)."""
    if prob <= 0 or rng.random() >= prob:
        return x
    from ..robustness.corruptions import CORRUPTIONS, apply_corruption  # only needed when enabled

    names = CORRUPTIONS.names()
    name = names[int(rng.integers(len(names)))]
    severity = int(rng.integers(1, max(1, min(5, max_severity)) + 1))
    out = apply_corruption(name, x.detach().cpu().numpy(), severity, rng)
    return torch.from_numpy(np.ascontiguousarray(out)).to(x.device, x.dtype)


def augment_batch(x: torch.Tensor, aug: AugmentConfig, gen: torch.Generator, rng: np.random.Generator) -> torch.Tensor:
    """Crop, flip, corruption, noise, in that order; the result stays in [0, 1] with ``x``'s shape."""
    x = random_crop(x, aug.crop_padding, gen)
    if aug.hflip:
        x = random_hflip(x, gen)
    x = random_corruption(x, aug.corruption_prob, aug.corruption_max_severity, rng)
    return gaussian_noise(x, aug.noise_std, gen)
