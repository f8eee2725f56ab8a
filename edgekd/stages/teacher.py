"""Teacher stage: train a ResNet teacher (or load given weights) and score it."""
from __future__ import annotations

from ..train.engine import evaluate, make_criterion
from ..models import build_teacher
from .base import StageContext, StageResult
from .common import begin_training_stage, config_meta, loaders, save_weights, train_and_score


def run(ctx: StageContext) -> StageResult:
    cfg = ctx.cfg
    device = begin_training_stage(ctx)
    model = build_teacher(cfg.teacher, ctx.dataset()).to(device)  # loads cfg.teacher.weights when set
    if cfg.teacher_train.epochs > 0:
        criterion = make_criterion(cfg.teacher_train)

        def step(m, batch):
            x, y = batch[0], batch[1]
            logits = m(x)
            return criterion(logits, y), logits

        metrics = train_and_score(ctx, "teacher", model, step, cfg.teacher_train)
    else:  # load only: the given weights are scored, not trained
        _, val, test = loaders(ctx, augment=False)
        metrics = {
            "val_accuracy": evaluate(model, val, device)["accuracy"],
            "test_accuracy": evaluate(model, test, device)["accuracy"],
            "epochs": 0,
            "loaded_from": cfg.teacher.weights,
        }
    path = save_weights(model, ctx.stage_dir("teacher") / "teacher.pt", config_meta(cfg, "teacher", ctx))
    metrics["parameters"] = sum(p.numel() for p in model.parameters())
    return StageResult(artifacts={"weights": path}, metrics=metrics)
