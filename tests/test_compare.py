"""edgekd compare: deltas between two runs, from their manifests (torch-free).

Two run folders are laid out with real onnxruntime check metrics (tests/onnx_helpers.make_run);
run B's student_int8 numbers are then set to known values, so every delta has a known answer.
"""
from __future__ import annotations

import copy
import subprocess
import sys
from pathlib import Path

import pytest

from edgekd.deploy.compare import compare_runs, to_markdown
from edgekd.deploy.report import render_report
from edgekd.errors import ArtifactError, InputError
from edgekd.manifest import Manifest
from onnx_helpers import ROBUSTNESS, make_run

ROOT = Path(__file__).resolve().parents[1]

B_ROBUSTNESS = {
    "corruption": {"mean_accuracy": 0.65, "by_corruption": {"noise": [0.7, 0.6]}},
    "adversarial": {"pgd": {"0.0078": 0.45, "0.0314": 0.3}, "square": {"0.0078": 0.5}},  # no fgsm in B
    "calibration": {"ece": 0.05, "ece_temperature_scaled": 0.02},
    "ood": {"uniform": {"auroc_msp": 0.9, "auroc_energy": 0.95}},
}


@pytest.fixture(scope="module")
def runs(tmp_path_factory) -> tuple[Path, Path, dict]:
    """Runs A and B; B's student_int8: accuracy -0.2, half the size, twice the batch-1 latency, other robustness."""
    root = tmp_path_factory.mktemp("compare")
    a, b = make_run(root / "a"), make_run(root / "b")
    ma = Manifest.load(a)
    ma.data["run_name"] = "baseline"
    a_rob = copy.deepcopy(ROBUSTNESS)
    a_rob["calibration"] = {"ece": 0.08}
    a_rob["ood"] = {"uniform": {"auroc_msp": 0.8}}
    ma.data["stages"]["check"]["metrics"]["models"]["student_int8"]["robustness"] = a_rob
    ma.save()
    mb = Manifest.load(b)
    mb.data["run_name"] = "candidate"
    a_int8 = ma.metrics("check")["models"]["student_int8"]
    b_int8 = mb.data["stages"]["check"]["metrics"]["models"]["student_int8"]
    b_int8["accuracy"] = a_int8["accuracy"] - 0.2
    b_int8["size_mb"] = a_int8["size_mb"] / 2
    for rec in b_int8["latency"]:
        rec["median_ms"] = next(r["median_ms"] for r in a_int8["latency"]
                                if (r["batch"], r["threads"]) == (rec["batch"], rec["threads"])) * (2 if rec["batch"] == 1 else 1)
    b_int8["robustness"] = B_ROBUSTNESS
    mb.save()
    return a, b, a_int8


def test_deltas_are_b_minus_a_with_ratios_for_size_and_latency(runs) -> None:
    a, b, a_int8 = runs
    cmp = compare_runs(a, b)
    assert (cmp.run_a, cmp.run_b) == ("baseline", "candidate")
    assert [m.model for m in cmp.models] == ["teacher", "student_fp32", "student_int8"]
    int8 = cmp.model("student_int8")
    acc = int8.get("top-1 accuracy")
    # accuracy a - 0.2 - a: float rounding of values in [0, 1], so an absolute 1e-12 is ample
    assert acc.a == a_int8["accuracy"] and acc.delta == pytest.approx(-0.2, abs=1e-12) and acc.change == "worse"
    size = int8.get("size (MB)")
    assert size.ratio == pytest.approx(0.5, rel=1e-12) and size.delta == pytest.approx(-a_int8["size_mb"] / 2, rel=1e-12)
    assert size.change == "better"  # smaller is better
    b1 = int8.get("latency, batch 1, 1 thread (median ms)")
    assert b1.ratio == pytest.approx(2.0, rel=1e-12) and b1.change == "worse"
    b4 = int8.get("latency, batch 4, 1 thread (median ms)")
    assert b4.delta == 0 and b4.ratio == pytest.approx(1.0) and b4.change == "same"
    assert int8.get("corruption mean accuracy").delta == pytest.approx(0.05, abs=1e-12)
    assert int8.get("adversarial pgd, ε=0.0078").delta == pytest.approx(-0.05, abs=1e-12)
    fgsm = int8.get("adversarial fgsm, ε=0.0314")  # measured in A only: shown, not compared
    assert (fgsm.a, fgsm.b, fgsm.delta, fgsm.change) == (0.35, None, None, "—")
    ece = int8.get("ECE")
    assert ece.delta == pytest.approx(-0.03, abs=1e-12) and ece.change == "better"  # lower ECE is better
    assert int8.get("OOD uniform, AUROC (msp)").delta == pytest.approx(0.1, abs=1e-12)
    assert int8.get("OOD uniform, AUROC (msp)").change == "better"
    # the teacher is the same file measured twice: equal accuracy and size (latency is re-measured noise)
    assert cmp.model("teacher").get("top-1 accuracy").delta == 0
    assert cmp.model("teacher").get("size (MB)").ratio == 1.0
    # make_run writes the same three files for A and B (B's numbers were edited): said, and no CPU note (same machine)
    assert cmp.notes == ["The same file in both runs (equal sha256): teacher, student_fp32, student_int8. Its latency "
                         "deltas are measurement noise between the two check stages, not a change of the model."]


