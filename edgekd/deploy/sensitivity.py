"""``edgekd sensitivity RUN``: which quantized layer costs the INT8 model its accuracy.

For each quantized layer (see :mod:`edgekd.deploy.qdq_layers`) two variants are built by editing the
run's exported graphs and scored in onnxruntime at the check stage's optimization level ("all", so
the int8 layers run as the fused kernels a deployment runs):

- **only quantized**: the FP32 file with just this layer quantized as the INT8 file quantizes it;
  ``drop_when_quantized`` = FP32 accuracy - its accuracy (what this layer's int8 form costs alone);
- **only float**: the INT8 file with just this layer in float (the FP32 file's weights and bias, reading
  the dequantized input: what ``qat.keep_float`` exports); ``gain_when_float`` = its accuracy - INT8
  accuracy (what keeping this one layer in float buys).

``score`` = the sum of the two; the rows are ranked by it. The FP32 file holds the distilled weights
and the INT8 file the QAT-tuned ones, so a layer's numbers include how far QAT moved its weights
(usually little). Imports no torch.
"""
from __future__ import annotations

import time
from pathlib import Path
from typing import Any, Callable, Sequence

import numpy as np
import onnx

from ..errors import ConfigError
from ..io import atomic_write_json
from ..manifest import Manifest
from ..pixels import to_float
from ..sensitivity_file import SENSITIVITY_FILE
from .onnx_io import load_model
from .qdq_layers import check_names_unique, quantized_layers, with_layers_float, with_layers_quantized
from .runtime.session import make_session, onnx_logits

STAGE = "sensitivity"  # its manifest entry: the file, its sha256, the inputs it was computed from
DEFAULT_IMAGES = 2000  # ~2 x 53 MobileNetV2 variants in a few minutes on 2 cores (see docs/quantization.md)
GRAPH_OPTIMIZATION = "all"  # what the check stage measures with (make_session's default)


def predictions(model: onnx.ModelProto | str | Path, images: np.ndarray, threads: int = 0,
                batch_size: int = 256) -> np.ndarray:
    """Top-1 classes of an ONNX model (a ModelProto or a path) in onnxruntime at optimization "all"."""
    src = model.SerializeToString() if isinstance(model, onnx.ModelProto) else model
    sess = make_session(src, threads=threads, graph_optimization=GRAPH_OPTIMIZATION)
    return onnx_logits(sess, images, batch_size).argmax(1)


def accuracy_of(model: onnx.ModelProto | str | Path, images: np.ndarray, labels: np.ndarray,
                threads: int = 0, batch_size: int = 256) -> float:
    """Top-1 accuracy of an ONNX model in onnxruntime at optimization "all"."""
    return float((predictions(model, images, threads, batch_size) == labels).mean())


def layer_sensitivity(fp32_path: str | Path, int8_path: str | Path, images: np.ndarray, labels: np.ndarray,
                      threads: int = 0, batch_size: int = 256,
                      log: Callable[[str], None] | None = None) -> dict[str, Any]:
    """Per-layer accuracy with only that layer quantized, and with only that layer in float.

    ``images`` are uint8 or float32 [0, 1] NCHW, ``labels`` int [N]. Returns ``{"fp32_accuracy",
    "int8_accuracy", "all_layers_quantized_accuracy", "all_layers_float_accuracy", "layers": [...],
    "ranking": [names by score], ...}``; each layer row has ``index``, ``layer``, ``op_type``,
    ``only_quantized``, ``only_float``, ``drop_when_quantized``, ``gain_when_float``, ``score`` and
    ``flips_when_quantized`` / ``flips_when_float`` (fraction of images whose top-1 differs from the FP32 /
    INT8 file's: far less noisy than an accuracy difference, it breaks ties in the ranking).
    """
    x = to_float(images)
    y = np.asarray(labels, dtype=np.int64)
    if len(x) == 0 or len(x) != len(y):
        raise ConfigError(f"{len(x)} images and {len(y)} labels", "pass at least one image and one label per image")
    fp32, int8 = load_model(fp32_path), load_model(int8_path)
    layers = quantized_layers(int8)
    check_names_unique(layers)
    if not layers:
        raise ConfigError(f"{int8_path} has no quantized Conv/Gemm layer", "pass the run's model.int8.onnx")
    names = [layer.name for layer in layers]

    def acc(model: onnx.ModelProto | str | Path) -> float:
        return accuracy_of(model, x, y, threads, batch_size)

    start = time.perf_counter()
    fp32_pred, int8_pred = predictions(fp32_path, x, threads, batch_size), predictions(int8_path, x, threads, batch_size)
    fp32_acc, int8_acc = float((fp32_pred == y).mean()), float((int8_pred == y).mean())
    result: dict[str, Any] = {
        "images": int(len(y)), "graph_optimization": GRAPH_OPTIMIZATION, "threads": threads,
        "fp32_accuracy": fp32_acc, "int8_accuracy": int8_acc,
        # the edit machinery with nothing edited must give back the FP32 file's accuracy
        "float_everything_accuracy": acc(with_layers_quantized(fp32, int8, [])),
        # every layer quantized in the FP32 graph: what remains to INT8 is the non-layer quantizers (Add, pools)
        "all_layers_quantized_accuracy": acc(with_layers_quantized(fp32, int8, names)),
        # every layer float in the INT8 graph: what the non-layer quantizers alone cost
        "all_layers_float_accuracy": acc(with_layers_float(int8, fp32, names)),
    }
    rows = []
    for i, layer in enumerate(layers):
        pred_q = predictions(with_layers_quantized(fp32, int8, [layer.name]), x, threads, batch_size)
        pred_f = predictions(with_layers_float(int8, fp32, [layer.name]), x, threads, batch_size)
        only_q, only_f = float((pred_q == y).mean()), float((pred_f == y).mean())
        rows.append({"index": layer.index, "layer": layer.name, "op_type": layer.op_type,
                     "only_quantized": only_q, "only_float": only_f,
                     "drop_when_quantized": fp32_acc - only_q, "gain_when_float": only_f - int8_acc,
                     "score": (fp32_acc - only_q) + (only_f - int8_acc),
                     "flips_when_quantized": float((pred_q != fp32_pred).mean()),
                     "flips_when_float": float((pred_f != int8_pred).mean())})
        if log is not None:
            log(f"[edgekd] sensitivity: {i + 1}/{len(layers)} {layer.name}: only quantized {only_q:.4f}, "
                f"only float {only_f:.4f}")
    result["layers"] = rows
    # score first; equal scores (common: one image is 1/N) by how many predictions the layer changes;
    # the stable sort keeps graph order after that
    result["ranking"] = [r["layer"] for r in sorted(
        rows, key=lambda r: (-r["score"], -(r["flips_when_quantized"] + r["flips_when_float"])))]
    result["seconds"] = round(time.perf_counter() - start, 2)
    return result


