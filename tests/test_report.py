"""The run report from a hand-written, schema-conformant manifest plus a real INT8 QDQ file (built with
onnx + onnxruntime's static quantizer on real Fashion-MNIST images, no torch) so the doctor runs for real."""
from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper
from onnxruntime import quantization

from edgekd.pixels import to_float
from edgekd.errors import ArtifactError
from edgekd.manifest import Manifest
from edgekd.deploy.report import render_report
from helpers import recorded_export_stage

REPO = Path(__file__).resolve().parents[1]
LABELS = ["T-shirt/top", "Trouser", "Pullover", "Dress", "Coat", "Sandal", "Shirt", "Sneaker", "Bag", "Ankle boot"]


def _fp32_model(path: Path) -> None:
    """pixels[N,1,28,28] -> Conv 3x3 (4) -> Relu -> GlobalAveragePool -> Flatten -> Gemm -> logits[N,10]."""
    rng = np.random.default_rng(0)
    inits = [numpy_helper.from_array(rng.normal(0, 0.3, (4, 1, 3, 3)).astype(np.float32), "w"),
             numpy_helper.from_array(np.zeros(4, np.float32), "b"),
             numpy_helper.from_array(rng.normal(0, 0.3, (10, 4)).astype(np.float32), "fw"),
             numpy_helper.from_array(np.zeros(10, np.float32), "fb")]
    nodes = [helper.make_node("Conv", ["pixels", "w", "b"], ["c"], name="conv", pads=[1, 1, 1, 1]),
             helper.make_node("Relu", ["c"], ["r"], name="relu"),
             helper.make_node("GlobalAveragePool", ["r"], ["g"], name="gap"),
             helper.make_node("Flatten", ["g"], ["f"], name="flatten"),
             helper.make_node("Gemm", ["f", "fw", "fb"], ["logits"], name="fc", transB=1)]
    graph = helper.make_graph(nodes, "tiny", [helper.make_tensor_value_info("pixels", TensorProto.FLOAT, ["N", 1, 28, 28])],
                              [helper.make_tensor_value_info("logits", TensorProto.FLOAT, ["N", 10])], inits)
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)]), str(path))


class _Calib(quantization.CalibrationDataReader):
    def __init__(self, images: np.ndarray) -> None:
        self._it = iter([{"pixels": images[i:i + 16]} for i in range(0, len(images), 16)])

    def get_next(self):
        return next(self._it, None)


def _model_metrics(file: str, size: int, acc: float, lat: list[tuple[int, int, float]], rob: dict | None) -> dict:
    per_class = [round(acc + 0.01 * ((i % 3) - 1), 4) for i in range(10)]
    m = {"file": file, "size_bytes": size, "size_mb": size / 1e6, "accuracy": acc, "per_class_accuracy": per_class,
         "confusion": [[90 if i == j else (1 if abs(i - j) == 1 else 0) for j in range(10)] for i in range(10)],
         "latency": [{"batch": b, "threads": t, "median_ms": med, "p90_ms": med * 1.1, "p99_ms": med * 1.25,
                      "mean_ms": med * 1.02, "runs": 100} for b, t, med in lat],
         "profile_top_ops": [{"op_type": "QLinearConv" if "int8" in file else "Conv", "total_ms": 12.5, "share": 0.62,
                              "count": 52}, {"op_type": "Gemm", "total_ms": 1.25, "share": 0.06, "count": 1}]}
    if rob:
        m["robustness"] = rob
    return m


def _robustness(clean: float, mce: float | None) -> dict:
    corr = {"mean_accuracy": clean - 0.2, "by_corruption": {"gaussian_noise": [clean - 0.05, clean - 0.15, clean - 0.3],
                                                              "contrast": [clean - 0.1, clean - 0.2, clean - 0.35]}}
    if mce is not None:
        corr.update(mce=mce, relative_mce=mce * 1.1)
    return {"corruption": corr,
            "adversarial": {"pgd": {"0.0078": clean - 0.4, "0.0314": 0.0412}, "fgsm": {"0.0078": clean - 0.3}},
            "calibration": {"ece": 0.0543, "ece_temperature_scaled": 0.0121, "temperature": 1.37,
                            "reliability": {"bins": [0.25, 0.75], "accuracy": [0.4, 0.9], "confidence": [0.3, 0.85],
                                            "count": [10, 90]}},
            "ood": {"uniform": {"auroc_msp": 0.8765, "auroc_energy": 0.9012}}}


