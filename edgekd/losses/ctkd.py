"""CTKD: Curriculum Temperature for Knowledge Distillation (Li, Li, Yang, Li, Liu, Wang & Yang,
AAAI 2023, arXiv:2211.16231), the global-temperature variant.

The temperature is learned, adversarially: it is a parameter of the loss that the optimizer updates
with the student, but through a gradient-reversal layer, so where the student descends the KD loss
the temperature ascends it (it makes the task harder). A cosine curriculum raises the reversal
strength lambda from 0 at the first epoch to ``lambda_max`` at the last, easy to hard:

    T      = T_min + (T_max - T_min) * sigmoid(theta)       (theta learned, T starts at distill.temperature)
    lambda = lambda_max * (1 - cos(pi * e / (E - 1))) / 2   (epoch e of E; grad wrt theta times -lambda)
    loss   = (1 - alpha) * CE(s, y) + alpha * T^2 * KL( softmax(t/T) || softmax(s/T) )

``T_min``/``T_max``/``lambda_max`` = ``distill.ctkd.*`` (paper: T in (1, 21), lambda up to 1 over 10
epochs; here the ramp spans the stage's epochs). The temperature is part of the loss module: trained
with the student (the engine's ``aux``), checkpointed, never exported. Its value is ``temperature``.
"""
from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from ..config import DistillConfig
from .base import KDLoss, register_kd_loss
from .hinton import soft_kl


class _GradientReversal(torch.autograd.Function):
    """Identity forward; the backward multiplies the gradient by ``-lam``."""

    @staticmethod
    def forward(ctx, x: torch.Tensor, lam: torch.Tensor) -> torch.Tensor:  # noqa: ANN001 - autograd ctx
        ctx.save_for_backward(lam)
        return x.view_as(x)

    @staticmethod
    def backward(ctx, grad: torch.Tensor) -> tuple[torch.Tensor, None]:  # noqa: ANN001
        (lam,) = ctx.saved_tensors
        return -lam * grad, None


@register_kd_loss("ctkd")
class CurriculumTemperatureKD(KDLoss):
    """Hinton KD at a learned temperature trained by gradient reversal with a cosine curriculum."""

    carries_to_qat = True  # QAT starts at the temperature distill reached

    def __init__(self, temperature: float = 4.0, alpha: float = 0.9, min_temperature: float = 1.0,
                 max_temperature: float = 21.0, lambda_max: float = 1.0, label_smoothing: float = 0.0) -> None:
        super().__init__()
        # validated at config load (edgekd.validation): min < temperature < max, alpha in [0, 1], lambda_max >= 0
        assert 0 < min_temperature < temperature < max_temperature, (min_temperature, temperature, max_temperature)
        self.alpha, self.label_smoothing = float(alpha), float(label_smoothing)
        self.t_min, self.t_max, self.lambda_max = float(min_temperature), float(max_temperature), float(lambda_max)
        frac = (temperature - self.t_min) / (self.t_max - self.t_min)
        self.theta = nn.Parameter(torch.tensor(math.log(frac / (1.0 - frac))))  # sigmoid(theta) = frac
        self.register_buffer("lam", torch.tensor(0.0))  # the curriculum's current reversal strength

    @classmethod
    def from_config(cls, cfg: DistillConfig) -> "CurriculumTemperatureKD":
        c = cfg.ctkd
        return cls(cfg.temperature, cfg.alpha, c.min_temperature, c.max_temperature, c.lambda_max,
                   cfg.train.label_smoothing)

    @property
    def temperature(self) -> float:
        return float(self.t_min + (self.t_max - self.t_min) * torch.sigmoid(self.theta.detach()))

    def metrics(self) -> dict[str, float]:
        return {"learned_temperature": round(self.temperature, 4)}

    def start_epoch(self, epoch: int, epochs: int) -> None:
        """Cosine ramp of lambda from 0 (first epoch) to ``lambda_max`` (last epoch)."""
        progress = epoch / (epochs - 1) if epochs > 1 else 1.0
        self.lam.fill_(self.lambda_max * (1.0 - math.cos(math.pi * progress)) / 2.0)

    def forward(self, student_logits: torch.Tensor, teacher_logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        theta = _GradientReversal.apply(self.theta, self.lam)
        temp = self.t_min + (self.t_max - self.t_min) * torch.sigmoid(theta)
        kd = soft_kl(student_logits, teacher_logits.detach(), temp) * temp * temp
        ce = F.cross_entropy(student_logits.float(), labels, label_smoothing=self.label_smoothing)
        return self.alpha * kd + (1.0 - self.alpha) * ce
