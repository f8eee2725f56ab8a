"""Under torchrun only rank 0 writes: ``torchrun --nproc_per_node 2 -m edgekd run`` on CPU (gloo).

The 2-process run must leave exactly one manifest, config.yaml and report, and no staging
leftovers, and its models must match a 1-process run with the same global batch (2 x 16 = 32).

Tolerance, and why it is not float rounding: with the same global batch, DDP's average of the two
ranks' gradients equals the single-process gradient up to float summation order *only for layers
without batch statistics*. Here two things legitimately differ: BatchNorm normalizes each rank's
16 images with their own mean/variance (SyncBatchNorm does not run on CPU) and the saved running
statistics are rank 0's (edgekd.train.distributed.broadcast_buffers), and the student's dropout draws
its masks from a per-rank seed. Measured on this CPU: the whole state_dicts differ by 1.6 %
(teacher), 1.7 % (student) and 2.4 % (QAT student) of their L2 norm; the teacher's parameters
alone by 1.0 %, while its 3-step update is 1.1 % of its norm (the updates' cosine is 0.58: BN
noise on 16-image halves is large for a barely trained net). So REL_TOL = 0.05 checks that both
runs are the same training from the same seeded init (another init differs by the order of the
weights' own norm), not that they are bitwise equal; a float-rounding-level comparison needs SyncBatchNorm (CUDA) or a BN-free
model, and the engine's own DDP test (tests/test_engine.py) checks that the ranks stay identical.
"""
from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from conftest import requires_fashion_mnist
from helpers import tiny_run_config

ROOT = Path(__file__).resolve().parents[1]
REL_TOL = 0.05  # relative L2 distance allowed between the 1- and 2-process weights (see the docstring)
pytestmark = [requires_fashion_mnist, pytest.mark.slow]

STEPS = {"epochs": 1, "lr": 0.02, "amp": "off", "max_steps_per_epoch": 3, "schedule": "constant",
         "warmup_fraction": 0.0}
CONFIG: dict = tiny_run_config("ddp", 32, STEPS, STEPS, {**STEPS, "lr": 0.002})
WEIGHTS = ("stages/teacher/teacher.pt", "stages/distill/student_fp32.pt", "stages/qat/student_qat.pt")


def _gloo_missing() -> str | None:
    try:
        import torch.distributed as dist
    except ImportError as e:
        return f"torch.distributed cannot be imported ({e})"
    if not dist.is_available():
        return "this torch build has no torch.distributed"
    if not dist.is_gloo_available():
        return "this torch build has no gloo backend (needed for CPU DDP)"
    return None


def _run(cmd: list[str], out: Path) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "EDGEKD_PROGRESS": "0", "OMP_NUM_THREADS": "1"}
    env.pop("EDGEKD_FAULT_AT", None)
    return subprocess.run(cmd, capture_output=True, text=True, timeout=900, env=env, cwd=ROOT)


def _torchrun() -> list[str]:
    exe = Path(sys.executable).with_name("torchrun")
    return [str(exe)] if exe.exists() else [sys.executable, "-m", "torch.distributed.run"]


def _relative_distance(a: Path, b: Path) -> float:
    import torch

    sa = torch.load(a, weights_only=True)["state_dict"]
    sb = torch.load(b, weights_only=True)["state_dict"]
    assert sa.keys() == sb.keys()
    keys = [k for k in sa if sa[k].is_floating_point()]
    diff = torch.cat([(sa[k].double() - sb[k].double()).flatten() for k in keys])
    ref = torch.cat([sb[k].double().flatten() for k in keys])
    return float(diff.norm() / ref.norm())


def test_two_rank_run_writes_once_and_matches_one_process(tmp_path: Path) -> None:
    missing = _gloo_missing()
    if missing:
        pytest.skip(missing)
    if shutil.which("torchrun") is None and not Path(sys.executable).with_name("torchrun").exists():
        pytest.importorskip("torch.distributed.run")
    one_cfg, two_cfg = tmp_path / "one.yaml", tmp_path / "two.yaml"
    one_cfg.write_text(yaml.safe_dump(CONFIG))
    two = {**CONFIG, "data": {**CONFIG["data"], "batch_size": 16}}  # per rank: 2 x 16 = the same global batch
    two_cfg.write_text(yaml.safe_dump(two))

    proc2 = _run(_torchrun() + ["--standalone", "--nproc_per_node", "2", "-m", "edgekd", "run", "-c", str(two_cfg),
                                "--out", str(tmp_path / "two")], tmp_path)
    assert proc2.returncode == 0, proc2.stdout[-2000:] + proc2.stderr[-4000:]
    proc1 = _run([sys.executable, "-m", "edgekd", "run", "-c", str(one_cfg), "--out", str(tmp_path / "one")], tmp_path)
    assert proc1.returncode == 0, proc1.stderr[-3000:]

    out2 = tmp_path / "two"
    for name in ("manifest.json", "config.yaml", "report.md", "model.int8.onnx"):
        assert len(list(out2.rglob(name))) == 1, name  # one writer, no per-rank copies
    run2 = out2 / "ddp"
    assert not (run2 / ".staging").exists() and not (run2 / "failed").exists()
    assert not [p for p in run2.rglob("*") if p.name.endswith(".tmp")]
    manifest = yaml.safe_load((run2 / "manifest.json").read_text())  # JSON is YAML
    assert manifest["history"][-1]["world_size"] == 2
    assert manifest["stages"]["gate"]["metrics"]["passed"]

    distances = {w: _relative_distance(run2 / w, tmp_path / "one" / "ddp" / w) for w in WEIGHTS}
    print(f"relative L2 distance, 2 ranks vs 1 process: {distances}")
    assert all(d <= REL_TOL for d in distances.values()), distances
