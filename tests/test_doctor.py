"""edgekd doctor on real models: a tiny torch CNN exported to ONNX, quantized by onnxruntime's static PTQ
(QDQ, per-channel) with real Fashion-MNIST calibration images, then diagnosed in real onnxruntime sessions."""
from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import numpy as np
import onnx
import pytest

from edgekd.deploy import doctor
from edgekd.pixels import to_float
from edgekd.errors import ArtifactError
from onnx_helpers import boundary_qdq_graph as _qdq_graph

torch = pytest.importorskip("torch", reason="the test models are exported from torch")
quantization = pytest.importorskip("onnxruntime.quantization")

REPO = Path(__file__).resolve().parents[1]


class TinyCNN(torch.nn.Module):
    """Conv-ReLU-Conv-ReLU-GlobalAvgPool-Flatten-Linear."""

    def __init__(self) -> None:
        super().__init__()
        self.c1 = torch.nn.Conv2d(1, 8, 3, padding=1)
        self.c2 = torch.nn.Conv2d(8, 16, 3, padding=1, stride=2)
        self.fc = torch.nn.Linear(16, 10)

    def forward(self, x):  # noqa: D401 - torch forward
        x = torch.relu(self.c2(torch.relu(self.c1(x))))
        return self.fc(torch.flatten(torch.nn.functional.adaptive_avg_pool2d(x, 1), 1))


class _Calib(quantization.CalibrationDataReader):
    def __init__(self, images: np.ndarray) -> None:
        self._it = iter([{"pixels": images[i:i + 16]} for i in range(0, len(images), 16)])

    def get_next(self):
        return next(self._it, None)


@pytest.fixture(scope="module")
def models(tmp_path_factory, fmnist_small) -> dict[str, Path]:
    """fp32, fully quantized QDQ, and QDQ with the first Conv left float (nodes_to_exclude)."""
    out = tmp_path_factory.mktemp("doctor")
    torch.manual_seed(0)
    net = TinyCNN().eval()
    fp32 = out / "fp32.onnx"
    torch.onnx.export(net, torch.rand(1, 1, 28, 28), str(fp32), input_names=["pixels"], output_names=["logits"],
                      opset_version=17, dynamo=False, dynamic_axes={"pixels": {0: "batch"}, "logits": {0: "batch"}})
    calib = to_float(fmnist_small.val.images[:64])
    q = dict(quant_format=quantization.QuantFormat.QDQ, per_channel=True,
             activation_type=quantization.QuantType.QUInt8, weight_type=quantization.QuantType.QInt8)
    int8, mixed = out / "int8.onnx", out / "mixed.onnx"
    quantization.quantize_static(str(fp32), str(int8), _Calib(calib), **q)
    quantization.quantize_static(str(fp32), str(mixed), _Calib(calib), nodes_to_exclude=["/c1/Conv"], **q)
    return {"fp32": fp32, "int8": int8, "mixed": mixed}


def test_fully_quantized_model_is_fused_and_faster(models):
    d = doctor.diagnose(models["int8"])
    assert d["qdq"]["original"]["DequantizeLinear"] > 0 and d["qdq"]["original"]["QuantizeLinear"] > 0
    # only the input Q and the output DQ survive: everything else was fused into int8 kernels
    assert d["qdq"]["remaining"] == {"QuantizeLinear": 1, "DequantizeLinear": 1}
    assert d["qdq"]["fused"] == sum(d["qdq"]["original"].values()) - 2
    assert d["compute"]["Conv"] == {"total": 2, "int8": 2, "float": 0}
    assert d["int8_kernels"]["QLinearConv"] == 2
    assert d["float_compute"] == []
    assert d["types"]["weights"] == {"int8": 3}  # two Conv + one Gemm weight, int8
    assert d["types"]["weight_granularity"] == {"per-channel": 3}
    assert d["types"]["bias"] == {"int32": 3}
    assert set(d["types"]["activations"]) == {"uint8"}
    # a prediction from the graph alone, never "should be faster": only a measurement says faster or slower
    assert d["verdict"].startswith("INT8 can be faster: every compute op is an int8 kernel")
    assert "2 of 2 Conv run as QLinearConv" in d["verdict"]


def test_fp32_model_says_quantize_first(models):
    d = doctor.diagnose(models["fp32"])
    assert d["qdq"]["original"] == {"QuantizeLinear": 0, "DequantizeLinear": 0}
    assert not d["int8_kernels"]
    assert "FP32 model" in d["verdict"] and "no QDQ" in d["verdict"]
    assert d["findings"] == []  # int8-specific rules stay silent on a float model


def test_excluded_conv_is_named_float(models):
    d = doctor.diagnose(models["mixed"])
    assert d["compute"]["Conv"] == {"total": 2, "int8": 1, "float": 1}
    assert [f["name"] for f in d["float_compute"]] == ["/c1/Conv"]
    assert d["float_compute"][0]["input_from"] == "graph input"
    assert "1 of 2 Conv stayed float" in d["verdict"]
    assert not d["verdict"].startswith("INT8 should be faster")
    text = doctor.format_diagnosis(d)
    assert "float: /c1/Conv" in text
    assert any("/c1/Conv" in f["text"] and f["level"] == "warn" for f in d["findings"])


