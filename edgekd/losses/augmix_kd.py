"""Robustness-oriented KD with AugMix-style views and Jensen-Shannon consistency.

The student must give the teacher's CLEAN soft labels on corrupted views of the input too, and agree
with itself across them (AugMix: Hendrycks, Mu, Cubuk, Zoph, Gilmer & Lakshminarayanan, ICLR 2020,
arXiv:1912.02781, whose JS term this reuses; the soft-label target under perturbed inputs is the
idea of ARD/RSLAD, with corruptions instead of an attack). For each batch, two views x1, x2 of x:

    x_v = m * x + (1 - m) * sum_i w_i * op_i(x),   w ~ Dirichlet(1, .., 1) over ``width`` ops,  m ~ Beta(1, 1)

each op_i a random corruption (``edgekd.robustness.corruptions``; ``distill.augmix.ops``, default all)
at a random severity 1..``max_severity``, sampled per batch from the torch RNG (so a resumed run
repeats it). With p_t = softmax(t(x)/T) from the clean x and the student's logits s_0 (its clean
view), s_1, s_2:

    loss = (1 - alpha) CE(s_0, y) + alpha T^2 / 3 * sum_v KL(p_t || softmax(s_v/T)) + lambda * JS(s_0, s_1, s_2)
    JS   = 1/3 sum_v KL(q_v || M),  q_v = softmax(s_v),  M = (q_0 + q_1 + q_2) / 3

``lambda`` = ``distill.augmix.js_weight`` (AugMix: 12). The check stage measures on the same
corruption family unless ``ops`` holds some out: say so when reporting corruption accuracy.
"""
from __future__ import annotations

from typing import Optional, Sequence

import numpy as np
import torch
import torch.nn.functional as F

from ..config import DistillConfig
from .base import KDLoss, register_kd_loss


def js_consistency(logits: Sequence[torch.Tensor]) -> torch.Tensor:
    """``1/V sum_v KL(q_v || M)``, M the mean of the q_v = softmax(logits_v); batch-averaged.

    Each KL takes log q_v from log_softmax (``log_target``): with q_v itself as the target, a class
    whose probability underflows to 0 (a logit gap over ~100, early in training) gives a NaN gradient
    (d/dq of q log q is log q + 1 = -inf, times dq/dz = 0), and one NaN step ruins the student.
    """
    log_probs = [F.log_softmax(z.float(), dim=1) for z in logits]
    mean = torch.stack([lp.exp() for lp in log_probs]).mean(0)
    log_m = torch.clamp(mean, 1e-7, 1.0).log()  # AugMix's clamp keeps log M finite
    return sum(F.kl_div(log_m, lp, reduction="batchmean", log_target=True) for lp in log_probs) / len(log_probs)


def augmix_view(x: torch.Tensor, ops: Sequence[str], width: int, max_severity: int,
                rng: np.random.Generator) -> torch.Tensor:
    """One AugMix-style view of the batch ``x`` [B, C, H, W] in [0, 1] (the same ops for the whole batch)."""
    from ..robustness.corruptions import apply_corruption

    images = x.detach().float().cpu().numpy()
    w = rng.dirichlet([1.0] * width).astype(np.float32)
    mix = np.zeros_like(images)
    for i in range(width):
        name = ops[int(rng.integers(len(ops)))]
        mix += w[i] * apply_corruption(name, images, int(rng.integers(1, max_severity + 1)), rng)
    m = np.float32(rng.beta(1.0, 1.0))
    out = m * images + (1.0 - m) * mix
    return torch.from_numpy(np.clip(out, 0.0, 1.0)).to(x.device, x.dtype)


@register_kd_loss("augmix_kd")
class AugMixKD(KDLoss):
    """KD on the clean view and two AugMix-style views against the clean soft labels, plus JS consistency."""

    def __init__(self, temperature: float = 4.0, alpha: float = 0.9, js_weight: float = 12.0,
                 max_severity: int = 3, width: int = 3, ops: Optional[Sequence[str]] = None) -> None:
        super().__init__()
        # validated at config load (edgekd.validation)
        assert temperature > 0 and 0.0 <= alpha <= 1.0 and js_weight >= 0 and 1 <= max_severity <= 5 and width >= 1
        self.temperature, self.alpha, self.js_weight = float(temperature), float(alpha), float(js_weight)
        self.max_severity, self.width = int(max_severity), int(width)
        self.ops = list(ops or [])

    @classmethod
    def from_config(cls, cfg: DistillConfig) -> "AugMixKD":
        a = cfg.augmix
        return cls(cfg.temperature, cfg.alpha, a.js_weight, a.max_severity, a.width, a.ops)

    def views(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Two views of ``x``, their randomness drawn from the global torch RNG (checkpointed by the engine)."""
        from ..robustness.corruptions import CORRUPTIONS

        ops = self.ops or CORRUPTIONS.names()
        rng = np.random.default_rng(int(torch.randint(0, 2**62, (1,)).item()))
        return (augmix_view(x, ops, self.width, self.max_severity, rng),
                augmix_view(x, ops, self.width, self.max_severity, rng))

    def student_step(self, student: torch.nn.Module, x: torch.Tensor, y: torch.Tensor,
                     teacher_logits: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """One student forward on [x, x1, x2] (BatchNorm sees all three); returns (loss, logits on x)."""
        x1, x2 = self.views(x)
        clean, v1, v2 = student(torch.cat([x, x1, x2])).split(len(x))
        return self.forward(clean, teacher_logits, y, student_views=(v1, v2)), clean

    def forward(self, student_logits: torch.Tensor, teacher_logits: torch.Tensor, labels: torch.Tensor,
                student_views: Sequence[torch.Tensor] = ()) -> torch.Tensor:
        """The formula above; without ``student_views`` it is Hinton KD on the clean logits (JS = 0)."""
        temp = self.temperature
        log_pt = F.log_softmax(teacher_logits.detach().float() / temp, dim=1)
        all_logits = [student_logits, *student_views]
        kd = sum(F.kl_div(F.log_softmax(z.float() / temp, dim=1), log_pt, reduction="batchmean", log_target=True)
                 for z in all_logits) / len(all_logits) * temp * temp
        ce = F.cross_entropy(student_logits.float(), labels)
        js = js_consistency(all_logits) if student_views else student_logits.new_zeros(())
        return (1.0 - self.alpha) * ce + self.alpha * kd + self.js_weight * js
