"""Hinton knowledge distillation: temperature-softened KL to the teacher plus CE to the labels."""
from __future__ import annotations

import torch
import torch.nn.functional as F

from ..config import DistillConfig
from .base import KDLoss, register_kd_loss


def soft_kl(student_logits: torch.Tensor, teacher_logits: torch.Tensor, temperature: float) -> torch.Tensor:
    """``KL(softmax(t/T) || softmax(s/T))`` summed over classes, averaged over the batch (float32).

    The teacher's logits are a constant target (detached): no gradient reaches the teacher, even from a
    caller that hands in logits with a graph. A learned ``temperature`` tensor still gets its gradient.
    """
    log_p_s = F.log_softmax(student_logits.float() / temperature, dim=1)
    log_p_t = F.log_softmax(teacher_logits.detach().float() / temperature, dim=1)
    # KLDivLoss takes the *input* as log-probabilities and, with log_target=True, the target too.
    return F.kl_div(log_p_s, log_p_t, reduction="batchmean", log_target=True)


@register_kd_loss("hinton")
class HintonKD(KDLoss):
    r"""Hinton, Vinyals & Dean 2015, "Distilling the Knowledge in a Neural Network" (arXiv:1503.02531).

    .. math::
        L = \alpha\, T^2\, \mathrm{KL}\big(\mathrm{softmax}(t/T)\,\|\,\mathrm{softmax}(s/T)\big)
            + (1 - \alpha)\, \mathrm{CE}(s, y)

    with the KL summed over classes and averaged over the batch ("batchmean"). The ``T^2`` factor
    keeps the soft term's gradients on the CE scale: the gradient of the softened KL shrinks as
    ``1/T^2`` (paper, section 2). ``label_smoothing`` applies to the CE term only.
    """

    def __init__(self, temperature: float = 4.0, alpha: float = 0.9, label_smoothing: float = 0.0) -> None:
        super().__init__()
        # validated at config load (edgekd.validation): distill.temperature > 0, distill.alpha in [0, 1]
        assert temperature > 0 and 0.0 <= alpha <= 1.0, (temperature, alpha)
        self.temperature = float(temperature)
        self.alpha = float(alpha)
        self.label_smoothing = float(label_smoothing)

    @classmethod
    def from_config(cls, cfg: DistillConfig) -> "HintonKD":
        return cls(cfg.temperature, cfg.alpha, cfg.train.label_smoothing)

    def forward(self, student_logits: torch.Tensor, teacher_logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        t = self.temperature
        soft = soft_kl(student_logits, teacher_logits, t) * (t * t)
        if self.alpha == 1.0:
            return soft
        hard = F.cross_entropy(student_logits.float(), labels, label_smoothing=self.label_smoothing)
        return self.alpha * soft + (1.0 - self.alpha) * hard

    def extra_repr(self) -> str:
        return f"temperature={self.temperature}, alpha={self.alpha}, label_smoothing={self.label_smoothing}"
