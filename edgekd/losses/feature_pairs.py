"""Which teacher layer guides which student layer, for the feature KD losses (FitNets, attention transfer).

``distill.features.pairs`` lists ``"teacher_layer=student_layer"`` module names. Left empty, the
pairing is derived from the two models: the teacher's stages are its ``net.layerN`` modules (every
ResNet and wide ResNet here), and each is paired with the LAST block of the student's ``net.features``
(MobileNets) whose output has the same spatial size, i.e. the deepest student block still at that
resolution. For the default ResNet-18 teacher and MobileNetV2 student on 28x28 inputs this gives
``net.layer1=net.features.3``, ``net.layer2=net.features.6``, ``net.layer3=net.features.13`` and
``net.layer4=net.features.18``. A pairing that cannot be derived is a ConfigError naming the fix.
"""
from __future__ import annotations

import re
from typing import Optional, Sequence

import torch
from torch import nn

from ..errors import ConfigError
from ..models.features import feature_shapes

Pair = tuple[str, str]  # (teacher layer, student layer)
_FIX = "set distill.features.pairs to 'teacher_layer=student_layer' module names (model.named_modules())"


def parse_pairs(specs: Sequence[str]) -> list[Pair]:
    """``["net.layer2=net.features.6"]`` -> ``[("net.layer2", "net.features.6")]`` (checked at config load)."""
    out = []
    for spec in specs:
        teacher, _, student = spec.partition("=")
        out.append((teacher.strip(), student.strip()))
    return out


def _children(model: nn.Module, prefix: str) -> list[str]:
    try:
        parent = model.get_submodule(prefix)
    except AttributeError:
        return []
    return [f"{prefix}.{name}" for name, _ in parent.named_children()]


def teacher_stages(teacher: nn.Module) -> list[str]:
    """``net.layer1``, ``net.layer2``, ... of a (wide) ResNet teacher, in order."""
    names = [n for n in _children(teacher, "net") if re.fullmatch(r"net\.layer\d+", n)]
    return sorted(names, key=lambda n: int(n.removeprefix("net.layer")))


def default_pairs(teacher: nn.Module, student: nn.Module, sample: torch.Tensor) -> list[Pair]:
    """Each teacher stage with the deepest student block of the same spatial size (see the module docstring)."""
    stages = teacher_stages(teacher)
    blocks = _children(student, "net.features")
    if not stages or not blocks:
        raise ConfigError("no default feature pairing for these models (the teacher has no net.layerN stages "
                          "or the student no net.features blocks)", _FIX)
    t_shapes = feature_shapes(teacher, stages, sample)
    s_shapes = feature_shapes(student, blocks, sample)
    pairs = []
    for stage in stages:
        same = [b for b in blocks if s_shapes[b][1:] == t_shapes[stage][1:]]
        if same:
            pairs.append((stage, same[-1]))
    if not pairs:
        raise ConfigError("no student block has the spatial size of any teacher stage", _FIX)
    return pairs


def resolve_pairs(specs: Sequence[str], teacher: nn.Module, student: nn.Module,
                  sample: Optional[torch.Tensor]) -> list[Pair]:
    """The configured pairs, or the default pairing (which needs ``sample`` to probe the shapes)."""
    if specs:
        return parse_pairs(specs)
    if sample is None:
        raise ConfigError("a feature KD loss needs a sample input to pair layers by shape", _FIX)
    return default_pairs(teacher, student, sample)