@pytest.fixture()
def run_dir(tmp_path, fmnist_small) -> Path:
    """A run folder: real fp32 + int8 QDQ files recorded by the export stage, hand-written check metrics."""
    fp32, int8 = tmp_path / "model.fp32.onnx", tmp_path / "model.int8.onnx"
    _fp32_model(fp32)
    quantization.quantize_static(str(fp32), str(int8), _Calib(to_float(fmnist_small.val.images[:64])),
                                 quant_format=quantization.QuantFormat.QDQ, per_channel=True)
    m = Manifest(tmp_path)
    m.data.update(run_name="fmnist_test", config={"student": {"arch": "mobilenet_v2"}},
                  environment={"python": "3.11.2", "platform": "Linux-x86_64",
                               "cpu": {"model": "Test Xeon 8480", "cores": 2,
                                       "isa": {"avx2": True, "avx512_vnni": True, "amx_int8": False}},
                               "versions": {"onnxruntime": "1.32.0", "onnx": "1.23.2", "torch": "2.14.1"}})
    # the export entry as the export stage writes it (nested, recorded from a real smoke run; test_pipeline
    # checks a fresh run still has this schema); a renamed key fails here with a KeyError
    recorded = recorded_export_stage()
    metrics = recorded["metrics"]
    metrics["student_fp32"]["simplify"]["nodes_before"] = 312
    metrics["student_fp32"]["simplify"]["nodes_after"] = 187
    metrics["student_fp32"]["parity"]["max_abs_diff"] = 3.1e-6
    metrics["student_int8"]["parity"]["agreement"] = 0.9961
    m.record_stage("export", {"student_fp32": fp32, "student_int8": int8}, metrics=metrics, seconds=12.3,
                   extra={"io": recorded["io"],
                          "student_choice_note": "MobileNetV2 was chosen: its int8 ops all fuse in onnxruntime."})
    m.data["stages"]["teacher"] = {"status": "done", "seconds": 301.5, "metrics": {"test_accuracy": 0.9345, "epochs": 3}}
    m.data["stages"]["check"] = {"status": "done", "seconds": 40.0, "metrics": {
        "provider": "CPUExecutionProvider", "labels": LABELS, "models": {
            "teacher": _model_metrics("teacher.fp32.onnx", 44_700_000, 0.9345, [(1, 1, 4.0), (32, 2, 60.0)],
                                      _robustness(0.9345, None)),
            "student_fp32": _model_metrics("model.fp32.onnx", 8_900_000, 0.9187, [(1, 1, 1.6), (32, 2, 20.0)],
                                           _robustness(0.9187, 1.05)),
            "student_int8": _model_metrics("model.int8.onnx", 2_581_000, 0.9123, [(1, 1, 0.8), (32, 2, 12.0)],
                                           _robustness(0.9123, 1.12))}}}
    m.data["stages"]["gate"] = {"status": "done", "metrics": {"passed": True, "checks": [
        {"name": "max_size_mb", "value": 2.581, "budget": 5.0, "passed": True}]}}
    m.save()
    return tmp_path