def _row(markdown: str, model: str, metric: str) -> list[str]:
    """The cells of ``metric``'s row in the table captioned ``model``."""
    section = markdown.split(f"*{model}*", 1)[1]
    for line in section.splitlines():
        cells = [c.strip() for c in line.strip().strip("|").split("|")]
        if cells[0] == metric:
            return cells
    raise AssertionError(f"no row {metric!r} under {model}")


def test_cli_prints_the_table_and_writes_it_with_out(runs, tmp_path: Path) -> None:
    a, b, a_int8 = runs
    out = tmp_path / "cmp.md"
    proc = subprocess.run([sys.executable, "-m", "edgekd", "compare", str(a), str(b), "--out", str(out)],
                          cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout == out.read_text()
    header = next(line for line in proc.stdout.splitlines() if line.startswith("| metric"))
    assert "A: baseline" in header and "B: candidate" in header and "Δ (B − A)" in header
    acc = _row(proc.stdout, "student_int8", "top-1 accuracy")
    assert acc[1:] == [f"{100 * a_int8['accuracy']:.2f} %", f"{100 * (a_int8['accuracy'] - 0.2):.2f} %",
                       "-20.00 pp", "—", "worse"]
    assert _row(proc.stdout, "student_int8", "size (MB)")[4:] == ["×0.50", "better"]
    assert _row(proc.stdout, "student_int8", "latency, batch 1, 1 thread (median ms)")[4:] == ["×2.00", "worse"]
    assert _row(proc.stdout, "student_int8", "ECE")[3:] == ["-0.0300", "—", "better"]
    # one model only
    one = subprocess.run([sys.executable, "-m", "edgekd", "compare", str(a), str(b), "--model", "student_int8"],
                         cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert one.returncode == 0 and "*student_int8*" in one.stdout and "*teacher*" not in one.stdout


def test_report_compare_adds_the_section_to_md_and_html(runs) -> None:
    a, b, _ = runs
    md, html = render_report(b, compare_to=a)
    assert f"## Compared with {a}" in md.read_text() and "-20.00 pp" in md.read_text()
    text = html.read_text()
    assert f"<h2>Compared with {a}</h2>" in text and "<td>-20.00 pp</td>" in text and "<td>×0.50</td>" in text
    plain, _ = render_report(b)  # without --compare: no such section
    assert "Compared with" not in plain.read_text()


def test_bad_inputs_name_the_problem(runs, tmp_path: Path) -> None:
    a, b, _ = runs
    with pytest.raises(InputError, match="not measured in both runs; both have: teacher, student_fp32, student_int8"):
        compare_runs(a, b, ["student_int4"])
    bare = tmp_path / "bare"
    m = Manifest(bare)
    bare.mkdir()
    m.save()
    with pytest.raises(ArtifactError, match="has no check metrics"):
        compare_runs(a, bare)
    proc = subprocess.run([sys.executable, "-m", "edgekd", "compare", str(a), str(tmp_path / "nowhere")],
                          cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 2 and "does not exist" in proc.stderr and "Traceback" not in proc.stderr


def test_markdown_is_the_rendered_comparison(runs) -> None:
    a, b, _ = runs
    text = to_markdown(compare_runs(a, b, ["student_int8"]))
    assert text.startswith("# edgekd compare: candidate vs baseline")
    assert text.count("| metric |") == 1
