"""The INT8 file without waste (edgekd.exporting.slim), and the doctor reading a measured latency table.

Real models: the shared trained MobileNetV2-0.5 (24 Adam steps on real Fashion-MNIST), its QAT twin
calibrated on real images, exported by edgekd's exporter; real onnxruntime sessions at every
optimization level; the doctor through the real CLI on a run folder.
"""
from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import onnx
import pytest
import torch
from onnx import TensorProto, helper, numpy_helper

from conftest import requires_fashion_mnist
from helpers import fmnist_images, trained_student

import edgekd.exporting.export as export_mod
from edgekd.deploy.doctor import diagnose
from edgekd.deploy.doctor_latency import latency_table, slower_settings
from edgekd.deploy.onnx_io import check_onnx_model, constants, producers
from edgekd.deploy.runtime import make_session
from edgekd.deploy.runtime.latency import measure_latency_interleaved
from edgekd.deploy.runtime.profile import profile_top_ops
from edgekd.exporting.qdq import postprocess_qdq
from edgekd.exporting.slim import remove_redundant_clips, slim_int8
from edgekd.errors import ArtifactError
from edgekd.manifest import Manifest
from edgekd.quant import freeze_observers, prepare_qat
from edgekd.quant.observers import weight_scale

pytestmark = requires_fashion_mnist
REPO = Path(__file__).resolve().parents[1]
SHAPE = (1, 1, 28, 28)


@pytest.fixture(scope="module")
def qat():
    """The trained test student's QAT twin, calibrated on real images and frozen."""
    model = prepare_qat(trained_student(), [(b,) for b in fmnist_images(256).split(64)], num_batches=4)
    freeze_observers(model)
    return model


@pytest.fixture(scope="module")
def files(tmp_path_factory, qat) -> dict[str, Path]:
    """FP32, INT8 as exported, and INT8 exported with the slim pass switched off (the file before it)."""
    d = tmp_path_factory.mktemp("int8file")
    student = trained_student()
    out = {"fp32": d / "model.fp32.onnx", "int8": d / "model.int8.onnx", "before": d / "before.int8.onnx"}
    export_mod.export_fp32(student, out["fp32"], SHAPE)
    export_mod.export_int8(qat, out["int8"], SHAPE)
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(export_mod, "slim_int8", lambda model: {})
        export_mod.export_int8(qat, out["before"], SHAPE)
    return out


def _runtime_ops(path: Path, tmp: Path) -> list[str]:
    opt = tmp / f"{path.stem}.opt.onnx"
    make_session(path, threads=1, graph_optimization="all", optimized_model_path=opt)
    return [n.op_type for n in onnx.load(str(opt)).graph.node]


def test_no_all_zero_conv_zero_points_and_conv_still_fuses(files: dict, tmp_path: Path, record_property) -> None:
    model = onnx.load(str(files["int8"]))
    consts, prod = constants(model), producers(model)
    convs = [n for n in model.graph.node if n.op_type == "Conv"]
    assert len(convs) == 52
    for conv in convs:
        dq_w = prod[conv.input[1]]
        assert dq_w.op_type == "DequantizeLinear" and consts[dq_w.input[0]].dtype == np.int8
        assert len(dq_w.input) == 2 or not dq_w.input[2]  # no zero point: ONNX's default 0
    # the only all-zero zero point left is the classifier's: onnxruntime's QGemm fusion requires it
    zero_zps = [n for n in model.graph.node if n.op_type == "DequantizeLinear" and len(n.input) > 2 and n.input[2]
                and consts[n.input[2]].dtype == np.int8 and not consts[n.input[2]].any()]
    assert len(zero_zps) == 1 and all(c.op_type == "Gemm" for c in model.graph.node if zero_zps[0].output[0] in c.input)
    # each int32 bias scale is Mul(input scale, weight scale), not a stored copy
    for node in convs:
        dq_b = prod[node.input[2]]
        mul = prod[dq_b.input[1]]
        assert mul.op_type == "Mul" and list(mul.input) == [prod[node.input[0]].input[1], prod[node.input[1]].input[1]]
    assert "Clip" not in [n.op_type for n in model.graph.node]
    ops = _runtime_ops(files["int8"], tmp_path)  # ORT_ENABLE_ALL, as the check stage runs it
    assert ops.count("QLinearConv") == 52 and ops.count("QGemm") == 1
    assert not {"Conv", "FusedConv", "Gemm", "Clip"} & set(ops)
    assert ops == _runtime_ops(files["before"], tmp_path)  # onnxruntime runs the same graph as before the rewrites
    ratio = files["int8"].stat().st_size / files["fp32"].stat().st_size
    before = files["before"].stat().st_size / files["fp32"].stat().st_size
    record_property("int8_fp32_size_ratio", ratio)
    record_property("int8_fp32_size_ratio_before_slim", before)
    # measured 0.2687 on this trained student (before: 0.3002; 0.2800 before biases and scales were
    # narrowed); 0.27 is the target, and a rewrite that stops applying costs more than 0.003
    assert ratio <= 0.27 and before - ratio >= 0.025


