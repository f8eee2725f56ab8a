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
from edgekd.errors import ArtifactError, ConfigError
from edgekd.deploy.runtime import (accuracy_report, check_models, make_session, measure_latency, onnx_logits,
                            profile_top_ops)

OPSET = 17
# The band images: class c lights rows BAND_ROWS[c] of a 1x8x8 image.
BAND_ROWS = ((0, 1), (3, 4), (6, 7))
# Ten images: the band each one shows (what the Gemm model predicts) and its label (7 agree).
BANDS = np.array([0, 0, 0, 1, 1, 1, 2, 2, 2, 2])
LABELS = np.array([0, 0, 1, 1, 1, 2, 2, 2, 2, 0])
EXPECTED_CONFUSION = [[2, 0, 1], [1, 2, 0], [0, 1, 3]]  # rows true, columns predicted, worked out by hand
EXPECTED_PER_CLASS = [2 / 3, 2 / 3, 3 / 4]


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
    assert len(profile_top_ops(path, batch=1, runs=1, top=1)) == 1
    assert not list(tmp_path.glob("*.json")) and not list(Path.cwd().glob("ort_profile*.json"))


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
