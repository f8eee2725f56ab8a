"""Fitting any classifier to the data: input channels, class count (the head) and the stem.

Used for models from outside edgekd (torchvision, timm): they come as published (3 input channels,
1000 classes, an ImageNet stem) and are changed here in place, keeping every pretrained tensor
that still fits:
- the first conv takes ``spec.in_channels``; pretrained RGB filters are summed for a grey input
  (a grey image is R = G = B, so the response is unchanged) or averaged and repeated otherwise;
- the classifier (the last Linear, or conv, with the published class count) gets
  ``spec.num_classes`` outputs, freshly initialized;
- ``stem: small`` sets the first conv's stride to ``stem_stride`` (its kernel and weights stay) and
  drops a stem max-pool unless ``maxpool``; ``stem: native`` keeps the published stem.
"""
from __future__ import annotations

from typing import Any

import torch
from torch import nn

from ..config import ModelConfig
from .common import InputSpec

NATIVE_MIN_SIZE = 128  # stem "auto": images this large keep the ImageNet stem (it was designed for 224 px)


def resolve_stem(cfg: ModelConfig, spec: InputSpec) -> str:
    """``small`` or ``native`` for ``cfg.stem`` (``auto`` picks by image size)."""
    if cfg.stem != "auto":
        return cfg.stem
    return "native" if min(spec.image_size) >= NATIVE_MIN_SIZE else "small"


def _set(net: nn.Module, path: str, module: nn.Module) -> None:
    parent, _, attr = path.rpartition(".")
    setattr(net.get_submodule(parent) if parent else net, attr, module)


def first_conv(net: nn.Module) -> tuple[str, nn.Conv2d]:
    """(path, module) of the first Conv2d in registration order: the stem conv of every CNN here."""
    for name, m in net.named_modules():
        if isinstance(m, nn.Conv2d):
            return name, m
    raise ValueError(f"{type(net).__name__} has no Conv2d")


def adapt_in_channels(net: nn.Module, in_channels: int) -> None:
    """Make the stem conv take ``in_channels``, deriving its filters from the pretrained ones."""
    path, conv = first_conv(net)
    if conv.in_channels == in_channels:
        return
    new = type(conv)(in_channels, conv.out_channels, conv.kernel_size, conv.stride, conv.padding,  # type: ignore[call-arg]
                     conv.dilation, conv.groups, conv.bias is not None, conv.padding_mode)
    with torch.no_grad():
        w = conv.weight.sum(dim=1, keepdim=True)  # grey = R = G = B: the summed filter responds the same
        new.weight.copy_(w if in_channels == 1 else w.repeat(1, in_channels, 1, 1) / in_channels)
        if conv.bias is not None:
            new.bias.copy_(conv.bias)
    _set(net, path, new)


def replace_head(net: nn.Module, num_classes: int, published_classes: int = 1000) -> str:
    """Give the classifier ``num_classes`` outputs; returns its path.

    The classifier is the last Linear (or 1x1 conv, SqueezeNet) with ``published_classes`` outputs.
    A timm model resets its own (``reset_classifier``), which also handles its distilled heads.
    """
    if hasattr(net, "reset_classifier"):
        net.reset_classifier(num_classes)
        return "reset_classifier"
    heads = [(n, m) for n, m in net.named_modules()
             if (isinstance(m, nn.Linear) and m.out_features == published_classes)
             or (isinstance(m, nn.Conv2d) and m.out_channels == published_classes)]
    if not heads:
        raise ValueError(f"{type(net).__name__} has no Linear/Conv2d with {published_classes} outputs")
    path, old = heads[-1]
    if isinstance(old, nn.Linear):
        new: nn.Module = nn.Linear(old.in_features, num_classes, bias=old.bias is not None)
    else:
        new = nn.Conv2d(old.in_channels, num_classes, old.kernel_size, old.stride, old.padding, bias=old.bias is not None)
    _set(net, path, new)
    return path


def adapt_small_stem(net: nn.Module, stride: int, keep_maxpool: bool) -> dict[str, Any]:
    """Stem for small images: the first conv's stride becomes ``stride``; the stem max-pool (a
    MaxPool2d registered before the second conv) becomes Identity unless ``keep_maxpool``."""
    path, conv = first_conv(net)
    conv.stride = (stride, stride)
    pool = None
    seen_convs = 0
    for name, m in net.named_modules():
        if isinstance(m, nn.Conv2d):
            seen_convs += 1
            if seen_convs > 1:
                break
        elif isinstance(m, nn.MaxPool2d) and not keep_maxpool:
            _set(net, name, nn.Identity())
            pool = name
            break
    return {"stem_conv": path, "stride": stride, "maxpool_removed": pool}


__all__ = ["NATIVE_MIN_SIZE", "adapt_in_channels", "adapt_small_stem", "first_conv", "replace_head", "resolve_stem"]
