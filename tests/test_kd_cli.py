"""KD methods through the real CLI (``python -m edgekd run``) on 400 real images, seconds per run:

- RSLAD through the QAT stage: the INT8 file is exported and measured by the check stage;
- ARD through the QAT stage, its INT8 file attacked (PGD) by the check stage;
- multi-teacher KD with two architectures: the run's own ResNet-18 plus the wide ResNet that the
  first run's teacher stage trained, named by that run's folder;
- self-distillation with no teacher trained, through QAT.
"""
from __future__ import annotations

import json
import math
import os
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from conftest import requires_fashion_mnist
from helpers import tiny_run_config

ROOT = Path(__file__).resolve().parents[1]
pytestmark = [requires_fashion_mnist, pytest.mark.slow]

STEPS = {"epochs": 1, "lr": 0.05, "amp": "off", "max_steps_per_epoch": 3, "schedule": "cosine",
         "warmup_fraction": 0.0}


def edgekd(*args: str) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "EDGEKD_PROGRESS": "0", "OMP_NUM_THREADS": "1"}
    return subprocess.run([sys.executable, "-m", "edgekd", *args], capture_output=True, text=True,
                          timeout=600, env=env, cwd=ROOT)


def _config(tmp: Path, name: str, **distill: object) -> Path:
    cfg = tiny_run_config(name, 16, STEPS, STEPS, {**STEPS, "lr": 0.002, "max_steps_per_epoch": 2})
    cfg["distill"].update(distill)
    path = tmp / f"{name}.yaml"
    path.write_text(yaml.safe_dump(cfg))
    return path


