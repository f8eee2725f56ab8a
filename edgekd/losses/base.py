"""The KD loss interface, its registry, and the ``Distiller`` that pairs a student with a frozen teacher.

Adding a loss is adding one file in ``edgekd/losses/`` (every module there is imported by the
package) that subclasses ``KDLoss`` and registers it::

    @register_kd_loss("mine")
    class MyKD(KDLoss):
        def __init__(self, temperature: float) -> None: ...
        @classmethod
        def from_config(cls, cfg: DistillConfig) -> "MyKD":
            return cls(cfg.temperature)
        def forward(self, student_logits, teacher_logits, labels): ...

``KD_LOSSES.get(name)`` returns ``fn(cfg: DistillConfig) -> KDLoss`` (the class's ``from_config``).

A loss that needs the student itself, not just its logits (adversarial KD such as ARD / RSLAD,
which attack the student's input), also defines ``adversarial_step(student, x, labels,
teacher_logits) -> (loss, student_logits)``; ``Distiller.step`` (the one KD training step, used by
the distill and QAT stages and by the tests) calls it instead of ``student(x)`` + ``forward``.
``teacher_logits`` are always the teacher's logits on the clean input.
"""
from __future__ import annotations

from typing import Callable, Sequence, TypeVar

import torch
from torch import nn

from ..config import DistillConfig
from ..registry import Registry

KDLossFn = Callable[[DistillConfig], "KDLoss"]
KD_LOSSES: Registry[KDLossFn] = Registry("kd loss")

L = TypeVar("L", bound=type)


class KDLoss(nn.Module):
    """Base class: ``forward(student_logits [B,K], teacher_logits [B,K], labels [B]) -> scalar loss``."""

    @classmethod
    def from_config(cls, cfg: DistillConfig) -> "KDLoss":
        """Build the loss from the distill config; override when the loss has parameters."""
        return cls()

    def forward(self, student_logits: torch.Tensor, teacher_logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        raise NotImplementedError(f"{type(self).__name__} must implement forward(student_logits, teacher_logits, labels)")


def register_kd_loss(name: str) -> Callable[[L], L]:
    """Class decorator: register ``cls.from_config`` in ``KD_LOSSES`` under ``name``; returns the class."""

    def add(cls: L) -> L:
        KD_LOSSES.register(name)(cls.from_config)
        return cls

    return add


class Distiller(nn.Module):
    """A student trained against a frozen teacher with ``kd_loss``.

    The teacher never trains: its parameters have ``requires_grad=False``, it stays in eval mode
    (``train()`` puts only the student in training mode, so the teacher's BatchNorm statistics and
    dropout never change), and it runs under ``torch.inference_mode``.
    """

    def __init__(self, student: nn.Module, teacher: nn.Module, kd_loss: KDLoss) -> None:
        super().__init__()
        self.student = student
        self.teacher = teacher.requires_grad_(False).eval()
        self.kd_loss = kd_loss

    def train(self, mode: bool = True) -> "Distiller":
        super().train(mode)
        self.teacher.eval()
        return self

    def teacher_forward(self, x: torch.Tensor) -> torch.Tensor:
        """The teacher's logits for ``x`` (no graph), as an ordinary tensor autograd code can use."""
        self.teacher.eval()  # in case someone called teacher.train() directly
        with torch.inference_mode():
            logits = self.teacher(x)
        # Inference tensors cannot enter autograd; a clone made outside inference mode can.
        return logits.clone()

    @classmethod
    def from_config(cls, student: nn.Module, teacher: nn.Module, cfg: DistillConfig) -> "Distiller":
        """The distiller with the KD loss ``cfg.loss`` (``KD_LOSSES``) built from ``cfg``."""
        return cls(student, teacher, KD_LOSSES.get(cfg.loss)(cfg))

    def step(self, model: nn.Module, batch: Sequence[torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor]:
        """The KD training step: ``(loss, student_logits)`` for one batch; the engine's ``step_fn``.

        ``model`` is the student to run: ``self.student`` itself, or its DDP wrapper under torchrun.
        ``batch`` is what the training loader yields (see ``edgekd.data.loader.BatchLoader``)::

            (x, y[, teacher_logits][, x_student])

        - ``x`` [B, C, H, W]: the clean (geometrically augmented) input; the teacher sees it.
        - ``teacher_logits`` [B, K]: cached logits of the teacher on ``x``; when present the teacher
          does not run.
        - ``x_student`` [B, C, H, W], last: the student's view of ``x`` with the photometric
          augmentation (noise / corruption, robust KD option (a)); absent, the student sees ``x``.

        Adversarial losses (ARD, RSLAD) craft their inputs around the student's view inside
        ``adversarial_step``; their soft labels are still the teacher's logits on the clean ``x``.
        """
        x, y, *rest = batch
        x_student = rest.pop() if rest and rest[-1].shape == x.shape else x
        assert len(rest) <= 1, f"a KD batch is (x, y[, teacher_logits][, x_student]), got {len(batch)} items"
        t = self.teacher_forward(x) if not rest else rest[0].detach()
        if hasattr(self.kd_loss, "adversarial_step"):
            return self.kd_loss.adversarial_step(model, x_student, y, t)
        s = model(x_student)
        return self.kd_loss(s, t, y), s

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """The student's logits (what is trained, evaluated and exported)."""
        return self.student(x)
