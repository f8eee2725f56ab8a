"""Pieces the teacher and student builders share: the input spec and small-input helpers."""
from __future__ import annotations

from dataclasses import dataclass

from torch import nn

from ..errors import ConfigError
from ..validation import STEM_STRIDES


@dataclass(frozen=True)
class InputSpec:
    """What a network needs to know about the data: input channels, classes, image size (H, W)."""

    in_channels: int
    num_classes: int
    image_size: tuple[int, int]


def scaled_channels(channels: int, width: float, divisor: int = 8) -> int:
    """``channels * width`` rounded to the nearest multiple of ``divisor`` (at least ``divisor``)."""
    if width <= 0:
        raise ConfigError(f"model width must be > 0, got {width}", "set teacher.width / student.width to a positive number")
    return max(divisor, int(round(channels * width / divisor)) * divisor)


def small_input_stem(in_channels: int, out_channels: int, stride: int) -> nn.Conv2d:
    """The 3x3 stem conv used instead of ImageNet's 7x7 / stride-2 one."""
    assert stride in STEM_STRIDES, f"stem_stride {stride} is not one of {STEM_STRIDES} (checked at config load)"
    return nn.Conv2d(in_channels, out_channels, kernel_size=3, stride=stride, padding=1, bias=False)
