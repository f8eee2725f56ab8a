"""End to end through the real CLI: `edgekd run --config configs/smoke.yaml`, then `edgekd gate`.

Runs the whole chain once on the smoke subset (real Fashion-MNIST, real onnxruntime) and
checks what it wrote; then the gate, doctor and report commands on that run folder.
"""
from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import onnx
import pytest

from conftest import requires_fashion_mnist
from helpers import key_schema, recorded_export_stage
from edgekd.manifest import Manifest

ROOT = Path(__file__).resolve().parents[1]
SMOKE = ROOT / "configs" / "smoke.yaml"
pytestmark = [requires_fashion_mnist, pytest.mark.slow]


def edgekd(*args: str, timeout: int = 900) -> subprocess.CompletedProcess[str]:
    exe = Path(sys.executable).with_name("edgekd")
    cmd = [str(exe)] if exe.exists() else [sys.executable, "-m", "edgekd"]
    env = {**os.environ, "EDGEKD_PROGRESS": "0"}
    return subprocess.run(cmd + list(args), capture_output=True, text=True, timeout=timeout, env=env, cwd=ROOT)


@pytest.fixture(scope="module")
def smoke_run(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, subprocess.CompletedProcess[str]]:
    out = tmp_path_factory.mktemp("runs")
    # The whole chain: under 4 minutes on an idle 2-core machine (the whole AVX2 pass of .ci/run took 4 min 12 s),
    # 13 minutes beside a training run; the limit only catches a hang, so it leaves room for a slow CI machine.
    proc = edgekd("run", "--config", str(SMOKE), "--out", str(out), timeout=1800)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return out / "smoke", proc


def test_run_writes_every_artifact_with_its_sha256(smoke_run) -> None:
    run_dir, proc = smoke_run
    assert "gate: PASS" in proc.stdout and "report.md" in proc.stdout
    m = Manifest.load(run_dir)
    assert set(m.data["stages"]) == {"teacher", "distill", "qat", "export", "check", "gate"}
    for stage, entry in m.data["stages"].items():
        assert entry["status"] == "done"
        for key in entry["artifacts"]:
            assert m.artifact(stage, key).exists()  # verifies sha256 too
    for name in ("model.fp32.onnx", "model.int8.onnx", "teacher.fp32.onnx", "config.yaml", "report.md", "report.html"):
        assert (run_dir / name).is_file(), name
    assert m.data["config"]["name"] == "smoke" and m.data["environment"]["versions"]["onnxruntime"]


def test_export_entry_matches_the_recorded_schema(smoke_run) -> None:
    """tests/test_report.py renders from a recorded export entry; a schema change must fail here first."""
    run_dir, _ = smoke_run
    entry = Manifest.load(run_dir).stage("export")
    fresh = {k: entry[k] for k in ("metrics", "io", "student_choice_note")}
    assert key_schema(fresh) == key_schema(recorded_export_stage()), (
        "the export stage's manifest schema changed: regenerate tests/data/export_stage.json from a smoke run")


def test_onnx_files_carry_the_device_contract(smoke_run) -> None:
    run_dir, _ = smoke_run
    for name in ("model.fp32.onnx", "model.int8.onnx"):
        model = onnx.load(str(run_dir / name))
        assert model.opset_import[0].version >= 17
        meta = {p.key: p.value for p in model.metadata_props}
        assert json.loads(meta["labels"])[0] == "T-shirt/top"
        assert json.loads(meta["preprocessing"])["range"] == [0, 1]
        (inp,) = model.graph.input
        assert inp.name == "pixels" and inp.type.tensor_type.shape.dim[0].dim_param  # dynamic batch
    int8 = onnx.load(str(run_dir / "model.int8.onnx"))
    assert sum(n.op_type == "QuantizeLinear" for n in int8.graph.node) > 10
    assert (run_dir / "model.int8.onnx").stat().st_size < 0.35 * (run_dir / "model.fp32.onnx").stat().st_size


