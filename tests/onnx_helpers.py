"""Tiny hand-built ONNX graphs and run folders shared by the deploy-side tests (torch-free).

The band images and their Gemm/Conv classifiers have hand-worked outputs (see test_runtime.py);
``make_run`` lays out a run folder as the pipeline leaves it, with real onnxruntime check metrics.
"""
from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import onnx
import yaml
from onnx import TensorProto, helper, numpy_helper

from edgekd.config import Config, LatencyConfig
from edgekd.deploy.runtime import check_models
from edgekd.manifest import Manifest

OPSET = 17
# The band images: class c lights rows BAND_ROWS[c] of a 1x8x8 image.
BAND_ROWS = ((0, 1), (3, 4), (6, 7))
# Ten images: the band each one shows (what the Gemm model predicts) and its label (7 agree).
BANDS = np.array([0, 0, 0, 1, 1, 1, 2, 2, 2, 2])
LABELS = np.array([0, 0, 1, 1, 1, 2, 2, 2, 2, 0])


def band_images(bands: np.ndarray = BANDS) -> np.ndarray:
    """float32 [N, 1, 8, 8]: zeros with the two rows of each image's band set to 1."""
    x = np.zeros((len(bands), 1, 8, 8), dtype=np.float32)
    for i, b in enumerate(bands):
        x[i, 0, list(BAND_ROWS[b]), :] = 1.0
    return x


def band_weights() -> np.ndarray:
    """Gemm weights [64, 3]: class c sums the pixels of its band, so the lit band wins."""
    w = np.zeros((1, 8, 8, 3), dtype=np.float32)
    for c, rows in enumerate(BAND_ROWS):
        w[0, list(rows), :, c] = 1.0
    return w.reshape(64, 3)


