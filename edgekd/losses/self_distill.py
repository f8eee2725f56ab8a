"""Self-distillation: no teacher exists; the student learns from a slowly moving copy of itself.

Born-Again Networks (Furlanello, Lipton, Tschannen, Itti & Anandkumar, ICML 2018, arXiv:1805.04770)
showed that a student distilled from a teacher of its OWN architecture (the previous generation)
beats it. This loss runs the generations online, as a mean teacher (Tarvainen & Valpola, NeurIPS 2017,
arXiv:1703.01780): the teacher is the exponential moving average of the student's weights,

    theta_teacher <- d * theta_teacher + (1 - d) * theta_student   (before each step; buffers copied)
    loss = (1 - alpha) * CE(s, y) + alpha * T^2 * KL( softmax(t_ema/T) || softmax(s/T) )

``d`` = ``distill.ema_decay``. (Zhang et al., "Be Your Own Teacher", ICCV 2019, distil the deepest exit
of one network into shallower exits instead; that needs extra heads, which the exported student
must not carry, so it is not used here.) The EMA copy lives in the loss module: checkpointed with it
for resume, never exported. The teacher stage's model is not read (its stage may train 0 epochs).
"""
from __future__ import annotations

import copy

import torch
import torch.nn.functional as F
from torch import nn

from ..config import DistillConfig
from .base import KDLoss, register_kd_loss
from .hinton import soft_kl


@register_kd_loss("self_distill")
class SelfDistillKD(KDLoss):
    """Hinton KD against the student's own EMA."""

    live_teacher = True  # its teacher is an average of the student that moves every step
    self_teacher = True

    def __init__(self, temperature: float = 4.0, alpha: float = 0.9, ema_decay: float = 0.999,
                 label_smoothing: float = 0.0) -> None:
        super().__init__()
        # validated at config load (edgekd.validation): ema_decay in [0, 1)
        assert temperature > 0 and 0.0 <= alpha <= 1.0 and 0.0 <= ema_decay < 1.0, (temperature, alpha, ema_decay)
        self.temperature, self.alpha, self.decay = float(temperature), float(alpha), float(ema_decay)
        self.label_smoothing = float(label_smoothing)
        self.ema: nn.Module | None = None

    @classmethod
    def from_config(cls, cfg: DistillConfig) -> "SelfDistillKD":
        return cls(cfg.temperature, cfg.alpha, cfg.ema_decay, cfg.train.label_smoothing)

    def make_teacher(self, student: nn.Module) -> nn.Module:
        """The EMA teacher: a frozen copy of the student (held by this loss, so checkpointed with it)."""
        self.ema = copy.deepcopy(student).requires_grad_(False).eval()
        return self.ema

    @torch.no_grad()
    def before_step(self, student: nn.Module) -> None:
        assert self.ema is not None, "make_teacher runs when the Distiller is built"
        for e, p in zip(self.ema.parameters(), student.parameters()):
            e.lerp_(p.detach(), 1.0 - self.decay)
        for e, b in zip(self.ema.buffers(), student.buffers()):
            e.copy_(b)  # BatchNorm statistics, quantization scales: the student's current ones

    def forward(self, student_logits: torch.Tensor, teacher_logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        temp = self.temperature
        kd = soft_kl(student_logits, teacher_logits.detach(), temp) * temp * temp
        ce = F.cross_entropy(student_logits.float(), labels, label_smoothing=self.label_smoothing)
        return self.alpha * kd + (1.0 - self.alpha) * ce
