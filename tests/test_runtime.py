"""The torch-free runtime on real onnxruntime sessions: hand-built ONNX graphs with known answers,
and a nearest-centroid classifier on real Fashion-MNIST.

The graph builders here are also used by tests/test_gate.py and tests/test_torch_free.py.
"""
from __future__ import annotations

import collections
from pathlib import Path

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

from edgekd.config import LatencyConfig
from onnx_helpers import BANDS, FAST_LATENCY, LABELS, band_images, conv_model, gemm_model
from edgekd.errors import ArtifactError, ConfigError
from edgekd.deploy.runtime.latency import COST_GROUP_FACTOR, cost_groups, measure_latency_interleaved
from edgekd.deploy.runtime.profile import (CONV_WEIGHT_INPUT, aggregate_node_events, depthwise_convs,
                                           keep_top)
from edgekd.deploy.runtime import (accuracy_report, check_models, make_session, measure_latency, onnx_logits,
                            profile_top_ops)

EXPECTED_CONFUSION = [[2, 0, 1], [1, 2, 0], [0, 1, 3]]  # rows true, columns predicted, worked out by hand
EXPECTED_PER_CLASS = [2 / 3, 2 / 3, 3 / 4]


# ------------------------------------------------------------------ sessions and accuracy


def test_accuracy_and_confusion_equal_hand_computed_values(tmp_path: Path) -> None:
    sess = make_session(gemm_model(tmp_path / "gemm.onnx"))
    logits = onnx_logits(sess, band_images(), batch_size=3)  # 3 does not divide 10: last batch is short
    assert logits.shape == (10, 3)
    np.testing.assert_array_equal(logits.argmax(1), BANDS)
    np.testing.assert_allclose(logits.max(1), 16.0)  # two lit rows of eight pixels
    rep = accuracy_report(logits, LABELS, 3)
    assert rep["accuracy"] == pytest.approx(0.7)
    assert rep["confusion"] == EXPECTED_CONFUSION
    assert rep["per_class_accuracy"] == pytest.approx(EXPECTED_PER_CLASS)


def test_accuracy_report_marks_absent_class_and_rejects_bad_labels() -> None:
    logits = np.eye(3, dtype=np.float32)[[0, 1, 1]]
    rep = accuracy_report(logits, np.array([0, 1, 0]), 3)
    assert rep["per_class_accuracy"] == [0.5, 1.0, None]  # class 2 never occurs: no accuracy, not 0
    assert rep["confusion"] == [[1, 1, 0], [0, 1, 0], [0, 0, 0]]
    with pytest.raises(ConfigError, match="labels must lie"):
        accuracy_report(logits, np.array([0, 1, 3]), 3)


def test_nearest_centroid_on_real_fashion_mnist(tmp_path: Path, fmnist_small) -> None:
    """A Gemm nearest-centroid classifier: onnxruntime's logits and accuracy equal numpy's."""
    train, test = fmnist_small.train, fmnist_small.test
    x_train = train.images.reshape(len(train.images), -1).astype(np.float32) / 255.0
    k = len(fmnist_small.classes)
    centroids = np.stack([x_train[train.labels == c].mean(0) for c in range(k)])  # [K, 784]
    w, b = centroids.T.copy(), -0.5 * (centroids ** 2).sum(1)  # argmax of x.c - |c|^2/2 = nearest centroid
    path = gemm_model(tmp_path / "centroid.onnx", w, b, in_shape=tuple(test.images.shape[1:]))
    x = test.images.astype(np.float32) / 255.0
    logits = onnx_logits(make_session(path, threads=1), x, batch_size=256)
    expected = x.reshape(len(x), -1) @ w + b
    np.testing.assert_allclose(logits, expected, rtol=1e-4, atol=1e-3)
    rep = accuracy_report(logits, test.labels, k)
    assert rep["accuracy"] == pytest.approx(float((expected.argmax(1) == test.labels).mean()), abs=2e-3)
    assert 0.5 < rep["accuracy"] < 0.95  # nearest centroid is well above chance (0.1) on Fashion-MNIST
    assert sum(map(sum, rep["confusion"])) == len(test.labels)


# ------------------------------------------------------------------ errors