def test_biases_int16_and_weight_scales_float16_where_exact(files: dict) -> None:
    """Narrow storage: int16 biases behind Cast(int32), float16 weight scales behind Mul(Cast(float), factor)."""
    model = onnx.load(str(files["int8"]))
    consts, prod = constants(model), producers(model)
    stored = {t.name: numpy_helper.to_array(t) for t in model.graph.initializer}
    narrow_biases = narrow_scales = 0
    for layer in (n for n in model.graph.node if n.op_type in ("Conv", "Gemm")):
        bias_q = prod[layer.input[2]].input[0]  # the bias DequantizeLinear's data input
        if bias_q in stored:
            assert stored[bias_q].dtype == np.int32
            value = stored[bias_q]
            assert value.size < 32 or value.min() < -32768 or value.max() > 32767  # else it would be narrowed
        else:
            cast = prod[bias_q]
            assert cast.op_type == "Cast" and stored[cast.input[0]].dtype == np.int16 and consts[bias_q].dtype == np.int32
            narrow_biases += 1
        scale = prod[layer.input[1]].input[1]  # the weight DequantizeLinear's scale
        if scale in prod:
            mul = prod[scale]
            cast = prod[mul.input[0]]
            assert mul.op_type == "Mul" and cast.op_type == "Cast" and stored[cast.input[0]].dtype == np.float16
            factor = stored[mul.input[1]]
            assert factor.dtype == np.float32 and factor.size == 1 and consts[scale].dtype == np.float32
            np.testing.assert_array_equal(consts[scale], stored[cast.input[0]].astype(np.float32) * factor)
            assert consts[scale].max() == factor * np.float32(2.0 ** 14)  # the largest channel maps to 2**14
            narrow_scales += 1
        else:
            assert stored[scale].size < 64  # the rewrite would cost more than it saves
    # each branch above enforced the rule per layer; this student: 41 of 53 biases, 35 of 53 scales
    assert narrow_biases > 0 and narrow_scales > 0
    # the doctor states the same storage, and still the dtype the kernels read (int32 biases)
    types = diagnose(files["int8"])["types"]
    assert types["bias"] == {"int32": 53}
    assert types["narrowed_storage"] == {"int16 biases": narrow_biases,
                                         "float16 weight scales (times one float32 factor)": narrow_scales}
    before = diagnose(files["before"])["types"]
    assert before["narrowed_storage"] == {} and before["bias"] == {"int32": 53}


def test_export_refuses_a_storage_rewrite_that_changes_a_scale(qat, tmp_path: Path, monkeypatch) -> None:
    """The exporter checks the scales again after the storage rewrites: one factor off by an ulp is refused."""
    real_slim = export_mod.slim_int8

    def inexact_slim(model: onnx.ModelProto) -> dict[str, int]:
        result = real_slim(model)
        factor = next(t for t in model.graph.initializer if t.name.endswith("_factor"))
        value = numpy_helper.to_array(factor)
        factor.CopyFrom(numpy_helper.from_array(np.nextafter(value, np.float32(1)).astype(np.float32), factor.name))
        return result

    monkeypatch.setattr(export_mod, "slim_int8", inexact_slim)
    with pytest.raises(ArtifactError, match="does not carry the QAT scales"):
        export_mod.export_int8(qat, tmp_path / "model.int8.onnx", SHAPE)
    assert not (tmp_path / "model.int8.onnx").exists()  # nothing written


