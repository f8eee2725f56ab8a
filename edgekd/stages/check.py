"""Check stage: onnxruntime on CPU measures teacher, FP32 student and INT8 student side by side.

Accuracy, size, latency and profiler top ops come from ``edgekd.deploy.runtime``; robustness
(corruptions, attacks, calibration, OOD) from ``edgekd.robustness``. The deployed ONNX files
are what is measured; the torch models only supply gradients for white-box and transfer attacks.
"""
from __future__ import annotations

from typing import Any

from ..manifest import Manifest
from ..deploy.mixed_precision import mixed_precision_metrics, mixed_precision_text
from ..deploy.runtime import check_models, make_session, onnx_logits
from ..deploy.runtime.portability import format_portability, portability_check
from ..pixels import to_float
from .base import StageContext, StageResult

MODELS = {"teacher": "teacher_fp32", "student_fp32": "student_fp32", "student_int8": "student_int8"}


def run(ctx: StageContext) -> StageResult:
    cfg = ctx.cfg
    bundle = ctx.dataset()
    paths = {name: ctx.manifest.artifact("export", key) for name, key in MODELS.items()}
    metrics = check_models(paths, bundle.test.images, bundle.test.labels, bundle.classes, cfg.check.latency,
                           eval_batch_size=cfg.data.eval_batch_size)
    for name, m in metrics["models"].items():
        lat = {f"b{r['batch']}/t{r['threads']}": round(r["median_ms"], 3) for r in m["latency"]}
        ctx.log(f"[edgekd] check: {name}: accuracy {m['accuracy']:.4f}  {m['size_mb']:.2f} MB  median ms {lat}")
    if cfg.check.robustness.enabled:
        _robustness(ctx, paths, metrics)
    mixed = mixed_precision_metrics(paths["student_int8"], metrics, cfg.qat.sensitivity)
    if mixed is not None:  # layers kept in float (qat.keep_float): their cost against the full-int8 run
        metrics["mixed_precision"] = mixed
        ctx.log(f"[edgekd] check: {mixed_precision_text(mixed)}")
    if cfg.check.portability:
        n = cfg.check.portability_images
        metrics["portability"] = portability_check({k: paths[k] for k in ("student_fp32", "student_int8")},
                                                   to_float(bundle.test.images[:n]), bundle.test.labels[:n])
        for line in format_portability(metrics["portability"]):
            ctx.log(f"[edgekd] check: {line}")
    return StageResult(metrics=metrics)


def _torch_models(ctx: StageContext, device: Any) -> dict[str, Any]:
    """White-box/transfer sources: teacher, FP32 student, and the QAT twin of the INT8 file, on ``device``."""
    from .common import load_student, load_teacher
    from .qat import load_qat_student

    return {"teacher": load_teacher(ctx, device), "student_fp32": load_student(ctx, device).eval(),
            "student_int8": load_qat_student(ctx, device)}


def _robustness(ctx: StageContext, paths: dict[str, Any], metrics: dict[str, Any]) -> None:
    from ..robustness.evaluate import add_mce, evaluate_robustness
    from .common import device_of

    rcfg = ctx.cfg.check.robustness
    bundle = ctx.dataset()
    # The ONNX files are scored by onnxruntime on the CPU; only the white-box gradients (PGD, FGSM, the
    # transfer source) come from torch, so they run on the run's device: on 2 CPU cores they took 64 s
    # of the default run's 267 s check stage, and on a GPU machine the check stage outlasted the training.
    device = device_of(ctx)
    sources = _torch_models(ctx, device)
    results: dict[str, dict[str, Any]] = {}
    for name, path in paths.items():
        sess = make_session(path, provider=ctx.cfg.check.latency.provider, threads=0)
        results[name] = evaluate_robustness(
            lambda x, s=sess: onnx_logits(s, x), bundle.test.images, bundle.test.labels, rcfg, ctx.cfg.seed,
            val=(bundle.val.images, bundle.val.labels), torch_model=sources[name], device=str(device),
            desc=f"check: {name}",
        )
        c = results[name]["corruption"]
        ctx.log(f"[edgekd] check: {name}: corruption accuracy {c['mean_accuracy']:.4f}")
    reference = _reference(ctx, results["teacher"])
    for name, res in results.items():
        add_mce(res, reference)
        metrics["models"][name]["robustness"] = res
    metrics["robustness_reference"] = rcfg.reference_run or "teacher"


def _reference(ctx: StageContext, teacher_result: dict[str, Any]) -> dict[str, Any]:
    """mCE reference: this run's teacher, or a baseline run's FP32 student (check.robustness.reference_run)."""
    ref = ctx.cfg.check.robustness.reference_run
    if not ref:
        return teacher_result
    other = Manifest.load(ref).metrics("check")
    try:
        return other["models"]["student_fp32"]["robustness"]
    except KeyError:
        from ..errors import ArtifactError

        raise ArtifactError(f"reference run {ref} has no robustness results for its student_fp32",
                            "run its check stage with check.robustness.enabled: true") from None
