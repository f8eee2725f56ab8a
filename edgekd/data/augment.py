"""The one train-time augmenter: batched, on float [0, 1] NCHW tensors (no per-sample Python loops).

Two parts, kept apart so that a call site says which model sees which:

- **geometric** (``crop_padding``, ``hflip``): changes what the image shows where; in KD stages both
  the teacher and the student see it (the teacher's soft labels must describe the student's image).
- **photometric** (``corruption_prob`` up to ``corruption_max_severity``, then ``noise_std``): degrades
  the pixels; in KD stages only the student sees it (robust KD option (a)), the teacher sees the clean
  geometric view.

All randomness of a batch comes from two generators derived from (seed, epoch, rank, batch index)
(:meth:`Augmenter.streams`), so a batch's augmentation is a pure function of those numbers: a run
resumed after a kill sees the same images, and CPU and GPU agree (random numbers are drawn on the CPU
and moved to the images' device). The photometric part continues the geometric part's stream, so the
student's view in a KD stage is exactly the image a single model would get from the same loader.
"""
from __future__ import annotations

from typing import Sequence

import numpy as np
import torch
import torch.nn.functional as F

from ..config import AugmentConfig

_STREAM_AUGMENT = 12


def mix_seed(*parts: int) -> int:
    """A well-mixed 63-bit seed from integer parts (SeedSequence hashing, no collisions in practice)."""
    state = np.random.SeedSequence([p % (1 << 63) for p in parts]).generate_state(2, dtype=np.uint32)
    return (int(state[0]) << 31) ^ int(state[1])


def seeded_generator(*parts: int) -> torch.Generator:
    """A CPU ``torch.Generator`` seeded by :func:`mix_seed` of ``parts``."""
    return torch.Generator().manual_seed(mix_seed(*parts))


def is_active(aug: AugmentConfig | None) -> bool:
    """Whether ``aug`` changes anything."""
    return aug is not None and (has_geometric(aug) or has_photometric(aug))


def has_geometric(aug: AugmentConfig) -> bool:
    return bool(aug.crop_padding or aug.hflip)


def has_photometric(aug: AugmentConfig) -> bool:
    return bool(aug.noise_std > 0 or aug.corruption_prob > 0)


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


def random_corruption(x: torch.Tensor, prob: float, max_severity: int, rng: np.random.Generator,
                      names: Sequence[str] = ()) -> torch.Tensor:
    """With probability ``prob`` per batch, apply one random corruption of ``names`` (empty: every registered
    one) at a random severity 1..``max_severity`` to the whole batch (numpy, ``edgekd.robustness.corruptions``)."""
    assert 1 <= max_severity <= 5, f"corruption severities run from 1 to 5, got {max_severity}"
    if prob <= 0 or rng.random() >= prob:
        return x
    from ..robustness.corruptions import CORRUPTIONS, apply_corruption  # only needed when enabled

    names = list(names) or CORRUPTIONS.names()
    name = names[int(rng.integers(len(names)))]
    severity = int(rng.integers(1, max_severity + 1))
    out = apply_corruption(name, x.detach().cpu().numpy(), severity, rng)
    return torch.from_numpy(np.ascontiguousarray(out)).to(x.device, x.dtype)


class Augmenter:
    """``data.augment`` for one run: its geometric and photometric parts, seeded per batch.

    ``views(x, epoch, batch, rank)`` returns ``(geometric_view, photometric_view)``: the second is the
    first with the photometric part applied (the same tensor when that part is off). A single model
    trains on the photometric view; a KD teacher gets the geometric view and its student the
    photometric one.
    """

    def __init__(self, cfg: AugmentConfig, seed: int) -> None:
        self.cfg = cfg
        self.seed = int(seed)
        self.geometric_on = has_geometric(cfg)
        self.photometric_on = has_photometric(cfg)

    def streams(self, epoch: int, batch: int, rank: int = 0) -> tuple[torch.Generator, np.random.Generator]:
        """The batch's torch and numpy generators: a pure function of (seed, epoch, rank, batch)."""
        parts = (self.seed, epoch, rank, batch, _STREAM_AUGMENT)
        rng = np.random.default_rng(np.random.SeedSequence([p % (1 << 63) for p in parts]))
        return seeded_generator(*parts), rng

    def geometric(self, x: torch.Tensor, gen: torch.Generator) -> torch.Tensor:
        """Random crop, then random horizontal flip."""
        x = random_crop(x, self.cfg.crop_padding, gen)
        return random_hflip(x, gen) if self.cfg.hflip else x

    def photometric(self, x: torch.Tensor, gen: torch.Generator, rng: np.random.Generator) -> torch.Tensor:
        """A random corruption (severity capped by ``corruption_max_severity``), then Gaussian noise; ``x`` is not modified."""
        x = random_corruption(x, self.cfg.corruption_prob, self.cfg.corruption_max_severity, rng,
                              self.cfg.corruptions)
        return gaussian_noise(x, self.cfg.noise_std, gen)

    def views(self, x: torch.Tensor, epoch: int, batch: int, rank: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
        """``(geometric view, photometric view)`` of batch ``batch`` of ``epoch`` on ``rank``; both in [0, 1]."""
        gen, rng = self.streams(epoch, batch, rank)
        geo = self.geometric(x, gen)
        return geo, (self.photometric(geo, gen, rng) if self.photometric_on else geo)