def _qdq_conv_graph(w_scale: np.ndarray, bias: np.ndarray) -> onnx.ModelProto:
    """x -> Q/DQ -> Conv(64 out channels, int8 weights, int32 bias on input_scale * w_scale) -> y, slimmed."""
    f32, c = np.float32, len(w_scale)
    w = np.random.default_rng(0).integers(-127, 128, (c, 1, 3, 3)).astype(np.int8)
    inits = [numpy_helper.from_array(w, "w"), numpy_helper.from_array(w_scale.astype(f32), "ws"),
             numpy_helper.from_array(bias.astype(np.int32), "b"), numpy_helper.from_array(np.array(0.02, f32), "xs"),
             numpy_helper.from_array(np.array(128, np.uint8), "xz"), numpy_helper.from_array(np.array(0.05, f32), "ys")]
    nodes = [helper.make_node("QuantizeLinear", ["x", "xs", "xz"], ["xq"]),
             helper.make_node("DequantizeLinear", ["xq", "xs", "xz"], ["xd"]),
             helper.make_node("DequantizeLinear", ["w", "ws"], ["wd"], axis=0),
             helper.make_node("Mul", ["xs", "ws"], ["bs"]),
             helper.make_node("DequantizeLinear", ["b", "bs"], ["bd"], axis=0),
             helper.make_node("Conv", ["xd", "wd", "bd"], ["c"], pads=[1, 1, 1, 1], name="conv"),
             helper.make_node("QuantizeLinear", ["c", "ys", "xz"], ["cq"]),
             helper.make_node("DequantizeLinear", ["cq", "ys", "xz"], ["y"])]
    graph = helper.make_graph(nodes, "qconv", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 1, 6, 6])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, c, 6, 6])], inits)
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])


@pytest.mark.parametrize("case", ["narrow", "scale_off_the_float16_grid", "bias_beyond_int16", "bias_int16_min", "too_short",
                                  "read_elsewhere", "graph_input"])
def test_narrowing_is_exact_and_only_where_it_may(case: str, tmp_path: Path) -> None:
    """Hand-built QDQ conv: int16 / float16 storage only where it is exact (and pays), same fused int8 kernel."""
    rng = np.random.default_rng(1)
    c = 16 if case == "too_short" else 64
    # scales as QAT makes them (float16 values times one float32 factor), from weights of very different sizes
    weights = torch.from_numpy(rng.normal(size=(c, 1, 3, 3)) * rng.uniform(1e-3, 3, (c, 1, 1, 1))).float()
    scale = weight_scale(weights).numpy()
    if case == "scale_off_the_float16_grid":
        scale[5] = np.nextafter(scale[5], np.float32(1))  # one ulp off: scale / factor is no float16 any more
    bias = rng.integers(-30000, 30000, c)
    if case == "bias_beyond_int16":
        bias[7], bias[8] = 32768, -32769
    if case == "bias_int16_min":
        bias[7], bias[8] = -32768, 32767  # int16's own limits: still narrowed
    model = _qdq_conv_graph(scale, bias)
    if case == "read_elsewhere":  # another op reads the scale and the bias too: both stay as they are
        model.graph.node.extend([helper.make_node("ReduceMax", ["ws"], ["ws_max"], keepdims=0),
                                 helper.make_node("ReduceMax", ["b"], ["b_max"], keepdims=0)])
        model.graph.output.extend([helper.make_tensor_value_info("ws_max", TensorProto.FLOAT, []),
                                   helper.make_tensor_value_info("b_max", TensorProto.INT32, [])])
    if case == "graph_input":  # overridable initializers (listed as inputs too): renaming them would break the file
        model.graph.input.extend([helper.make_tensor_value_info("ws", TensorProto.FLOAT, [c]),
                                  helper.make_tensor_value_info("b", TensorProto.INT32, [c])])
    x = np.linspace(-2, 2, 36, dtype=np.float32).reshape(1, 1, 6, 6)
    ref = make_session(model.SerializeToString(), threads=1, graph_optimization="all").run(None, {"x": x})[0]
    onnx.save(model, str(tmp_path / "before.onnx"))
    result = slim_int8(model)
    types = {t.name: t.data_type for t in model.graph.initializer}
    assert result["biases_narrowed"] == (case in ("narrow", "scale_off_the_float16_grid", "bias_int16_min"))
    assert result["weight_scales_narrowed"] == (case in ("narrow", "bias_beyond_int16", "bias_int16_min"))
    assert (types.get("b") == TensorProto.INT32) == (not result["biases_narrowed"])
    assert (types.get("ws") == TensorProto.FLOAT) == (not result["weight_scales_narrowed"])
    np.testing.assert_array_equal(constants(model)["ws"], scale)  # what the readers see is unchanged
    np.testing.assert_array_equal(constants(model)["b"], bias.astype(np.int32))
    path = tmp_path / "slim.onnx"
    onnx.save(model, str(path))
    check_onnx_model(path)
    for level in ("none", "all"):
        got = make_session(path, threads=1, graph_optimization=level).run(None, {"x": x})[0]
        np.testing.assert_array_equal(got, ref)
    ops = _runtime_ops(path, tmp_path)
    assert ops == _runtime_ops(tmp_path / "before.onnx", tmp_path) and "Cast" not in ops
    # onnxruntime never folds an overridable initializer, so that file runs unfused before and after
    assert ops.count("QLinearConv") == (case != "graph_input")