def test_unknown_provider_lists_available(tmp_path: Path) -> None:
    path = gemm_model(tmp_path / "gemm.onnx")
    with pytest.raises(ConfigError, match="CPUExecutionProvider") as info:
        make_session(path, provider="NoSuchExecutionProvider")
    assert "NoSuchExecutionProvider" in info.value.problem
    cfg = LatencyConfig(provider="NoSuchExecutionProvider")
    with pytest.raises(ConfigError, match="available"):
        check_models({"student_int8": path}, band_images(), LABELS, ["a", "b", "c"], cfg)


def test_missing_and_truncated_onnx_raise_artifact_error(tmp_path: Path) -> None:
    with pytest.raises(ArtifactError, match="nope.onnx") as info:
        make_session(tmp_path / "nope.onnx")
    assert "export" in info.value.fix
    path = gemm_model(tmp_path / "gemm.onnx")
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])
    with pytest.raises(ArtifactError, match="truncated or corrupt") as info:
        make_session(path)
    assert str(path) in info.value.problem and "re-run the export" in info.value.fix


# ------------------------------------------------------------------ latency and profile


def test_measure_latency_schema_and_ordering(tmp_path: Path) -> None:
    lat = measure_latency(conv_model(tmp_path / "conv.onnx"), batch=4, threads=1, warmup=2, runs=7)
    assert set(lat) == {"batch", "threads", "median_ms", "p90_ms", "p99_ms", "mean_ms", "min_ms", "runs"}
    assert (lat["batch"], lat["threads"], lat["runs"]) == (4, 1, 7)
    assert 0 < lat["min_ms"] <= lat["median_ms"] <= lat["p90_ms"] <= lat["p99_ms"]
    assert lat["min_ms"] <= lat["mean_ms"]
    with pytest.raises(ConfigError):
        measure_latency(tmp_path / "conv.onnx", batch=0)


def test_cost_groups_split_where_a_file_is_much_slower() -> None:
    # the default run on an AMD EPYC, batch 1: the teacher is ~20x the students
    assert cost_groups({"teacher": 4.4, "student_fp32": 0.23, "student_int8": 0.19}) == [
        ["student_fp32", "student_int8"], ["teacher"]]
    # up to the factor times the group's fastest stays in, beyond starts a new group; callers' order kept
    assert cost_groups({"b": 4.0, "a": 1.0, "c": 4.01}, factor=4.0) == [["b", "a"], ["c"]]
    assert cost_groups({"x": 1.0, "y": 3.0, "z": 11.0, "w": 12.5}, factor=4.0) == [["x", "y"], ["z", "w"]]
    assert cost_groups({"only": 2.0}) == [["only"]] and cost_groups({}) == []


def test_interleaved_latency_keeps_a_much_slower_file_apart(tmp_path: Path) -> None:
    # a 64 -> 3 Gemm and a 4096 -> 2048 Gemm (8M multiply-adds): far more than COST_GROUP_FACTOR apart
    rng = np.random.default_rng(0)
    small_a = gemm_model(tmp_path / "a.onnx")
    small_b = gemm_model(tmp_path / "b.onnx", weight=rng.standard_normal((64, 3)))
    big = gemm_model(tmp_path / "big.onnx", weight=rng.standard_normal((4096, 2048)) / 64, in_shape=(1, 64, 64))
    rows = measure_latency_interleaved({"a": small_a, "big": big, "b": small_b}, batch=1, threads=1, warmup=3,
                                       runs=12, block=4)
    assert rows["big"]["median_ms"] > COST_GROUP_FACTOR * max(rows["a"]["median_ms"], rows["b"]["median_ms"])
    assert (rows["a"]["interleaved_with"], rows["b"]["interleaved_with"], rows["big"]["interleaved_with"]) == (
        ["b"], ["a"], [])
    assert all(r["runs"] == 12 for r in rows.values())


