"""The no-KD baseline: plain cross-entropy on the labels, teacher ignored."""
from __future__ import annotations

import torch
import torch.nn.functional as F

from ..config import DistillConfig
from .base import KDLoss, register_kd_loss


@register_kd_loss("ce")
class CrossEntropyOnly(KDLoss):
    """``CE(s, y)`` (optionally label-smoothed); ``teacher_logits`` are accepted and ignored.

    Training a student with this loss through the same distill stage gives the baseline that
    shows what distillation adds.
    """

    uses = ()  # labels only
    reads_teacher = False  # neither the step nor the distill stage's cache runs the teacher for it

    def __init__(self, label_smoothing: float = 0.0) -> None:
        super().__init__()
        self.label_smoothing = float(label_smoothing)

    @classmethod
    def from_config(cls, cfg: DistillConfig) -> "CrossEntropyOnly":
        return cls(cfg.train.label_smoothing)

    def forward(self, student_logits: torch.Tensor, teacher_logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        return F.cross_entropy(student_logits.float(), labels, label_smoothing=self.label_smoothing)