@pytest.mark.parametrize("level", ["none", "all"])
def test_slim_file_computes_identical_logits(files: dict, level: str) -> None:
    """Every rewrite is exact: bit-identical logits with and without onnxruntime's optimizations."""
    x = fmnist_images(2048)[1792:].numpy()
    a = make_session(files["before"], threads=1, graph_optimization=level).run(None, {"pixels": x})[0]
    b = make_session(files["int8"], threads=1, graph_optimization=level).run(None, {"pixels": x})[0]
    np.testing.assert_array_equal(a, b)


def _clip_q_graph(scale: float, zp: int) -> onnx.ModelProto:
    inits = [numpy_helper.from_array(np.array(0.0, np.float32), "lo"), numpy_helper.from_array(np.array(6.0, np.float32), "hi"),
             numpy_helper.from_array(np.array(scale, np.float32), "s"), numpy_helper.from_array(np.array(zp, np.uint8), "z")]
    nodes = [helper.make_node("Clip", ["x", "lo", "hi"], ["c"]), helper.make_node("QuantizeLinear", ["c", "s", "z"], ["q"]),
             helper.make_node("DequantizeLinear", ["q", "s", "z"], ["y"])]
    graph = helper.make_graph(nodes, "clip", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 64])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 64])], inits)
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])


@pytest.mark.parametrize("scale, zp, removed", [(6 / 255, 0, 1), (0.03, 0, 0), (6 / 255, 10, 0)])
def test_clip_removed_only_where_quantizer_saturates_inside(scale: float, zp: int, removed: int) -> None:
    """6/255 zp 0: the quantizer's range [0, 6] lies inside the clip. 0.03 reaches 7.65 > 6, zp 10 reaches below 0."""
    model = _clip_q_graph(scale, zp)
    x = np.linspace(-3, 9, 64, dtype=np.float32).reshape(1, 64)
    ref = make_session(model.SerializeToString(), threads=1, graph_optimization="none").run(None, {"x": x})[0]
    assert remove_redundant_clips(model) == removed
    got = make_session(model.SerializeToString(), threads=1, graph_optimization="none").run(None, {"x": x})[0]
    np.testing.assert_array_equal(ref, got)


