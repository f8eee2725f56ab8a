"""Report sections from the check stage: the three models side by side, latency, profiler ops,
per-class accuracy and the INT8 doctor. Every number is read from the manifest (the doctor
reads the int8 ONNX file itself)."""
from __future__ import annotations

import os
import sys
from pathlib import Path
from typing import Any

from ...manifest import Manifest
from .doc import (
    MISSING, Code, Image, Paragraph, Section, Table, latency_entry, mb, num, ordered_models, pct, pp_delta, ratio,
)


def _acc(models: dict[str, Any], name: str) -> Any:
    return models.get(name, {}).get("accuracy")


def _size(models: dict[str, Any], name: str) -> Any:
    m = models.get(name, {})
    return m.get("size_bytes", m.get("size_mb"))


def _median(models: dict[str, Any], name: str, batch: int = 1, threads: int = 1) -> Any:
    rec = latency_entry(models.get(name, {}), batch, threads)
    return rec.get("median_ms") if rec else None


def summary_section(check: dict[str, Any], plots: dict[str, Path]) -> Section:
    """Accuracy, size and batch-1 latency per model, with student/teacher and int8/fp32 ratios."""
    models = check["models"]
    names = ordered_models(models)
    header = ["", *names, "student fp32 / teacher", "int8 / fp32", "int8 / teacher"]
    acc = ["accuracy", *(pct(_acc(models, n)) for n in names),
           pp_delta(_acc(models, "student_fp32"), _acc(models, "teacher")),
           pp_delta(_acc(models, "student_int8"), _acc(models, "student_fp32")),
           pp_delta(_acc(models, "student_int8"), _acc(models, "teacher"))]
    size = ["size", *(mb(models[n].get("size_mb")) for n in names),
            ratio(_size(models, "student_fp32"), _size(models, "teacher")),
            ratio(_size(models, "student_int8"), _size(models, "student_fp32")),
            ratio(_size(models, "student_int8"), _size(models, "teacher"))]
    lat = ["latency, batch 1, 1 thread, median (ms)", *(num(_median(models, n)) for n in names),
           ratio(_median(models, "student_fp32"), _median(models, "teacher")),
           ratio(_median(models, "student_int8"), _median(models, "student_fp32")),
           ratio(_median(models, "student_int8"), _median(models, "teacher"))]
    sec = Section("Models side by side", [
        Paragraph(f"Measured in onnxruntime ({check.get('provider', 'provider not recorded')}) by the check stage. "
                  "Accuracy differences are in percentage points (pp); size and latency columns are ratios."),
        Table(header, [acc, size, lat]),
    ])
    if "accuracy_vs_latency" in plots:
        sec.blocks.append(Image(plots["accuracy_vs_latency"], "Accuracy vs batch-1 latency"))
    return sec


def latency_section(check: dict[str, Any]) -> Section | None:
    """Every measured (batch, threads): median/p90/p99 per model, then ratios and the teacher->int8 speedup."""
    models = check["models"]
    names = [n for n in ordered_models(models) if models[n].get("latency")]
    if not names:
        return None
    rows = []
    for n in names:
        for r in models[n]["latency"]:
            rows.append([n, str(r.get("batch", MISSING)), str(r.get("threads", MISSING)), num(r.get("median_ms")),
                         num(r.get("p90_ms")), num(r.get("p99_ms")), num(r.get("mean_ms")), str(r.get("runs", MISSING))])
    configs = sorted({(r.get("batch"), r.get("threads")) for n in names for r in models[n]["latency"]},
                     key=lambda bt: (bt[0] or 0, bt[1] or 0))
    ratios = []
    for b, t in configs:
        med = {n: _median(models, n, b, t) for n in names}
        speedup = ratio(med.get("teacher"), med.get("student_int8"))
        ratios.append([str(b), str(t), ratio(med.get("student_fp32"), med.get("teacher")),
                       ratio(med.get("student_int8"), med.get("student_fp32")), speedup])
    return Section("Latency", [
        Table(["model", "batch", "threads", "median ms", "p90 ms", "p99 ms", "mean ms", "runs"], rows),
        Table(["batch", "threads", "student fp32 / teacher", "int8 / fp32", "speedup teacher → int8"], ratios,
              caption="Ratios of median latencies (below ×1.00 is faster); speedup is teacher median / int8 median."),
    ])


