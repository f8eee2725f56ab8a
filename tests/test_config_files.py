"""Files a config names by path are stage inputs (edgekd.config_files): replaced in place, they change the
fingerprint of exactly the stages that read them, so a re-run does not report results of the old file."""
from __future__ import annotations

from pathlib import Path

from edgekd.config import load_config, stable_hash
from edgekd.config_files import config_file_inputs
from edgekd.io import sha256_file
from edgekd.manifest import Manifest
from edgekd.pipeline import fingerprint
from edgekd.stage_specs import BY_NAME, STAGE_NAMES

ROOT = Path(__file__).resolve().parents[1]
SMOKE = ROOT / "configs" / "smoke.yaml"


def producing_manifest(tmp_path: Path) -> Manifest:
    """A manifest whose stages produced every artifact a later stage consumes (fixed shas)."""
    m = Manifest(tmp_path / "run")
    made = {"teacher": ["weights"], "distill": ["weights"], "qat": ["weights"],
            "export": ["teacher_fp32", "student_fp32", "student_int8"]}
    for stage, keys in made.items():
        m.data["stages"][stage] = {"artifacts": {k: {"path": f"{stage}.{k}", "sha256": stage, "bytes": 1} for k in keys}}
    return m


def stages_rerun_by(tmp_path: Path, overrides: list[str], rewrite: Path, content: bytes = b"rewritten") -> set[str]:
    """The stages whose fingerprint changes when ``rewrite`` is rewritten in place (the config unchanged)."""
    cfg, m = load_config(SMOKE, overrides), producing_manifest(tmp_path)
    names = [n for n in STAGE_NAMES if n != "gate"]
    before = {n: fingerprint(cfg, BY_NAME[n], m)[0] for n in names}
    rewrite.write_bytes(content)
    return {n for n in names if fingerprint(cfg, BY_NAME[n], m)[0] != before[n]}


def a_file(tmp_path: Path, name: str) -> Path:
    path = tmp_path / name
    path.write_bytes(b"first")
    return path


def test_each_file_reruns_exactly_the_stages_that_read_it(tmp_path: Path) -> None:
    """Later stages read the stage artifacts (fixed here); in a real run the re-run stage writes a new one,
    which re-runs them in turn."""
    t, s, x = a_file(tmp_path, "teacher.pt"), a_file(tmp_path, "student.pt"), a_file(tmp_path, "extra.pt")
    multi = ["distill.loss=multi_teacher", f"distill.teachers=[{{arch: wrn16_4, weights: {x}}}]"]
    assert stages_rerun_by(tmp_path, [f"teacher.weights={t}"], t) == {"teacher"}
    assert stages_rerun_by(tmp_path, [f"student.weights={s}"], s) == {"distill"}  # QAT starts from distill's file
    assert stages_rerun_by(tmp_path, multi, x) == {"distill", "qat"}  # both distill from the ensemble


def test_a_torchscript_arch_is_its_file(tmp_path: Path) -> None:
    """``torchscript:PATH`` holds the model and its weights: a re-saved file re-runs the teacher stage."""
    import torch
    from torch import nn

    scripted = tmp_path / "teacher.ts"
    torch.jit.save(torch.jit.script(nn.Sequential(nn.Flatten(), nn.Linear(784, 10))), str(scripted))
    first = scripted.read_bytes()
    over = [f"teacher.arch=torchscript:{scripted}", "teacher.width=1.0", "teacher_train.epochs=0"]
    torch.jit.save(torch.jit.script(nn.Sequential(nn.Flatten(), nn.Linear(784, 10))), str(tmp_path / "retrained.ts"))
    assert stages_rerun_by(tmp_path, over, scripted, (tmp_path / "retrained.ts").read_bytes()) == {"teacher"}
    scripted.write_bytes(first)
    cfg = load_config(SMOKE, over)
    assert config_file_inputs(cfg, ("teacher.weights", "teacher.arch")) == {"file:teacher.arch": sha256_file(scripted)}


def test_the_sensitivity_ranking_reruns_qat(tmp_path: Path) -> None:
    ranking = tmp_path / "sensitivity.json"
    ranking.write_text('{"ranking": ["features.0.0"]}')
    over = [f"qat.sensitivity={ranking}", "qat.keep_float_most_sensitive=1"]
    assert stages_rerun_by(tmp_path, over, ranking, b'{"ranking": ["features.1.conv.0"]}') == {"qat"}
    # a run folder holding one: its sensitivity.json
    cfg = load_config(SMOKE, [f"qat.sensitivity={tmp_path}", "qat.keep_float_most_sensitive=1"])
    assert config_file_inputs(cfg, ("qat.sensitivity",)) == {"file:qat.sensitivity": sha256_file(ranking)}


