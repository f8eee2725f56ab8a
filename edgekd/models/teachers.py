"""Teacher classifiers: torchvision ResNets and a CIFAR-style wide ResNet, adapted to small inputs.

Every constructor in ``TEACHERS`` is ``fn(cfg: ModelConfig, spec: InputSpec) -> nn.Module`` (the raw
network; ``build_teacher`` wraps it in ``Normalized``).

Small-input adaptation (``stem: small``, the default below 128 px; 28x28 / 32x32 instead of
ImageNet's 224x224): the 7x7 stride-2 stem becomes a 3x3 conv with stride ``cfg.stem_stride`` and
the stem max-pool is kept only when ``cfg.maxpool``; ``stem: native`` keeps torchvision's 7x7/2 conv
and max-pool, so its pretrained stem loads too; everything after the stem is torchvision's structure, so state_dict keys match
torchvision's and pretrained weights (all but the stem conv and the classifier) load unchanged.

``cfg.width`` scales every stage's channel count (64-128-256-512 for width 1) for all ResNets,
BasicBlock and Bottleneck alike, rounded to a multiple of 8; for the wide ResNet it scales the
widening factor k. Width 1 reproduces torchvision exactly.
"""
from __future__ import annotations

from typing import Any, Callable

import torch
from torch import nn
from torchvision.models import resnet as tv_resnet

from ..config import ModelConfig
from ..errors import ConfigError
from ..registry import Registry
from .common import InputSpec, scaled_channels, small_input_stem
from .stems import resolve_stem

TeacherFn = Callable[[ModelConfig, InputSpec], nn.Module]
TEACHERS: Registry[TeacherFn] = Registry("teacher")


class ScaledResNet(tv_resnet.ResNet):
    """torchvision's ResNet with every stage's ``planes`` scaled by ``width`` and a small-input stem.

    torchvision hard-codes 64/128/256/512 planes; scaling happens in ``_make_layer`` (the one place
    planes are chosen), and the stem and classifier built by ``ResNet.__init__`` are replaced to
    match. Module names stay torchvision's.
    """

    def __init__(
        self,
        block: type[tv_resnet.BasicBlock] | type[tv_resnet.Bottleneck],
        layers: list[int],
        in_channels: int,
        num_classes: int,
        width: float = 1.0,
        stem_stride: int = 1,
        maxpool: bool = True,
        stem: str = "small",
        **kwargs: Any,
    ) -> None:
        self._width = width  # read by _make_layer during ResNet.__init__
        self._stage = 0
        super().__init__(block, layers, num_classes=num_classes, **kwargs)
        stem_out = scaled_channels(64, width)
        if stem == "native":  # torchvision's own 7x7/2 conv + max-pool: pretrained stem weights load
            self.conv1 = nn.Conv2d(in_channels, stem_out, kernel_size=7, stride=2, padding=3, bias=False)
            maxpool = True
        else:
            self.conv1 = small_input_stem(in_channels, stem_out, stem_stride)
        self.bn1 = nn.BatchNorm2d(stem_out)
        self.maxpool = nn.MaxPool2d(kernel_size=3, stride=2, padding=1) if maxpool else nn.Identity()
        self.fc = nn.Linear(scaled_channels(512, width) * block.expansion, num_classes)
        nn.init.kaiming_normal_(self.conv1.weight, mode="fan_out", nonlinearity="relu")

    def _make_layer(self, block: Any, planes: int, blocks: int, stride: int = 1, dilate: bool = False) -> nn.Sequential:
        if self._stage == 0:
            self.inplanes = scaled_channels(64, self._width)  # the (scaled) stem's output
        self._stage += 1
        return super()._make_layer(block, scaled_channels(planes, self._width), blocks, stride, dilate)


def _resnet(block: Any, layers: list[int], **kwargs: Any) -> TeacherFn:
    def build(cfg: ModelConfig, spec: InputSpec) -> nn.Module:
        return ScaledResNet(block, layers, spec.in_channels, spec.num_classes, width=cfg.width,
                            stem_stride=cfg.stem_stride, maxpool=cfg.maxpool, stem=resolve_stem(cfg, spec), **kwargs)

    return build