def test_slim_keeps_non_zero_zero_points() -> None:
    w = numpy_helper.from_array(np.array([[[[1]]], [[[-2]]]], np.int8), "w")
    inits = [w, numpy_helper.from_array(np.array([0.1, 0.2], np.float32), "ws"),
             numpy_helper.from_array(np.array([0, 3], np.int8), "wz")]
    nodes = [helper.make_node("DequantizeLinear", ["w", "ws", "wz"], ["wd"], axis=0),
             helper.make_node("Conv", ["x", "wd"], ["y"])]
    graph = helper.make_graph(nodes, "zp", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 1, 2, 2])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 2, 2, 2])], inits)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    assert slim_int8(model)["weight_zero_points_dropped"] == 0 and list(model.graph.node[0].input)[2] == "wz"


def _shared_weight_graph() -> onnx.ModelProto:
    """Two quantized convs reading ONE float weight and ONE weight scale, at different input scales.

    The TorchScript exporter de-duplicates equal constants: two zero-initialised residual
    branches fold to the same all-zero weight (and scale), so this shape reached CI as
    "initializer name is not unique" from a randomly initialised MobileNetV2.
    """
    f32 = np.float32
    inits = [numpy_helper.from_array(np.linspace(-1, 1, 9, dtype=f32).reshape(1, 1, 3, 3), "W"),
             numpy_helper.from_array(np.array([1 / 127], f32), "ws"), numpy_helper.from_array(np.zeros(1, np.int8), "wz"),
             numpy_helper.from_array(np.array(0.02, f32), "xs1"), numpy_helper.from_array(np.array(0.05, f32), "xs2"),
             numpy_helper.from_array(np.array(128, np.uint8), "xz"),
             numpy_helper.from_array(np.array([0.3], f32), "b1"), numpy_helper.from_array(np.array([-0.2], f32), "b2")]
    nodes = [helper.make_node("QuantizeLinear", ["x", "xs1", "xz"], ["xq1"]),
             helper.make_node("DequantizeLinear", ["xq1", "xs1", "xz"], ["xd1"]),
             helper.make_node("QuantizeLinear", ["W", "ws", "wz"], ["wq1"], axis=0),
             helper.make_node("DequantizeLinear", ["wq1", "ws", "wz"], ["wd1"], axis=0),
             helper.make_node("Conv", ["xd1", "wd1", "b1"], ["y1"], pads=[1, 1, 1, 1], name="conv_a"),
             helper.make_node("QuantizeLinear", ["y1", "xs2", "xz"], ["xq2"]),
             helper.make_node("DequantizeLinear", ["xq2", "xs2", "xz"], ["xd2"]),
             helper.make_node("QuantizeLinear", ["W", "ws", "wz"], ["wq2"], axis=0),
             helper.make_node("DequantizeLinear", ["wq2", "ws", "wz"], ["wd2"], axis=0),
             helper.make_node("Conv", ["xd2", "wd2", "b2"], ["y"], pads=[1, 1, 1, 1], name="conv_b")]
    graph = helper.make_graph(nodes, "shared", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 1, 4, 4])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 1, 4, 4])], inits)
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])


def test_shared_weight_initializer_gets_one_int8_tensor_and_one_bias_scale_per_use(tmp_path: Path) -> None:
    model = _shared_weight_graph()
    x = np.linspace(-2, 2, 16, dtype=np.float32).reshape(1, 1, 4, 4)
    ref = make_session(model.SerializeToString(), threads=1, graph_optimization="none").run(None, {"x": x})[0]
    post = postprocess_qdq(model)
    assert post["int8_weights"] == 2 and post["int32_biases"] == 2
    quantized = make_session(model.SerializeToString(), threads=1, graph_optimization="none").run(None, {"x": x})[0]
    assert slim_int8(model)["bias_scales_derived"] == 2  # (xs1, ws) and (xs2, ws): two Muls, two names
    outputs = [o for n in model.graph.node for o in n.output]
    names = [t.name for t in model.graph.initializer]
    assert len(set(outputs)) == len(outputs) and len(set(names)) == len(names)
    path = tmp_path / "shared.onnx"
    onnx.save(model, str(path))
    check_onnx_model(path)  # the checker that refused the CI export
    slimmed = make_session(path, threads=1, graph_optimization="all").run(None, {"x": x})[0]
    np.testing.assert_array_equal(slimmed, quantized)  # slim rewrites are exact
    # int32 biases round by at most half a bias step (xs*ws) per layer; the second layer's input
    # quantizer (step xs2) can then move by one step: compare on the output quantizer's scale
    assert np.abs(quantized - ref).max() <= 2 * 0.05 * np.abs(np.linspace(-1, 1, 9)).sum()