def test_the_mce_reference_run_reruns_check_when_its_check_metrics_change(tmp_path: Path) -> None:
    ref = Manifest(tmp_path / "baseline")
    ref.data["stages"]["check"] = {"metrics": {"models": {"student_fp32": {"accuracy": 0.9}}}}
    ref.save()
    cfg, m = load_config(SMOKE, [f"check.robustness.reference_run={tmp_path / 'baseline'}"]), producing_manifest(tmp_path)
    before = fingerprint(cfg, BY_NAME["check"], m)
    assert before[1]["file:check.robustness.reference_run"] == stable_hash(ref.data["stages"]["check"]["metrics"])
    ref.data["stages"]["check"]["metrics"]["models"]["student_fp32"]["accuracy"] = 0.8  # the baseline re-checked
    ref.save()
    assert fingerprint(cfg, BY_NAME["check"], m)[0] != before[0]


def test_an_extra_teacher_given_as_a_run_folder_is_the_teacher_its_manifest_records(tmp_path: Path) -> None:
    other = Manifest(tmp_path / "earlier")
    other.data["stages"]["teacher"] = {"artifacts": {"weights": {"path": "t.pt", "sha256": "cc", "bytes": 1}}}
    other.save()
    cfg = load_config(SMOKE, ["distill.loss=multi_teacher", f"distill.teachers=[{{arch: wrn16_4, weights: {tmp_path / 'earlier'}}}]"])
    assert config_file_inputs(cfg, ("distill.teachers",)) == {"file:distill.teachers[0].weights": "cc"}


def test_names_that_are_not_files_and_missing_paths_add_nothing(tmp_path: Path) -> None:
    """Torchvision/timm names are versioned by their library; a missing path is the stage's own error."""
    cfg = load_config(SMOKE, ["student.arch=mobilenet_v2", "student.weights=mobilenet_v2:DEFAULT",
                              "student.width=1.0"])
    assert config_file_inputs(cfg, ("student.weights", "student.arch")) == {}
    assert config_file_inputs(load_config(SMOKE), tuple(k for n in STAGE_NAMES for k in BY_NAME[n].files)) == {}


def test_a_home_relative_weights_path_is_hashed_and_loaded(tmp_path: Path, monkeypatch) -> None:
    import torch

    from edgekd.models import read_weights_file

    monkeypatch.setenv("HOME", str(tmp_path))
    torch.save({"w": torch.ones(2)}, tmp_path / "t.pt")
    cfg = load_config(SMOKE, ["teacher.weights=~/t.pt"])
    assert config_file_inputs(cfg, ("teacher.weights",)) == {"file:teacher.weights": sha256_file(tmp_path / "t.pt")}
    assert torch.equal(read_weights_file("~/t.pt")[0]["w"], torch.ones(2))


def test_a_run_reading_a_file_inside_its_own_folder_is_refused_before_it_touches_it(tmp_path: Path) -> None:
    """The teacher stage would rewrite ``stages/teacher/teacher.pt`` with its new fingerprint inside, so a run
    that reads it would re-run its whole chain every time; refused (exit 2 from the CLI), the folder unchanged."""
    import subprocess
    import sys

    import pytest

    import edgekd
    from edgekd.errors import ConfigError

    run = tmp_path / "smoke"
    own = run / "stages" / "teacher" / "teacher.pt"
    own.parent.mkdir(parents=True)
    own.write_bytes(b"an earlier teacher")
    before = sorted(p.relative_to(run) for p in run.rglob("*"))
    for over in ([f"teacher.weights={own}", "teacher_train.epochs=0"], [f"check.robustness.reference_run={run}"]):
        with pytest.raises(ConfigError, match="inside this run's own folder"):
            edgekd.run(str(SMOKE), overrides=over, out=tmp_path, log=lambda m: None)
    assert sorted(p.relative_to(run) for p in run.rglob("*")) == before and own.read_bytes() == b"an earlier teacher"
    proc = subprocess.run([sys.executable, "-m", "edgekd", "run", "-c", str(SMOKE), "--out", str(tmp_path),
                           "--set", f"teacher.weights={own}", "--set", "teacher_train.epochs=0"],
                          cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 2 and "Traceback" not in proc.stderr
    assert "teacher.weights" in proc.stderr and "copy it out of" in proc.stderr
    # the same file read by another run is fine
    from edgekd.config_files import refuse_paths_inside_the_run

    refuse_paths_inside_the_run(load_config(SMOKE, [f"teacher.weights={own}"]), ("teacher.weights",), tmp_path / "other")