def test_report_shows_measured_numbers_and_ratios(run_dir):
    md_path, html_path = render_report(run_dir)
    md, html = md_path.read_text(), html_path.read_text()
    for text in (md, html):
        assert "91.23 %" in text and "93.45 %" in text  # int8 and teacher accuracy
        assert "2.58 MB" in text and "44.70 MB" in text  # sizes
        assert "0.800" in text and "60.000" in text  # latency medians (int8 b1t1, teacher b32t2)
        assert "1.000" in text  # int8 p99 at batch 1 = 0.8 * 1.25
    # hand-checked ratios: int8/fp32 size 2.581/8.9 = 0.29; int8/fp32 latency 0.8/1.6 = 0.50;
    # teacher -> int8 speedup at batch 32, 2 threads: 60/12 = 5.00; int8 - teacher accuracy = -2.22 pp
    assert "| size | 44.70 MB | 8.90 MB | 2.58 MB | ×0.20 | ×0.29 | ×0.06 |" in md
    assert re.search(r"\| 1 \| 1 \| ×0\.40 \| ×0\.50 \| ×5\.00 \|", md)
    assert re.search(r"\| 32 \| 2 \| ×0\.33 \| ×0\.60 \| ×5\.00 \|", md)
    assert "-2.22 pp" in md
    # profiler, robustness, calibration, OOD, gate, environment, student note
    assert "| QLinearConv | 12.500 | 62.00 % | 52 |" in md
    assert "adversarial pgd, ε=0.0314" in md and "4.12 %" in md
    assert "| mCE | — | 1.050 | 1.120 |" in md
    assert "| ECE | 0.0543 |" in md and "| ECE, temperature scaled | 0.0121 |" in md
    assert "| OOD uniform, AUROC (msp) | 0.8765 |" in md and "0.9012" in md
    assert "Verdict: PASS" in md
    assert "Test Xeon 8480" in md and "1.32.0" in md and "avx512_vnni" in md
    assert "MobileNetV2 was chosen" in md and "mobilenet_v2" in md
    assert "| student_fp32.simplify.nodes_after | 187 |" in md and "| student_int8.parity.agreement | 0.9961 |" in md
    # the doctor ran on the real int8 file, and its verdict starts from the check stage's measured table
    assert "Verdict: INT8 is faster than FP32 at every setting the check stage measured" in md and "QLinearConv" in md


def test_plots_exist_as_png_and_html_is_self_contained(run_dir):
    _, html_path = render_report(run_dir)
    names = ["accuracy_vs_latency", "per_class_accuracy", "severity_curves", "reliability",
             "confusion_teacher", "confusion_student_fp32", "confusion_student_int8"]
    for name in names:
        png = run_dir / "plots" / f"{name}.png"
        assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n", name
    html = html_path.read_text()
    assert html.count("data:image/png;base64,") == len(names)
    assert 'src="plots/' not in html and "<link" not in html


def test_rendering_is_idempotent(run_dir):
    md1, html1 = (p.read_bytes() for p in render_report(run_dir))
    png1 = (run_dir / "plots" / "reliability.png").read_bytes()
    md2, html2 = (p.read_bytes() for p in render_report(run_dir))
    assert md1 == md2 and html1 == html2
    assert png1 == (run_dir / "plots" / "reliability.png").read_bytes()
    assert not list(run_dir.glob(".*.tmp"))  # atomic writes leave no temp files


def test_html_escapes_manifest_text(run_dir):
    m = Manifest.load(run_dir)
    m.data["stages"]["check"]["metrics"]["labels"][0] = "<script>alert(1)</script>"
    m.save()
    html = render_report(run_dir)[1].read_text()
    assert "<script>" not in html and "&lt;script&gt;alert(1)&lt;/script&gt;" in html


def test_doctor_failure_is_shown_not_hidden(run_dir, monkeypatch):
    from edgekd.deploy import doctor

    def fail(*args, **kwargs):
        raise ArtifactError("onnxruntime cannot load the model", "re-export it")

    monkeypatch.setattr(doctor, "diagnose", fail)
    md = render_report(run_dir)[0].read_text()
    assert "The doctor failed" in md and "ArtifactError" in md and "cannot load" in md