def ops_section(check: dict[str, Any]) -> Section | None:
    """The profiler's most expensive op types per model."""
    sec = Section("Top ops (onnxruntime profiler)")
    for n in ordered_models(check["models"]):
        ops = check["models"][n].get("profile_top_ops")
        if ops:
            sec.blocks.append(Table(["op type", "total ms", "share", "count", "of which depthwise: ms (count)"],
                                    [[str(o.get("op_type", MISSING)), num(o.get("total_ms")), pct(o.get("share")),
                                      str(o.get("count", MISSING)),
                                      f"{num(o['depthwise_ms'])} ({o.get('depthwise_count', MISSING)})"
                                      if "depthwise_ms" in o else MISSING] for o in ops], caption=n))
    return sec if sec.blocks else None


def per_class_section(check: dict[str, Any], plots: dict[str, Path]) -> Section | None:
    """Per-class accuracy per model, with the per-class and confusion plots."""
    models = check["models"]
    names = [n for n in ordered_models(models) if models[n].get("per_class_accuracy")]
    if not names:
        return None
    n_classes = max(len(models[n]["per_class_accuracy"]) for n in names)
    labels = list(check.get("labels") or [])
    labels += [str(i) for i in range(len(labels), n_classes)]
    rows = [[labels[i], *(pct(models[n]["per_class_accuracy"][i]) if i < len(models[n]["per_class_accuracy"])
                          else MISSING for n in names)] for i in range(n_classes)]
    sec = Section("Per-class accuracy", [Table(["class", *names], rows)])
    if "per_class_accuracy" in plots:
        sec.blocks.append(Image(plots["per_class_accuracy"], "Per-class accuracy"))
    for n in names:
        if f"confusion_{n}" in plots:
            sec.blocks.append(Image(plots[f"confusion_{n}"], f"Confusion matrix, {n}"))
    return sec


def int8_path(manifest: Manifest, check: dict[str, Any]) -> Path | None:
    """The int8 model: the export stage's verified artifact, else the file the check stage measured."""
    if manifest.stage("export") and "student_int8" in manifest.stage("export").get("artifacts", {}):
        return manifest.artifact("export", "student_int8")  # raises ArtifactError on a changed file
    f = check.get("models", {}).get("student_int8", {}).get("file")
    return manifest.resolve(f) if f else None


def doctor_section(manifest: Manifest, check: dict[str, Any]) -> Section:
    """The doctor's verdict on the int8 file; a failure is shown in the report, not hidden."""
    sec = Section("Why INT8 is (or is not) faster: edgekd doctor")
    try:
        path = int8_path(manifest, check)
        if path is None:
            sec.blocks.append(Paragraph("No INT8 model in this run: nothing to diagnose."))
            return sec
        from ..doctor import diagnose, format_diagnosis

        d = diagnose(path, provider=check.get("provider", "CPUExecutionProvider"), check=check)
    except Exception as e:  # the report must still render; the error is printed in it and on stderr
        print(f"edgekd report: doctor failed: {type(e).__name__}: {e}", file=sys.stderr)
        sec.blocks.append(Paragraph(f"The doctor failed on this run's INT8 model: {type(e).__name__}: {e}"))
        return sec
    # The file by its name in the run folder: the report may be rendered while the run is still staged.
    d["model"] = os.path.relpath(path, manifest.run_dir).replace(os.sep, "/")
    sec.blocks.append(Paragraph(f"Verdict: {d['verdict']}"))
    sec.blocks.append(Paragraph("Latency facts come from this run's check stage; graph facts from the ONNX file; CPU "
                                "facts from the machine that rendered this report (the run's own CPU is under "
                                "Environment)."))
    sec.blocks.append(Code(format_diagnosis(d)))
    return sec
