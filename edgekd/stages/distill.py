"""Distill stage: a MobileNet student learns from the frozen teacher's soft targets (and the labels)."""
from __future__ import annotations

from typing import Any

import torch

from ..data.loader import BatchLoader
from ..train.distributed import gather_strided, init_distributed, rank_and_world
from ..models import build_student
from ..progress import track
from .base import StageContext, StageResult
from .common import begin_training_stage, config_meta, save_weights, train_and_score
from .kd_setup import build_distiller, extra_teacher_records, kd_loss_for, kd_teacher, save_kd_state


@torch.inference_mode()
def teacher_logits_for(teacher: torch.nn.Module, loader: Any, device: torch.device) -> torch.Tensor:
    """Teacher logits (float32, on ``device``) for every image ``loader`` yields, in loader order."""
    teacher.eval()
    outs = [teacher(batch[0].to(device, non_blocking=True)).float()
            for batch in track(loader, "distill: teacher logits", unit="batch")]
    return torch.cat(outs)


def cached_teacher_logits(teacher: torch.nn.Module, split: Any, batch_size: int, seed: int,
                          device: torch.device) -> torch.Tensor:
    """The teacher's logits for the whole (unaugmented) ``split``, on ``device``, on every rank.

    Under torchrun each rank runs the teacher on its own strided shard (rows ``rank::world``) and the
    shards are all-gathered, so N ranks share the one teacher pass instead of each repeating it.
    """
    init_distributed(device)  # idempotent; the pipeline has normally joined the group already
    rank, world = rank_and_world()
    shard = BatchLoader(split, batch_size, shuffle=False, augment=None, seed=seed, rank=rank, world_size=world,
                        drop_last=False, device=device)
    local = teacher_logits_for(teacher, shard, device)
    return gather_strided(local.clone(), len(split))  # clone: an inference tensor cannot be all-gathered into


def cached_train_loader(ctx: StageContext, cached: torch.Tensor, device: torch.device) -> BatchLoader:
    """The training loader beside cached teacher logits: ``(x, y, teacher_logits[, x_student])``.

    ``x`` is the clean image the logits were computed on (the config check refuses crop/flip with a
    cache); a photometric augmentation (noise / corruption, robust KD option (a)) goes to the student's
    view ``x_student`` only, so it costs no teacher pass.
    """
    cfg = ctx.cfg
    rank, world = rank_and_world()
    return BatchLoader(ctx.dataset().train, cfg.data.batch_size, shuffle=True, augment=cfg.data.augment,
                       seed=cfg.seed, rank=rank, world_size=world, extras=[cached], device=device,
                       photometric="student", workers=cfg.data.workers)  # a streamed image folder decodes in workers


def run(ctx: StageContext) -> StageResult:
    cfg = ctx.cfg
    device = begin_training_stage(ctx)
    kd_loss = kd_loss_for(ctx)
    teacher = kd_teacher(ctx, device, kd_loss)  # before the student is built: its init follows the seed as before
    student = build_student(cfg.student, ctx.dataset()).to(device)
    # student_trained=False even for pretrained student.weights: their classifier and an adapted stem start
    # fresh, so a self-distillation teacher copied from them warms up like one from a random init
    distiller = build_distiller(ctx, student, teacher, kd_loss, device, student_trained=False)
    train_loader = None
    if cfg.distill.cache_teacher_logits and not kd_loss.reads_teacher:
        ctx.log(f"[edgekd] distill: '{cfg.distill.loss}' reads no teacher logits; none cached")
    elif cfg.distill.cache_teacher_logits:
        # The teacher's inputs are fixed (validated: no crop/flip), so one teacher pass serves every epoch.
        # The logits stay on the training device, next to the images the loader holds there.
        cached = cached_teacher_logits(distiller.teacher, ctx.dataset().train, cfg.data.eval_batch_size, cfg.seed,
                                       device)
        train_loader = cached_train_loader(ctx, cached, device)
        ctx.log(f"[edgekd] distill: cached teacher logits for {len(cached)} images")
    metrics = train_and_score(
        ctx, "distill", student, distiller.step, cfg.distill.train,
        photometric="student", train_loader=train_loader,
        hooks=(distiller.epoch_hook(cfg.distill.train.epochs),), aux=distiller.kd_loss,
    )
    metrics.update(distiller.kd_loss.metrics())
    if cfg.distill.teachers:
        metrics["extra_teachers"] = extra_teacher_records(ctx)
    # only the knobs the loss reads: a run's record never shows a temperature its loss ignored
    metrics.update(loss=cfg.distill.loss, **{k: getattr(cfg.distill, k) for k in distiller.kd_loss.uses},
                   parameters=sum(p.numel() for p in student.parameters()))
    meta = config_meta(cfg, "distill", ctx)
    path = save_weights(student, ctx.stage_dir("distill") / "student_fp32.pt", meta)
    # the loss's learned state at the best epoch (train_and_score loaded it), for the QAT stage
    return StageResult(artifacts={"weights": path, **save_kd_state(ctx, distiller.kd_loss, meta)}, metrics=metrics)
