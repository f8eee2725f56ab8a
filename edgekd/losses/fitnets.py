"""FitNets hints (Romero, Ballas, Kahou, Chassang, Gatta & Bengio, ICLR 2015, arXiv:1412.6550).

A student layer v (the "guided" layer) is regressed onto a teacher layer u (the "hint") through a
learned 1x1 convolution r (the adapter, student channels -> teacher channels), beside Hinton KD:

    loss = Hinton(s, t, y) + w * sum_pairs mean( (r(v) - u)^2 )

``w`` = ``distill.features.hint_weight``; the mean runs over batch, channels and positions (the
paper's 1/2 ||u - r(v)||^2, scaled per element). When the two maps differ in size, the larger is
average-pooled to the smaller. The pairs come from ``distill.features.pairs``; by default the one
middle pair of the default pairing (``feature_pairs.py``; ResNet-18 -> MobileNetV2: ``net.layer2`` ->
``net.features.6``), as the paper uses one hint in the middle of the network. The adapters are
parameters of this loss: the engine optimizes them with the student (``aux``), and they are never
part of the student, its weights file or its ONNX export.
"""
from __future__ import annotations

from typing import Optional

import torch
import torch.nn.functional as F
from torch import nn

from ..config import DistillConfig
from ..models.features import feature_shapes
from .base import KDLoss, register_kd_loss
from .feature_pairs import Pair, resolve_pairs
from .hinton import HintonKD


def match_size(a: torch.Tensor, b: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """``a`` and ``b`` [B, C, H, W] with the larger average-pooled to the smaller's H x W."""
    if a.shape[-2:] == b.shape[-2:]:
        return a, b
    h, w = min(a.shape[-2], b.shape[-2]), min(a.shape[-1], b.shape[-1])
    return F.adaptive_avg_pool2d(a, (h, w)), F.adaptive_avg_pool2d(b, (h, w))


@register_kd_loss("fitnets")
class FitNetsKD(KDLoss):
    """Hinton KD plus ``hint_weight`` x MSE between adapted student features and teacher features."""

    live_teacher = True  # reads the teacher's features
    carries_to_qat = True  # QAT's hints go through the adapters distill learned, not fresh random ones

    def __init__(self, temperature: float = 4.0, alpha: float = 0.9, hint_weight: float = 1.0,
                 pairs: Optional[list[str]] = None, label_smoothing: float = 0.0) -> None:
        super().__init__()
        self.kd = HintonKD(temperature, alpha, label_smoothing)
        self.hint_weight = float(hint_weight)
        self.pair_specs = list(pairs or [])
        self.pairs: list[Pair] = []
        self.adapters = nn.ModuleList()

    @classmethod
    def from_config(cls, cfg: DistillConfig) -> "FitNetsKD":
        return cls(cfg.temperature, cfg.alpha, cfg.features.hint_weight, cfg.features.pairs, cfg.train.label_smoothing)

    def bind(self, student: nn.Module, teacher: nn.Module, sample: Optional[torch.Tensor]) -> None:
        """Pick the pairs and build one 1x1 adapter per pair, sized by probing ``sample``."""
        if sample is None:  # the adapters' channel counts come from probing the models
            raise ValueError("FitNetsKD.bind needs a sample input to size its adapters")
        pairs = resolve_pairs(self.pair_specs, teacher, student, sample)
        self.pairs = pairs if self.pair_specs else [pairs[(len(pairs) - 1) // 2]]
        self.teacher_layers = tuple(t for t, _ in self.pairs)
        self.student_layers = tuple(s for _, s in self.pairs)
        device = next(student.parameters()).device
        t_shapes = feature_shapes(teacher, self.teacher_layers, sample)
        s_shapes = feature_shapes(student, self.student_layers, sample)
        self.adapters = nn.ModuleList(
            nn.Conv2d(s_shapes[s][0], t_shapes[t][0], kernel_size=1) for t, s in self.pairs).to(device)

    def hint(self, student_features: dict[str, torch.Tensor], teacher_features: dict[str, torch.Tensor]) -> torch.Tensor:
        """``sum_pairs mean((r(v) - u)^2)`` (float32)."""
        total = torch.zeros((), device=next(iter(student_features.values())).device)
        for (t_name, s_name), adapter in zip(self.pairs, self.adapters):
            v = adapter(student_features[s_name].float())
            u = teacher_features[t_name].detach().float()
            v, u = match_size(v, u)
            total = total + F.mse_loss(v, u)
        return total

    def forward(self, student_logits: torch.Tensor, teacher_logits: torch.Tensor, labels: torch.Tensor,
                student_features: Optional[dict[str, torch.Tensor]] = None,
                teacher_features: Optional[dict[str, torch.Tensor]] = None) -> torch.Tensor:
        loss = self.kd(student_logits, teacher_logits, labels)
        if student_features is None or teacher_features is None:  # logits only (no taps): Hinton KD
            return loss
        return loss + self.hint_weight * self.hint(student_features, teacher_features)
