"""Export stage: teacher, FP32 student and INT8 (QDQ, QAT scales) student to ONNX; check, simplify, parity.

The deployable files land in the run folder (``model.fp32.onnx``, ``model.int8.onnx``,
``teacher.fp32.onnx``); the raw exporter outputs stay in ``stages/export/`` for inspection.
"""
from __future__ import annotations

import json
import os
import shutil
from pathlib import Path
from typing import Any

import torch

from .. import __version__
from ..deploy.runtime.ort_format import write_ort_files
from ..exporting import export_fp32, export_int8, parity_fp32, parity_int8, simplify
from ..exporting.temperature import append_temperature, fit_file_temperature, verify_scaled
from ..faults import fault_point
from ..io import atomic_path, sha256_file
from ..pixels import to_float
from .base import StageContext, StageResult
from .common import load_student, load_teacher
from .qat import load_qat_student

FILES = {"teacher_fp32": "teacher.fp32.onnx", "student_fp32": "model.fp32.onnx", "student_int8": "model.int8.onnx"}

STUDENT_NOTE = {
    "mobilenet_v2": "MobileNetV2 is the INT8 student: its Conv/ReLU6/Add blocks all map to onnxruntime int8 kernels "
                    "(QLinearConv, QLinearAdd), so INT8 is both ~4x smaller and faster than FP32 on CPU.",
    "mobilenet_v3_small": "MobileNetV3 was chosen: its hardswish and squeeze-excitation blocks stay float in onnxruntime, "
                          "so INT8 gains little latency on CPU (see the doctor section); MobileNetV2 gains about 2x.",
}
STUDENT_NOTE["mobilenet_v3_large"] = STUDENT_NOTE["mobilenet_v3_small"]


def _finish(raw: Path, final: Path, do_simplify: bool) -> dict[str, Any]:
    if do_simplify:
        return simplify(raw, final)
    with atomic_path(final) as tmp:
        shutil.copyfile(raw, tmp)
    return {"kept": "original", "reason": "export.simplify is false"}


