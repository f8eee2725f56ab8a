"""Layer sensitivity and the divergence finder on a real exported pair, with a wrong scale planted in one layer.

A four-layer CNN trained for seconds on real Fashion-MNIST goes through the real QAT preparation and
the real exporters (fp32 and int8 QDQ files). Both tools must name the layer whose weight scale was
tampered with; graph edits with nothing edited must give back the source file exactly.
"""
from __future__ import annotations

from pathlib import Path

import numpy as np
import onnx
import pytest
import torch
from onnx import numpy_helper
from torch import nn

from conftest import fmnist_prefix
from edgekd.deploy.onnx_io import constants, producers
from edgekd.deploy.qdq_layers import layer_names, quantized_layers, with_layers_float, with_layers_quantized
from edgekd.deploy.runtime.session import make_session, onnx_logits
from edgekd.deploy.sensitivity import accuracy_of, layer_sensitivity
from edgekd.errors import ConfigError
from edgekd.exporting import export_fp32, export_int8, find_divergence
from edgekd.models.normalize import Normalized
from edgekd.quant import freeze_observers, prepare_qat

pytestmark = pytest.mark.usefixtures("torch_one_thread")
PLANTED = "3"  # the second conv (nn.Sequential index 3: the exporter names layers after their modules)


def tiny_cnn() -> Normalized:
    torch.manual_seed(0)
    net = nn.Sequential(nn.Conv2d(1, 8, 3, padding=1), nn.BatchNorm2d(8), nn.ReLU(),
                        nn.Conv2d(8, 16, 3, stride=2, padding=1), nn.BatchNorm2d(16), nn.ReLU(),
                        nn.Conv2d(16, 16, 3, stride=2, padding=1), nn.BatchNorm2d(16), nn.ReLU(),
                        nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(16, 10))
    return Normalized(net, (0.286,), (0.353,))


@pytest.fixture(scope="module")
def data() -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    x, y = fmnist_prefix("train", 3000)
    tx, ty = fmnist_prefix("test", 400)
    return x.astype(np.float32) / 255, y.astype(np.int64), tx.astype(np.float32) / 255, ty.astype(np.int64)


@pytest.fixture(scope="module")
def pair(data, tmp_path_factory: pytest.TempPathFactory) -> dict:
    """fp32 and int8 files of one trained tiny CNN, its QAT model, and the int8 file with a planted wrong scale."""
    x, y, _, _ = data
    model = tiny_cnn()
    opt = torch.optim.Adam(model.parameters(), 3e-3)
    model.train()
    for i in list(range(0, len(x), 50)) * 2:  # two epochs of 60 steps: far above chance (10 %)
        loss = nn.functional.cross_entropy(model(torch.from_numpy(x[i:i + 50])), torch.from_numpy(y[i:i + 50]))
        opt.zero_grad()
        loss.backward()
        opt.step()
    model.eval()
    calib = [torch.from_numpy(x[i:i + 100]) for i in range(0, 400, 100)]
    qat = prepare_qat(model, calib, len(calib))
    freeze_observers(qat)
    d = tmp_path_factory.mktemp("sens")
    export_fp32(model, d / "model.fp32.onnx", (1, 1, 28, 28))
    export_int8(qat, d / "model.int8.onnx", (1, 1, 28, 28))
    bad = onnx.load(str(d / "model.int8.onnx"))
    prod = producers(bad)
    node = next(n for n in bad.graph.node if n.op_type == "Conv" and n.name == PLANTED)
    scale_name = prod[node.input[1]].input[1]
    init = next(t for t in bad.graph.initializer if t.name == scale_name)
    wrong = numpy_helper.to_array(init).copy()
    wrong[::2] *= np.float32(8.0)  # every other channel's scale x8: not a uniform gain that ReLU/argmax would forgive
    init.CopyFrom(numpy_helper.from_array(wrong, scale_name))
    onnx.save(bad, str(d / "planted.int8.onnx"))
    return {"dir": d, "fp32": d / "model.fp32.onnx", "int8": d / "model.int8.onnx", "planted": d / "planted.int8.onnx",
            "model": model, "qat": qat}