def test_profile_top_ops_matches_optimized_graph(tmp_path: Path) -> None:
    path = conv_model(tmp_path / "conv.onnx")
    optimized = tmp_path / "conv.opt.onnx"
    make_session(path, threads=1, optimized_model_path=optimized)  # the graph onnxruntime actually runs
    node_counts = collections.Counter(n.op_type for n in onnx.load(str(optimized)).graph.node)
    ops = profile_top_ops(path, batch=2, runs=3)
    assert {o["op_type"]: o["count"] for o in ops} == dict(node_counts)
    assert sum(o["share"] for o in ops) == pytest.approx(1.0)
    assert all(o["total_ms"] >= 0 for o in ops)
    assert [o["total_ms"] for o in ops] == sorted((o["total_ms"] for o in ops), reverse=True)
    one = profile_top_ops(path, batch=1, runs=1, top=1)  # the top op type, then any conv type below it
    assert one and all(r["op_type"] in CONV_WEIGHT_INPUT for r in one[1:])
    assert not list(tmp_path.glob("*.json")) and not list(Path.cwd().glob("ort_profile*.json"))


def depthwise_block(path: Path, channels: int = 8) -> Path:
    """Pointwise Conv(1 -> C) + depthwise Conv(C, 3x3, group C) + grouped Conv(C, group 2) + GAP + Flatten."""
    rng = np.random.default_rng(1)
    inits = [numpy_helper.from_array(rng.normal(size=(channels, 1, 1, 1)).astype(np.float32), "PW"),
             numpy_helper.from_array(rng.normal(size=(channels, 1, 3, 3)).astype(np.float32), "DW"),
             numpy_helper.from_array(rng.normal(size=(channels, channels // 2, 3, 3)).astype(np.float32), "GW")]
    nodes = [helper.make_node("Conv", ["images", "PW"], ["p"], name="pointwise"),
             helper.make_node("Conv", ["p", "DW"], ["d"], name="depthwise", group=channels, pads=[1, 1, 1, 1]),
             helper.make_node("Conv", ["d", "GW"], ["g"], name="grouped", group=2, pads=[1, 1, 1, 1]),
             helper.make_node("GlobalAveragePool", ["g"], ["a"]),
             helper.make_node("Flatten", ["a"], ["logits"], axis=1)]
    graph = helper.make_graph(nodes, "dw", [helper.make_tensor_value_info("images", TensorProto.FLOAT, ["N", 1, 16, 16])],
                              [helper.make_tensor_value_info("logits", TensorProto.FLOAT, ["N", channels])], inits)
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)]), str(path))
    return path


def test_depthwise_convs_are_told_from_dense_and_grouped_ones_in_the_runtime_graph(tmp_path: Path) -> None:
    """Only group > 1 with one input channel per group is depthwise, float and int8 (QLinearConv) alike."""
    path = depthwise_block(tmp_path / "dw.onnx")
    assert depthwise_convs(onnx.load(str(path))) == {"depthwise"}
    q = [numpy_helper.from_array(np.zeros((8, 1, 3, 3), np.int8), "QW"),
         numpy_helper.from_array(np.zeros((8, 4, 3, 3), np.int8), "QG")]
    io = ["x", "xs", "xz"]
    nodes = [helper.make_node("QLinearConv", io + ["QW", "ws", "wz", "ys", "yz"], ["y1"], name="q_dw", group=8),
             helper.make_node("QLinearConv", io + ["QG", "ws", "wz", "ys", "yz"], ["y2"], name="q_grouped", group=2),
             helper.make_node("QLinearConv", io + ["missing", "ws", "wz", "ys", "yz"], ["y3"], name="q_unknown", group=8)]
    graph = helper.make_graph(nodes, "q", [], [], q)
    assert depthwise_convs(helper.make_model(graph)) == {"q_dw"}  # a weight it cannot see is not guessed


def test_profile_splits_conv_time_into_depthwise_and_the_rest(tmp_path: Path) -> None:
    path = depthwise_block(tmp_path / "dw.onnx")
    rows = {r["op_type"]: r for r in profile_top_ops(path, batch=2, runs=5)}
    conv = rows["Conv"]
    assert conv["count"] == 3 and conv["depthwise_count"] == 1
    assert 0 < conv["depthwise_ms"] < conv["total_ms"]
    assert all("depthwise_ms" not in r for op, r in rows.items() if op != "Conv")


