"""Multi-teacher KD: the student learns from M teachers, possibly of different architectures.

With p_m = softmax(t_m / T) the m-th teacher's soft labels and weights w_m (summing to 1 per sample):

    loss = (1 - alpha) * CE(s, y) + alpha * T^2 * sum_m w_m * KL( p_m || softmax(s / T) )

``distill.teacher_weighting`` picks w:

- ``mean``: w_m = 1/M (the classic averaged ensemble, Hinton et al. 2015 sec. 1; You et al., KDD 2017);
- ``fixed``: ``distill.teacher_weights``, normalized (the run's own teacher first, then ``distill.teachers``);
- ``confidence``: per sample, from each teacher's cross-entropy on the true label (CA-MKD: Zhang, Chen &
  Wang, "Confidence-Aware Multi-Teacher Knowledge Distillation", ICASSP 2022):
  w_m = (1 - softmax_m(CE_m)) / (M - 1), CE_m = CE(t_m, y) per sample, so the teachers that are right
  about a sample count most for it.

The teachers are the run's own (teacher stage) plus ``distill.teachers`` (weights files or earlier runs),
run side by side by ``TeacherEnsemble``, whose output is the stacked logits [B, M, K]; the stages build
it (``edgekd/stages/kd_setup.py``). With one teacher ([B, K] logits) this is Hinton KD.
"""
from __future__ import annotations

from typing import Optional, Sequence

import torch
import torch.nn.functional as F
from torch import nn

from ..config import DistillConfig
from ..validation import TEACHER_WEIGHTINGS
from .base import KDLoss, register_kd_loss



class TeacherEnsemble(nn.Module):
    """Several teachers on the same input; ``forward(x)`` returns their logits stacked as [B, M, K]."""

    def __init__(self, teachers: Sequence[nn.Module]) -> None:
        super().__init__()
        self.teachers = nn.ModuleList(teachers)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.stack([t(x).float() for t in self.teachers], dim=1)


def confidence_weights(teacher_logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """CA-MKD weights [B, M]: ``w_m = (1 - softmax_m(CE_m)) / (M - 1)``, CE_m the m-th teacher's CE on y.

    A teacher with a low cross-entropy on the true label gets a high weight; the weights sum to 1 per
    sample (for M = 1 the single teacher gets weight 1).
    """
    b, m, k = teacher_logits.shape
    if m == 1:
        return teacher_logits.new_ones(b, 1)
    ce = F.cross_entropy(teacher_logits.reshape(b * m, k).float(), labels.repeat_interleave(m), reduction="none")
    return (1.0 - F.softmax(ce.view(b, m), dim=1)) / (m - 1)


@register_kd_loss("multi_teacher")
class MultiTeacherKD(KDLoss):
    """Weighted sum of the per-teacher Hinton KL terms, plus CE on the labels."""

    def __init__(self, temperature: float = 4.0, alpha: float = 0.9, weighting: str = "mean",
                 weights: Optional[Sequence[float]] = None, label_smoothing: float = 0.0) -> None:
        super().__init__()
        # validated at config load (edgekd.validation)
        assert temperature > 0 and 0.0 <= alpha <= 1.0 and weighting in TEACHER_WEIGHTINGS, (temperature, alpha, weighting)
        self.temperature, self.alpha = float(temperature), float(alpha)
        self.weighting = weighting
        self.fixed = [float(w) for w in (weights or [])]
        self.label_smoothing = float(label_smoothing)

    @classmethod
    def from_config(cls, cfg: DistillConfig) -> "MultiTeacherKD":
        return cls(cfg.temperature, cfg.alpha, cfg.teacher_weighting, cfg.teacher_weights, cfg.train.label_smoothing)

    def teacher_weights(self, teacher_logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        """[B, M] weights, each row summing to 1."""
        b, m, _ = teacher_logits.shape
        if self.weighting == "confidence":
            return confidence_weights(teacher_logits, labels)
        if self.weighting == "fixed":
            assert len(self.fixed) == m, f"{len(self.fixed)} teacher_weights for {m} teachers (checked at load)"
            w = teacher_logits.new_tensor(self.fixed)
            return (w / w.sum()).expand(b, m)
        return teacher_logits.new_full((b, m), 1.0 / m)

    def forward(self, student_logits: torch.Tensor, teacher_logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        t = teacher_logits.detach().float()
        if t.ndim == 2:  # one teacher
            t = t[:, None, :]
        temp = self.temperature
        w = self.teacher_weights(t, labels)  # [B, M]
        log_ps = F.log_softmax(student_logits.float() / temp, dim=1)[:, None, :]  # [B, 1, K]
        log_pt = F.log_softmax(t / temp, dim=2)  # [B, M, K]
        kl = (log_pt.exp() * (log_pt - log_ps)).sum(2)  # [B, M]
        kd = (w * kl).sum(1).mean() * temp * temp
        ce = F.cross_entropy(student_logits.float(), labels, label_smoothing=self.label_smoothing)
        return self.alpha * kd + (1.0 - self.alpha) * ce