def test_a_saturating_bias_keeps_its_sign() -> None:
    """A channel whose weights are all zero has its weight scale at the floor, so its bias step
    (x_scale * w_scale) is tiny and the bias saturates int32. It must saturate towards its own sign:
    in float32 the upper bound 2**31 - 1 rounds to 2**31, which the int32 cast wraps to -2**31."""
    f32 = np.float32
    inits = [numpy_helper.from_array(np.zeros((2, 1, 1, 1), f32), "W"),
             numpy_helper.from_array(np.array([1e-8, 1e-8], f32), "ws"), numpy_helper.from_array(np.zeros(2, np.int8), "wz"),
             numpy_helper.from_array(np.array(0.02, f32), "xs"), numpy_helper.from_array(np.array(128, np.uint8), "xz"),
             numpy_helper.from_array(np.array([0.5, -0.5], f32), "b")]
    nodes = [helper.make_node("QuantizeLinear", ["x", "xs", "xz"], ["xq"]),
             helper.make_node("DequantizeLinear", ["xq", "xs", "xz"], ["xd"]),
             helper.make_node("QuantizeLinear", ["W", "ws", "wz"], ["wq"], axis=0),
             helper.make_node("DequantizeLinear", ["wq", "ws", "wz"], ["wd"], axis=0),
             helper.make_node("Conv", ["xd", "wd", "b"], ["y"], name="dead")]
    graph = helper.make_graph(nodes, "dead", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 1, 2, 2])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 2, 2, 2])], inits)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    post = postprocess_qdq(model)
    assert post["int32_biases"] == 1 and post["int32_bias_values_saturated"] == 2  # 0.5 / 2e-10 = 2.5e9 > 2**31
    q = next(numpy_helper.to_array(i) for i in model.graph.initializer if i.data_type == TensorProto.INT32)
    assert q.tolist() == [2**31 - 1, -(2**31)]
    y = make_session(model.SerializeToString(), threads=1, graph_optimization="none").run(
        None, {"x": np.ones((1, 1, 2, 2), np.float32)})[0]
    # saturated, so smaller than the float bias (the parity check measures that), but never of the other sign
    assert (y[0, 0] > 0).all() and (y[0, 1] < 0).all(), y


def test_interleaved_latency_times_every_file(files: dict) -> None:
    rows = measure_latency_interleaved({"fp32": files["fp32"], "int8": files["int8"]}, batch=2, threads=1,
                                       warmup=1, runs=13, block=5)
    assert set(rows) == {"fp32", "int8"}
    assert all(r["runs"] == 13 and r["batch"] == 2 and 0 < r["min_ms"] <= r["median_ms"] for r in rows.values())


def _run_folder(files: dict, tmp: Path) -> Path:
    """A run folder whose check stage measured INT8 slower than FP32 at batch 1 on all cores only."""
    run = tmp / "run"
    run.mkdir()
    paths = {"student_fp32": run / "model.fp32.onnx", "student_int8": run / "model.int8.onnx"}
    paths["student_fp32"].write_bytes(files["fp32"].read_bytes())
    paths["student_int8"].write_bytes(files["int8"].read_bytes())
    m = Manifest(run)
    m.record_stage("export", paths)
    table = {"student_fp32": [(1, 1, 0.30), (1, 0, 0.209), (32, 1, 5.4), (32, 0, 3.1)],
             "student_int8": [(1, 1, 0.25), (1, 0, 0.433), (32, 1, 3.6), (32, 0, 2.2)]}
    check = {"provider": "CPUExecutionProvider", "labels": [str(i) for i in range(10)], "models": {
        name: {"file": paths[name].name, "size_bytes": paths[name].stat().st_size,
               "latency": [{"batch": b, "threads": t, "median_ms": ms, "runs": 100} for b, t, ms in rows]}
        for name, rows in table.items()}}
    check["models"]["student_int8"]["profile_top_ops"] = [
        {"op_type": "QLinearConv", "total_ms": 0.2, "share": 0.9, "count": 52},
        {"op_type": "Sub", "total_ms": 0.004, "share": 0.02, "count": 1},
        {"op_type": "Transpose", "total_ms": 0.002, "share": 0.01, "count": 2}]
    m.record_stage("check", {}, check)
    return run


