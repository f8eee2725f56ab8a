"""What the distill and QAT stages share to set up KD: the teacher(s) and the ``Distiller``.

- The teacher is the run's own (teacher stage), plus, for ``distill.loss: multi_teacher``, the extra
  teachers of ``distill.teachers``, each a registered architecture with weights from a file or from
  an earlier run's teacher stage (its run folder), run side by side (``TeacherEnsemble``).
- A self-distilling loss (``self_distill``) reads no teacher: it makes its own from the student.
- The loss is bound to the models with a few real training images, so a feature loss can probe
  layer shapes (adapters, default layer pairs).
- A loss with ``carries_to_qat`` (FitNets adapters, the CTKD temperature) hands what it learned in
  distill to QAT through the distill stage's ``kd_state`` artifact, with the layers it was bound to.
"""
from __future__ import annotations

from dataclasses import replace
from pathlib import Path
from typing import Optional

import torch

from ..config import ModelConfig
from ..errors import ArtifactError, ConfigError
from ..losses import KD_LOSSES, Distiller, KDLoss
from ..losses.multi_teacher import TeacherEnsemble
from ..manifest import Manifest
from ..models import build_teacher
from ..pixels import to_float
from .base import StageContext
from .common import load_teacher

SAMPLE_IMAGES = 2  # probe batch for binding feature losses (eval mode: no statistics move)


def kd_loss_for(ctx: StageContext) -> KDLoss:
    """The configured KD loss (``distill.loss``), built from the distill config."""
    return KD_LOSSES.get(ctx.cfg.distill.loss)(ctx.cfg.distill)


def extra_teacher_weights(spec: ModelConfig, key: str) -> Path:
    """The weights file of an extra teacher: the file itself, or the teacher artifact of a run folder."""
    path = Path(str(spec.weights)).expanduser()
    if path.is_dir():
        return Manifest.load(path).artifact("teacher", "weights")
    if not path.is_file():
        raise ConfigError(f"{key}.weights {path} does not exist",
                          "give a weights file, or the folder of a run whose teacher stage trained this teacher")
    return path


def kd_teacher(ctx: StageContext, device: torch.device, kd_loss: KDLoss) -> Optional[torch.nn.Module]:
    """The teacher the loss learns from: None (self-distillation), the run's teacher, or an ensemble."""
    if kd_loss.self_teacher:
        return None
    teacher = load_teacher(ctx, device)
    extras = []
    for i, spec in enumerate(ctx.cfg.distill.teachers):
        weights = extra_teacher_weights(spec, f"distill.teachers[{i}]")
        extras.append(build_teacher(replace(spec, weights=str(weights)), ctx.dataset()).to(device).eval())
    return TeacherEnsemble([teacher, *extras]).eval() if extras else teacher


def extra_teacher_records(ctx: StageContext) -> list[dict[str, str]]:
    """Arch, weights file and sha256 of each extra teacher, for the stage metrics (which files taught)."""
    from ..io import sha256_file

    out = []
    for i, spec in enumerate(ctx.cfg.distill.teachers):
        path = extra_teacher_weights(spec, f"distill.teachers[{i}]")
        out.append({"arch": spec.arch, "weights": str(path), "sha256": sha256_file(path)})
    return out


KD_STATE = "kd_state"  # the distill stage's artifact key of the loss's learned state


def save_kd_state(ctx: StageContext, kd_loss: KDLoss, meta: dict) -> dict[str, Path]:
    """``{"kd_state": path}`` for a loss that carries its learned state to QAT, else ``{}``."""
    from .common import save_weights

    if not kd_loss.carries_to_qat:
        return {}
    meta = {**meta, "loss": ctx.cfg.distill.loss, "student_layers": list(kd_loss.student_layers),
            "teacher_layers": list(kd_loss.teacher_layers)}
    return {KD_STATE: save_weights(kd_loss, ctx.stage_dir("distill") / "kd_state.pt", meta)}


def kd_state_path(ctx: StageContext) -> Path:
    """The distill stage's verified ``kd_state`` file (a loss with ``carries_to_qat``); ArtifactError if absent."""
    entry = ctx.manifest.stage("distill") or {}
    if KD_STATE not in entry.get("artifacts", {}):
        raise ArtifactError(f"this run's distill stage saved no {KD_STATE} for '{ctx.cfg.distill.loss}' "
                            "(a run from before edgekd carried it to QAT)",
                            "re-run the distill stage: edgekd run -c CONFIG --stages distill,qat --force")
    return ctx.manifest.artifact("distill", KD_STATE)


def load_kd_state(ctx: StageContext, kd_loss: KDLoss) -> bool:
    """Load the distill stage's learned state into the (bound) QAT loss; False when it has none to carry.

    Refused (ArtifactError) when the state was learned for other layers than the QAT student's loss is
    bound to, or by another loss: adapters of another shape or pairing would load silently wrong.
    """
    from ..models import read_weights_file

    if not kd_loss.carries_to_qat:
        return False
    path = kd_state_path(ctx)
    state, meta = read_weights_file(path)
    bound = {"loss": ctx.cfg.distill.loss, "student_layers": list(kd_loss.student_layers),
             "teacher_layers": list(kd_loss.teacher_layers)}
    learned = {k: meta.get(k) for k in bound}
    if learned != bound:
        raise ArtifactError(f"{path} was learned for {learned}, but QAT's loss is bound to {bound}",
                            "re-run the distill stage with this config: edgekd run -c CONFIG --stages distill,qat --force")
    kd_loss.load_state_dict(state)
    return True


def sample_images(ctx: StageContext, device: torch.device, n: int = SAMPLE_IMAGES) -> torch.Tensor:
    """The first ``n`` training images as float [0, 1] on ``device``."""
    return to_float(torch.from_numpy(ctx.dataset().train.images[:n])).to(device)


def build_distiller(ctx: StageContext, student: torch.nn.Module, teacher: Optional[torch.nn.Module],
                    kd_loss: KDLoss, device: torch.device, student_trained: bool) -> Distiller:
    """The Distiller of ``student`` and ``teacher`` (from :func:`kd_teacher`) with ``kd_loss``, bound to both.

    ``student_trained``: the student starts trained (QAT's distilled student), so a self-distillation
    teacher copied from it needs no warm-up.
    """
    return Distiller(student, teacher, kd_loss, sample=sample_images(ctx, device), student_trained=student_trained)