def test_layer_names_are_the_module_names(pair: dict) -> None:
    names = layer_names(onnx.load(str(pair["int8"])))
    assert names == ["0", "3", "6", "11"]  # the nn.Sequential indices of the 3 convs and the Linear


def test_no_edit_gives_back_the_source_files(pair: dict, data) -> None:
    """The edit machinery with nothing to edit is the identity: same logits, bit for bit."""
    _, _, tx, _ = data
    fp32, int8 = onnx.load(str(pair["fp32"])), onnx.load(str(pair["int8"]))

    def logits(m: onnx.ModelProto | Path) -> np.ndarray:
        return onnx_logits(make_session(m.SerializeToString() if isinstance(m, onnx.ModelProto) else m), tx[:64])

    assert np.array_equal(logits(with_layers_quantized(fp32, int8, [])), logits(pair["fp32"]))
    assert np.array_equal(logits(with_layers_float(int8, fp32, [])), logits(pair["int8"]))
    # every layer float in the INT8 graph: no Conv/Gemm reads a dequantized weight any more
    all_float = with_layers_float(int8, fp32, layer_names(int8))
    assert quantized_layers(all_float) == []
    # and onnxruntime keeps them float (no per-tensor re-quantization of the float weights at load time)
    from edgekd.deploy.doctor import optimized_graph
    from edgekd.deploy.onnx_io import op_counts

    all_float_path = pair["dir"] / "all_float.onnx"
    onnx.save(all_float, str(all_float_path))
    ops = op_counts(optimized_graph(all_float_path, "CPUExecutionProvider", "all"))
    assert not {"QLinearConv", "QGemm", "ConvInteger"} & set(ops), ops
    # and every layer quantized in the FP32 graph: the same int8 weights as the INT8 file
    all_q = with_layers_quantized(fp32, int8, layer_names(int8))
    c8, cq = constants(int8), constants(all_q)
    assert sorted(a.tobytes() for a in c8.values() if a.dtype == np.int8) == \
        sorted(a.tobytes() for a in cq.values() if a.dtype == np.int8)


def test_unknown_layer_name_lists_the_valid_ones(pair: dict) -> None:
    fp32, int8 = onnx.load(str(pair["fp32"])), onnx.load(str(pair["int8"]))
    with pytest.raises(ConfigError, match=r"unknown layer name\(s\) 'features\.9'; valid: 0, 3, 6, 11"):
        with_layers_float(int8, fp32, ["features.9"])


def test_sensitivity_rows_and_references(pair: dict, data) -> None:
    _, _, tx, ty = data
    r = layer_sensitivity(pair["fp32"], pair["int8"], tx, ty, threads=1)
    assert [row["layer"] for row in r["layers"]] == ["0", "3", "6", "11"]
    for row in r["layers"]:
        assert 0.0 <= row["only_quantized"] <= 1.0 and 0.0 <= row["only_float"] <= 1.0
        assert 0.0 <= row["flips_when_quantized"] <= 1.0 and 0.0 <= row["flips_when_float"] <= 1.0
    assert r["float_everything_accuracy"] == r["fp32_accuracy"] == accuracy_of(pair["fp32"], tx, ty)
    assert r["fp32_accuracy"] > 0.4  # trained: a wrong layer has accuracy to lose
    assert sorted(r["ranking"]) == sorted(row["layer"] for row in r["layers"])


def test_planted_wrong_scale_is_named_by_both_tools(pair: dict, data) -> None:
    """Wrong per-channel weight scales in one layer of the INT8 file: sensitivity ranks it first, the divergence finder names it."""
    _, _, tx, ty = data
    r = layer_sensitivity(pair["fp32"], pair["planted"], tx, ty, threads=1)
    row = {x["layer"]: x for x in r["layers"]}[PLANTED]
    assert r["ranking"][0] == PLANTED, r["layers"]
    assert row["drop_when_quantized"] > 0.1 and row["gain_when_float"] > 0.1  # both variants see it
    others = [x for x in r["layers"] if x["layer"] != PLANTED]
    assert row["flips_when_float"] > max(x["flips_when_float"] for x in others)
    found = find_divergence(pair["qat"], pair["planted"], tx[:32])
    assert found["optimization"] == "all" and found["observed"] == "output quantizers"
    assert found["layer"] == f"net.{PLANTED}", found["summary"]
    assert found["probe_kept_logits"]  # observing the int8 tensors did not change what onnxruntime ran