def run(ctx: StageContext) -> StageResult:
    cfg = ctx.cfg
    cpu = torch.device("cpu")  # export and parity are CPU facts, whatever device trained the models
    bundle = ctx.dataset()
    shape = (1, bundle.channels, *bundle.image_size)
    images = to_float(bundle.test.images[: cfg.export.parity_images])
    teacher = load_teacher(ctx, cpu)
    student = load_student(ctx, cpu).eval()
    qmodel = load_qat_student(ctx, cpu)

    def meta(name: str, arch: str) -> dict[str, str]:
        return {"labels": json.dumps(list(bundle.classes)), "model": name, "arch": arch,
                "dataset": cfg.data.dataset, "producer": f"edgekd {__version__}", "run": cfg.name}

    raw_dir = ctx.stage_dir("export")
    artifacts: dict[str, Path] = {}
    metrics: dict[str, Any] = {}
    jobs = (
        ("teacher_fp32", teacher, cfg.teacher.arch, export_fp32),
        ("student_fp32", student, cfg.student.arch, export_fp32),
        ("student_int8", qmodel, cfg.student.arch, export_int8),
    )
    for key, model, arch, export_fn in jobs:
        raw = raw_dir / FILES[key].replace(".onnx", ".raw.onnx")
        info = export_fn(model, raw, shape, opset=cfg.export.opset, metadata=meta(key, arch))
        final = ctx.run_dir / FILES[key]
        simp = _finish(raw, final, cfg.export.simplify)
        if key == "student_int8":
            parity = parity_int8(model, final, images, min_agreement=cfg.export.int8_min_agreement,
                                 noise_steps=cfg.export.int8_noise_steps)
        else:
            parity = parity_fp32(model, final, images, batch_sizes=cfg.export.parity_batch_sizes,
                                 rtol=cfg.export.fp32_rtol, atol=cfg.export.fp32_atol)
        ctx.log(f"[edgekd] export: {FILES[key]} {final.stat().st_size / 1e6:.2f} MB, "
                f"nodes {simp.get('nodes_before', '-')} -> {simp.get('nodes_after', '-')}, parity {_parity_text(parity)}")
        if info.get("int32_bias_values_saturated"):
            ctx.log(f"[edgekd] export: warning: {info['int32_bias_values_saturated']} int32 bias values of {FILES[key]} "
                    "saturated (channels whose weights are ~0, their scale at its floor); the parity above includes it")
        # The raw file by its place in the run folder: an absolute path would name the staging folder it was
        # written in, which is gone once the run commits.
        info["path"] = raw.relative_to(ctx.run_dir).as_posix()
        metrics[key] = {"file": FILES[key], "export": _jsonable(info), "simplify": simp, "parity": parity}
        if cfg.export.temperature_scaling and key != "teacher_fp32":
            metrics[key]["temperature_scaling"] = _scale(ctx, final, raw_dir, images)
        artifacts[key] = final
        fault_point(f"export:after:{key}")  # test hook (edgekd.faults): a kill between two staged files
    metrics["size_ratio_int8_fp32"] = artifacts["student_int8"].stat().st_size / artifacts["student_fp32"].stat().st_size
    if cfg.export.ort_format:  # ORT Mobile files, each checked against its ONNX file on the parity images
        ort_artifacts, metrics["ort_format"] = write_ort_files(
            ctx.run_dir, artifacts, images, bundle.test.labels[: len(images)], cfg.export.ort_target_platform,
            cfg.export.ort_min_agreement)
        for key, m in metrics["ort_format"].items():
            ctx.log(f"[edgekd] export: {m['file']} {m['size_bytes'] / 1e6:.2f} MB, top-1 agreement with the ONNX "
                    f"file {m['top1_agreement']:.2%}")
        artifacts.update(ort_artifacts)
    extra = {
        "io": {"input": "pixels", "output": "logits", "labels": list(bundle.classes),
               "preprocessing": {"layout": "NCHW", "dtype": "float32", "range": [0, 1],
                                 "size": list(bundle.image_size), "channels": bundle.channels,
                                 "normalization": "inside the graph"}},
        "student_choice_note": STUDENT_NOTE.get(cfg.student.arch, f"student: {cfg.student.arch}"),
    }
    if cfg.export.temperature_scaling:  # the student files' logits are already divided by their fitted T
        extra["io"]["temperature"] = {k: metrics[k]["temperature_scaling"]["temperature"]
                                      for k in ("student_fp32", "student_int8")}
    return StageResult(artifacts=artifacts, metrics=metrics, extra=extra)


def _scale(ctx: StageContext, final: Path, raw_dir: Path, images: Any) -> dict[str, Any]:
    """Fit T on the verified ``final`` file, keep it as ``<name>.unscaled.onnx`` in the stage folder, and write
    ``final`` again ending in a Mul by 1/T, checked to compute the unscaled file's logits / T."""
    val = ctx.dataset().val
    fit = fit_file_temperature(final, to_float(val.images), val.labels, ctx.cfg.data.eval_batch_size)
    unscaled = raw_dir / final.name.replace(".onnx", ".unscaled.onnx")
    os.replace(final, unscaled)
    append_temperature(unscaled, final, fit["temperature"])
    check = verify_scaled(unscaled, final, images, fit["temperature"])
    ctx.log(f"[edgekd] export: {final.name} scaled by 1/T, T = {fit['temperature']:.3f} (validation ECE "
            f"{fit['val_ece_before']:.4f} -> {fit['val_ece_after']:.4f}, NLL {fit['val_nll_before']:.4f} -> "
            f"{fit['val_nll_after']:.4f})")
    return {**fit, "unscaled": unscaled.relative_to(ctx.run_dir).as_posix(), "unscaled_sha256": sha256_file(unscaled),
            "check": check}


def _parity_text(p: dict[str, Any]) -> str:
    return f"agreement {p['agreement']:.2%}" if "agreement" in p else f"max |d logit| {p['max_abs_diff']:.2e}"


def _jsonable(d: dict[str, Any]) -> dict[str, Any]:
    return json.loads(json.dumps(d, default=str))
