"""The check stage's onnxruntime measurements for every exported model (no robustness here).

Produces the ``stages.check.metrics`` schema of docs/ARCHITECTURE.md, minus "robustness",
plus "ratios": size and latency of student_fp32 vs teacher and student_int8 vs student_fp32,
and the teacher-over-int8 latency "speedup".
"""
from __future__ import annotations

from pathlib import Path
from typing import Any, Callable, Mapping, Sequence

import numpy as np

from ...config import LatencyConfig
from ...errors import ConfigError
from ...pixels import to_float
from ...progress import bar
from .accuracy import accuracy_report
from .latency import measure_latency, measure_latency_interleaved
from .profile import profile_top_ops
from .session import PathLike, check_provider, make_session, onnx_logits

# (numerator, denominator) model pairs whose size and latency ratios the report quotes
RATIO_PAIRS = (("student_fp32", "teacher"), ("student_int8", "student_fp32"))


def setting_key(batch: int, threads: int) -> str:
    """Name of one latency setting in "ratios", e.g. ``b1_t1`` (threads 0 = all cores)."""
    return f"b{batch}_t{threads}"


def check_model(
    path: PathLike,
    images: np.ndarray,
    labels: np.ndarray,
    num_classes: int,
    latency_cfg: LatencyConfig,
    eval_batch_size: int = 256,
    step: Callable[[int], Any] = lambda n: None,
    latency: list[dict[str, Any]] | None = None,
) -> dict[str, Any]:
    """Size, accuracy, latency over batch_sizes x threads, and (optionally) the top ops of one ONNX file.

    ``step(1)`` is called after each of the :func:`measurement_count` measurements (a progress bar).
    ``latency`` rows measured elsewhere (:func:`check_models` times the files interleaved) replace the
    file's own latency measurement.
    """
    p = Path(path)
    sess = make_session(p, provider=latency_cfg.provider, threads=0)
    logits = onnx_logits(sess, images, eval_batch_size)
    step(1)
    size = p.stat().st_size
    shape = tuple(images.shape[1:])
    out: dict[str, Any] = {"file": p.name, "size_bytes": size, "size_mb": size / 1e6}
    out.update(accuracy_report(logits, labels, num_classes))
    out["latency"] = list(latency) if latency is not None else []
    for b in latency_cfg.batch_sizes if latency is None else ():
        for t in latency_cfg.threads:
            out["latency"].append(measure_latency(p, batch=b, threads=t, warmup=latency_cfg.warmup,
                                                  runs=latency_cfg.runs, provider=latency_cfg.provider,
                                                  input_shape=shape))
            step(1)
    if latency_cfg.profile:
        batch = latency_cfg.batch_sizes[0] if latency_cfg.batch_sizes else 1
        out["profile_top_ops"] = profile_top_ops(p, batch=batch, input_shape=shape, provider=latency_cfg.provider)
        step(1)
    return out


def measurement_count(latency_cfg: LatencyConfig) -> int:
    """Measurements :func:`check_model` makes: accuracy, each latency setting, the profile."""
    return 1 + len(latency_cfg.batch_sizes) * len(latency_cfg.threads) + int(latency_cfg.profile)


def _latency_by_setting(model: Mapping[str, Any]) -> dict[str, float]:
    return {setting_key(r["batch"], r["threads"]): r["median_ms"] for r in model.get("latency", [])}


def compute_ratios(models: Mapping[str, Mapping[str, Any]]) -> dict[str, Any]:
    """Size and median-latency ratios between the models present; pairs with a missing model are left out."""
    ratios: dict[str, Any] = {}
    for num, den in RATIO_PAIRS:
        if num in models and den in models:
            a, b = models[num], models[den]
            la, lb = _latency_by_setting(a), _latency_by_setting(b)
            ratios[f"{num}/{den}"] = {
                "size": a["size_bytes"] / b["size_bytes"],
                "latency": {k: la[k] / lb[k] for k in la if k in lb and lb[k] > 0},
            }
    if "teacher" in models and "student_int8" in models:
        lt, li = _latency_by_setting(models["teacher"]), _latency_by_setting(models["student_int8"])
        ratios["speedup"] = {k: lt[k] / li[k] for k in lt if k in li and li[k] > 0}
    return ratios


def check_models(
    models: Mapping[str, PathLike],
    images: np.ndarray,
    labels: np.ndarray,
    class_names: Sequence[str],
    latency_cfg: LatencyConfig,
    eval_batch_size: int = 256,
) -> dict[str, Any]:
    """Measure every model (name -> ONNX path) in onnxruntime on the same images and settings.

    ``images`` are uint8 or float32 [0, 1] NCHW; ``labels`` int [N]. Returns
    ``{"provider", "models": {name: {...}}, "labels", "ratios"}``.
    """
    check_provider(latency_cfg.provider)  # fail before any measurement, listing what is available
    if len(images) != len(labels):
        raise ConfigError(f"{len(images)} images but {len(labels)} labels", "pass one label per image")
    x = to_float(images)
    y = np.asarray(labels, dtype=np.int64)
    with bar(len(models) * measurement_count(latency_cfg), "check: accuracy and latency", unit="measurement") as b:
        # every setting times all files in alternating blocks, so a passing background load cannot favour one
        rows: dict[str, list[dict[str, Any]]] = {name: [] for name in models}
        for batch in latency_cfg.batch_sizes:
            for t in latency_cfg.threads:
                timed = measure_latency_interleaved(models, batch=batch, threads=t, warmup=latency_cfg.warmup,
                                                    runs=latency_cfg.runs, provider=latency_cfg.provider,
                                                    input_shape=tuple(x.shape[1:]))
                for name in models:
                    rows[name].append(timed[name])
                b.update(len(models))
        measured = {name: check_model(path, x, y, len(class_names), latency_cfg, eval_batch_size, step=b.update,
                                      latency=rows[name])
                    for name, path in models.items()}
    return {
        "provider": latency_cfg.provider,
        "models": measured,
        "labels": list(class_names),
        "ratios": compute_ratios(measured),
    }
