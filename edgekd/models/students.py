"""Student classifiers: torchvision MobileNets adapted to small inputs.

Every constructor in ``STUDENTS`` is ``fn(cfg: ModelConfig, spec: InputSpec) -> nn.Module`` (the
raw network; ``build_student`` wraps it in ``Normalized``).

Adaptation, keeping torchvision's structure and module names (so pretrained weights still load):
- the stem conv takes ``spec.in_channels`` and uses stride ``cfg.stem_stride`` (1 keeps a 28x28
  input's resolution; torchvision's 2 is meant for 224x224);
- ``cfg.width`` is the width multiplier (``width_mult``) of MobileNetV2/V3;
- the classifier's last Linear has ``spec.num_classes`` outputs (torchvision's dropout is kept);
- the last stride-2 blocks are turned into stride 1 while the final feature map would be smaller
  than ``MIN_FINAL_SIZE`` (with padding a map never drops below 1x1, but at 1x1 every 3x3/5x5
  depthwise conv of the last stages degenerates to its centre tap). Only strides change; no
  parameter shapes do;
- every residual block starts as the identity: the BatchNorm after its projection conv starts with
  weight 0 (``zero_init_residual``, as torchvision's ResNet option and Goyal et al. 2017). With
  torchvision's init (BN weight 1) the 10 residual blocks of MobileNetV2 add up un-scaled, and a
  from-scratch student on a harder folder than Fashion-MNIST barely learned in the first 2 epochs
  (issue 12: 2 000 RGB 32x32 digits, 88 AdamW steps, val 0.15-0.24; with this init 0.42-0.49).
  Pretrained torchvision weights, loaded after this, overwrite it.
"""
from __future__ import annotations

import math
from typing import Callable

from torch import nn
from torchvision.models import mobilenet_v2 as tv_mobilenet_v2
from torchvision.models import mobilenet_v3_large as tv_mobilenet_v3_large
from torchvision.models import mobilenet_v3_small as tv_mobilenet_v3_small

from ..config import ModelConfig
from ..errors import ConfigError
from ..registry import Registry
from .common import InputSpec, small_input_stem
from .stems import resolve_stem

StudentFn = Callable[[ModelConfig, InputSpec], nn.Module]
STUDENTS: Registry[StudentFn] = Registry("student")

MIN_FINAL_SIZE = 2


def _replace_stem(features: nn.Sequential, in_channels: int, stride: int) -> None:
    """Swap the first conv of ``features`` for one with ``in_channels`` inputs and ``stride``."""
    old = features[0][0]
    assert isinstance(old, nn.Conv2d), f"unexpected torchvision stem {type(old).__name__}"
    assert old.kernel_size == (3, 3) and old.padding == (1, 1) and old.bias is None, "torchvision's MobileNet stem changed"
    new = small_input_stem(in_channels, old.out_channels, stride)  # the same conv, stride checked there
    nn.init.kaiming_normal_(new.weight, mode="fan_out")  # torchvision's MobileNet conv init
    features[0][0] = new


def _strided_convs(block: nn.Module) -> list[nn.Conv2d]:
    return [m for m in block.modules() if isinstance(m, nn.Conv2d) and tuple(m.stride) != (1, 1)]


def limit_downsampling(features: nn.Sequential, image_size: tuple[int, int], min_size: int = MIN_FINAL_SIZE) -> list[int]:
    """Set the last downsampling blocks of ``features`` to stride 1 until the final map is >= ``min_size``.

    Returns the indices of the blocks changed. Each stride-2 conv (kernel k, padding k//2) maps n
    to ceil(n / 2), which is what the size bookkeeping below uses.
    """
    down = [i for i, block in enumerate(features) if _strided_convs(block)]
    size = min(image_size)

    def final(blocks: list[int]) -> int:
        n = size
        for _ in blocks:
            n = math.ceil(n / 2)
        return n

    changed: list[int] = []
    while len(down) > 1 and final(down) < min_size:  # keep the first downsampling (the stem's, if strided)
        i = down.pop()
        for conv in _strided_convs(features[i]):
            conv.stride = (1, 1)
        changed.append(i)
    return changed


def zero_init_residual(features: nn.Sequential) -> list[int]:
    """Zero the weight of the last BatchNorm in every residual block of ``features`` (so the block
    starts as the identity); returns the indices of the blocks changed."""
    changed = []
    for i, block in enumerate(features):
        if getattr(block, "use_res_connect", False):  # torchvision's InvertedResidual (V2 and V3)
            last_bn = [m for m in block.modules() if isinstance(m, nn.BatchNorm2d)][-1]
            nn.init.zeros_(last_bn.weight)
            changed.append(i)
    return changed


def _adapt(net: nn.Module, cfg: ModelConfig, spec: InputSpec) -> nn.Module:
    zero_init_residual(net.features)
    # stem native: torchvision's stride 2 (the kernel is 3x3 either way, so pretrained weights load)
    _replace_stem(net.features, spec.in_channels, 2 if resolve_stem(cfg, spec) == "native" else cfg.stem_stride)
    limit_downsampling(net.features, spec.image_size)
    return net


@STUDENTS.register("mobilenet_v2")
def mobilenet_v2(cfg: ModelConfig, spec: InputSpec) -> nn.Module:
    """MobileNetV2 (Sandler et al. 2018) with width multiplier ``cfg.width``."""
    return _adapt(tv_mobilenet_v2(weights=None, width_mult=cfg.width, num_classes=spec.num_classes), cfg, spec)


@STUDENTS.register("mobilenet_v3_small")
def mobilenet_v3_small(cfg: ModelConfig, spec: InputSpec) -> nn.Module:
    """MobileNetV3-Small (Howard et al. 2019) with width multiplier ``cfg.width``."""
    return _adapt(tv_mobilenet_v3_small(weights=None, width_mult=cfg.width, num_classes=spec.num_classes), cfg, spec)


@STUDENTS.register("mobilenet_v3_large")
def mobilenet_v3_large(cfg: ModelConfig, spec: InputSpec) -> nn.Module:
    """MobileNetV3-Large (Howard et al. 2019) with width multiplier ``cfg.width``."""
    return _adapt(tv_mobilenet_v3_large(weights=None, width_mult=cfg.width, num_classes=spec.num_classes), cfg, spec)
