"""Pieces the training stages share: loaders, weight files, fit-then-score."""
from __future__ import annotations

from dataclasses import replace
from pathlib import Path
from typing import Any, Callable

import torch

from ..config import Config, TrainConfig
from ..data.loader import BatchLoader, Photometric, make_loaders
from ..stage_specs import BY_NAME
from ..train.engine import evaluate, fit, resolve_device
from ..train.health import check_health
from ..train.logging_hooks import epoch_loggers
from ..io import atomic_write_bytes
from ..models import build_student, build_teacher, load_weights
from .base import StageContext


def device_of(ctx: StageContext) -> torch.device:
    return resolve_device(ctx.cfg.device)


def begin_training_stage(ctx: StageContext) -> torch.device:
    """Seed before any model is built, so initial weights (and so the whole stage) repeat for a seed."""
    from ..train.distributed import seed_everything

    device = device_of(ctx)
    if ctx.cfg.num_threads:
        torch.set_num_threads(ctx.cfg.num_threads)
    seed_everything(ctx.cfg.seed, ctx.cfg.deterministic, device)
    return device


def loaders(ctx: StageContext, augment: bool = True, photometric: Photometric = "input"
            ) -> tuple[BatchLoader, BatchLoader, BatchLoader]:
    """Train/val/test loaders. ``augment=False`` turns ``data.augment`` off (calibration, scoring).

    Otherwise the train loader applies the geometric part (crop/flip) to ``x``, and the photometric
    part (noise/corruption) to ``x`` too (``photometric="input"``: one model, the teacher stage) or,
    in KD stages (``photometric="student"``), to a student-only view yielded after ``x`` (see
    ``BatchLoader``; ``Distiller.step`` feeds it to the student and the clean ``x`` to the teacher).
    """
    from ..train.distributed import rank_and_world

    data_cfg = ctx.cfg.data
    if not augment:
        data_cfg = replace(data_cfg, augment=replace(
            data_cfg.augment, crop_padding=0, hflip=False, noise_std=0.0, corruption_prob=0.0))
    rank, world = rank_and_world()
    # batches are made where training runs: on a GPU the uint8 split (47 MB for Fashion-MNIST) is
    # copied once and indexing/augmentation run there, with no host-to-device copy per step
    return make_loaders(ctx.dataset(), data_cfg, ctx.cfg.seed, rank=rank, world_size=world, photometric=photometric,
                        device=device_of(ctx))


def save_weights(model: torch.nn.Module, path: Path, meta: dict[str, Any]) -> Path:
    """Plain state_dict + metadata, written atomically by rank 0 only; loadable with weights_only=True.

    Saved through memory (edgekd.train.checkpoint.torch_bytes), so equal weights give an equal sha256.
    Under torchrun every rank holds the same weights (DDP), and one writer avoids two processes
    racing on one file; the other ranks get the path back and wait at the pipeline's barrier.
    """
    from ..train.checkpoint import torch_bytes
    from ..train.distributed import is_main

    if is_main():
        state = {k: v.detach().cpu() for k, v in model.state_dict().items()}
        atomic_write_bytes(path, torch_bytes({"state_dict": state, "meta": meta}),
                           fault=f"{meta.get('stage', path.stem)}:weights-write")
    return path


def load_teacher(ctx: StageContext, device: torch.device) -> torch.nn.Module:
    teacher = build_teacher(ctx.cfg.teacher, ctx.dataset())
    load_weights(teacher, ctx.manifest.artifact("teacher", "weights"))
    return teacher.to(device).eval()


def load_student(ctx: StageContext, device: torch.device) -> torch.nn.Module:
    student = build_student(ctx.cfg.student, ctx.dataset())
    load_weights(student, ctx.manifest.artifact("distill", "weights"))
    return student.to(device)


def train_and_score(
    ctx: StageContext,
    stage: str,
    model: torch.nn.Module,
    step_fn: Callable,
    train_cfg: TrainConfig,
    hooks: tuple = (),
    augment: bool = True,
    photometric: Photometric = "input",
    train_loader: BatchLoader | None = None,
    aux: torch.nn.Module | None = None,
) -> dict[str, Any]:
    """Fit ``model`` with the one engine (best on validation), check it did not diverge (DivergenceError),
    load the best state, score val and test."""
    device = device_of(ctx)
    train_key = BY_NAME[stage].train_config or stage
    train, val, test = loaders(ctx, augment=augment, photometric=photometric)
    if train_loader is not None:
        train = train_loader
    work = ctx.stage_dir(stage)
    # TensorBoard (logging.tensorboard) in <run>/tensorboard/<stage>/: one folder per stage, so
    # `tensorboard --logdir <run>/tensorboard` shows teacher, distill and qat as three runs
    with epoch_loggers(ctx.cfg.logging.tensorboard, ctx.run_dir / "tensorboard" / stage) as on_epoch:
        result = fit(
            model, step_fn, train, val, train_cfg, work_dir=work, device=device, seed=ctx.cfg.seed,
            resume=ctx.resume, hooks=hooks, desc=stage, meta={"fingerprint": ctx.fingerprint},
            deterministic=ctx.cfg.deterministic, on_epoch=on_epoch, aux=aux,
        )
    if train_cfg.divergence_check:  # stop before a diverged model reaches the next stage (or export)
        check_health(stage, train_key, result.history, ctx.dataset().val.labels, train_cfg.lr, train_cfg.grad_clip)
    model.load_state_dict(result.best_state)
    if aux is not None and result.best_aux_state is not None:
        aux.load_state_dict(result.best_aux_state)  # the adapters / temperature that went with that student
    val_m = evaluate(model, val, device)
    test_m = evaluate(model, test, device)  # reported, never used to select
    ctx.log(f"[edgekd] {stage}: val {val_m['accuracy']:.4f}  test {test_m['accuracy']:.4f}")
    return {
        "val_accuracy": val_m["accuracy"],
        "test_accuracy": test_m["accuracy"],
        "best_epoch": result.best_epoch,
        "epochs": train_cfg.epochs,
        "train_seconds": round(result.seconds, 1),
        "precision": result.precision,  # what training ran in (the environment block: what the config picks)
        "history": result.history,
    }


def config_meta(cfg: Config, stage: str, ctx: StageContext) -> dict[str, Any]:
    return {"stage": stage, "fingerprint": ctx.fingerprint, "dataset": cfg.data.dataset}