def top_offenders(result: dict[str, Any], k: int = 5) -> list[dict[str, Any]]:
    """The ``k`` rows with the highest score, worst first."""
    by_name = {r["layer"]: r for r in result["layers"]}
    return [by_name[n] for n in result["ranking"][:k]]


def format_sensitivity(result: dict[str, Any], k: int = 5) -> str:
    """A plain-text summary: the reference accuracies and the top ``k`` offenders by name."""
    lines = [f"layer sensitivity on {result['images']} test images (onnxruntime, optimization "
             f"'{result['graph_optimization']}'), {len(result['layers'])} quantized layers, {result['seconds']:.0f} s",
             f"  FP32 {result['fp32_accuracy']:.4f}   INT8 {result['int8_accuracy']:.4f}   "
             f"all layers quantized in FP32 graph {result['all_layers_quantized_accuracy']:.4f}   "
             f"all layers float in INT8 graph {result['all_layers_float_accuracy']:.4f}",
             f"top offenders (score = drop when quantized alone + gain when kept float alone):"]
    for r in top_offenders(result, k):
        lines.append(f"  {r['layer']:<32} score {r['score']:+.4f}   only quantized {r['only_quantized']:.4f} "
                     f"({-r['drop_when_quantized']:+.4f}, {r['flips_when_quantized']:.1%} flipped)   only float "
                     f"{r['only_float']:.4f} ({r['gain_when_float']:+.4f}, {r['flips_when_float']:.1%} flipped)")
    return "\n".join(lines)


def eval_subset(run_dir: str | Path, n: int, manifest: Manifest | None = None) -> tuple[np.ndarray, np.ndarray]:
    """``n`` images of the run's test split (seeded, stratified: every class keeps its share), uint8 NCHW."""
    from ..config import config_from_dict
    from ..data import build_dataset, stratified_indices

    m = manifest or Manifest.load(run_dir)
    if not isinstance(m.data.get("config"), dict):
        raise ConfigError(f"the manifest of {m.run_dir} records no config", "re-run the pipeline to rewrite it")
    recorded = m.data["config"]
    # only the data section and seed pick the images: a run written by an older edgekd still reads
    cfg = config_from_dict({k: recorded[k] for k in ("data", "seed") if k in recorded})
    test = build_dataset(cfg.data, cfg.seed).test
    if n >= len(test):
        return test.images, test.labels
    idx = stratified_indices(test.labels, n, np.random.default_rng(cfg.seed))
    return test.images[idx], test.labels[idx]


def run_sensitivity(run_dir: str | Path, images: int = DEFAULT_IMAGES, threads: int = 0, batch_size: int = 256,
                    log: Callable[[str], None] | None = None) -> dict[str, Any]:
    """Layer sensitivity of a finished run: writes ``sensitivity.json`` (atomic) and records it in the manifest.

    The manifest entry (stage "sensitivity") holds the file's sha256, the sha256 of the two ONNX files it
    was computed from (so a reader can tell a stale one) and the top offenders; no other stage is touched.
    """
    if images < 1:
        raise ConfigError(f"--images must be >= 1, got {images}", "pass a positive number of test images")
    m = Manifest.load(run_dir)
    fp32, int8 = m.artifact("export", "student_fp32"), m.artifact("export", "student_int8")
    x, y = eval_subset(run_dir, images, m)
    result = layer_sensitivity(fp32, int8, x, y, threads=threads, batch_size=batch_size, log=log)
    result["files"] = {"student_fp32": fp32.name, "student_int8": int8.name}
    path = atomic_write_json(m.run_dir / SENSITIVITY_FILE, result)
    inputs = {"student_fp32": m.artifact_sha("export", "student_fp32") or "",
              "student_int8": m.artifact_sha("export", "student_int8") or ""}
    summary = {k: result[k] for k in ("images", "fp32_accuracy", "int8_accuracy", "seconds")}
    summary["top_offenders"] = [{"layer": r["layer"], "score": r["score"]} for r in top_offenders(result)]
    m.record_stage(STAGE, {"sensitivity": path}, metrics=summary, inputs=inputs)
    return result


__all__: Sequence[str] = ("layer_sensitivity", "run_sensitivity", "format_sensitivity", "top_offenders",
                          "eval_subset", "accuracy_of", "predictions")