def test_doctor_names_the_slower_setting_and_a_cause(files: dict, tmp_path: Path) -> None:
    run = _run_folder(files, tmp_path)
    check = Manifest.load(run).metrics("check")
    assert [(r["batch"], r["threads"]) for r in slower_settings(latency_table(check))] == [(1, 0)]
    d = diagnose(run / "model.int8.onnx", check=check)
    v = d["verdict"]
    assert v.startswith("INT8 is SLOWER than FP32 at batch 1 with all cores: 0.433 vs 0.209 ms, x2.07")
    assert "thread-pool overhead" in v and "run INT8 with 1 thread at batch 1 (x0.83 of FP32 there)" in v
    assert "normalization" in v and "2.0% of the INT8 kernel time" in v  # Sub's profiled share
    assert "should be faster" not in v
    # what stays float, and why: the normalization, the boundary Q/DQ, the layout transposes
    why = {op: g["why"] for g in d["float_ops"] for op in g["ops"]}
    assert "normalization" in why["Sub"] and "normalization" in why["Div"] and "NCHW" in why["Transpose"]
    # the CLI on the run folder prints the same verdict
    proc = subprocess.run([sys.executable, "-m", "edgekd", "doctor", str(run)], cwd=REPO, capture_output=True,
                          text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr
    assert "Verdict: INT8 is SLOWER than FP32 at batch 1 with all cores" in proc.stdout
    assert "Float in the INT8 graph: " in proc.stdout


def test_doctor_without_a_slower_setting_says_faster_everywhere(files: dict, tmp_path: Path) -> None:
    check = Manifest.load(_run_folder(files, tmp_path)).metrics("check")
    for row in check["models"]["student_int8"]["latency"]:
        row["median_ms"] = 0.1 if row["batch"] == 1 else 2.0
    d = diagnose(files["int8"], check=check)
    assert d["verdict"].startswith("INT8 is faster than FP32 at every setting the check stage measured")
    assert "Graph: every compute op is an int8 kernel" in d["verdict"]
    assert json.dumps(d)  # JSON-ready


def test_constants_folds_what_onnxruntime_folds_at_load_and_nothing_fed_by_an_input() -> None:
    """Initializers, Constant nodes, and Mul / Cast / Identity over them are constants; a graph input's Identity is not."""
    w = numpy_helper.from_array(np.array([0.5, 0.25], np.float32), "w")
    f = numpy_helper.from_array(np.array(4.0, np.float32), "f")
    h = numpy_helper.from_array(np.array([3, -2], np.float16), "h")
    nodes = [helper.make_node("Constant", [], ["k"], value=numpy_helper.from_array(np.array([2.0, 8.0], np.float32))),
             helper.make_node("Mul", ["w", "f"], ["wf"]),
             helper.make_node("Cast", ["h"], ["h32"], to=TensorProto.FLOAT),
             helper.make_node("Identity", ["wf"], ["wf_id"]),
             helper.make_node("Mul", ["wf_id", "k"], ["wfk"]),
             helper.make_node("Identity", ["x"], ["x_id"]),
             helper.make_node("Mul", ["x_id", "wfk"], ["y0"]),
             helper.make_node("Add", ["y0", "h32"], ["y"])]
    graph = helper.make_graph(nodes, "consts", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [2])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, [2])], [w, f, h])
    consts = constants(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)]))
    np.testing.assert_array_equal(consts["wf_id"], np.array([2.0, 1.0], np.float32))
    np.testing.assert_array_equal(consts["wfk"], np.array([4.0, 8.0], np.float32))
    assert consts["h32"].dtype == np.float32 and consts["h32"].tolist() == [3.0, -2.0]
    assert not {"x_id", "y0", "y"} & set(consts)