def _save(nodes: list, inits: list, path: Path, in_shape: list) -> Path:
    graph = helper.make_graph(
        nodes, "tiny",
        [helper.make_tensor_value_info("images", TensorProto.FLOAT, ["N", *in_shape])],
        [helper.make_tensor_value_info("logits", TensorProto.FLOAT, ["N", inits[-1].dims[-1]])],
        inits,
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", OPSET)])
    onnx.checker.check_model(model)
    path.parent.mkdir(parents=True, exist_ok=True)
    onnx.save(model, str(path))
    return path


def gemm_model(path: Path, weight: np.ndarray | None = None, bias: np.ndarray | None = None,
               in_shape: tuple[int, ...] = (1, 8, 8)) -> Path:
    """Flatten + Gemm classifier with fixed weights (band weights by default)."""
    w = band_weights() if weight is None else weight.astype(np.float32)
    b = np.zeros(w.shape[1], np.float32) if bias is None else bias.astype(np.float32)
    nodes = [helper.make_node("Flatten", ["images"], ["flat"], axis=1),
             helper.make_node("Gemm", ["flat", "W", "B"], ["logits"])]
    return _save(nodes, [numpy_helper.from_array(w, "W"), numpy_helper.from_array(b, "B")], path, list(in_shape))


def conv_model(path: Path) -> Path:
    """Conv(1->4, 3x3) + Relu + GlobalAveragePool + Flatten + Gemm(4->3), fixed seeded weights."""
    rng = np.random.default_rng(0)
    inits = [numpy_helper.from_array(rng.normal(size=(4, 1, 3, 3)).astype(np.float32), "CW"),
             numpy_helper.from_array(np.zeros(4, np.float32), "CB"),
             numpy_helper.from_array(rng.normal(size=(4, 3)).astype(np.float32), "W"),
             numpy_helper.from_array(np.zeros(3, np.float32), "B")]
    nodes = [helper.make_node("Conv", ["images", "CW", "CB"], ["c"], pads=[1, 1, 1, 1]),
             helper.make_node("Relu", ["c"], ["r"]),
             helper.make_node("GlobalAveragePool", ["r"], ["g"]),
             helper.make_node("Flatten", ["g"], ["f"], axis=1),
             helper.make_node("Gemm", ["f", "W", "B"], ["logits"])]
    return _save(nodes, inits, path, [1, 8, 8])


FAST_LATENCY = LatencyConfig(batch_sizes=[1, 4], threads=[1], warmup=1, runs=5, profile=True)


ROBUSTNESS = {  # what the robustness engineer's code records; the gate only reads it
    "corruption": {"mean_accuracy": 0.6, "by_corruption": {"noise": [0.7, 0.5]}, "mce": 1.1, "relative_mce": 1.2},
    "adversarial": {"pgd": {"0.0078": 0.5, "0.0314": 0.3}, "square": {"0.0078": 0.4}, "fgsm": {"0.0314": 0.35}},
}


def make_run(run_dir: Path, budgets: dict[str, Any] | None = None) -> Path:
    """A run folder as the pipeline leaves it: config.yaml, export artifacts, check metrics."""
    files = {"teacher_fp32": conv_model(run_dir / "teacher.fp32.onnx"),
             "student_fp32": gemm_model(run_dir / "model.fp32.onnx"),
             "student_int8": gemm_model(run_dir / "model.int8.onnx")}
    cfg = Config().to_dict()
    cfg["budgets"].update(budgets or {})
    (run_dir / "config.yaml").write_text(yaml.safe_dump(cfg))
    m = Manifest(run_dir)
    m.data["config"] = cfg
    m.record_stage("export", files)
    names = {"teacher": files["teacher_fp32"], "student_fp32": files["student_fp32"], "student_int8": files["student_int8"]}
    metrics = check_models(names, band_images(), LABELS, ["top", "middle", "bottom"], FAST_LATENCY)
    metrics["models"]["student_int8"]["robustness"] = ROBUSTNESS
    m.record_stage("check", {}, metrics)
    return run_dir


def boundary_qdq_graph(path: Path, middle: str | None, input_type: int = onnx.TensorProto.FLOAT) -> Path:
    """Q -> DQ -> Conv(int8 weight) -> Q -> DQ [-> middle op -> Q -> DQ]: a model whose first Q and last DQ
    sit at the input/output boundary; ``middle`` (a float-only op) leaves one inner Q/DQ pair unfused."""
    rng = np.random.default_rng(0)
    inits = [numpy_helper.from_array(rng.integers(-20, 20, (4, 1, 3, 3)).astype(np.int8), "w"),
             numpy_helper.from_array(np.array(0.01, np.float32), "w_scale"),
             numpy_helper.from_array(np.array(0, np.int8), "w_zp"),
             numpy_helper.from_array(np.array(1 / 255, np.float32), "s"),
             numpy_helper.from_array(np.array(0, np.uint8), "zp")]
    if input_type == TensorProto.UINT8:  # raw pixels: the model starts at DequantizeLinear
        nodes = [helper.make_node("DequantizeLinear", ["pixels", "s", "zp"], ["xd"], name="xd")]
    else:
        nodes = [helper.make_node("QuantizeLinear", ["pixels", "s", "zp"], ["xq"], name="xq"),
                 helper.make_node("DequantizeLinear", ["xq", "s", "zp"], ["xd"], name="xd")]
    nodes += [helper.make_node("DequantizeLinear", ["w", "w_scale", "w_zp"], ["wd"], name="wd"),
              helper.make_node("Conv", ["xd", "wd"], ["y"], name="conv", pads=[1, 1, 1, 1]),
              helper.make_node("QuantizeLinear", ["y", "s", "zp"], ["yq"], name="yq"),
              helper.make_node("DequantizeLinear", ["yq", "s", "zp"], ["yd"], name="yd")]
    last = "yd"
    if middle:
        nodes += [helper.make_node(middle, ["yd"], ["e"], name="middle"),
                  helper.make_node("QuantizeLinear", ["e", "s", "zp"], ["eq"], name="eq"),
                  helper.make_node("DequantizeLinear", ["eq", "s", "zp"], ["ed"], name="ed")]
        last = "ed"
    nodes.append(helper.make_node("Identity", [last], ["out"], name="out"))
    graph = helper.make_graph(nodes, "boundary", [helper.make_tensor_value_info("pixels", input_type, [1, 1, 8, 8])],
                              [helper.make_tensor_value_info("out", TensorProto.FLOAT, [1, 4, 8, 8])], inits)
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)]), str(path))
    return path
