"""The KD training step shared by the distill and QAT stages.

The teacher always sees the clean (geometrically augmented) input; robust option (a) adds
noise or a corruption to the student's copy only, options (b)/(c) are adversarial KD losses.
"""
from __future__ import annotations

from typing import Any, Callable

import numpy as np
import torch

from ..config import AugmentConfig, Config
from ..losses import KD_LOSSES, Distiller


def build_distiller(cfg: Config, student: torch.nn.Module, teacher: torch.nn.Module) -> Distiller:
    return Distiller(student, teacher, KD_LOSSES.get(cfg.distill.loss)(cfg.distill))


def student_view(x: torch.Tensor, aug: AugmentConfig) -> torch.Tensor:
    """Noise / corruption applied to the student's input only (global torch RNG: resumable)."""
    if aug.noise_std > 0:
        x = (x + aug.noise_std * torch.randn_like(x)).clamp_(0.0, 1.0)
    if aug.corruption_prob > 0 and torch.rand(()) < aug.corruption_prob:
        from ..robustness.corruptions import CORRUPTIONS, apply_corruption

        names = CORRUPTIONS.names()
        pick = int(torch.randint(len(names), ()))
        severity = int(torch.randint(1, aug.corruption_max_severity + 1, ()))
        rng = np.random.default_rng(int(torch.randint(2**31 - 1, ())))
        out = apply_corruption(names[pick], x.detach().float().cpu().numpy(), severity, rng)
        x = torch.from_numpy(out).to(x.device, x.dtype)
    return x


def make_kd_step(cfg: Config, distiller: Distiller) -> Callable[[torch.nn.Module, tuple], tuple[torch.Tensor, torch.Tensor]]:
    """step(model, batch) -> (loss, student_logits); ``model`` is the (maybe DDP-wrapped) student."""
    aug = cfg.data.augment
    noisy = aug.noise_std > 0 or aug.corruption_prob > 0
    kd = distiller.kd_loss
    adversarial = hasattr(kd, "adversarial_step")

    def step(model: torch.nn.Module, batch: tuple[Any, ...]) -> tuple[torch.Tensor, torch.Tensor]:
        x, y = batch[0], batch[1]
        t_logits = batch[2] if len(batch) > 2 else distiller.teacher_forward(x)
        xs = student_view(x, aug) if noisy else x
        if adversarial:
            return kd.adversarial_step(model, xs, y, t_logits)
        s_logits = model(xs)
        return kd(s_logits, t_logits, y), s_logits

    return step


@torch.inference_mode()
def teacher_logits_for(teacher: torch.nn.Module, loader: Any, device: torch.device) -> torch.Tensor:
    """Teacher logits for every training image in loader order (unshuffled, unaugmented)."""
    teacher.eval()
    outs = [teacher(batch[0].to(device)).float().cpu() for batch in loader]
    return torch.cat(outs)
