"""RSLAD: Robust Soft Label Adversarial Distillation (Zi, Zhao, Ma & Jiang, ICCV 2021).

The teacher's softmax on the CLEAN input (the "robust soft label") replaces the hard label
everywhere, in the outer loss and in the inner attack:

    loss = w_adv * KL( t(x) || s(x') ) + w_nat * beta * KL( t(x) || s(x) )

with x' maximising KL(t(x) || s(x')) in the L-inf eps-ball, w_adv = 5/6, w_nat = 1/6 (the
paper's weights; KL as ``KLDivLoss(log_softmax(s), softmax(t))`` summed over classes and
averaged over the batch, as in the authors' code) and ``beta`` = ``distill.robust.beta``
(default 1 = the paper). No temperature: the soft labels are the plain softmax.
"""
from __future__ import annotations

from typing import Optional

import torch
import torch.nn.functional as F

from ..config import DistillConfig, RobustKDConfig
from ..robustness.attacks import kd_kl
from .ard import RobustKDLoss
from .base import register_kd_loss


@register_kd_loss("rslad")
class RSLADLoss(RobustKDLoss):
    """RSLAD loss; ``forward`` without ``student_logits_adv`` scores the clean logits in both terms."""

    attack_temperature = 1.0
    uses = ()  # plain softmax (T 1); its weights are fixed, plus distill.robust.beta

    def __init__(self, robust: Optional[RobustKDConfig] = None, adv_weight: float = 5 / 6,
                 nat_weight: float = 1 / 6) -> None:
        super().__init__(robust)
        self.adv_weight = float(adv_weight)
        self.nat_weight = float(nat_weight)

    @classmethod
    def from_config(cls, cfg: DistillConfig) -> "RSLADLoss":
        """The inner attack and ``beta`` from ``distill.robust``; temperature and alpha do not apply."""
        return cls(cfg.robust)

    def forward(self, student_logits: torch.Tensor, teacher_logits: torch.Tensor, labels: torch.Tensor,
                student_logits_adv: Optional[torch.Tensor] = None) -> torch.Tensor:
        """``w_adv KL(t || s_adv) + w_nat beta KL(t || s)``; ``labels`` are unused (soft labels replace them)."""
        soft = F.softmax(teacher_logits.detach().float(), dim=1)
        adv = student_logits if student_logits_adv is None else student_logits_adv
        return self.adv_weight * kd_kl(adv, soft) + self.nat_weight * self.robust.beta * kd_kl(student_logits, soft)
