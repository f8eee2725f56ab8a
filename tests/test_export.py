"""ONNX export: fp32 + int8 QDQ files, checks, onnxsim guards, parity and the divergence finder (real onnxruntime)."""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import onnx
import pytest
import torch
from onnx import TensorProto, helper, numpy_helper

from conftest import requires_fashion_mnist
from helpers import activation_quantizers, fmnist_images, trained_student  # the shared real-data model builder

from edgekd.deploy.onnx_io import constants
from edgekd.errors import ArtifactError, ParityError
from edgekd.exporting import (check_onnx_model, export_fp32, export_int8, find_divergence, get_metadata, parity_fp32,
                                parity_int8, simplify)
from edgekd.quant import QConv2d, freeze_observers, prepare_qat
from edgekd.deploy.runtime import make_session

pytestmark = requires_fashion_mnist
SHAPE = (1, 1, 28, 28)


def tiny_graph(path: Path) -> Path:
    """y = Relu(x + (c1 * c2)) behind two Identity nodes: onnxsim folds the constants and drops the Identities."""
    c1 = numpy_helper.from_array(np.full((1, 4), 2.0, np.float32), "c1")
    c2 = numpy_helper.from_array(np.arange(4, dtype=np.float32).reshape(1, 4), "c2")
    nodes = [helper.make_node("Identity", ["x"], ["x1"]), helper.make_node("Mul", ["c1", "c2"], ["c"]),
             helper.make_node("Add", ["x1", "c"], ["s"]), helper.make_node("Identity", ["s"], ["s1"]),
             helper.make_node("Relu", ["s1"], ["y"])]
    graph = helper.make_graph(nodes, "tiny", [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", 4])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["N", 4])], [c1, c2])
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)]), str(path))
    return path


@pytest.fixture(scope="module")
def images() -> np.ndarray:
    return fmnist_images(1792)[1536:].numpy()  # images not used for training or calibration


@pytest.fixture(scope="module")
def student():
    return trained_student()


@pytest.fixture(scope="module")
def qat(student):
    q = prepare_qat(student, [(b,) for b in fmnist_images(256).split(64)], num_batches=4)
    freeze_observers(q)
    return q


@pytest.fixture(scope="module")
def files(tmp_path_factory, student, qat) -> dict:
    d = tmp_path_factory.mktemp("export")
    meta = {"labels": json.dumps([f"c{i}" for i in range(10)])}
    return {"fp32": export_fp32(student, d / "model.fp32.onnx", SHAPE, metadata=meta),
            "int8": export_int8(qat, d / "model.int8.onnx", SHAPE, metadata=meta), "dir": d}


def test_check_model_accepts_valid_and_names_invalid(tmp_path: Path) -> None:
    good = tiny_graph(tmp_path / "tiny.onnx")
    assert len(check_onnx_model(good).graph.node) == 5
    bad = onnx.load(str(good))
    bad.graph.node[2].input[1] = "missing_tensor"
    onnx.save(bad, str(tmp_path / "bad.onnx"))
    with pytest.raises(ArtifactError, match="not a valid model"):
        check_onnx_model(tmp_path / "bad.onnx")