def test_changed_int8_file_is_an_error_and_writes_nothing(run_dir):
    """A report about a file that no longer matches its sha256 would describe an unshippable model."""
    md_before = render_report(run_dir)[0].read_bytes()
    (run_dir / "model.int8.onnx").write_bytes(b"changed after export")
    with pytest.raises(ArtifactError, match="sha256"):
        render_report(run_dir)
    assert (run_dir / "report.md").read_bytes() == md_before
    proc = subprocess.run([sys.executable, "-m", "edgekd", "report", str(run_dir)], cwd=REPO,
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode == 2 and "sha256" in proc.stderr and "Traceback" not in proc.stderr, proc.stderr


def test_missing_sections_are_omitted_with_a_note(run_dir):
    m = Manifest.load(run_dir)
    for model in m.data["stages"]["check"]["metrics"]["models"].values():
        del model["robustness"]
    del m.data["stages"]["gate"], m.data["stages"]["export"]["student_choice_note"]
    m.save()
    md = render_report(run_dir)[0].read_text()
    assert "## Robustness" not in md and "No robustness data" in md
    assert "## Gate" not in md and "No gate verdict recorded" in md
    assert "MobileNetV3-small barely gained" in md  # the default student note


def test_without_matplotlib_report_renders_and_says_so(run_dir, monkeypatch):
    from edgekd.deploy.report import plots

    monkeypatch.setattr(plots, "matplotlib_available", lambda: False)
    md_path, html_path = render_report(run_dir)
    md, html = md_path.read_text(), html_path.read_text()
    assert "matplotlib is not installed" in md and "91.23 %" in md
    assert "![" not in md and "data:image/png" not in html
    assert not (run_dir / "plots").exists()


def test_missing_manifest_raises_artifact_error(tmp_path):
    with pytest.raises(ArtifactError, match="manifest.json"):
        render_report(tmp_path)


def test_module_main_renders(run_dir):
    (run_dir / "report.md").unlink(missing_ok=True)
    proc = subprocess.run([sys.executable, "-m", "edgekd.deploy.report", str(run_dir)], cwd=REPO,
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    assert (run_dir / "report.md").is_file() and "report.html" in proc.stdout
    bad = subprocess.run([sys.executable, "-m", "edgekd.deploy.report", str(run_dir / "nowhere")], cwd=REPO,
                         capture_output=True, text=True, timeout=120)
    assert bad.returncode == 2 and "does not exist" in bad.stderr and "Traceback" not in bad.stderr


def test_report_and_doctor_never_import_torch(run_dir):
    code = ("import sys; from edgekd.deploy.report import render_report; render_report(sys.argv[1]); "
            "assert 'torch' not in sys.modules, 'torch was imported'; print('torch-free')")
    proc = subprocess.run([sys.executable, "-c", code, str(run_dir)], cwd=REPO, capture_output=True, text=True,
                          timeout=120)
    assert proc.returncode == 0, proc.stderr
    assert "torch-free" in proc.stdout and "INT8 is faster than FP32 at every setting" in (run_dir / "report.md").read_text()


def test_gate_section_shows_this_runs_budgets(run_dir):
    """The targets in the report are the run's own (manifest config.budgets), not numbers from the design notes."""
    m = Manifest.load(run_dir)
    m.data.setdefault("config", {})["budgets"] = {"model": "student_int8", "max_size_mb": 0.75, "min_accuracy": 0.42,
                                                  "max_latency_ms": None}
    m.save()
    md = render_report(run_dir)[0].read_text()
    gate = md.split("## Gate", 1)[1].split("\n## ", 1)[0]
    assert "Budgets from this run's config" in gate and "0.75" in gate and "0.42" in gate
    assert "max_latency_ms" not in gate  # unset budgets are not shown


def _png_size(path: Path) -> tuple[int, int]:
    head = path.read_bytes()[:24]  # PNG signature, IHDR length and type, then width and height (big-endian)
    return int.from_bytes(head[16:20], "big"), int.from_bytes(head[20:24], "big")


@pytest.mark.parametrize("k", [10, 100, 1000])
def test_class_plots_stay_drawable_at_many_classes(tmp_path: Path, k: int) -> None:
    """A figure sized by the class count with k² printed counts was ~30 s and 1 MB a model at 100 classes
    (and too large for matplotlib at 1000): past LABELLED_CLASSES the plots keep a fixed size."""
    pytest.importorskip("matplotlib")
    import matplotlib

    matplotlib.use("Agg")
    from edgekd.deploy.report import plots

    rng = np.random.default_rng(0)
    cm = np.diag(rng.integers(5, 10, k)) + (rng.random((k, k)) < 0.02)
    per_class = [None if c == 0 else float(rng.random()) for c in range(k)]  # an absent class has no accuracy
    labels = [f"class{c}" for c in range(k)]
    conf = plots.confusion("student_int8", cm.tolist(), labels, tmp_path / "confusion.png")
    bars = plots.per_class_accuracy({"student_int8": {"per_class_accuracy": per_class}}, labels, tmp_path / "pc.png")
    for png in (conf, bars):
        w, h = _png_size(png)
        assert 0 < w <= 2000 and 0 < h <= 1200, (png.name, w, h)
    if k <= plots.LABELLED_CLASSES:  # small: one count per cell, so the figure grows with k
        assert _png_size(conf)[0] > 500
