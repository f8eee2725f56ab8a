"""The Python API and the CLI are the same function; an interrupted stage resumes to the same weights."""
from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

import edgekd
from conftest import requires_fashion_mnist
from edgekd.config import load_config
from edgekd.io import sha256_file
from edgekd.manifest import Manifest
from edgekd.pipeline import fingerprint
from edgekd.stage_specs import BY_NAME

ROOT = Path(__file__).resolve().parents[1]
SMOKE = ROOT / "configs" / "smoke.yaml"
TINY = ["data.train_subset=600", "data.test_subset=200", "data.val_size=200", "teacher.width=0.25",
        "teacher_train.max_steps_per_epoch=4", "teacher_train.epochs=2"]
pytestmark = requires_fashion_mnist


def cli(*args: str) -> subprocess.Popen[str]:
    env = {**os.environ, "EDGEKD_PROGRESS": "0"}
    return subprocess.Popen([sys.executable, "-m", "edgekd", *args], cwd=ROOT, env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def weights(run_dir: Path) -> dict[str, torch.Tensor]:
    path = Manifest.load(run_dir).artifact("teacher", "weights")
    return torch.load(path, weights_only=True)["state_dict"]


def assert_same(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor]) -> None:
    assert a.keys() == b.keys()
    for k in a:
        assert torch.equal(a[k], b[k]), k


def test_api_and_cli_give_identical_teachers(tmp_path: Path) -> None:
    args = [f"--set={o}" for o in TINY]
    proc = cli("teacher", "--config", str(SMOKE), "--out", str(tmp_path / "cli"), *args)
    _, err = proc.communicate(timeout=600)
    assert proc.returncode == 0, err[-2000:]
    run = edgekd.run(str(SMOKE), overrides=TINY, out=tmp_path / "api", stages=["teacher"], log=lambda m: None)
    assert run.ran == ["teacher"]
    assert_same(weights(tmp_path / "cli" / "smoke"), weights(run.run_dir))


def test_killed_stage_resumes_to_the_same_weights(tmp_path: Path) -> None:
    overrides = TINY + ["teacher_train.max_steps_per_epoch=6", "teacher_train.epochs=3"]
    straight = edgekd.run(str(SMOKE), overrides=overrides, out=tmp_path / "straight", stages=["teacher"],
                          log=lambda m: None)
    proc = cli("teacher", "--config", str(SMOKE), "--out", str(tmp_path / "killed"), *[f"--set={o}" for o in overrides])
    # a running stage writes into the staging area; the run folder sees nothing until it succeeds
    ckpt = tmp_path / "killed" / "smoke" / ".staging" / "stage-teacher" / "stages" / "teacher" / "checkpoint.pt"
    deadline = time.time() + 600
    while not ckpt.exists() and proc.poll() is None and time.time() < deadline:
        time.sleep(0.05)
    assert proc.poll() is None, "the stage finished before it could be interrupted"
    os.kill(proc.pid, signal.SIGKILL)  # a real interruption, mid-training
    proc.wait()
    # nothing recorded as done (a first run that never succeeded has no manifest yet)
    assert Manifest.load(tmp_path / "killed" / "smoke", must_exist=False).stage("teacher") is None
    resumed = edgekd.run(str(SMOKE), overrides=overrides, out=tmp_path / "killed", stages=["teacher"], resume=True,
                         log=lambda m: None)
    assert resumed.ran == ["teacher"]
    assert_same(weights(straight.run_dir), weights(resumed.run_dir))


def test_fingerprints_follow_config_sections(tmp_path: Path) -> None:
    m = Manifest(tmp_path)
    m.data["stages"]["teacher"] = {"artifacts": {"weights": {"path": "t.pt", "sha256": "aa", "bytes": 1}}}
    a, b = load_config(SMOKE), load_config(SMOKE, ["distill.temperature=2"])
    assert fingerprint(a, BY_NAME["teacher"], m) == fingerprint(b, BY_NAME["teacher"], m)
    before = fingerprint(a, BY_NAME["distill"], m)[0]
    assert before != fingerprint(b, BY_NAME["distill"], m)[0]
    m.data["stages"]["teacher"]["artifacts"]["weights"]["sha256"] = "bb"  # a new teacher re-runs distill
    assert fingerprint(a, BY_NAME["distill"], m)[0] != before


