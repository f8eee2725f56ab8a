"""The onnxruntime PTQ baselines of benchmarks/quantization.py calibrate the way their names say.

onnxruntime's Entropy calibrator with its default histogram (128 bins searched for a 128-bin clip) has one
candidate range, the full one, so it silently equals MinMax; the benchmark computes 2048-bin Entropy ranges
instead. Checked on a tiny hand-built Conv graph with real onnxruntime quantize_static runs.
"""
from __future__ import annotations

import importlib.util
import inspect
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import pytest
from onnx import numpy_helper
from onnxruntime.quantization import quantize_static

from onnx_helpers import conv_model

ROOT = Path(__file__).resolve().parents[1]


def _bench():
    spec = importlib.util.spec_from_file_location("quantization_bench", ROOT / "benchmarks" / "quantization.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def _input_scale(path: Path) -> float:
    """The scale of the QuantizeLinear that quantizes the graph input ``images``."""
    m = onnx.load(str(path))
    consts = {t.name: numpy_helper.to_array(t) for t in m.graph.initializer}
    q = next(n for n in m.graph.node if n.op_type == "QuantizeLinear" and n.input[0] == "images")
    return float(consts[q.input[1]])


def _heavy_tailed_images(n: int = 256) -> np.ndarray:
    """Pixels in [0, 1), with one pixel in 500 at 50: a range MinMax must cover and Entropy should clip."""
    rng = np.random.default_rng(0)
    x = rng.random((n, 1, 8, 8), dtype=np.float32)
    x[rng.random(x.shape) < 0.002] = 50.0
    return x


@pytest.mark.skipif("calibration_cache_path" not in inspect.signature(quantize_static).parameters,
                    reason="this onnxruntime's quantize_static takes no calibration cache (the benchmark says so)")
def test_entropy_clips_outliers_that_minmax_covers(tmp_path: Path) -> None:
    bench = _bench()
    fp32 = conv_model(tmp_path / "fp32.onnx")
    x = _heavy_tailed_images()
    scales = {m: _input_scale(bench.ort_static_ptq(fp32, tmp_path / f"{m}.onnx", x, m))
              for m in ("MinMax", "Entropy", "Percentile")}
    # MinMax covers [min(0, x), max(x)] in 255 uint8 steps; float32 rounding of the stored scale only.
    assert scales["MinMax"] == pytest.approx(50.0 / 255, rel=1e-5)
    # Entropy drops the 0.2 % outliers: its range ends far below 50 (the bulk lies in [0, 1)).
    assert scales["Entropy"] < 0.25 * scales["MinMax"]
    # Percentile (99.999 %) keeps at least the bulk and is a different calibrator, not a MinMax copy.
    assert scales["Percentile"] >= 1.0 / 255
    # The scratch files of the Entropy path are gone; the INT8 files run.
    assert not list(tmp_path.glob("*.ranges.json")) and not list(tmp_path.glob("*.pre.onnx"))
    for m in scales:
        out = ort.InferenceSession(str(tmp_path / f"{m}.onnx"), providers=["CPUExecutionProvider"]).run(
            None, {"images": x[:4]})[0]
        assert out.shape == (4, 3) and np.isfinite(out).all()
