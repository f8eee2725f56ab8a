"""Which onnxruntime int8 kernels are faster than their float twins at the default student's layer shapes?

Issue 10 asks for INT8/FP32 ≤ 0.50 at batch 1 on the default MobileNetV2 ×0.5 (28×28 Fashion-MNIST).
The whole-model ratio (×0.81 on AMD EPYC) mixes kernels that gain and kernels that lose, so this probe
times one kernel kind at a time: a hand-built chain of N identical layers (1×1 pointwise, or 3×3 depthwise,
each followed by ReLU), float vs QDQ int8 (which onnxruntime fuses into QLinearConv; the script asserts
the fusion), at the channel counts and spatial sizes the student has. The per-layer time is
(t(N + 1 layers) − t(1 layer)) / N, so the fixed per-inference cost (input quantize, output dequantize,
the session call) cancels out. Batch 1, 1 thread, medians of ``--runs`` runs after a warm-up.

    python benchmarks/int8_kernel_probe.py            # ~10 s
"""
from __future__ import annotations

import argparse
import json
import sys
from collections import Counter
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
from onnx import TensorProto, helper, numpy_helper

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from edgekd.deploy.runtime import make_session, measure_latency  # noqa: E402
from edgekd.io import atomic_write_json, atomic_write_text  # noqa: E402

# (kind, channels, height = width) as they occur in MobileNetV2 x0.5 on 28x28 inputs (stem stride 1)
SHAPES = [("pointwise", 16, 28), ("pointwise", 96, 7), ("pointwise", 192, 4), ("pointwise", 80, 2),
          ("depthwise", 16, 28), ("depthwise", 48, 14), ("depthwise", 96, 7), ("depthwise", 288, 4),
          ("depthwise", 480, 2)]
ACT_SCALE = 0.05  # any positive scale: the timing does not depend on it


def chain(n: int, kind: str, c: int, hw: int, quantized: bool, seed: int = 0) -> onnx.ModelProto:
    """``n`` conv + ReLU layers; quantized: QDQ around every weight and activation (uint8 after ReLU, zp 0)."""
    rng = np.random.default_rng(seed)
    init = [numpy_helper.from_array(np.array(ACT_SCALE, np.float32), "s"),
            numpy_helper.from_array(np.array(128, np.uint8), "z_in"),
            numpy_helper.from_array(np.array(0, np.uint8), "z_relu"),
            numpy_helper.from_array(np.zeros(c, np.int8), "w_zp")]
    nodes, x = [], "x"
    if quantized:
        nodes += [helper.make_node("QuantizeLinear", ["x", "s", "z_in"], ["xq"]),
                  helper.make_node("DequantizeLinear", ["xq", "s", "z_in"], ["x_dq"])]
        x = "x_dq"
    shape = (c, 1, 3, 3) if kind == "depthwise" else (c, c, 1, 1)
    attrs = {"group": c, "pads": [1, 1, 1, 1]} if kind == "depthwise" else {}
    for i in range(n):
        # He-scaled weights keep the activations' magnitude along the chain (the check in the tests needs it)
        w = (rng.standard_normal(shape) * np.sqrt(2.0 / np.prod(shape[1:]))).astype(np.float32)
        if quantized:  # per-channel symmetric int8 weights, as edgekd exports them
            ws = np.abs(w).reshape(c, -1).max(1) / 127
            init += [numpy_helper.from_array(np.round(w / ws[:, None, None, None]).astype(np.int8), f"wq{i}"),
                     numpy_helper.from_array(ws.astype(np.float32), f"ws{i}")]
            nodes.append(helper.make_node("DequantizeLinear", [f"wq{i}", f"ws{i}", "w_zp"], [f"w{i}"], axis=0))
        else:
            init.append(numpy_helper.from_array(w, f"w{i}"))
        nodes += [helper.make_node("Conv", [x, f"w{i}"], [f"c{i}"], **attrs),
                  helper.make_node("Relu", [f"c{i}"], [f"r{i}"])]
        x = f"r{i}"
        if quantized:
            nodes += [helper.make_node("QuantizeLinear", [x, "s", "z_relu"], [f"q{i}"]),
                      helper.make_node("DequantizeLinear", [f"q{i}", "s", "z_relu"], [f"d{i}"])]
            x = f"d{i}"
    graph = helper.make_graph(nodes, "chain", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, c, hw, hw])],
                              [helper.make_tensor_value_info(x, TensorProto.FLOAT, None)], init)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    return model


def session(model: onnx.ModelProto, optimized: Path | None = None) -> ort.InferenceSession:
    """The chain in onnxruntime on 1 thread, as the check stage opens files (``make_session``)."""
    return make_session(model.SerializeToString(), threads=1, optimized_model_path=optimized)


def median_us(model: onnx.ModelProto, runs: int) -> float:
    """Median batch-1 latency on 1 thread, timed as the check stage times files (``measure_latency``)."""
    return measure_latency(model.SerializeToString(), threads=1, warmup=max(20, runs // 10), runs=runs)["median_ms"] * 1e3


def fused_ops(kind: str, c: int, hw: int, work: Path) -> Counter:
    """The op types onnxruntime runs for a 3-layer quantized chain (the QDQ must become QLinearConv)."""
    path = work / "chain_opt.onnx"
    session(chain(3, kind, c, hw, True), path)
    return Counter(n.op_type for n in onnx.load(str(path)).graph.node)


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--layers", type=int, default=40, help="N: layers in the long chain")
    p.add_argument("--runs", type=int, default=2000)
    p.add_argument("--out", default=str(ROOT / "benchmarks" / "results"))
    p.add_argument("--name", default="int8_kernel_probe")
    a = p.parse_args()
    out = Path(a.out)
    out.mkdir(parents=True, exist_ok=True)
    rows = []
    for kind, c, hw in SHAPES:
        ops = fused_ops(kind, c, hw, out)
        if ops.get("QLinearConv") != 3:
            raise SystemExit(f"onnxruntime did not fuse the {kind} QDQ chain into QLinearConv: {dict(ops)}")
        per = {}
        for q in (False, True):
            long, short = chain(a.layers + 1, kind, c, hw, q), chain(1, kind, c, hw, q)
            per[q] = (median_us(long, a.runs) - median_us(short, a.runs)) / a.layers
        rows.append({"kind": kind, "channels": c, "size": hw, "fp32_us": per[False], "int8_us": per[True],
                     "ratio": per[True] / per[False]})
        print(json.dumps(rows[-1]), flush=True)
    (out / "chain_opt.onnx").unlink(missing_ok=True)
    from edgekd.environment import cpu_info

    meta = {"onnxruntime": ort.__version__, "cpu": cpu_info()["model"], "layers": a.layers, "runs": a.runs}
    atomic_write_json(out / f"{a.name}.json", {"meta": meta, "rows": rows})
    lines = ["| layer | channels | H×W | FP32 µs/layer | INT8 µs/layer | INT8/FP32 |", "|---|---|---|---|---|---|"]
    lines += [f"| {r['kind']} | {r['channels']} | {r['size']}×{r['size']} | {r['fp32_us']:.2f} | {r['int8_us']:.2f} | "
              f"×{r['ratio']:.2f} |" for r in rows]
    text = "\n".join(lines) + (f"\n\nonnxruntime {meta['onnxruntime']}, {meta['cpu']}; batch 1, 1 thread; per layer = "
                               f"(t({a.layers + 1} layers) − t(1 layer)) / {a.layers}, medians of {a.runs} runs.\n")
    atomic_write_text(out / f"{a.name}.md", text)
    print(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
