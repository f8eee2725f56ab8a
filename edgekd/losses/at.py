"""Attention transfer (Zagoruyko & Komodakis, ICLR 2017, "Paying More Attention to Attention",
arXiv:1612.03928), activation-based, beside Hinton KD.

The spatial attention map of a feature F [B, C, H, W] is Q(F) = mean_c F_c^2 (the paper's F^p_sum with
p = 2, as a mean so the scale does not depend on C), flattened and L2-normalized per sample. The
student matches the teacher's maps at each paired layer:

    loss = Hinton(s, t, y) + beta / 2 * sum_pairs mean_{b, j}( (Q_S / ||Q_S|| - Q_T / ||Q_T||)_{b, j}^2 )

``beta`` = ``distill.features.at_beta`` (paper: 1e3, with the mean over the map positions as in the
authors' code). Maps of different sizes: the larger map is average-pooled to the smaller size before
normalizing. No channel matching is needed, so AT has no adapter and no learnable parameter. Pairs:
``distill.features.pairs``, by default every teacher stage with its student block (``feature_pairs.py``).
"""
from __future__ import annotations

from typing import Optional

import torch
import torch.nn.functional as F
from torch import nn

from ..config import DistillConfig
from .base import KDLoss, register_kd_loss
from .feature_pairs import Pair, resolve_pairs
from .fitnets import match_size
from .hinton import HintonKD


def attention_map(feature: torch.Tensor) -> torch.Tensor:
    """``mean_c F^2`` [B, 1, H, W] (float32), not yet normalized."""
    return feature.float().pow(2).mean(1, keepdim=True)


def at_distance(student_feature: torch.Tensor, teacher_feature: torch.Tensor) -> torch.Tensor:
    """``mean_{b,j} (Q_S/||Q_S|| - Q_T/||Q_T||)^2`` for one pair of layers."""
    qs, qt = match_size(attention_map(student_feature), attention_map(teacher_feature.detach()))
    qs, qt = F.normalize(qs.flatten(1), dim=1), F.normalize(qt.flatten(1), dim=1)
    return (qs - qt).pow(2).mean()


@register_kd_loss("at")
class AttentionTransferKD(KDLoss):
    """Hinton KD plus ``beta/2`` x the attention-map distance summed over the layer pairs."""

    live_teacher = True  # reads the teacher's features

    def __init__(self, temperature: float = 4.0, alpha: float = 0.9, beta: float = 1000.0,
                 pairs: Optional[list[str]] = None, label_smoothing: float = 0.0) -> None:
        super().__init__()
        self.kd = HintonKD(temperature, alpha, label_smoothing)
        self.beta = float(beta)
        self.pair_specs = list(pairs or [])
        self.pairs: list[Pair] = []

    @classmethod
    def from_config(cls, cfg: DistillConfig) -> "AttentionTransferKD":
        return cls(cfg.temperature, cfg.alpha, cfg.features.at_beta, cfg.features.pairs, cfg.train.label_smoothing)

    def bind(self, student: nn.Module, teacher: nn.Module, sample: Optional[torch.Tensor]) -> None:
        self.pairs = resolve_pairs(self.pair_specs, teacher, student, sample)
        self.teacher_layers = tuple(t for t, _ in self.pairs)
        self.student_layers = tuple(s for _, s in self.pairs)

    def forward(self, student_logits: torch.Tensor, teacher_logits: torch.Tensor, labels: torch.Tensor,
                student_features: Optional[dict[str, torch.Tensor]] = None,
                teacher_features: Optional[dict[str, torch.Tensor]] = None) -> torch.Tensor:
        loss = self.kd(student_logits, teacher_logits, labels)
        if student_features is None or teacher_features is None:  # logits only (no taps): Hinton KD
            return loss
        at = sum(at_distance(student_features[s], teacher_features[t]) for t, s in self.pairs)
        return loss + self.beta / 2 * at
