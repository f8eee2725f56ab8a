"""export.temperature_scaling: a validation-fitted softmax temperature carried into the shipped files.

Hand-built graphs check the fit (a worked value), the graph rewrite and its verification; one tiny real
chain checks the export stage wires it in: the student files end in the Mul, the teacher does not, the
unscaled file is kept, and the scaled file's logits are the unscaled file's divided by T.
"""
from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import onnx
import pytest

from conftest import requires_fashion_mnist
from edgekd.deploy.runtime.session import make_session, onnx_logits
from edgekd.errors import ArtifactError
from edgekd.deploy.onnx_io import TEMPERATURE_NODE
from edgekd.exporting.temperature import append_temperature, fit_file_temperature, verify_scaled
from helpers import tiny_run_config
from onnx_helpers import BANDS, LABELS, band_images, gemm_model


def _logits(path: Path, x: np.ndarray) -> np.ndarray:
    return onnx_logits(make_session(path, threads=1), x)


def test_fit_on_the_band_model_gives_the_worked_temperature(tmp_path: Path) -> None:
    """Every band image gets logits (16, 0, 0) up to order and 7 of 10 labels agree with the argmax.

    The NLL is least where the top class's probability equals the accuracy: e^(16/T) / (e^(16/T) + 2) = 0.7,
    so e^(16/T) = 14/3 and T = 16 / ln(14/3) = 10.387; the calibrated ECE is then 0.
    """
    model = gemm_model(tmp_path / "band.onnx")
    fit = fit_file_temperature(model, band_images(), LABELS)
    expected = 16.0 / math.log(14.0 / 3.0)
    assert fit["temperature"] == pytest.approx(expected, rel=1e-3)  # golden-section search tolerance
    assert fit["val_ece_before"] == pytest.approx(0.3, abs=1e-6)  # confidence ~1.0, accuracy 0.7
    assert fit["val_ece_after"] < 1e-3 and fit["val_nll_after"] < fit["val_nll_before"]


def test_append_scales_the_output_and_keeps_its_name(tmp_path: Path) -> None:
    src = gemm_model(tmp_path / "band.onnx")
    dst = tmp_path / "scaled.onnx"
    append_temperature(src, dst, 4.0)
    model = onnx.load(str(dst))
    assert [o.name for o in model.graph.output] == ["logits"]
    last = model.graph.node[-1]
    assert last.name == TEMPERATURE_NODE and last.op_type == "Mul" and last.output[0] == "logits"
    x = band_images()
    ref = _logits(src, x)
    np.testing.assert_allclose(_logits(dst, x), ref / 4.0, rtol=1e-6, atol=0)  # one float32 multiply
    assert (_logits(dst, x).argmax(1) == BANDS).all()  # top-1 unchanged
    check = verify_scaled(src, dst, x, 4.0)
    assert check["top1_agreement"] == 1.0 and check["max_abs_diff"] <= check["allowed"]


def test_a_wrong_temperature_or_a_rescaled_file_is_refused(tmp_path: Path) -> None:
    src = gemm_model(tmp_path / "band.onnx")
    dst = tmp_path / "scaled.onnx"
    append_temperature(src, dst, 2.0)
    with pytest.raises(ArtifactError, match="logits / T"):
        verify_scaled(src, dst, band_images(), 3.0)  # the file holds 1/2, the check expects 1/3
    with pytest.raises(ArtifactError, match="already temperature-scaled"):
        append_temperature(dst, tmp_path / "twice.onnx", 2.0)
    for bad in (0.0, -1.0, float("nan")):
        with pytest.raises(ArtifactError, match="temperature"):
            append_temperature(src, tmp_path / "bad.onnx", bad)
    assert not (tmp_path / "twice.onnx").exists() and not (tmp_path / "bad.onnx").exists()


_ONE = {"epochs": 1, "lr": 0.05, "amp": "off", "max_steps_per_epoch": 3, "schedule": "cosine", "warmup_fraction": 0.0}