def test_divergence_clean_int8_file_agrees_at_fused_level(pair: dict, data) -> None:
    _, _, tx, _ = data
    found = find_divergence(pair["qat"], pair["int8"], tx[:32])
    assert found["layer"] is None, found["layers"]
    assert found["probe_kept_logits"]
    # the int8 kernels may round an element one step away; relative L2 stays far below the 0.05 threshold
    assert max(layer["relative_error"] for layer in found["layers"]) < 0.02
    fp = find_divergence(pair["model"], pair["fp32"], tx[:32])
    assert fp["layer"] is None and fp["observed"] == "layer outputs"
    assert max(layer["relative_error"] for layer in fp["layers"]) < 1e-4  # float kernels: rounding only


def test_mixed_precision_keeps_one_layer_float(pair: dict, data) -> None:
    """keep_float=['3']: QAT keeps that conv a float module; the INT8 file has no int8 weight or bias for it (it
    reads the dequantized output of the layer before, which stays int8), and still computes what QAT computes."""
    from edgekd.exporting import parity_int8

    x, _, tx, _ = data
    calib = [torch.from_numpy(x[i:i + 100]) for i in range(0, 400, 100)]
    qat = prepare_qat(pair["model"], calib, len(calib), keep_float=["3"])
    freeze_observers(qat)
    path = pair["dir"] / "mixed.int8.onnx"
    export_int8(qat, path, (1, 1, 28, 28))
    model = onnx.load(str(path))
    assert layer_names(model) == ["0", "6", "11"]
    prod = producers(model)
    node = next(n for n in model.graph.node if n.name == "3")
    assert all(prod[i].op_type != "DequantizeLinear" for i in node.input[1:] if i in prod)  # float weight, bias
    clip = prod[node.input[0]]  # the shield against onnxruntime's load-time weight quantization (exact no-op)
    assert clip.op_type == "Clip" and prod[clip.input[0]].op_type == "DequantizeLinear"  # "0" keeps its output Q
    assert "3" in str(model.metadata_props)  # float_layers in the file's quantization metadata
    # and onnxruntime runs it in float: its WeightBiasQuantization pass would otherwise re-quantize it per tensor
    from edgekd.deploy.doctor import optimized_graph
    from edgekd.deploy.onnx_io import op_counts

    ops = op_counts(optimized_graph(path, "CPUExecutionProvider", "all"))
    assert ops.get("QLinearConv", 0) == 2 and ops.get("QGemm", 0) == 1, ops
    parity = parity_int8(qat, path, tx[:128])
    assert parity["agreement"] >= 0.99 and parity["logits_within_bound"] >= 0.99
    with pytest.raises(ConfigError, match=r"unknown layer\(s\) 'conv9'; valid: 0, 3, 6, 11"):
        prepare_qat(pair["model"], keep_float=["conv9"])