def test_truncated_file_gives_clear_error(tmp_path: Path, files: dict) -> None:
    data = Path(files["fp32"]["path"]).read_bytes()
    (tmp_path / "cut.onnx").write_bytes(data[: len(data) // 3])
    with pytest.raises(ArtifactError, match="truncated"):
        check_onnx_model(tmp_path / "cut.onnx")
    with pytest.raises(ArtifactError, match="does not exist"):
        check_onnx_model(tmp_path / "absent.onnx")


def test_simplify_folds_and_keeps_outputs(tmp_path: Path) -> None:
    src = tiny_graph(tmp_path / "tiny.onnx")
    info = simplify(src, tmp_path / "tiny.sim.onnx")
    assert info["kept"] == "simplified" and info["nodes_before"] == 5 and info["nodes_after"] < 3
    x = np.random.default_rng(0).random((3, 4), dtype=np.float32)
    a, b = make_session(src, threads=1), make_session(tmp_path / "tiny.sim.onnx", threads=1)
    np.testing.assert_array_equal(a.run(None, {"x": x})[0], b.run(None, {"x": x})[0])


def test_simplify_refuses_when_check_fails(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import onnxsim

    src = tiny_graph(tmp_path / "tiny.onnx")
    monkeypatch.setattr(onnxsim, "simplify", lambda model, *a, **k: (model, False))
    with pytest.raises(ArtifactError, match="check_ok=False"):
        simplify(src, tmp_path / "out.onnx")
    assert not (tmp_path / "out.onnx").exists()


def test_fp32_export_contract_and_parity(files: dict, student, images: np.ndarray) -> None:
    path = files["fp32"]["path"]
    model = check_onnx_model(path)
    assert [i.name for i in model.graph.input] == ["pixels"] and [o.name for o in model.graph.output] == ["logits"]
    assert model.graph.input[0].type.tensor_type.shape.dim[0].dim_param == "batch"
    meta = get_metadata(path)
    assert json.loads(meta["labels"]) == [f"c{i}" for i in range(10)]
    assert json.loads(meta["preprocessing"])["size"] == [28, 28] and meta["input_name"] == "pixels"
    result = parity_fp32(student, path, images[:96], batch_sizes=(1, 64))
    # judged relative to the logits' scale (atol + rtol * max|logit|, defaults 1e-4 each): float rounding
    # differs between CPUs' kernels in proportion to the values, so an absolute bound is not portable
    assert set(result["per_batch_size"]) == {"1", "64"} and result["max_bound_ratio"] <= 1.0
    assert result["max_rel_diff"] < 1e-4 and result["rtol"] == 1e-4 and result["atol"] == 1e-4


def test_int8_file_is_qdq_int8_and_smaller(files: dict) -> None:
    info, model = files["int8"], onnx.load(files["int8"]["path"])
    ops = [n.op_type for n in model.graph.node]
    assert ops.count("QuantizeLinear") == 66 and ops.count("Conv") == 52
    # as DequantizeLinear reads them: a bias stored int16 (edgekd.exporting.slim) is read through Cast(int32)
    consts = constants(model)
    dq_inputs = {n.input[0] for n in model.graph.node if n.op_type == "DequantizeLinear"}
    assert sum(n in consts and consts[n].dtype == np.int8 for n in dq_inputs) == 53  # every Conv/Gemm weight
    assert sum(n in consts and consts[n].dtype == np.int32 for n in dq_inputs) == 53  # every bias
    # MobileNetV2-0.5: int8 weights + int32 biases + per-channel scales, internal names compacted
    assert info["size_bytes"] <= 0.30 * files["fp32"]["size_bytes"]
    assert info["name_bytes_saved"] > 0
    assert get_metadata(info["path"])["precision"] == "int8-qdq"


def test_int8_file_carries_qat_scales(files: dict, qat) -> None:
    model = onnx.load(files["int8"]["path"])
    inits = {t.name: numpy_helper.to_array(t) for t in model.graph.initializer}
    first_q = next(n for n in model.graph.node if n.op_type == "QuantizeLinear")
    assert inits[first_q.input[1]] == np.float32(qat.input_fq.scale)  # input quantized after normalization
    assert int(inits[first_q.input[2]]) == int(qat.input_fq.zero_point)
    file_act = sorted(float(inits[n.input[1]]) for n in model.graph.node if n.op_type == "QuantizeLinear")
    assert file_act == sorted(float(m.scale) for _, m in activation_quantizers(qat))
    conv = qat.net.get_submodule("features.2.conv.0.0")
    dq = next(n for n in model.graph.node if n.op_type == "DequantizeLinear" and n.input[0] == "net.features.2.conv.0.0.weight_quantized")
    np.testing.assert_array_equal(inits[dq.input[1]], conv.w_scale.numpy())
    q8 = inits["net.features.2.conv.0.0.weight_quantized"].astype(np.float32) * conv.w_scale.numpy()[:, None, None, None]
    # both sides are one float32 product int8 * scale: equal up to 1 ulp of the weight (2.4e-7 = 2 eps covers it
    # at any magnitude; folded-BN weights reach |w| > 1, where the old absolute 1e-7 is below one ulp)
    np.testing.assert_allclose(q8, conv.quantized_weight().detach().numpy(), rtol=2.4e-7, atol=0)


def test_onnxruntime_fuses_every_conv_into_int8(files: dict, tmp_path: Path) -> None:
    opt = tmp_path / "opt.onnx"
    make_session(files["int8"]["path"], threads=1, graph_optimization="extended", optimized_model_path=opt)
    ops = [n.op_type for n in onnx.load(str(opt)).graph.node]
    assert ops.count("QLinearConv") == 52 and "QGemm" in ops
    assert "Conv" not in ops and "Gemm" not in ops and "FusedConv" not in ops


def test_int8_agrees_with_qat_model(files: dict, qat, images: np.ndarray) -> None:
    result = parity_int8(qat, files["int8"]["path"], images, min_agreement=0.99)
    assert result["agreement"] >= 0.99 and result["images"] == 256 and result["logits_within_bound"] >= 0.99
    # a barely trained model (24 steps): some images are near-ties, reported and not counted as disagreements
    assert result["near_ties"] > 0 and result["near_ties"] + result["decided_images"] == 256
    assert result["decided_images"] >= 64  # the agreement is measured on enough images to mean something
    assert len(np.unique(qat(torch.from_numpy(images)).argmax(1).numpy())) >= 4  # agreement is not vacuous


def test_simplify_keeps_int8_storage(files: dict) -> None:
    out = files["dir"] / "model.int8.sim.onnx"
    info = simplify(files["int8"]["path"], out)
    assert info["int8_initializers"] >= 53 and info["float_weight_initializers"] == 0
    assert out.stat().st_size <= files["int8"]["size_bytes"]
    assert info["kept"] in ("simplified", "original") and info["reason"]


def test_divergence_finder_names_corrupted_fp32_layer(files: dict, student, images: np.ndarray, tmp_path: Path) -> None:
    model = onnx.load(files["fp32"]["path"])
    node = next(n for n in model.graph.node if n.op_type == "Conv" and "features.5/" in n.name and "conv.1.0/" in n.name)
    init = next(t for t in model.graph.initializer if t.name == node.input[1])
    init.CopyFrom(numpy_helper.from_array(-numpy_helper.to_array(init), init.name))
    onnx.save(model, str(tmp_path / "bad.onnx"))
    with pytest.raises(ParityError, match=r"first diverging layer #\d+ 'net\.features\.5\.conv\.1\.0'"):
        parity_fp32(student, tmp_path / "bad.onnx", images[:16], batch_sizes=(16,))
    found = find_divergence(student, tmp_path / "bad.onnx", images[:8])
    assert found["layer"] == "net.features.5.conv.1.0" and found["relative_error"] > 0.5
    assert all(layer["relative_error"] < 1e-4 for layer in found["layers"][: found["index"]])


def test_int8_parity_failure_reports_the_layer(files: dict, qat, images: np.ndarray, tmp_path: Path) -> None:
    model = onnx.load(files["int8"]["path"])
    name = "net.features.1.conv.1.weight_quantized"  # block 1's projection: no residual bypasses it
    init = next(t for t in model.graph.initializer if t.name == name)
    noise = np.random.default_rng(0).integers(-127, 128, numpy_helper.to_array(init).shape).astype(np.int8)
    init.CopyFrom(numpy_helper.from_array(noise, name))
    onnx.save(model, str(tmp_path / "bad.int8.onnx"))
    with pytest.raises(ParityError, match=r"first diverging layer #2 'net\.features\.1\.conv\.1'"):
        parity_int8(qat, tmp_path / "bad.int8.onnx", images[:128])


def test_int8_tampered_weight_scale_fails(files: dict, qat, images: np.ndarray, tmp_path: Path) -> None:
    """A wrong scale in the file (here: one layer's weight scales doubled) is a real disagreement, not noise."""
    model = onnx.load(files["int8"]["path"])
    dq = next(n for n in model.graph.node if n.op_type == "DequantizeLinear"
              and n.input[0] == "net.features.1.conv.1.weight_quantized")
    init = next(t for t in model.graph.initializer if t.name == dq.input[1])
    init.CopyFrom(numpy_helper.from_array(numpy_helper.to_array(init) * np.float32(2.0), init.name))
    onnx.save(model, str(tmp_path / "scale.int8.onnx"))
    with pytest.raises(ParityError, match=r"logits within the scale-derived bound on"):
        parity_int8(qat, tmp_path / "scale.int8.onnx", images[:128])
