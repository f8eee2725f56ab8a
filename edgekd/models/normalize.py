"""``Normalized``: the dataset's mean/std normalization as the first layer of the model.

Pixels everywhere in edgekd are float32 in [0, 1]; keeping the normalization inside the model
means it is exported into the ONNX graph, so a deployed model takes raw [0, 1] pixels and no
caller can forget (or double-apply) it.
"""
from __future__ import annotations

from typing import Sequence

import torch
from torch import nn


class Normalized(nn.Module):
    """``forward(x) = net((x - mean) / std)`` for ``x`` in [0, 1], NCHW.

    ``mean`` and ``std`` are per-channel sequences (length C); they are stored as buffers shaped
    ``[1, C, 1, 1]`` so they travel with ``state_dict`` and ``.to(device)``. ``.net`` is the raw
    classifier (what quantization and weight adaptation operate on).
    """

    def __init__(self, net: nn.Module, mean: Sequence[float], std: Sequence[float]) -> None:
        super().__init__()
        if len(mean) != len(std):
            raise ValueError(f"mean has {len(mean)} channels but std has {len(std)}")
        if any(s <= 0 for s in std):
            raise ValueError(f"std must be positive, got {tuple(std)}")
        self.net = net
        self.register_buffer("mean", torch.tensor(list(mean), dtype=torch.float32).view(1, -1, 1, 1))
        self.register_buffer("std", torch.tensor(list(std), dtype=torch.float32).view(1, -1, 1, 1))

    @property
    def channels(self) -> int:
        """Number of input channels the normalization expects."""
        return int(self.mean.shape[1])

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net((x - self.mean) / self.std)

    def extra_repr(self) -> str:
        return f"mean={self.mean.flatten().tolist()}, std={self.std.flatten().tolist()}"
