"""ARD: Adversarially Robust Distillation (Goldblum, Fowl, Feizi & Goldstein, AAAI 2020).

The student sees adversarial inputs x' and is matched to the teacher's soft labels on the
CLEAN input, plus a natural cross-entropy term:

    loss = alpha * T^2 * KL( softmax(t(x)/T) || softmax(s(x')/T) ) + (1 - alpha) * beta * CE(s(x), y)

x' maximises the distillation term itself, KL(t(x)/T || s(x')/T), inside the L-inf eps-ball
(``distill.robust.attack_objective: ce`` uses the student's cross-entropy on the hard labels instead, as the
authors' released code does). ``beta`` (``distill.robust.beta``, default 1 = the paper) scales the
natural-input term. With epsilon = 0, x' = x and the loss is exactly Hinton KD.

``RobustKDLoss`` is the shared shape of ARD and RSLAD: the attack runs inside the loss, so
they define ``student_step(student, x, y, teacher_logits) -> (loss, student_logits_clean)``,
which ``Distiller.step`` (the one KD training step) calls instead of ``student(x)`` + ``forward``
(see ``losses/base.py``).
"""
from __future__ import annotations

from typing import Optional

import torch
import torch.nn.functional as F

from ..config import DistillConfig, RobustKDConfig
from ..robustness.attacks import ATTACKS, kd_adversary, kd_kl
from .base import KDLoss, register_kd_loss


class RobustKDLoss(KDLoss):
    """A KD loss whose student term is evaluated on adversarial inputs crafted against the student."""

    #: temperature of the teacher's soft labels in the inner attack (RSLAD: 1, ARD: its T)
    attack_temperature: float = 1.0
    attack_objective: str = "kl"

    def __init__(self, robust: Optional[RobustKDConfig] = None) -> None:
        super().__init__()
        self.robust = robust if robust is not None else RobustKDConfig()
        # validated at config load (edgekd.validation): distill.robust.epsilon in [0, 1], steps >= 1
        assert self.robust.epsilon >= 0 and self.robust.steps >= 1, (self.robust.epsilon, self.robust.steps)

    def adversarial_inputs(self, student: torch.nn.Module, x: torch.Tensor, y: torch.Tensor,
                           teacher_logits: torch.Tensor) -> torch.Tensor:
        """x' in the eps-ball around ``x`` (and [0, 1]) maximising the attack objective against the student."""
        r = self.robust
        # attack the bare module: under DDP, a forward + input-only backward through the wrapper
        # would leave its gradient reducer waiting for parameter gradients that never come
        net = student.module if isinstance(getattr(student, "module", None), torch.nn.Module) else student
        if self.attack_objective == "ce":
            was_training = net.training
            net.eval()
            try:
                return ATTACKS.get(r.attack)(net, x, y, r.epsilon, steps=r.steps, step_size=r.step_size)
            finally:
                net.train(was_training)
        probs = F.softmax(teacher_logits.detach().float() / self.attack_temperature, dim=1)
        return kd_adversary(net, x, probs, r.attack, r.epsilon, steps=r.steps, step_size=r.step_size,
                            temperature=self.attack_temperature)

    def extra_repr(self) -> str:
        r = self.robust
        return f"attack={r.attack}, epsilon={r.epsilon:.4f}, steps={r.steps}, beta={r.beta}"

    def student_step(self, student: torch.nn.Module, x: torch.Tensor, y: torch.Tensor,
                         teacher_logits: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Craft x', run the student on x and x', return ``(loss, student_logits_on_clean_x)``.

        ``teacher_logits`` must come from the CLEAN ``x`` (they are the soft labels); they are detached
        here, so no gradient reaches the teacher. The student sees x and x' in ONE forward pass of the
        concatenated batch: one backward per forward keeps DDP's reducer happy, and BatchNorm normalises
        with the statistics of the mixed batch (with epsilon 0 they equal those of x alone).
        """
        teacher_logits = teacher_logits.detach()
        x_adv = self.adversarial_inputs(student, x, y, teacher_logits)
        clean, adv = student(torch.cat([x, x_adv])).split(len(x))
        return self.forward(clean, teacher_logits, y, student_logits_adv=adv), clean


@register_kd_loss("ard")
class ARDLoss(RobustKDLoss):
    """ARD loss; ``forward`` without ``student_logits_adv`` is Hinton KD on the clean logits."""

    def __init__(self, temperature: float = 4.0, alpha: float = 0.9, robust: Optional[RobustKDConfig] = None,
                 attack_objective: str = "kl") -> None:
        super().__init__(robust)
        # validated at config load (edgekd.validation): distill.temperature > 0, distill.alpha in [0, 1]
        assert temperature > 0 and 0.0 <= alpha <= 1.0, (temperature, alpha)
        assert attack_objective in ("kl", "ce"), attack_objective
        self.temperature = float(temperature)
        self.alpha = float(alpha)
        self.attack_temperature = self.temperature
        self.attack_objective = attack_objective

    @classmethod
    def from_config(cls, cfg: DistillConfig) -> "ARDLoss":
        """``distill.temperature``, ``distill.alpha``, and the inner attack and its objective (``distill.robust``)."""
        return cls(cfg.temperature, cfg.alpha, cfg.robust, cfg.robust.attack_objective)

    def forward(self, student_logits: torch.Tensor, teacher_logits: torch.Tensor, labels: torch.Tensor,
                student_logits_adv: Optional[torch.Tensor] = None) -> torch.Tensor:
        """``alpha T^2 KL(t/T || s_adv/T) + (1 - alpha) beta CE(s, y)``; ``s_adv`` defaults to ``s``."""
        t = self.temperature
        adv = student_logits if student_logits_adv is None else student_logits_adv
        soft = F.softmax(teacher_logits.detach().float() / t, dim=1)
        kd = kd_kl(adv.float() / t, soft) * (t * t)
        ce = F.cross_entropy(student_logits.float(), labels)
        return self.alpha * kd + (1.0 - self.alpha) * self.robust.beta * ce
