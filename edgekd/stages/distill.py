"""Distill stage: a MobileNet student learns from the frozen teacher's soft targets (and the labels)."""
from __future__ import annotations

from ..data.loader import BatchLoader
from ..train.distributed import rank_and_world
from ..models import build_student
from .base import StageContext, StageResult
from .common import begin_training_stage, config_meta, load_teacher, save_weights, train_and_score
from .kd_step import build_distiller, make_kd_step, teacher_logits_for


def run(ctx: StageContext) -> StageResult:
    cfg = ctx.cfg
    device = begin_training_stage(ctx)
    teacher = load_teacher(ctx, device)
    student = build_student(cfg.student, ctx.dataset()).to(device)
    distiller = build_distiller(cfg, student, teacher)
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
        ctx, "distill", student, make_kd_step(cfg, distiller), cfg.distill.train,
        student_only_noise=True, train_loader=train_loader,
    )
    metrics.update(loss=cfg.distill.loss, temperature=cfg.distill.temperature, alpha=cfg.distill.alpha,
                   parameters=sum(p.numel() for p in student.parameters()))
    path = save_weights(student, ctx.stage_dir("distill") / "student_fp32.pt", config_meta(cfg, "distill", ctx))
    return StageResult(artifacts={"weights": path}, metrics=metrics)