def test_aggregate_node_events_golden() -> None:
    """Two runs of three nodes: per-inference sums, shares and the depthwise part, by hand."""
    def ev(name: str, op: str, dur: float) -> dict:
        return {"cat": "Node", "name": f"{name}_kernel_time", "dur": dur, "args": {"op_name": op}}
    events = [ev("a", "QLinearConv", 30), ev("b", "QLinearConv", 50), ev("c", "QLinearAdd", 20),
              ev("a", "QLinearConv", 10), ev("b", "QLinearConv", 70), ev("c", "QLinearAdd", 20),
              {"cat": "Node", "name": "a_fence_before", "dur": 999, "args": {"op_name": "QLinearConv"}}]
    rows = aggregate_node_events(events, runs=2, depthwise={"b"})
    assert rows == [{"op_type": "QLinearConv", "total_ms": 0.08, "share": 0.8, "count": 2,
                     "depthwise_ms": 0.06, "depthwise_count": 1},
                    {"op_type": "QLinearAdd", "total_ms": 0.02, "share": 0.2, "count": 1}]
    # a runtime graph without depthwise convs still marks the conv rows as split (0 of them); no graph, no split
    assert aggregate_node_events(events, runs=2, depthwise=set())[0] | {} == {
        "op_type": "QLinearConv", "total_ms": 0.08, "share": 0.8, "count": 2, "depthwise_ms": 0.0, "depthwise_count": 0}
    assert "depthwise_ms" not in aggregate_node_events(events, runs=2)[0]


def test_keep_top_keeps_every_conv_row_below_the_top() -> None:
    """A float Conv left in an INT8 file ranks low; dropping it would shrink the doctor's "other convs"."""
    rows = [{"op_type": op, "total_ms": ms} for op, ms in
            [("QLinearConv", 5.0), ("QuantizeLinear", 1.0), ("Add", 0.5), ("Conv", 0.2), ("Relu", 0.1), ("FusedConv", 0.05)]]
    assert [r["op_type"] for r in keep_top(rows, 2)] == ["QLinearConv", "QuantizeLinear", "Conv", "FusedConv"]
    assert [r["op_type"] for r in keep_top(rows, 10)] == [r["op_type"] for r in rows]
    assert keep_top(rows, 0) == [rows[0], rows[3], rows[5]]


# ------------------------------------------------------------------ check_models


def test_check_models_schema_accuracy_and_ratios(tmp_path: Path) -> None:
    models = {"teacher": conv_model(tmp_path / "teacher.onnx"),
              "student_fp32": gemm_model(tmp_path / "model.fp32.onnx"),
              "student_int8": gemm_model(tmp_path / "model.int8.onnx")}
    images_u8 = (band_images() * 255).astype(np.uint8)  # uint8 pixels are scaled to [0, 1]
    out = check_models(models, images_u8, LABELS, ["top", "middle", "bottom"], FAST_LATENCY)
    assert out["provider"] == "CPUExecutionProvider" and out["labels"] == ["top", "middle", "bottom"]
    s = out["models"]["student_int8"]
    assert s["file"] == "model.int8.onnx"
    assert s["size_bytes"] == models["student_int8"].stat().st_size
    assert s["size_mb"] == pytest.approx(s["size_bytes"] / 1e6)
    assert s["accuracy"] == pytest.approx(0.7) and s["confusion"] == EXPECTED_CONFUSION
    assert [(r["batch"], r["threads"], r["runs"]) for r in s["latency"]] == [(1, 1, 5), (4, 1, 5)]
    assert {o["op_type"] for o in s["profile_top_ops"]} <= {"Flatten", "Gemm", "Reshape"}
    t, f = out["models"]["teacher"], out["models"]["student_fp32"]
    r = out["ratios"]
    assert r["student_fp32/teacher"]["size"] == pytest.approx(f["size_bytes"] / t["size_bytes"])
    assert r["student_int8/student_fp32"]["size"] == pytest.approx(1.0)
    assert set(r["speedup"]) == {"b1_t1", "b4_t1"}
    assert r["speedup"]["b4_t1"] == pytest.approx(t["latency"][1]["median_ms"] / s["latency"][1]["median_ms"])
    assert r["student_int8/student_fp32"]["latency"]["b1_t1"] == pytest.approx(
        s["latency"][0]["median_ms"] / f["latency"][0]["median_ms"])