@pytest.fixture(scope="module")
def rslad_run(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A wide-ResNet teacher, an RSLAD student, QAT with RSLAD, export and check."""
    tmp = tmp_path_factory.mktemp("kd")
    path = _config(tmp, "rslad", loss="rslad", robust={"epsilon": 0.03})
    data = yaml.safe_load(path.read_text())
    data["teacher"] = {"arch": "wrn16_4", "width": 0.5}
    path.write_text(yaml.safe_dump(data))
    proc = edgekd("run", "-c", str(path), "--out", str(tmp / "runs"), "--stages", "teacher,distill,qat,export,check")
    assert proc.returncode == 0, proc.stderr[-3000:]
    return tmp / "runs" / "rslad"


def test_rslad_runs_through_qat_and_its_int8_file_is_measured(rslad_run: Path) -> None:
    manifest = json.loads((rslad_run / "manifest.json").read_text())
    stages = manifest["stages"]
    assert stages["distill"]["metrics"]["loss"] == "rslad"
    # RSLAD is at T 1 with fixed weights: the run's record shows no distill.temperature/alpha it ignored
    assert not {"temperature", "alpha"} & set(stages["distill"]["metrics"])
    assert stages["qat"]["metrics"]["epochs"] == 1  # QAT trained (with RSLAD: it reads distill.loss)
    assert stages["qat"]["metrics"]["kd_state_from_distill"] is False and "kd_state" not in stages["distill"]["artifacts"]
    assert set(stages["qat"]["inputs"]) == {"teacher.weights", "distill.weights"}
    assert (rslad_run / "model.int8.onnx").is_file()
    int8 = stages["check"]["metrics"]["models"]["student_int8"]
    assert int8["file"] == "model.int8.onnx" and 0.0 <= int8["accuracy"] <= 1.0


# the check stage's robustness, cut to seconds: one corruption, PGD-2 at one epsilon on 16 images
SMALL_ROBUSTNESS = {"enabled": True, "corruptions": ["gaussian_noise"], "severities": [1], "images": 32,
                    "epsilons": [0.03], "pgd_steps": 2, "square_queries": 0, "adversarial_images": 16,
                    "ood": ["uniform"]}


def test_ard_runs_through_qat_and_its_int8_file_is_attacked(tmp_path: Path) -> None:
    """ARD (PGD inner attack) trains in distill and again in QAT, and the check stage attacks the INT8 file."""
    path = _config(tmp_path, "ard", loss="ard", robust={"attack": "pgd", "epsilon": 0.03, "steps": 2})
    data = yaml.safe_load(path.read_text())
    data["check"]["robustness"] = SMALL_ROBUSTNESS
    path.write_text(yaml.safe_dump(data))
    proc = edgekd("run", "-c", str(path), "--out", str(tmp_path / "runs"))
    assert proc.returncode == 0, proc.stderr[-3000:]
    stages = json.loads((tmp_path / "runs" / "ard" / "manifest.json").read_text())["stages"]
    assert stages["distill"]["metrics"]["loss"] == stages["qat"]["metrics"]["loss"] == "ard"
    assert (stages["distill"]["metrics"]["temperature"], stages["distill"]["metrics"]["alpha"]) == (4.0, 0.9)
    assert stages["qat"]["metrics"]["epochs"] == 1
    int8 = stages["check"]["metrics"]["models"]["student_int8"]
    assert int8["file"] == "model.int8.onnx"
    pgd = int8["robustness"]["adversarial"]["pgd"]["0.0300"]
    assert 0.0 <= pgd <= 1.0 and abs(pgd * 16 - round(pgd * 16)) < 1e-9  # a fraction of the 16 attacked images
    assert int8["robustness"]["settings"]["pgd_steps"] == 2


def test_multi_teacher_with_two_architectures_through_the_cli(rslad_run: Path, tmp_path: Path) -> None:
    extra = {"arch": "wrn16_4", "width": 0.5, "weights": str(rslad_run)}  # a run folder: its teacher stage's weights
    path = _config(tmp_path, "multi", loss="multi_teacher", teachers=[extra], teacher_weighting="confidence")
    proc = edgekd("run", "-c", str(path), "--out", str(tmp_path / "runs"), "--stages", "teacher,distill,qat")
    assert proc.returncode == 0, proc.stderr[-3000:]
    stages = json.loads((tmp_path / "runs" / "multi" / "manifest.json").read_text())["stages"]
    wrn_sha = json.loads((rslad_run / "manifest.json").read_text())["stages"]["teacher"]["artifacts"]["weights"]["sha256"]
    metrics = stages["distill"]["metrics"]
    assert metrics["loss"] == "multi_teacher"
    assert [(t["arch"], t["sha256"]) for t in metrics["extra_teachers"]] == [("wrn16_4", wrn_sha)]
    # the extra teacher's file is an input of both stages that distill from it: replaced in place, they re-run
    for stage in ("distill", "qat"):
        assert stages[stage]["inputs"]["file:distill.teachers[0].weights"] == wrn_sha
    assert "qat" in stages and stages["qat"]["metrics"]["epochs"] == 1


def test_self_distillation_without_a_teacher_through_the_cli(tmp_path: Path) -> None:
    """No teacher trained (0 epochs): distill learns from the student's EMA, its KD weight still ramping up
    after 3 of the 10-update horizon (d = 0.9); QAT's teacher copies the distilled student, so it starts
    at the full weight (the mean-teacher warm-up is for a student that starts untrained)."""
    path = _config(tmp_path, "self", loss="self_distill", ema_decay=0.9, cache_teacher_logits=False)
    data = yaml.safe_load(path.read_text())
    data["teacher_train"]["epochs"] = 0
    path.write_text(yaml.safe_dump(data))
    proc = edgekd("run", "-c", str(path), "--out", str(tmp_path / "runs"), "--stages", "teacher,distill,qat")
    assert proc.returncode == 0, proc.stderr[-3000:]
    stages = json.loads((tmp_path / "runs" / "self" / "manifest.json").read_text())["stages"]
    distill, qat = stages["distill"]["metrics"], stages["qat"]["metrics"]
    assert distill["loss"] == qat["loss"] == "self_distill"
    assert distill["self_distill_ema_updates"] == 3  # one update a step: 1 epoch of 3 steps
    assert distill["self_distill_kd_weight"] == pytest.approx(math.exp(-5 * 0.7 ** 2), rel=1e-9)
    assert qat["self_distill_ema_updates"] == 10 + 2 and qat["self_distill_kd_weight"] == 1.0
    # a student that starts from pretrained weights is still warmed up (a torchvision student's classifier
    # starts fresh); here the weights are the distilled student's own file
    data["student"]["weights"] = str(tmp_path / "runs" / "self" / "stages" / "distill" / "student_fp32.pt")
    data["name"] = "self_pretrained"
    path.write_text(yaml.safe_dump(data))
    proc = edgekd("run", "-c", str(path), "--out", str(tmp_path / "runs"), "--stages", "teacher,distill")
    assert proc.returncode == 0, proc.stderr[-3000:]
    again = json.loads((tmp_path / "runs" / "self_pretrained" / "manifest.json").read_text())["stages"]["distill"]
    assert again["metrics"]["self_distill_ema_updates"] == 3
    assert again["metrics"]["self_distill_kd_weight"] == pytest.approx(math.exp(-5 * 0.7 ** 2), rel=1e-9)


def test_an_extra_teacher_without_weights_is_a_config_error(tmp_path: Path) -> None:
    path = _config(tmp_path, "bad", loss="multi_teacher", teachers=[{"arch": "wrn16_4", "width": 0.5}])
    proc = edgekd("run", "-c", str(path), "--out", str(tmp_path / "runs"))
    assert proc.returncode == 2 and "distill.teachers[0]" in proc.stderr and "Traceback" not in proc.stderr


def test_fitnets_adapters_learned_in_distill_are_where_qat_starts(tmp_path: Path) -> None:
    """The distill stage saves the adapters (kd_state, with its sha256); QAT starts from them; a changed
    kd_state.pt is refused by QAT with exit 2 and leaves the verified QAT stage as it was."""
    path = _config(tmp_path, "fit", loss="fitnets", cache_teacher_logits=False)
    runs = tmp_path / "runs"
    proc = edgekd("run", "-c", str(path), "--out", str(runs), "--stages", "teacher,distill,qat")
    assert proc.returncode == 0, proc.stderr[-3000:]
    manifest = json.loads((runs / "fit" / "manifest.json").read_text())
    distill, qat = manifest["stages"]["distill"], manifest["stages"]["qat"]
    state = distill["artifacts"]["kd_state"]
    assert state["path"] == "stages/distill/kd_state.pt" and len(state["sha256"]) == 64
    assert qat["metrics"]["kd_state_from_distill"] is True
    # in QAT's fingerprint: a new kd_state (distill re-run) re-runs QAT
    assert qat["inputs"]["distill.kd_state"] == state["sha256"]

    import torch
    saved = torch.load(runs / "fit" / state["path"], weights_only=True)
    assert saved["meta"]["loss"] == "fitnets" and saved["meta"]["student_layers"]
    assert any(k.startswith("adapters.0.") for k in saved["state_dict"])

    kd_file = runs / "fit" / state["path"]
    kd_file.write_bytes(kd_file.read_bytes()[:-8] + b"\0" * 8)
    proc = edgekd("run", "-c", str(path), "--out", str(runs), "--stages", "qat", "--force")
    assert proc.returncode == 2 and "kd_state.pt" in proc.stderr and "sha256" in proc.stderr
    assert "Traceback" not in proc.stderr
    after = json.loads((runs / "fit" / "manifest.json").read_text())["stages"]["qat"]
    assert after["artifacts"] == qat["artifacts"]
