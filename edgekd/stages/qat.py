"""QAT stage: INT8 quantization-aware fine-tuning of the distilled student, still guided by the teacher.

BN is folded before fake quantization; observers calibrate on clean training batches, then
freeze from ``qat.freeze_observers_epoch`` on, so the last epochs train against fixed scales
that the INT8 ONNX file carries unchanged.
"""
from __future__ import annotations

from ..config import QATConfig
from ..quant import freeze_observers, prepare_qat
from ..sensitivity_file import load_ranking
from .base import StageContext, StageResult
from .common import begin_training_stage, config_meta, device_of, load_student, loaders, save_weights, train_and_score
from .kd_setup import build_distiller, kd_loss_for, kd_state_path, kd_teacher, load_kd_state


def keep_float_layers(qcfg: QATConfig) -> list[str]:
    """The layers to leave in float: ``qat.keep_float`` plus the first ``keep_float_most_sensitive`` of the
    ranking in ``qat.sensitivity`` (duplicates once, in that order)."""
    names = list(qcfg.keep_float)
    if qcfg.keep_float_most_sensitive:
        names += load_ranking(qcfg.sensitivity)[: qcfg.keep_float_most_sensitive]
    return list(dict.fromkeys(names))


def build_qat_student(ctx: StageContext, calibrate: bool, device=None):
    """The distilled student turned into its fake-quant twin (calibrated, or ready for a state load)."""
    device = device or device_of(ctx)
    student = load_student(ctx, device).eval()
    calib = loaders(ctx, augment=False)[0] if calibrate else None
    n = ctx.cfg.qat.calibration_batches if calibrate else 0
    return prepare_qat(student, calib, n, keep_float=keep_float_layers(ctx.cfg.qat)).to(device)


def load_qat_student(ctx: StageContext, device):
    """The trained QAT student from this run's qat artifact, observers frozen, in eval mode."""
    from ..models import read_weights_file

    qmodel = build_qat_student(ctx, calibrate=False, device=device)
    qmodel.load_state_dict(read_weights_file(ctx.manifest.artifact("qat", "weights"))[0])
    freeze_observers(qmodel)
    return qmodel.eval()


def run(ctx: StageContext) -> StageResult:
    cfg = ctx.cfg
    device = begin_training_stage(ctx)
    # the distill stage's KD method (ARD/RSLAD too: their INT8 student is what the check stage measures);
    # FitNets adapters and the CTKD temperature continue from what distill learned (kd_state)
    kd_loss = kd_loss_for(ctx)
    if kd_loss.carries_to_qat:
        kd_state_path(ctx)  # missing or changed: refused before calibration, not after
    teacher = kd_teacher(ctx, device, kd_loss)
    qmodel = build_qat_student(ctx, calibrate=True)
    distiller = build_distiller(ctx, qmodel, teacher, kd_loss, device, student_trained=True)  # the distilled student
    carried = load_kd_state(ctx, distiller.kd_loss)
    freeze_at = cfg.qat.freeze_observers_epoch

    def observer_schedule(epoch: int, model) -> None:
        if epoch >= freeze_at:
            freeze_observers(model)

    if cfg.qat.train.epochs <= freeze_at:
        freeze_observers(qmodel)  # never train past the point where scales must be final
    metrics = train_and_score(
        ctx, "qat", qmodel, distiller.step, cfg.qat.train,
        hooks=(observer_schedule, distiller.epoch_hook(cfg.qat.train.epochs)), photometric="student",
        aux=distiller.kd_loss,
    )
    metrics.update(distiller.kd_loss.metrics())
    freeze_observers(qmodel)
    metrics["freeze_observers_epoch"] = freeze_at
    metrics["kd_state_from_distill"] = carried
    metrics["loss"] = cfg.distill.loss  # the KD method QAT fine-tuned with (the distill stage's, ARD/RSLAD included)
    path = save_weights(qmodel, ctx.stage_dir("qat") / "student_qat.pt", config_meta(cfg, "qat", ctx))
    return StageResult(artifacts={"weights": path}, metrics=metrics)