@requires_fashion_mnist
@pytest.mark.slow
def test_export_stage_ships_scaled_students(tmp_path: Path) -> None:
    import edgekd
    from edgekd.data import build_dataset
    from edgekd.config import config_from_dict
    from edgekd.pixels import to_float

    cfg = tiny_run_config("tscale", 16, _ONE, _ONE, {**_ONE, "lr": 0.002, "max_steps_per_epoch": 2})
    cfg["stages"] = ["teacher", "distill", "qat", "export"]
    cfg["export"]["temperature_scaling"] = True
    run = edgekd.run(cfg, out=tmp_path)
    metrics = run.metrics("export")
    x = to_float(build_dataset(config_from_dict(cfg).data, 0).test.images)
    for key in ("student_fp32", "student_int8"):
        path = run.manifest.artifact("export", key)  # exists and matches its recorded sha256
        ts = metrics[key]["temperature_scaling"]
        unscaled = run.run_dir / ts["unscaled"]
        assert unscaled.is_file() and onnx.load(str(path)).graph.node[-1].name == TEMPERATURE_NODE
        assert ts["val_images"] == 64 and ts["temperature"] > 0 and ts["val_nll_after"] <= ts["val_nll_before"]
        ref = _logits(unscaled, x)
        got = _logits(path, x)
        # relative to the logits' scale: one float32 multiply (and fusion into the last Gemm) rounds ~1e-7 of it
        np.testing.assert_allclose(got, ref / ts["temperature"], rtol=0, atol=1e-5 * np.abs(ref).max())
        assert (got.argmax(1) == ref.argmax(1)).all()
    teacher = onnx.load(str(run.manifest.artifact("export", "teacher_fp32")))
    assert all(n.name != TEMPERATURE_NODE for n in teacher.graph.node) and "temperature_scaling" not in metrics["teacher_fp32"]
    # turning scaling off again re-exports plain files and leaves no unscaled file from the scaled run behind
    plain = edgekd.run({**cfg, "export": {**cfg["export"], "temperature_scaling": False}}, out=tmp_path, stages=["export"])
    assert "temperature_scaling" not in plain.metrics("export")["student_int8"]
    assert not list((plain.run_dir / "stages" / "export").glob("*.unscaled.onnx"))
    assert all(n.name != TEMPERATURE_NODE for n in onnx.load(str(plain.manifest.artifact("export", "student_int8"))).graph.node)


def test_doctor_names_the_temperature_multiply_and_the_logits_dequantize() -> None:
    """In a scaled INT8 file the last DequantizeLinear no longer writes the graph output; both are explained."""
    from onnx import TensorProto, helper, numpy_helper

    from edgekd.deploy.doctor_latency import runtime_float_nodes

    inits = [numpy_helper.from_array(np.array(0.1, np.float32), "s"), numpy_helper.from_array(np.array(0, np.uint8), "zp"),
             numpy_helper.from_array(np.array(0.5, np.float32), "inverse_temperature")]
    nodes = [helper.make_node("DequantizeLinear", ["q", "s", "zp"], ["logits_unscaled"], name="/head/DQ"),
             helper.make_node("Mul", ["logits_unscaled", "inverse_temperature"], ["logits"], name=TEMPERATURE_NODE)]
    graph = helper.make_graph(nodes, "g", [helper.make_tensor_value_info("q", TensorProto.UINT8, [1, 3])],
                              [helper.make_tensor_value_info("logits", TensorProto.FLOAT, [1, 3])], inits)
    why = {r["name"]: r["why"] for r in runtime_float_nodes(helper.make_model(graph))}
    assert why["/head/DQ"] == "the logits leave the graph as float"
    assert "export.temperature_scaling" in why[TEMPERATURE_NODE]


def test_doctor_on_a_scaled_int8_file_finds_nothing_new(tmp_path: Path) -> None:
    """Scaling adds one Mul after the output DQ: still 2 boundary Q/DQ, no inner ones, no float op "between int8
    kernels", and the Mul's reason names the switch (the doctor read it as a missed fusion before)."""
    from edgekd.deploy import doctor
    from onnx_helpers import boundary_qdq_graph

    src = boundary_qdq_graph(tmp_path / "clean.onnx", None)
    scaled = tmp_path / "scaled.onnx"
    append_temperature(src, scaled, 1.5)
    d = doctor.diagnose(scaled)
    assert d["qdq"]["boundary"] == 2 and sum(d["qdq"]["remaining"].values()) == 2
    assert d["float_elementwise"] == {}
    assert not any("beyond" in f["text"] or "element-wise" in f["text"] for f in d["findings"])
    reasons = [r["why"] for r in d["runtime_float"] if r["op_type"] == "Mul"]
    assert len(reasons) == 1 and "export.temperature_scaling" in reasons[0]
    assert {p.key: p.value for p in onnx.load(str(scaled)).metadata_props}["temperature"] == "1.5"


def test_a_fit_at_the_end_of_the_search_range_is_refused(tmp_path: Path) -> None:
    """All band images labelled by their band: the NLL keeps falling as T -> 0, so no temperature is shipped."""
    model = gemm_model(tmp_path / "band.onnx")
    with pytest.raises(ArtifactError, match="end of its search range") as err:
        fit_file_temperature(model, band_images(), BANDS)
    assert "data.val_size" in err.value.fix
