"""One trial of ``edgekd tune``: the real pipeline (teacher load -> distill -> qat -> export), then the
INT8 file measured in onnxruntime: validation accuracy (the objective) and latency (the budget).

Each trial is an ordinary run folder named by a hash of its parameters, so a trial interrupted by a
kill resumes its staged stages when the study re-runs it, and repeated parameters reuse the
finished run (every stage is skipped by its fingerprint).
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

from ..config import stable_hash
from ..deploy.runtime import accuracy_report, make_session, measure_latency, onnx_logits
from ..pixels import to_float
from .space import trial_config

LATENCY_WARMUP = 5  # untimed runs before the timed ones: first runs pay for allocation and kernel selection


@dataclass(frozen=True)
class LatencySpec:
    """Where the INT8 latency is measured, and the budget it must meet (None: none)."""

    batch: int
    threads: int
    runs: int
    budget_ms: float | None
    provider: str = "CPUExecutionProvider"


def trial_name(params: dict[str, Any]) -> str:
    """The run folder name of a parameter set: the same parameters always land in the same folder."""
    return "trial-" + stable_hash(params)[:12]


def run_trial(base: dict[str, Any], params: dict[str, Any], teacher_weights: Path, folder: Path,
              data: Any, latency: LatencySpec, log: Callable[[str], None] | None = None,
              candidates: dict[str, str] | None = None) -> dict[str, Any]:
    """Run one parameter set through the pipeline and measure its INT8 model; returns the trial metrics.

    ``data`` is the base config's DatasetBundle: validation images select, test images are reported only.
    ``candidates`` (arch -> cached weights file) are the candidate teachers ``multi_teacher`` may add.
    Raises whatever the pipeline raises (the study records it as a failed trial).
    """
    from ..pipeline import run

    cfg = trial_config(base, params, str(teacher_weights), trial_name(params), candidates)
    result = run(cfg, out=folder, resume=True, log=log)
    int8 = result.manifest.artifact("export", "student_int8")
    sess = make_session(int8, provider=latency.provider, threads=0)
    classes = len(data.classes)
    val = accuracy_report(onnx_logits(sess, to_float(data.val.images)), data.val.labels, classes)["accuracy"]
    test = accuracy_report(onnx_logits(sess, to_float(data.test.images)), data.test.labels, classes)["accuracy"]
    lat = measure_latency(int8, batch=latency.batch, threads=latency.threads, warmup=LATENCY_WARMUP,
                          runs=latency.runs, provider=latency.provider)
    distill, qat = result.metrics("distill"), result.metrics("qat")
    return {
        "val_accuracy": val,  # INT8 ONNX file on the validation split: the objective
        "latency_ms": lat["median_ms"],
        "test_accuracy": test,
        "distill_val_accuracy": distill["val_accuracy"],
        "qat_val_accuracy": qat["val_accuracy"],
        "size_mb": int8.stat().st_size / 1e6,
        "train_seconds": float(distill.get("train_seconds", 0.0)) + float(qat.get("train_seconds", 0.0)),
        "run_dir": str(result.run_dir),
    }
