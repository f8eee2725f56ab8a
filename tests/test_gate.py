"""The gate on fake-but-real run folders: tiny ONNX files recorded as export artifacts, check metrics
measured by the real runtime, and budgets just below / just above what was measured."""
from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any
from xml.etree import ElementTree as ET

import pytest
import yaml

from edgekd.config import BudgetsConfig, LatencyBudget
from edgekd.errors import ArtifactError, ConfigError
from edgekd.deploy.gate import gate, main_gate
from edgekd.manifest import Manifest
from onnx_helpers import make_run

REPO = Path(__file__).resolve().parents[1]
EPS = 1e-6  # "just below" / "just above" a measured value


@pytest.fixture(scope="module")
def template(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return make_run(tmp_path_factory.mktemp("template") / "run")


@pytest.fixture
def run(template: Path, tmp_path: Path) -> Path:
    return Path(shutil.copytree(template, tmp_path / "run"))


def measured(run_dir: Path, model: str = "student_int8") -> dict[str, Any]:
    return Manifest.load(run_dir).metrics("check")["models"][model]


def set_budgets(run_dir: Path, **budgets: Any) -> None:
    m = Manifest.load(run_dir)
    m.data["config"]["budgets"].update(budgets)
    m.save()


# ------------------------------------------------------------------ pass / fail


def test_no_budgets_verifies_files_and_passes(run: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main_gate([str(run)]) == 0
    out = capsys.readouterr().out
    assert "no budgets set" in out and "verified 3 artifact(s)" in out


@pytest.mark.parametrize("flag,value_of,kind", [
    ("--max-size-mb", lambda m: m["size_mb"], "max"),
    ("--min-accuracy", lambda m: m["accuracy"], "min"),
    ("--max-latency-ms", lambda m: m["latency"][0]["median_ms"], "max"),  # batch 1, threads 1
])
def test_budget_just_below_and_just_above(run: Path, flag: str, value_of: Any, kind: str,
                                          capsys: pytest.CaptureFixture[str]) -> None:
    v = value_of(measured(run))
    tight, loose = (v - EPS, v + EPS) if kind == "max" else (v + EPS, v - EPS)
    assert main_gate([str(run), flag, repr(tight)]) == 1
    out = capsys.readouterr().out
    assert [c.strip() for c in out.splitlines()[0].split("|")] == ["budget", "limit", "measured", "status"]
    assert out.splitlines()[2].rstrip().endswith("| FAIL")
    assert main_gate([str(run), flag, repr(loose)]) == 0
    assert "gate: PASS" in capsys.readouterr().out


def test_budgets_come_from_the_run_and_flags_override_them(run: Path, capsys: pytest.CaptureFixture[str]) -> None:
    acc = measured(run)["accuracy"]
    set_budgets(run, min_accuracy=acc + 0.1, max_latency_ms={"value_ms": 1e6, "batch": 4, "threads": 1})
    result = gate(run)
    assert not result.passed
    assert [(r.name, r.passed) for r in result.rows] == [
        ("min_accuracy[student_int8]", False), ("max_latency_ms[student_int8 b4 t1]", True)]
    assert main_gate([str(run)]) == 1
    assert main_gate([str(run), "--min-accuracy", str(acc - 0.1)]) == 0
    capsys.readouterr()
    assert main_gate([str(run), "--min-accuracy", str(acc - 0.1), "--max-latency-ms", "1e-9"]) == 1
    assert "max_latency_ms[student_int8 b4 t1]" in capsys.readouterr().out  # the flag keeps the run's batch 4
    assert main_gate([str(run), "--min-accuracy", str(acc - 0.1), "--latency-threads", "0"]) == 2  # t0 not measured
    assert gate(run, BudgetsConfig()).rows == []  # explicit budgets replace the run's


def test_budgets_from_a_config_file(run: Path, tmp_path: Path) -> None:
    cfg = tmp_path / "ci.yaml"
    cfg.write_text(yaml.safe_dump({"budgets": {"min_accuracy": 0.99, "max_size_mb": 1.0}}))
    assert main_gate([str(run), "--config", str(cfg)]) == 1
    assert main_gate([str(run), "--config", str(cfg), "--min-accuracy", "0.5"]) == 0
    cfg.write_text(yaml.safe_dump({"budgets": {"max_size_md": 1.0}}))
    assert main_gate([str(run), "--config", str(cfg)]) == 2  # a misspelt budget is a config error


def test_model_selection_and_gate_result_metrics(run: Path) -> None:
    teacher_size = measured(run, "teacher")["size_mb"]
    res = gate(run, BudgetsConfig(model="teacher", max_size_mb=teacher_size))
    assert res.passed and res.rows[0].measured == teacher_size
    metrics = res.to_metrics()
    assert metrics["passed"] is True and metrics["checks"][0]["budget"] == "max_size_mb[teacher]"
    json.dumps(metrics)  # recordable in the manifest
    with pytest.raises(ConfigError, match="no check metrics for model 'resnet'"):
        gate(run, BudgetsConfig(model="resnet", min_accuracy=0.1))


# ------------------------------------------------------------------ errors (exit 2)


def _truncate(path: Path) -> None:
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])