def test_rules_on_cpu_without_vnni(models):
    d = doctor.diagnose(models["int8"])
    d["cpu"] = {"model": "test", "isa": {"avx2": True, "avx512_vnni": False, "avx_vnni": False}}
    isa = doctor.rule_isa(d)
    assert isa is not None and "lacks VNNI" in isa["text"] and "pmaddubsw" in isa["text"]
    assert "AVX2 but no VNNI" in doctor.verdict(d)
    tiny = doctor.rule_tiny(d)
    assert tiny is not None and f"{d['parameters']:,} weights" in tiny["text"]


def test_latency_comparison_against_fp32(models):
    d = doctor.diagnose(models["int8"], fp32_path=models["fp32"])
    lat = d["latency"]
    assert lat["batch"] == 1 and lat["threads"] == 1 and lat["int8_ms"] > 0 and lat["fp32_ms"] > 0
    measured = [f["text"] for f in d["findings"] if f["text"].startswith("Measured")]
    assert measured == [f"Measured at batch 1, 1 thread (CPUExecutionProvider): int8 {lat['int8_ms']:.3f} ms "
                        f"vs fp32 {lat['fp32_ms']:.3f} ms, x{lat['int8_ms'] / lat['fp32_ms']:.2f}."]
    with pytest.raises(ArtifactError, match="does not exist"):
        doctor.diagnose(models["int8"], fp32_path=models["fp32"].with_name("missing.onnx"))


def test_missing_file_raises_artifact_error(tmp_path):
    with pytest.raises(ArtifactError, match="does not exist"):
        doctor.diagnose(tmp_path / "nope.onnx")


def test_module_main_prints_verdict(models):
    proc = subprocess.run([sys.executable, "-m", "edgekd.deploy.doctor", str(models["mixed"])], cwd=REPO,
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    assert "Verdict: INT8 will not be much faster" in proc.stdout
    assert "float: /c1/Conv" in proc.stdout


def test_float_stored_weights_are_flagged(tmp_path):
    """A QAT-style export that keeps float weights behind QuantizeLinear: the file is not smaller."""
    from onnx import TensorProto, helper, numpy_helper

    rng = np.random.default_rng(0)
    inits = [numpy_helper.from_array(rng.normal(0, 0.3, (4, 1, 3, 3)).astype(np.float32), "w"),
             numpy_helper.from_array(np.full(4, 0.01, np.float32), "w_scale"),
             numpy_helper.from_array(np.zeros(4, np.int8), "w_zp"),
             numpy_helper.from_array(np.array(1 / 255, np.float32), "x_scale"),
             numpy_helper.from_array(np.array(0, np.uint8), "x_zp")]
    nodes = [helper.make_node("QuantizeLinear", ["pixels", "x_scale", "x_zp"], ["xq"], name="xq"),
             helper.make_node("DequantizeLinear", ["xq", "x_scale", "x_zp"], ["xd"], name="xd"),
             helper.make_node("QuantizeLinear", ["w", "w_scale", "w_zp"], ["wq"], name="wq", axis=0),
             helper.make_node("DequantizeLinear", ["wq", "w_scale", "w_zp"], ["wd"], name="wd", axis=0),
             helper.make_node("Conv", ["xd", "wd"], ["y"], name="conv", pads=[1, 1, 1, 1])]
    graph = helper.make_graph(nodes, "qat", [helper.make_tensor_value_info("pixels", TensorProto.FLOAT, [1, 1, 8, 8])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 4, 8, 8])], inits)
    path = tmp_path / "qat_style.onnx"
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)]), str(path))
    d = doctor.diagnose(path)
    assert d["types"]["weights_stored_float"] == 1
    assert d["types"]["weights"] == {"int8": 1} and d["types"]["weight_granularity"] == {"per-channel": 1}
    assert d["types"]["activations"] == {"uint8": 1}
    assert any("stored as float32" in f["text"] for f in d["findings"])


def test_boundary_qdq_are_not_counted_as_leftovers(tmp_path):
    """Only the input Q and the output DQ remain: no 'beyond the boundary' finding."""
    d = doctor.diagnose(_qdq_graph(tmp_path / "clean.onnx", None))
    remaining = sum(d["qdq"]["remaining"].values())
    assert remaining == d["qdq"]["boundary"] == 2
    assert not any("beyond" in f["text"] for f in d["findings"])


def test_inner_qdq_are_counted_without_the_boundary_ones(tmp_path):
    """A float-only op (Erf) keeps one DQ before and one Q after it: 2 beyond the boundary, not 4."""
    d = doctor.diagnose(_qdq_graph(tmp_path / "erf.onnx", "Erf"))
    inner = sum(d["qdq"]["remaining"].values()) - d["qdq"]["boundary"]
    assert d["qdq"]["boundary"] == 2 and inner == 2
    finding = next(f["text"] for f in d["findings"] if "beyond" in f["text"])
    assert finding.startswith("2 QuantizeLinear/DequantizeLinear remain") and "the 2 at the boundary" in finding


def test_uint8_input_model_is_timed_not_a_traceback(tmp_path):
    """A model that takes raw uint8 pixels gets a uint8 timing input (it used to crash in onnxruntime)."""
    path = _qdq_graph(tmp_path / "u8.onnx", None, onnx.TensorProto.UINT8)
    d = doctor.diagnose(path, fp32_path=path)
    assert d["latency"]["int8_ms"] > 0
    proc = subprocess.run([sys.executable, "-m", "edgekd.deploy.doctor", str(path), "--fp32", str(path)], cwd=REPO,
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0 and "Traceback" not in proc.stderr, proc.stderr