def test_cli_sensitivity_writes_and_records(pair: dict, tmp_path: Path) -> None:
    """`edgekd sensitivity RUN` (a real subprocess): sensitivity.json written and recorded with its sha256, the
    offenders printed by name, and no other stage's entry touched."""
    import json
    import shutil
    import subprocess
    import sys

    from conftest import FMNIST_DIR
    from edgekd.manifest import Manifest

    run = tmp_path / "run"
    run.mkdir()
    for f in ("model.fp32.onnx", "model.int8.onnx"):
        shutil.copy(pair["dir"] / f, run / f)
    m = Manifest(run)
    m.data["config"] = {"seed": 0, "data": {"dataset": "fashion_mnist", "root": str(FMNIST_DIR), "download": False,
                                            "val_size": 200, "train_subset": 400, "test_subset": 300}}
    m.record_stage("export", {"student_fp32": run / "model.fp32.onnx", "student_int8": run / "model.int8.onnx"})
    m.record_stage("check", {}, {"models": {"student_int8": {"accuracy": 0.5}}})
    before = {k: v for k, v in json.loads((run / "manifest.json").read_text())["stages"].items()}
    proc = subprocess.run([sys.executable, "-m", "edgekd", "sensitivity", str(run), "--images", "120", "--threads", "1",
                           "--top", "2"], capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "top offenders" in proc.stdout and len([ln for ln in proc.stdout.splitlines() if " score " in ln]) == 2
    after = Manifest.load(run)
    assert after.artifact("sensitivity", "sensitivity") == run / "sensitivity.json"  # sha256 verified
    assert {k: after.data["stages"][k] for k in before} == before
    result = json.loads((run / "sensitivity.json").read_text())
    assert result["images"] == 120 and len(result["layers"]) == 4
    assert after.metrics("sensitivity")["top_offenders"][0]["layer"] == result["ranking"][0]
    # the report's section reads it back (sha256 verified) and names the worst layer first
    from edgekd.deploy.report.doc import Table
    from edgekd.deploy.report.sensitivity_section import sensitivity_section

    notes: list[str] = []
    section = sensitivity_section(after, run / "plots", notes)
    assert section is not None and not notes
    table = next(b for b in section.blocks if isinstance(b, Table))
    assert table.rows[0][0] == result["ranking"][0] and len(table.rows) == 4


def test_mixed_precision_cost_in_check_metrics_and_doctor(pair: dict, data, tmp_path: Path) -> None:
    """The check stage's mixed_precision entry compares with the full-int8 run that was ranked; the doctor states
    the float layers as intended (no missed-fusion warning for them)."""
    import json

    from edgekd.deploy.doctor import diagnose
    from edgekd.deploy.mixed_precision import mixed_precision_metrics
    from edgekd.manifest import Manifest

    x, _, _, _ = data
    path = pair["dir"] / "mixed3.int8.onnx"
    qat = prepare_qat(pair["model"], [torch.from_numpy(x[:100])], 1, keep_float=["3"])
    freeze_observers(qat)
    export_int8(qat, path, (1, 1, 28, 28))
    base = tmp_path / "full_int8"
    base.mkdir()
    lat = [{"batch": 1, "threads": 1, "median_ms": 0.5}, {"batch": 32, "threads": 1, "median_ms": 4.0}]
    Manifest(base).record_stage("check", {}, {"models": {"student_int8": {"accuracy": 0.80, "latency": lat}}})
    (base / "sensitivity.json").write_text(json.dumps({"ranking": ["3", "0"], "layers": [
        {"layer": "3", "gain_when_float": 0.01}, {"layer": "0", "gain_when_float": 0.0}]}))
    mine = {"models": {"student_int8": {"accuracy": 0.81, "latency": [{"batch": 1, "threads": 1, "median_ms": 0.6},
                                                                      {"batch": 32, "threads": 1, "median_ms": 4.0}]}}}
    mp = mixed_precision_metrics(path, mine, str(base / "sensitivity.json"))
    assert mp["float_layers"] == ["3"] and mp["baseline_run"] == str(base)
    assert mp["accuracy_delta"] == pytest.approx(0.01) and mp["predicted_gain"] == {"3": 0.01}
    assert mp["latency_ratio"] == pytest.approx({"b1_t1": 1.2, "b32_t1": 1.0})
    assert mixed_precision_metrics(pair["int8"], mine, str(base)) is None  # a full-int8 file has no entry
    d = diagnose(path, check={"mixed_precision": mp})
    texts = [f["text"] for f in d["findings"]]
    assert any("kept in float on purpose" in t and "+1.00 points" in t for t in texts), texts
    assert not any("stayed float" in t and "3" in t.split("stayed float")[1][:20] for t in texts), texts