# Block counts as in torchvision (He et al. 2016; wide_resnet50_2: Zagoruyko & Komodakis 2016).
TEACHERS.register("resnet18")(_resnet(tv_resnet.BasicBlock, [2, 2, 2, 2]))
TEACHERS.register("resnet34")(_resnet(tv_resnet.BasicBlock, [3, 4, 6, 3]))
TEACHERS.register("resnet50")(_resnet(tv_resnet.Bottleneck, [3, 4, 6, 3]))
TEACHERS.register("wide_resnet50_2")(_resnet(tv_resnet.Bottleneck, [3, 4, 6, 3], width_per_group=128))


class _WideBlock(nn.Module):
    """Pre-activation basic block of WRN: BN-ReLU-conv3x3 (-dropout) -BN-ReLU-conv3x3, plus shortcut."""

    def __init__(self, cin: int, cout: int, stride: int, dropout: float) -> None:
        super().__init__()
        self.bn1 = nn.BatchNorm2d(cin)
        self.conv1 = nn.Conv2d(cin, cout, 3, stride, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(cout)
        self.conv2 = nn.Conv2d(cout, cout, 3, 1, 1, bias=False)
        self.relu = nn.ReLU(inplace=True)
        self.dropout = nn.Dropout(dropout) if dropout > 0 else nn.Identity()
        self.shortcut = None if (cin == cout and stride == 1) else nn.Conv2d(cin, cout, 1, stride, 0, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        o = self.relu(self.bn1(x))
        # The projection shortcut reads the pre-activated input (as in the reference implementation).
        shortcut = x if self.shortcut is None else self.shortcut(o)
        o = self.conv2(self.dropout(self.relu(self.bn2(self.conv1(o)))))
        return o + shortcut


class WideResNet(nn.Module):
    """WRN-depth-k for small images (Zagoruyko & Komodakis 2016, "Wide Residual Networks", arXiv:1605.07146).

    depth = 6n + 4; three groups of n pre-activation blocks with 16k, 32k, 64k channels, strides 1, 2, 2.
    """

    def __init__(self, depth: int, k: float, in_channels: int, num_classes: int, stem_stride: int = 1,
                 maxpool: bool = False, dropout: float = 0.0) -> None:
        super().__init__()
        if (depth - 4) % 6 != 0:
            raise ConfigError(f"wide ResNet depth must be 6n+4, got {depth}", "use depth 16, 22, 28 or 40")
        n = (depth - 4) // 6
        widths = [16] + [max(8, int(round(c * k))) for c in (16, 32, 64)]
        self.conv1 = small_input_stem(in_channels, widths[0], stem_stride)
        self.maxpool = nn.MaxPool2d(3, 2, 1) if maxpool else nn.Identity()
        groups, cin = [], widths[0]
        for g, stride in enumerate((1, 2, 2)):
            cout = widths[g + 1]
            blocks = [_WideBlock(cin if i == 0 else cout, cout, stride if i == 0 else 1, dropout) for i in range(n)]
            groups.append(nn.Sequential(*blocks))
            cin = cout
        self.layer1, self.layer2, self.layer3 = groups
        self.bn = nn.BatchNorm2d(cin)
        self.relu = nn.ReLU(inplace=True)
        self.avgpool = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(cin, num_classes)
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
            elif isinstance(m, nn.BatchNorm2d):
                nn.init.ones_(m.weight)
                nn.init.zeros_(m.bias)
            elif isinstance(m, nn.Linear):
                nn.init.zeros_(m.bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.maxpool(self.conv1(x))
        x = self.layer3(self.layer2(self.layer1(x)))
        x = self.avgpool(self.relu(self.bn(x)))
        return self.fc(x.flatten(1))


def _wrn(depth: int, k: int) -> TeacherFn:
    def build(cfg: ModelConfig, spec: InputSpec) -> nn.Module:
        return WideResNet(depth, k * cfg.width, spec.in_channels, spec.num_classes, cfg.stem_stride, cfg.maxpool)

    return build


TEACHERS.register("wrn16_4")(_wrn(16, 4))
TEACHERS.register("wrn28_10")(_wrn(28, 10))