@requires_fashion_mnist
def test_a_rerun_after_the_teacher_file_is_replaced_reruns_teacher_and_distill(tmp_path: Path) -> None:
    """End to end: the same config, the teacher file retrained in place; the re-run must not skip."""
    quiet = {"log": lambda m: None}
    base = ["data.train_subset=256", "data.val_size=64", "data.test_subset=64", "teacher_train.epochs=1",
            "teacher_train.max_steps_per_epoch=2", "distill.train.epochs=1", "distill.train.max_steps_per_epoch=2"]
    files = [edgekd.run(str(SMOKE), overrides=base + [f"seed={s}", f"name=t{s}"], out=tmp_path, stages=["teacher"],
                        **quiet).manifest.artifact("teacher", "weights") for s in (0, 1)]
    weights = tmp_path / "teacher.pt"
    weights.write_bytes(files[0].read_bytes())
    cfg = base + [f"teacher.weights={weights}", "teacher_train.epochs=0", "name=student"]
    first = edgekd.run(str(SMOKE), overrides=cfg, out=tmp_path, stages=["teacher", "distill"], **quiet)
    assert first.ran == ["teacher", "distill"]
    assert edgekd.run(str(SMOKE), overrides=cfg, out=tmp_path, stages=["teacher", "distill"], **quiet).ran == []
    weights.write_bytes(files[1].read_bytes())
    again = edgekd.run(str(SMOKE), overrides=cfg, out=tmp_path, stages=["teacher", "distill"], **quiet)
    assert again.ran == ["teacher", "distill"]
    assert again.manifest.stage("teacher")["inputs"]["file:teacher.weights"] == sha256_file(files[1])
    assert again.manifest.artifact_sha("teacher", "weights") != first.manifest.artifact_sha("teacher", "weights")


def _edgekd(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "edgekd", *args], cwd=ROOT, capture_output=True, text=True,
                          timeout=120)


def test_help_is_written_for_users_with_examples() -> None:
    top = _edgekd("--help")
    assert top.returncode == 0 and "examples:" in top.stdout and "exit codes:" in top.stdout
    assert "argument parsing only" not in top.stdout  # the developer docstring it used to show
    for cmd in ("run", "teacher", "distill", "qat", "export", "check", "gate", "doctor", "report"):
        sub = _edgekd(cmd, "--help")
        assert sub.returncode == 0 and "examples:" in sub.stdout and "--debug" in sub.stdout, cmd


def test_version() -> None:
    proc = _edgekd("--version")
    assert proc.returncode == 0 and proc.stdout.strip() == f"edgekd {edgekd.__version__}"


def test_debug_shows_the_traceback_only_when_asked(tmp_path: Path) -> None:
    plain = _edgekd("gate", str(tmp_path / "nowhere"))
    assert plain.returncode == 2 and "Traceback" not in plain.stderr and "does not exist" in plain.stderr
    for args in (["--debug", "gate", str(tmp_path / "nowhere")], ["gate", str(tmp_path / "nowhere"), "--debug"]):
        debug = _edgekd(*args)
        assert debug.returncode != 0 and "Traceback" in debug.stderr and "ArtifactError" in debug.stderr, args


def test_an_internal_error_is_exit_3_with_a_hint(monkeypatch: pytest.MonkeyPatch,
                                                capsys: pytest.CaptureFixture[str]) -> None:
    """A bug is not a user error (2) nor a failed gate (1): exit 3, one line, and how to get the traceback."""
    from edgekd import cli
    from edgekd.deploy import report

    def broken(run_dir: str, compare_to: object = None) -> None:
        raise TypeError("unexpected None")

    monkeypatch.setattr(report, "render_report", broken)
    assert cli.main(["report", "somewhere"]) == 3
    err = capsys.readouterr().err
    assert "internal error: TypeError: unexpected None" in err and "--debug" in err
    with pytest.raises(TypeError):
        cli.main(["--debug", "report", "somewhere"])