def test_missing_onnx_file_is_an_error(run: Path, capsys: pytest.CaptureFixture[str]) -> None:
    (run / "model.int8.onnx").unlink()
    assert main_gate([str(run), "--min-accuracy", "0"]) == 2
    assert "model.int8.onnx" in capsys.readouterr().err


def test_truncated_onnx_file_is_an_error(run: Path, capsys: pytest.CaptureFixture[str]) -> None:
    _truncate(run / "model.int8.onnx")
    assert main_gate([str(run)]) == 2
    assert "sha256" in capsys.readouterr().err
    # a file truncated before it was recorded matches its sha256, yet onnxruntime cannot load it
    m = Manifest.load(run)
    m.record_stage("export", {k: run / v["path"] for k, v in m.stage("export")["artifacts"].items()})
    with pytest.raises(ArtifactError, match="truncated or corrupt"):
        gate(run)
    assert main_gate([str(run)]) == 2


def test_missing_or_corrupt_manifest_is_an_error(run: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main_gate([str(tmp_path / "no-such-run")]) == 2
    assert "run folder" in capsys.readouterr().err  # the folder is missing, not just its manifest
    (run / "manifest.json").write_text('{"stages": {"export": ')
    assert main_gate([str(run)]) == 2
    (run / "manifest.json").unlink()
    assert main_gate([str(run)]) == 2


def _edit_manifest(run: Path, edit: Any) -> None:
    data = json.loads((run / "manifest.json").read_text())
    edit(data)
    (run / "manifest.json").write_text(json.dumps(data))


def test_malformed_manifest_is_named_not_a_traceback(run: Path, tmp_path: Path,
                                                     capsys: pytest.CaptureFixture[str]) -> None:
    """'stages' as a list used to raise AttributeError; a missing size_mb a KeyError, with no JUnit file."""
    _edit_manifest(run, lambda d: d["stages"]["check"]["metrics"]["models"]["student_int8"].pop("size_mb"))
    junit = tmp_path / "gate.xml"
    assert main_gate([str(run), "--max-size-mb", "5", "--junit", str(junit)]) == 2
    assert "'size_mb'" in capsys.readouterr().err
    assert "size_mb" in ET.parse(junit).getroot().find("testcase/error").get("message")
    _edit_manifest(run, lambda d: d.update(stages=list(d["stages"])))
    assert main_gate([str(run)]) == 2
    assert "'stages' is a list" in capsys.readouterr().err


def test_unwritable_junit_is_an_error_before_any_verdict(run: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """The JUnit file is written before the verdict is printed: no 'gate: PASS' followed by a crash."""
    assert main_gate([str(run), "--junit", str(run / "manifest.json" / "gate.xml")]) == 2
    out, err = capsys.readouterr()
    assert "gate: PASS" not in out and "JUnit" in err and "gate.xml" in err


def test_budget_on_unmeasured_setting_is_an_error(run: Path) -> None:
    with pytest.raises(ConfigError, match="batch 64"):
        gate(run, BudgetsConfig(max_latency_ms=LatencyBudget(value_ms=1.0, batch=64, threads=1)))
    assert main_gate([str(run), "--max-latency-ms", "5", "--latency-batch", "64"]) == 2


# ------------------------------------------------------------------ baseline and robustness


def test_max_accuracy_drop_against_a_baseline(run: Path, template: Path, tmp_path: Path) -> None:
    base = Path(shutil.copytree(template, tmp_path / "baseline"))
    m = Manifest.load(base)
    acc = measured(run)["accuracy"]
    m.data["stages"]["check"]["metrics"]["models"]["student_int8"]["accuracy"] = acc + 0.05
    m.save()
    drop_fail, drop_pass = str(0.05 - EPS), str(0.05 + EPS)
    assert main_gate([str(run), "--max-accuracy-drop", drop_fail, "--baseline", str(base)]) == 1
    assert main_gate([str(run), "--max-accuracy-drop", drop_pass, "--baseline", str(base / "manifest.json")]) == 0
    row = gate(run, BudgetsConfig(max_accuracy_drop=0.1, baseline=str(base))).rows[0]
    assert row.measured == pytest.approx(0.05) and row.passed
    # no baseline, a missing baseline, an unreadable baseline: errors
    assert main_gate([str(run), "--max-accuracy-drop", "0.1"]) == 2
    assert main_gate([str(run), "--max-accuracy-drop", "0.1", "--baseline", str(tmp_path / "nope")]) == 2
    (base / "manifest.json").write_text("not json")
    assert main_gate([str(run), "--max-accuracy-drop", "0.1", "--baseline", str(base)]) == 2


def test_robustness_budgets(run: Path) -> None:
    # corruption: mean_accuracy 0.6
    assert main_gate([str(run), "--min-corruption-accuracy", str(0.6 + EPS)]) == 1
    assert main_gate([str(run), "--min-corruption-accuracy", str(0.6 - EPS)]) == 0
    # adversarial at 2/255 -> key 0.0078: pgd 0.5, square 0.4 -> the worst is 0.4
    row = gate(run, BudgetsConfig(min_adversarial_accuracy=0.39)).rows[0]
    assert row.passed and row.measured == 0.4 and "square" in row.detail and row.name.endswith("eps 0.0078]")
    assert main_gate([str(run), "--min-adversarial-accuracy", "0.41"]) == 1
    # at 8/255 (0.0314) the attacks present are pgd 0.3 and fgsm 0.35
    assert gate(run, BudgetsConfig(min_adversarial_accuracy=0.31, adversarial_epsilon=8 / 255)).rows[0].measured == 0.3
    assert main_gate([str(run), "--min-adversarial-accuracy", "0.1", "--adversarial-epsilon", "0.1"]) == 2
    assert main_gate([str(run), "--model", "teacher", "--min-corruption-accuracy", "0.1"]) == 2  # not measured


# ------------------------------------------------------------------ reports and the real command


def test_junit_and_markdown_summary(run: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    step = tmp_path / "step_summary.md"
    step.write_text("earlier step\n")
    monkeypatch.setenv("GITHUB_STEP_SUMMARY", str(step))
    junit, summary = tmp_path / "gate.xml", tmp_path / "gate.md"
    acc = measured(run)["accuracy"]
    rc = main_gate([str(run), "--min-accuracy", str(acc + 0.01), "--max-size-mb", "100",
                    "--max-latency-ms", "1e6", "--junit", str(junit), "--summary", str(summary)])
    assert rc == 1
    suite = ET.parse(junit).getroot()
    assert (suite.get("tests"), suite.get("failures"), suite.get("errors")) == ("3", "1", "0")
    failed = [c.get("name") for c in suite.iter("testcase") if c.find("failure") is not None]
    assert failed == ["min_accuracy[student_int8]"]
    md = summary.read_text()
    assert "| budget | limit | measured | status |" in md and md.count("| PASS |") == 2 and "| FAIL |" in md
    assert step.read_text() == "earlier step\n" + md
    # an error still leaves a JUnit file that CI can show
    (run / "model.int8.onnx").unlink()
    assert main_gate([str(run), "--junit", str(junit)]) == 2
    suite = ET.parse(junit).getroot()
    assert suite.get("errors") == "1" and suite.find("testcase/error") is not None


def test_gate_as_a_real_subprocess(run: Path) -> None:
    acc = measured(run)["accuracy"]
    cmd = [sys.executable, "-m", "edgekd.deploy.gate", str(run)]
    fail = subprocess.run([*cmd, "--min-accuracy", str(acc + 0.01)], cwd=REPO, capture_output=True, text=True, timeout=60)
    assert fail.returncode == 1, fail.stderr
    assert "min_accuracy[student_int8]" in fail.stdout and "gate: FAIL (1 of 1 budgets missed)" in fail.stdout
    ok = subprocess.run([*cmd, "--min-accuracy", str(acc)], cwd=REPO, capture_output=True, text=True, timeout=60)
    assert ok.returncode == 0 and "gate: PASS" in ok.stdout
