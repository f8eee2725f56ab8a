"""Self-distillation: no teacher exists; the student learns from a slowly moving copy of itself.

Born-Again Networks (Furlanello, Lipton, Tschannen, Itti & Anandkumar, ICML 2018, arXiv:1805.04770)
showed that a student distilled from a teacher of its OWN architecture (the previous generation)
beats it. This loss runs the generations online, as a mean teacher (Tarvainen & Valpola, NeurIPS 2017,
arXiv:1703.01780): the teacher is the exponential moving average of the student's weights. Each step
makes update ``t`` (0, 1, 2, ...) of the teacher, then computes the loss with ``n = t + 1`` updates done:

    d_t = min(d, t / (t + 1))                        (the mean teacher's decay warm-up, from its code)
    theta_teacher <- d_t * theta_teacher + (1 - d_t) * theta_student
    w_n = exp(-5 * (1 - min(1, n / H))^2),   H = 1 / (1 - d)   (the sigmoid ramp-up of Laine & Aila 2017)
    loss = (1 - alpha) * CE(s, y) + alpha * w_n * T^2 * KL( softmax(t_ema/T) || softmax(s/T) )

``d`` = ``distill.ema_decay``. Without the warm-up a randomly initialised student's teacher would still
be 0.999^n of its initial weights after n steps (65 % after an epoch of 429), and the KD term (weight
alpha T^2 = 14.4 by default) would pull the student towards a near-random network; the warm-up makes the
teacher a true average of the steps so far. The ramp-up keeps the KD weight near 0 until the teacher
averages a full horizon ``H`` of the student's steps (1 000 for d = 0.999; the mean teacher ramps over a
fixed number of epochs instead, ``H`` is our choice, tied to the one setting). BatchNorm statistics are
averaged with the weights (as ``torch.optim.swa_utils.AveragedModel(use_buffers=True)`` does), so they
describe the averaged weights; other buffers (quantization scales) are the student's current ones.

A student that is already trained (QAT fine-tunes the distilled one) makes a good teacher from the
start: ``make_teacher(student, trained=True)`` skips warm-up and ramp-up. The distill stage never passes
it, not even for pretrained ``student.weights``: their classifier (another class count) and an adapted stem
keep a fresh initialisation, which would teach at full weight.

(Zhang et al., "Be Your Own Teacher", ICCV 2019, distil the deepest exit of one network into shallower
exits instead; that needs extra heads, which the exported student must not carry, so it is not used here.)
The EMA copy and the update count live in the loss module: checkpointed with it for resume, never
exported. The teacher stage's model is not read (its stage may train 0 epochs).
"""
from __future__ import annotations

import copy
import math
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from ..config import DistillConfig
from .base import KDLoss, register_kd_loss
from .hinton import soft_kl

BN_STATISTICS = ("running_mean", "running_var")  # buffers that describe the weights: averaged with them


def ramp_up(t: int, horizon: float) -> float:
    """The KD weight's sigmoid ramp-up ``exp(-5 (1 - min(1, t/H))^2)`` (Laine & Aila, ICLR 2017): 0.0067 at 0, 1 from H."""
    return math.exp(-5.0 * (1.0 - min(1.0, t / horizon)) ** 2)


@register_kd_loss("self_distill")
class SelfDistillKD(KDLoss):
    """Hinton KD against the student's own EMA (a mean teacher, warmed up and ramped up)."""

    live_teacher = True  # its teacher is an average of the student that moves every step
    self_teacher = True

    def __init__(self, temperature: float = 4.0, alpha: float = 0.9, ema_decay: float = 0.999,
                 label_smoothing: float = 0.0) -> None:
        super().__init__()
        # validated at config load (edgekd.validation): ema_decay in [0, 1)
        assert temperature > 0 and 0.0 <= alpha <= 1.0 and 0.0 <= ema_decay < 1.0, (temperature, alpha, ema_decay)
        self.temperature, self.alpha, self.decay = float(temperature), float(alpha), float(ema_decay)
        self.label_smoothing = float(label_smoothing)
        self.horizon = 1.0 / (1.0 - self.decay)  # steps the EMA averages over
        self.ema: nn.Module | None = None
        # EMA updates so far: a buffer, so an interrupted run resumes with the same decay and KD weight;
        # _count is its host copy (reading the buffer each step would be a device sync on a GPU), rebuilt
        # after a state_dict load
        self.register_buffer("updates", torch.zeros((), dtype=torch.long))
        self._count: int | None = None

    @classmethod
    def from_config(cls, cfg: DistillConfig) -> "SelfDistillKD":
        return cls(cfg.temperature, cfg.alpha, cfg.ema_decay, cfg.train.label_smoothing)

    def make_teacher(self, student: nn.Module, trained: bool = False) -> nn.Module:
        """The EMA teacher: a frozen copy of the student (held by this loss, so checkpointed with it).

        ``trained``: the student is already trained, so the copy is a teacher worth its full weight at once.
        """
        self.ema = copy.deepcopy(student).requires_grad_(False).eval()
        # ceil(H) updates: the full KD weight and decay d (1e-6 absorbs 1/(1 - 0.9) = 10.000000000000002)
        self.updates.fill_(math.ceil(self.horizon - 1e-6) if trained else 0)
        self._count = None
        return self.ema

    def _load_from_state_dict(self, *args: Any, **kwargs: Any) -> None:
        super()._load_from_state_dict(*args, **kwargs)
        self._count = None

    def _updates(self) -> int:
        if self._count is None:
            self._count = int(self.updates)
        return self._count

    def kd_weight(self) -> float:
        """``w_n``: the ramp-up factor of the KD term after the updates done so far."""
        return ramp_up(self._updates(), self.horizon)

    @torch.no_grad()
    def before_step(self, student: nn.Module) -> None:
        assert self.ema is not None, "make_teacher runs when the Distiller is built"
        t = self._updates()
        weight = 1.0 - min(self.decay, t / (t + 1.0))  # update 0 copies the student
        for e, p in zip(self.ema.parameters(), student.parameters()):
            e.lerp_(p.detach(), weight)
        for (name, e), b in zip(self.ema.named_buffers(), student.buffers()):
            if name.rsplit(".", 1)[-1] in BN_STATISTICS and e.is_floating_point():
                e.lerp_(b, weight)
            else:
                e.copy_(b)  # counters, quantization scales: the student's current ones
        self.updates += 1
        self._count = t + 1

    def metrics(self) -> dict[str, float]:
        return {"self_distill_ema_updates": float(self._updates()), "self_distill_kd_weight": self.kd_weight()}

    def forward(self, student_logits: torch.Tensor, teacher_logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        temp = self.temperature
        kd = soft_kl(student_logits, teacher_logits.detach(), temp) * temp * temp
        ce = F.cross_entropy(student_logits.float(), labels, label_smoothing=self.label_smoothing)
        return self.alpha * self.kd_weight() * kd + (1.0 - self.alpha) * ce
