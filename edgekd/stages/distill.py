"""Distill stage: a MobileNet student learns from the frozen teacher's soft targets (and the labels)."""
from __future__ import annotations

from typing import Any

import torch

from ..data.loader import BatchLoader
from ..losses import Distiller
from ..train.distributed import rank_and_world
from ..models import build_student
from .base import StageContext, StageResult
from .common import begin_training_stage, config_meta, load_teacher, save_weights, train_and_score


@torch.inference_mode()
def teacher_logits_for(teacher: torch.nn.Module, loader: Any, device: torch.device) -> torch.Tensor:
    """Teacher logits for every training image in loader order (unshuffled, unaugmented)."""
    teacher.eval()
    outs = [teacher(batch[0].to(device)).float().cpu() for batch in loader]
    return torch.cat(outs)


def run(ctx: StageContext) -> StageResult:
    cfg = ctx.cfg
    device = begin_training_stage(ctx)
    teacher = load_teacher(ctx, device)
    student = build_student(cfg.student, ctx.dataset()).to(device)
    distiller = Distiller.from_config(student, teacher, cfg.distill)
    train_loader = None
    if cfg.distill.cache_teacher_logits:
        # Inputs are fixed (validated: no augmentation), so one teacher pass serves every epoch.
        bundle = ctx.dataset()
        rank, world = rank_and_world()
        plain = BatchLoader(bundle.train, cfg.data.eval_batch_size, shuffle=False, augment=None, seed=cfg.seed)
        cached = teacher_logits_for(teacher, plain, device)
        train_loader = BatchLoader(bundle.train, cfg.data.batch_size, shuffle=True, augment=None, seed=cfg.seed,
                                   rank=rank, world_size=world, extras=[cached])
        ctx.log(f"[edgekd] distill: cached teacher logits for {len(cached)} images")
    metrics = train_and_score(
        ctx, "distill", student, distiller.step, cfg.distill.train,
        photometric="student", train_loader=train_loader,
    )
    metrics.update(loss=cfg.distill.loss, temperature=cfg.distill.temperature, alpha=cfg.distill.alpha,
                   parameters=sum(p.numel() for p in student.parameters()))
    path = save_weights(student, ctx.stage_dir("distill") / "student_fp32.pt", config_meta(cfg, "distill", ctx))
    return StageResult(artifacts={"weights": path}, metrics=metrics)
