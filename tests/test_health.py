"""A diverged training stage stops the run right after the stage, says why, and keeps none of its outputs
(issue 12): the rules of edgekd.train.health, then the real CLI on an absurd learning rate and on a
folder whose labels cannot be learned (noise)."""
from __future__ import annotations

import json
import math
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from edgekd.errors import DivergenceError
from edgekd.train.health import MIN_STEPS, chance_bound, check_health, diagnose

REPO = Path(__file__).resolve().parents[1]
VAL = np.repeat(np.arange(10), 20)  # 200 balanced validation labels: majority share 0.1


def _history(losses: list[float], accs: list[float], steps_per_epoch: int = 30) -> list[dict]:
    return [{"train_loss": l, "val_loss": 1.0, "val_accuracy": a, "steps": (i + 1) * steps_per_epoch}
            for i, (l, a) in enumerate(zip(losses, accs))]


def test_chance_bound_is_majority_share_plus_three_sigma() -> None:
    assert chance_bound(VAL) == pytest.approx(0.1 + 3 * math.sqrt(0.1 * 0.9 / 200))
    skewed = np.array([0] * 90 + [1] * 10)
    assert chance_bound(skewed) == pytest.approx(0.9 + 3 * math.sqrt(0.9 * 0.1 / 100))


def test_rules() -> None:
    assert diagnose(_history([2.3, 1.2, 0.8], [0.4, 0.7, 0.8]), VAL).ok
    assert "not finite" in diagnose(_history([2.3, float("nan")], [0.4, 0.5]), VAL).problems[0]
    rising = diagnose(_history([2.0, 1.0, 7.5], [0.5, 0.6, 0.6]), VAL)
    assert len(rising.problems) == 1 and "rose to 7.5" in rising.problems[0]
    chance = diagnose(_history([2.3, 2.3], [0.10, 0.12]), VAL)
    assert len(chance.problems) == 1 and "0.120 is at chance" in chance.problems[0]
    # a smoke schedule (fewer than MIN_STEPS steps) is too short to call chance or a rise: only NaN counts
    short = MIN_STEPS // 2 - 1
    assert diagnose(_history([2.3, 9.0], [0.1, 0.1], steps_per_epoch=short), VAL).ok
    assert not diagnose(_history([2.3, float("inf")], [0.1, 0.1], steps_per_epoch=short), VAL).ok


def test_error_names_stage_problem_and_fix() -> None:
    with pytest.raises(DivergenceError) as err:
        check_health("teacher", "teacher_train", _history([7.5, 8.0], [0.1, 0.1]), VAL, lr=0.1, grad_clip=None)
    msg = str(err.value)
    assert msg.startswith("teacher: training diverged") and "outputs were not kept" in msg
    assert "teacher_train.lr (now 0.1" in msg and "teacher_train.grad_clip" in msg and "divergence_check: false" in msg


# ------------------------------------------------------------------ through the CLI


def _noise_folder(root: Path, per_class: int = 30, size: int = 8) -> Path:
    """10 classes of uniform noise: 300 images, 180 to train (12 steps of 16 an epoch: >= MIN_STEPS in 2)."""
    from PIL import Image

    rng = np.random.default_rng(0)
    for c in range(10):
        (root / f"c{c}").mkdir(parents=True)
        for i in range(per_class):
            Image.fromarray(rng.integers(0, 256, (size, size), dtype=np.uint8)).save(root / f"c{c}" / f"{i}.png")
    return root


def _teacher_only(root: Path, out: Path, *sets: str) -> subprocess.CompletedProcess[str]:
    args = ["--set", f"data.root={root}", "--set", "data.val_size=60", "--set", "data.batch_size=16",
            "--set", "teacher.width=0.25", "--set", "teacher_train.epochs=2", "--set", "num_threads=1"]
    for s in sets:
        args += ["--set", s]
    return subprocess.run([sys.executable, "-m", "edgekd", "run", "-c", "image_folder", "--out", str(out),
                           "--stages", "teacher", *args], cwd=REPO, capture_output=True, text=True, timeout=600,
                          env={**os.environ, "EDGEKD_PROGRESS": "0"})


def _nothing_kept(out: Path) -> None:
    run = out / "image_folder"
    manifest = run / "manifest.json"
    assert not manifest.exists() or "teacher" not in json.loads(manifest.read_text()).get("stages", {})
    assert not list(run.glob("stages/teacher/*.pt"))  # the diverged weights were not promoted
    assert list((run / "failed").glob("*")), "the failure note is written"


@pytest.fixture(scope="module")
def noise(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return _noise_folder(tmp_path_factory.mktemp("noise") / "imgs")


def test_absurd_lr_stops_the_run(noise: Path, tmp_path: Path) -> None:
    proc = _teacher_only(noise, tmp_path / "runs", "teacher_train.lr=100000", "teacher_train.grad_clip=null",
                         "teacher_train.warmup_fraction=0.0")
    assert proc.returncode == 2, proc.stderr[-2000:]
    assert "teacher: training diverged" in proc.stderr and "Traceback" not in proc.stderr
    assert "lower train.lr" in proc.stderr or "lower teacher_train.lr" in proc.stderr
    _nothing_kept(tmp_path / "runs")


def test_chance_accuracy_stops_the_run(noise: Path, tmp_path: Path) -> None:
    # noise images with arbitrary labels: training loss falls (memorizing) but validation stays at chance
    proc = _teacher_only(noise, tmp_path / "runs")
    assert proc.returncode == 2, proc.stderr[-2000:]
    assert "teacher: training diverged" in proc.stderr and "is at chance" in proc.stderr
    assert "teacher_train.divergence_check: false" in proc.stderr
    _nothing_kept(tmp_path / "runs")
    off = _teacher_only(noise, tmp_path / "runs2", "teacher_train.divergence_check=false")
    assert off.returncode == 0, off.stderr[-2000:]  # the switch turns the check off