def test_profile_and_doctor_split_conv_time_into_depthwise_and_the_rest(files: dict, tmp_path: Path) -> None:
    """Real profiles of the real student's two files: 17 depthwise convs of 52, found in both runtime graphs."""
    real = {key: profile_top_ops(files[key.split("_")[1]], batch=1, runs=3) for key in ("student_fp32", "student_int8")}
    # every conv op type's row is split (Conv, or FusedConv + Conv where the CPU has no NCHWc kernels)
    convs = {key: [r for r in rows if "depthwise_ms" in r] for key, rows in real.items()}
    assert {r["op_type"] for r in convs["student_int8"]} == {"QLinearConv"}
    for rows in convs.values():
        assert sum(r["count"] for r in rows) == 52 and sum(r["depthwise_count"] for r in rows) == 17
        assert 0 < sum(r["depthwise_ms"] for r in rows) < sum(r["total_ms"] for r in rows)
    check = Manifest.load(_run_folder(files, tmp_path)).metrics("check")
    for key, rows in real.items():
        check["models"][key]["profile_top_ops"] = rows
    split = diagnose(files["int8"], check=check)["conv_split"]
    assert split["int8"]["depthwise_count"] == split["fp32"]["depthwise_count"] == 17
    assert split["int8"]["other_count"] == 35
    assert split["int8"]["depthwise_ms"] == pytest.approx(convs["student_int8"][0]["depthwise_ms"], rel=1e-12)
    assert split["fp32"]["other_count"] == 35


@pytest.mark.parametrize("int8_dw_ms", [0.12, 0.085, 0.04])
def test_doctor_names_slow_int8_depthwise_kernels_only_when_they_are(files: dict, tmp_path: Path,
                                                                      int8_dw_ms: float) -> None:
    """Set profiles: INT8 depthwise 0.12 (x1.50 of FP32's 0.08) or 0.04 ms (x0.50); other convs 0.10 vs 0.25 ms.
    (0.085 would be x1.06: within a 10-run profile's noise, DEPTHWISE_SLOWER_RATIO, so not named.)"""
    check = Manifest.load(_run_folder(files, tmp_path)).metrics("check")
    conv = check["models"]["student_int8"]["profile_top_ops"][0]
    assert conv["op_type"] == "QLinearConv"
    conv.update(total_ms=int8_dw_ms + 0.10, depthwise_ms=int8_dw_ms, depthwise_count=17)
    check["models"]["student_fp32"]["profile_top_ops"] = [
        {"op_type": "Conv", "total_ms": 0.33, "share": 0.95, "count": 52, "depthwise_ms": 0.08, "depthwise_count": 17}]
    d = diagnose(files["int8"], check=check)
    finding = next(f for f in d["findings"] if f["text"].startswith("Conv kernel time per inference"))
    slow = int8_dw_ms > 0.1
    ratio = {0.12: "x1.50", 0.085: "x1.06", 0.04: "x0.50"}[int8_dw_ms]
    assert (f"17 depthwise convs, INT8 {int8_dw_ms:.3f} ms against FP32 0.080 ms ({ratio}); 35 other convs, 0.100 "
            "against 0.250 ms (x0.40)") in finding["text"]
    assert finding["level"] == ("warn" if slow else "info")
    # INT8 lost at batch 1 on all cores (the folder's table): the slow kernel is named among the verdict's
    # causes, and only there
    cause = ("int8 depthwise conv kernel is slower than its float one on the CPU the check stage ran on: the INT8 "
             "file's depthwise convs took x1.50 of the FP32 file's depthwise time while the other convs took x0.40")
    assert (cause in d["verdict"]) == slow and cause not in finding["text"]
    # where INT8 won everywhere, the finding says it (the verdict has no causes then)
    for row in check["models"]["student_int8"]["latency"]:
        row["median_ms"] = 0.1 if row["batch"] == 1 else 2.0
    d = diagnose(files["int8"], check=check)
    finding = next(f for f in d["findings"] if f["text"].startswith("Conv kernel time per inference"))
    assert (cause in finding["text"]) == slow and cause not in d["verdict"]
