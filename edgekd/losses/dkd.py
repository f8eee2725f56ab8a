"""DKD: Decoupled Knowledge Distillation (Zhao, Cui, Song, Qiu & Liang, CVPR 2022, arXiv:2203.08679).

Hinton's KL splits into a target-class part (TCKD: the binary "target vs. the rest" distribution
b = [p_y, 1 - p_y]) and a non-target part (NCKD: the distribution p^ over the K - 1 other classes),
``KD = TCKD + (1 - p_y^T) NCKD``; the factor (1 - p_y^T) suppresses NCKD exactly where the teacher is
confident. DKD weighs the two parts freely:

    loss = CE(s, y) + alpha * T^2 * KL(b^T || b^S) + beta * T^2 * KL(p^^T || p^^S)

all distributions at temperature T (``distill.temperature``), KLs summed over classes and averaged
over the batch; ``alpha`` / ``beta`` = ``distill.dkd.alpha`` / ``.beta`` (paper: 1 and 8, T = 4). The
paper's linear warm-up of the KD terms over the first epochs is left out.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F

from ..config import DistillConfig
from .base import KDLoss, register_kd_loss


def decoupled_kl(student_logits: torch.Tensor, teacher_logits: torch.Tensor, labels: torch.Tensor,
                 temperature: float) -> tuple[torch.Tensor, torch.Tensor]:
    """``(TCKD, NCKD)`` at ``temperature``, each batch-averaged (float32), computed in log space."""
    s = student_logits.float() / temperature
    t = teacher_logits.float() / temperature
    target = F.one_hot(labels, s.shape[1]).bool()

    def binary_log_probs(z: torch.Tensor) -> torch.Tensor:  # [B, 2]: log p_y, log (1 - p_y)
        total = torch.logsumexp(z, dim=1)
        return torch.stack([z[target] - total, torch.logsumexp(z.masked_fill(target, float("-inf")), 1) - total], 1)

    bs, bt = binary_log_probs(s), binary_log_probs(t)
    tckd = (bt.exp() * (bt - bs)).sum(1).mean()
    # the target class is masked out (-inf), so these are distributions over the K - 1 other classes
    ns = F.log_softmax(s.masked_fill(target, float("-inf")), dim=1)
    nt = F.log_softmax(t.masked_fill(target, float("-inf")), dim=1)
    nckd = torch.where(target, 0.0, nt.exp() * (nt - ns)).sum(1).mean()  # 0 * (-inf - -inf) would be NaN
    return tckd, nckd


@register_kd_loss("dkd")
class DecoupledKD(KDLoss):
    """DKD; ``alpha``/``beta`` weigh TCKD/NCKD, CE on the labels has weight 1 (as in the paper)."""

    uses = ("temperature",)  # its alpha and beta are distill.dkd's, not distill.alpha

    def __init__(self, temperature: float = 4.0, alpha: float = 1.0, beta: float = 8.0) -> None:
        super().__init__()
        # validated at config load (edgekd.validation): temperature > 0, dkd.alpha, dkd.beta >= 0
        assert temperature > 0 and alpha >= 0 and beta >= 0, (temperature, alpha, beta)
        self.temperature, self.alpha, self.beta = float(temperature), float(alpha), float(beta)

    @classmethod
    def from_config(cls, cfg: DistillConfig) -> "DecoupledKD":
        return cls(cfg.temperature, cfg.dkd.alpha, cfg.dkd.beta)

    def forward(self, student_logits: torch.Tensor, teacher_logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        tckd, nckd = decoupled_kl(student_logits, teacher_logits.detach(), labels, self.temperature)
        t2 = self.temperature ** 2
        return F.cross_entropy(student_logits.float(), labels) + t2 * (self.alpha * tckd + self.beta * nckd)