def test_report_shows_the_measured_numbers(smoke_run) -> None:
    run_dir, _ = smoke_run
    check = Manifest.load(run_dir).metrics("check")
    md = (run_dir / "report.md").read_text()
    for name in ("teacher", "student_fp32", "student_int8"):
        assert f"{100 * check['models'][name]['accuracy']:.2f} %" in md
    assert "Robustness" in md and "QLinearConv" in md


def test_run_names_no_staging_path(smoke_run) -> None:
    """Stages run (and the report renders) in .staging/, which is gone after the commit: nothing may point there."""
    run_dir, _ = smoke_run
    for name in ("manifest.json", "report.md", "report.html"):
        assert ".staging" not in (run_dir / name).read_text(), name
    md = (run_dir / "report.md").read_text()
    assert "edgekd doctor: model.int8.onnx (" in md
    for key in ("teacher_fp32", "student_fp32", "student_int8"):
        raw = Manifest.load(run_dir).metrics("export")[key]["export"]["path"]
        assert (run_dir / raw).is_file() and raw.startswith("stages/export/"), raw


def test_gate_exit_codes_on_the_run(smoke_run, tmp_path: Path) -> None:
    run_dir, _ = smoke_run
    size = Manifest.load(run_dir).metrics("check")["models"]["student_int8"]["size_mb"]
    ok = edgekd("gate", str(run_dir), "--max-size-mb", f"{size + 0.01:.4f}", "--junit", str(tmp_path / "g.xml"))
    assert ok.returncode == 0, ok.stdout + ok.stderr
    assert "PASS" in ok.stdout and (tmp_path / "g.xml").read_text().count("<testcase") >= 1
    bad = edgekd("gate", str(run_dir), "--max-size-mb", f"{size - 0.01:.4f}")
    assert bad.returncode == 1 and "FAIL" in bad.stdout
    broken = tmp_path / "broken"
    shutil.copytree(run_dir, broken)
    data = (broken / "model.int8.onnx").read_bytes()
    (broken / "model.int8.onnx").write_bytes(data[: len(data) // 2])
    err = edgekd("gate", str(broken))
    assert err.returncode == 2 and "model.int8.onnx" in (err.stdout + err.stderr)


def test_doctor_and_report_commands(smoke_run) -> None:
    run_dir, _ = smoke_run
    doc = edgekd("doctor", str(run_dir))
    # the verdict starts from the run's own measured latency table (faster or slower is this CPU's fact)
    assert doc.returncode == 0 and re.search(r"Verdict: INT8 is (faster|SLOWER) than FP32", doc.stdout)
    assert "Float in the INT8 graph" in doc.stdout
    (run_dir / "report.html").unlink()
    rep = edgekd("report", str(run_dir))
    assert rep.returncode == 0 and (run_dir / "report.html").stat().st_size > 1000


def test_rerun_skips_unchanged_stages(smoke_run) -> None:
    run_dir, _ = smoke_run
    again = edgekd("run", "--config", str(SMOKE), "--out", str(run_dir.parent))
    assert again.returncode == 0, again.stderr[-2000:]
    for stage in ("teacher", "distill", "qat", "export", "check"):
        assert f"{stage}: up to date, skipped" in again.stderr


def test_cli_errors_are_clear() -> None:
    helped = edgekd("--help")
    for cmd in ("run", "teacher", "distill", "qat", "export", "check", "gate", "doctor", "report"):
        assert cmd in helped.stdout
    bad = edgekd("run", "--config", str(SMOKE), "--set", "data.batchsize=3", "--out", "/nonexistent-never-written")
    assert bad.returncode == 2
    assert "unknown config key 'data.batchsize'" in bad.stderr and "batch_size" in bad.stderr
    assert not Path("/nonexistent-never-written").exists()
    missing = edgekd("gate", "/nonexistent-run")
    assert missing.returncode == 2 and "manifest.json" in (missing.stdout + missing.stderr)
