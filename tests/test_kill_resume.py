"""Kill anywhere, resume, and get the same models: a real ``edgekd run`` SIGKILLed at 6 points.

The points (edgekd.faults, set through ``EDGEKD_FAULT_AT``) are spread over every stage that writes:
mid-epoch in teacher and QAT, half-way through writing a distill epoch checkpoint, between two
renames of QAT's promotion into the staged run, between two ONNX files of the export, and between
two renames of the final commit. After each kill the same command runs again
with ``--resume`` (and the next kill point), so every resume starts from a state a kill left. The
final manifest's model hashes must equal an uninterrupted run's bitwise (CPU, one thread).

Then a command that fails at runtime (an impossible parity tolerance) must leave the finished run
folder byte-for-byte unchanged, its gate verdict included, and leave a note in ``failed/``.
"""
from __future__ import annotations

import hashlib
import json
import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from conftest import requires_fashion_mnist
from helpers import tiny_run_config

ROOT = Path(__file__).resolve().parents[1]
pytestmark = [requires_fashion_mnist, pytest.mark.slow]

# Two epochs per training stage (so there are mid-run checkpoints to resume from), a few steps each.
_TWO_EPOCHS = {"epochs": 2, "lr": 0.05, "amp": "off", "max_steps_per_epoch": 3, "schedule": "cosine",
               "warmup_fraction": 0.0}
TINY: dict = tiny_run_config("tiny", 16, _TWO_EPOCHS, _TWO_EPOCHS,
                             {**_TWO_EPOCHS, "lr": 0.002, "max_steps_per_epoch": 2})

# (fault point, what it interrupts); each resume continues from the state the previous kill left
KILL_POINTS = [
    ("teacher:step:5", "teacher, mid-epoch 2 (after the epoch-1 checkpoint)"),
    ("distill:checkpoint-write:1", "distill, half-way through writing the last epoch's checkpoint"),
    ("qat:step:1", "QAT, mid-epoch 1 (no checkpoint yet)"),
    ("promote:qat:move:0", "QAT, between two renames of its promotion into the staged run"),
    ("export:after:student_fp32", "export, two of three ONNX files staged"),
    ("commit:move:2", "the final commit, between two renames into the run folder"),
]
# The models are the subject: check/gate/report do not change them, and each process costs ~5 s
# of imports on this CPU, so the killed chain stops at export (the reference run does it all).
CHAIN = "teacher,distill,qat,export"
MODELS = [("teacher", "weights"), ("distill", "weights"), ("qat", "weights"),
          ("export", "teacher_fp32"), ("export", "student_fp32"), ("export", "student_int8")]


def edgekd(*args: str, fault: str | None = None) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "EDGEKD_PROGRESS": "0", "OMP_NUM_THREADS": "1"}
    env.pop("EDGEKD_FAULT_AT", None)
    if fault:
        env["EDGEKD_FAULT_AT"] = fault
    return subprocess.run([sys.executable, "-m", "edgekd", *args], capture_output=True, text=True,
                          timeout=600, env=env, cwd=ROOT)


def model_hashes(run_dir: Path) -> dict[str, str]:
    stages = json.loads((run_dir / "manifest.json").read_text())["stages"]
    return {f"{s}.{k}": stages[s]["artifacts"][k]["sha256"] for s, k in MODELS}


def folder_hashes(run_dir: Path) -> dict[str, str]:
    """sha256 of every file a user sees in the run folder (the staging area and failure notes aside)."""
    skip = (".staging", "failed")
    return {p.relative_to(run_dir).as_posix(): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(run_dir.rglob("*")) if p.is_file() and p.relative_to(run_dir).parts[0] not in skip}


@pytest.fixture(scope="module")
def tiny_config(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("cfg") / "tiny.yaml"
    path.write_text(yaml.safe_dump(TINY))
    return path


@pytest.fixture(scope="module")
def reference_run(tiny_config: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("reference")
    proc = edgekd("run", "-c", str(tiny_config), "--out", str(out))
    assert proc.returncode == 0, proc.stderr[-3000:]
    return out / "tiny"


def test_kill_anywhere_then_resume_gives_bitwise_equal_models(tiny_config: Path, reference_run: Path,
                                                              tmp_path: Path) -> None:
    run_dir = tmp_path / "tiny"
    for point, where in KILL_POINTS:
        proc = edgekd("run", "-c", str(tiny_config), "--out", str(tmp_path), "--stages", CHAIN, "--resume",
                      fault=point)
        assert proc.returncode == -signal.SIGKILL, f"{point} ({where}) was never reached:\n{proc.stderr[-2000:]}"
        if point.startswith("commit:"):
            assert (run_dir / ".staging" / "COMMIT.json").is_file()  # decided, half-moved
        else:  # nothing is visible in the run folder before the commit
            assert not (run_dir / "manifest.json").exists(), f"a manifest appeared after the kill at {point}"
    final = edgekd("run", "-c", str(tiny_config), "--out", str(tmp_path), "--stages", CHAIN, "--resume")
    assert final.returncode == 0, final.stderr[-3000:]
    assert model_hashes(run_dir) == model_hashes(reference_run)
    assert not (run_dir / ".staging").exists() and not list(run_dir.glob(".staging-trash-*"))


def test_failed_command_changes_nothing(tiny_config: Path, reference_run: Path) -> None:
    """Issue 8, items 1 and 2: a parity failure at export must not touch the verified files,
    config.yaml, the manifest or the gate verdict, though it asked for other budgets too."""
    before = folder_hashes(reference_run)
    gate_before = edgekd("gate", str(reference_run))
    assert gate_before.returncode == 0, gate_before.stdout + gate_before.stderr
    failed = edgekd("run", "-c", str(tiny_config), "--out", str(reference_run.parent), "--stages", "export",
                    "--set", "export.fp32_atol=1e-12", "--set", "export.fp32_rtol=1e-12",
                    "--set", "budgets.max_size_mb=0.01")
    assert failed.returncode == 2, failed.stdout + failed.stderr
    assert "disagrees" in failed.stderr and "run folder is unchanged" in failed.stderr
    assert folder_hashes(reference_run) == before
    gate_after = edgekd("gate", str(reference_run))
    assert gate_after.returncode == 0 and "PASS" in gate_after.stdout
    (note,) = (reference_run / "failed").glob("*-export-*.json")
    record = json.loads(note.read_text())
    assert record["stage"] == "export" and record["error"] == "ParityError"
    assert "budgets.max_size_mb=0.01" in record["overrides"]
