"""Progress bars (edgekd.progress) and TensorBoard scalars (edgekd.train.logging_hooks).

Bars are drawn only on a terminal and never with --quiet; a real ``edgekd teacher`` run on real
Fashion-MNIST images is watched through a pipe and through a pseudo-terminal. The TensorBoard event
file it leaves is read back with TensorBoard's own EventAccumulator and compared with metrics.jsonl.
"""
from __future__ import annotations

import fcntl
import io
import json
import os
import pty
import struct
import subprocess
import sys
import termios
import threading
from pathlib import Path

import pytest
import yaml

from conftest import requires_fashion_mnist
from edgekd import progress
from edgekd.errors import ConfigError
from helpers import tiny_run_config

ROOT = Path(__file__).resolve().parents[1]
_STEPS = {"epochs": 2, "lr": 0.05, "amp": "off", "max_steps_per_epoch": 4, "schedule": "cosine",
          "warmup_fraction": 0.0, "log_every": 1}
TAGS = {"loss/train": "train_loss", "loss/val": "val_loss", "accuracy/train": "train_acc",
        "accuracy/val": "val_accuracy", "lr": "lr"}


class _Terminal(io.StringIO):
    """A text stream that says it is a terminal."""

    def isatty(self) -> bool:
        return True


def test_a_bar_is_drawn_on_a_terminal_only_and_never_when_quiet(monkeypatch) -> None:
    monkeypatch.delenv(progress.ENV, raising=False)
    tty, pipe = _Terminal(), io.StringIO()
    assert list(progress.track(range(7), "caching", stream=tty)) == list(range(7))
    assert "caching" in tty.getvalue() and "/7" in tty.getvalue()  # a bar of 7 steps (tqdm throttles redraws)
    assert list(progress.track(range(7), "caching", stream=pipe)) == list(range(7))
    assert pipe.getvalue() == ""  # not a terminal: nothing
    progress.set_quiet()  # what --quiet does
    assert os.environ[progress.ENV] == "0"  # inherited by the processes a command starts
    quiet = _Terminal()
    with progress.bar(3, "parity", stream=quiet) as b:
        b.update(3)
        b.set_postfix(x=1)
    assert quiet.getvalue() == "" and isinstance(b, progress.NullBar)


def _write_config(tmp_path: Path, tensorboard: str = "auto") -> Path:
    cfg = tiny_run_config("tb", 16, _STEPS, _STEPS, _STEPS)
    cfg["logging"] = {"tensorboard": tensorboard}
    path = tmp_path / "tb.yaml"
    path.write_text(yaml.safe_dump(cfg))
    return path


def _env() -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k != progress.ENV}
    env.update(OMP_NUM_THREADS="1", PYTHONPATH=str(ROOT))
    return env


def _teacher_on_a_terminal(cfg: Path, out: Path, *flags: str) -> tuple[int, str]:
    """Run ``edgekd teacher`` with stderr on a pseudo-terminal; return (exit code, what it showed)."""
    master, slave = pty.openpty()
    # a fresh pty is 0x0 characters, and tqdm draws nothing in zero columns; a real terminal has a size
    fcntl.ioctl(slave, termios.TIOCSWINSZ, struct.pack("HHHH", 40, 120, 0, 0))
    proc = subprocess.Popen([sys.executable, "-m", "edgekd", *flags, "teacher", "-c", str(cfg), "--out", str(out),
                             "--force"], cwd=ROOT, env=_env(), stdout=subprocess.DEVNULL, stderr=slave)
    os.close(slave)
    chunks: list[bytes] = []

    def read() -> None:  # drain continuously: a full pty buffer would block the child
        while True:
            try:
                data = os.read(master, 65536)
            except OSError:  # EIO once the child closed its end
                return
            if not data:
                return
            chunks.append(data)

    reader = threading.Thread(target=read)
    reader.start()
    code = proc.wait(timeout=300)
    reader.join(timeout=30)
    os.close(master)
    return code, b"".join(chunks).decode(errors="replace")


@requires_fashion_mnist
@pytest.mark.slow
def test_teacher_run_logs_tensorboard_and_shows_progress_only_on_a_terminal(tmp_path: Path) -> None:
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    cfg, out = _write_config(tmp_path), tmp_path / "runs"
    # 1. through a pipe (not a terminal): no bar, and the TensorBoard scalars land in the run folder
    proc = subprocess.run([sys.executable, "-m", "edgekd", "teacher", "-c", str(cfg), "--out", str(out)], cwd=ROOT,
                          env=_env(), capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr
    assert "\r" not in proc.stderr and "it/s" not in proc.stderr, proc.stderr  # no tqdm bar
    events = list((out / "tb" / "tensorboard" / "teacher").glob("events.out.tfevents.*"))
    assert len(events) == 1, events
    acc = EventAccumulator(str(events[0].parent))
    acc.Reload()
    assert set(TAGS) <= set(acc.Tags()["scalars"])
    history = [json.loads(line) for line in (out / "tb" / "stages" / "teacher" / "metrics.jsonl").read_text().splitlines()]
    assert [r["epoch"] for r in history] == [0, 1]
    for tag, key in TAGS.items():
        points = acc.Scalars(tag)
        assert [p.step for p in points] == [0, 1]
        for p, rec in zip(points, history):
            # TensorBoard stores float32: equal to the float64 record to float32's relative precision
            assert p.value == pytest.approx(rec[key], rel=1e-6, abs=1e-12)

    # 2. on a terminal: the engine's bar shows the epoch and its steps
    code, shown = _teacher_on_a_terminal(cfg, out)
    assert code == 0, shown
    assert "teacher 1/2" in shown and "\r" in shown, shown

    # 3. on a terminal with --quiet: no bar and no per-step lines, the epoch results still
    code, shown = _teacher_on_a_terminal(cfg, out, "--quiet")
    assert code == 0, shown
    assert "teacher 1/2" not in shown and "it/s" not in shown and " step " not in shown, shown
    assert "teacher epoch 2/2" in shown  # results are not progress: they stay


def test_tensorboard_on_without_the_package_names_the_extra(monkeypatch, tmp_path: Path) -> None:
    from edgekd.train import logging_hooks

    monkeypatch.setattr(logging_hooks, "tensorboard_available", lambda: False)
    with logging_hooks.epoch_loggers("auto", tmp_path) as callbacks:
        assert callbacks == ()  # auto: silently off when not installed
    with pytest.raises(ConfigError, match=r"pip install 'edgekd\[tensorboard\]'"):
        with logging_hooks.epoch_loggers("on", tmp_path):
            pass
    with logging_hooks.epoch_loggers("off", tmp_path) as callbacks:
        assert callbacks == ()
    assert not list(tmp_path.iterdir())  # nothing written


def _long_steps(tmp_path: Path) -> None:
    """check's measurements, robustness corruptions, export parity and teacher-logit caching, on tiny inputs."""
    import torch

    from edgekd.exporting.parity import parity_fp32
    from edgekd.deploy.runtime import check_models
    from edgekd.robustness.evaluate import corruption_accuracy
    from edgekd.stages.distill import teacher_logits_for
    from onnx_helpers import FAST_LATENCY, LABELS, band_images, band_weights, gemm_model

    onnx_path = gemm_model(tmp_path / "gemm.onnx")
    images = band_images()
    check_models({"student_int8": onnx_path}, images, LABELS, ["a", "b", "c"], FAST_LATENCY)
    corruption_accuracy(lambda x: x.reshape(len(x), -1) @ band_weights(), images, LABELS, ["gaussian_noise"], [1, 2], 0)
    linear = torch.nn.Linear(64, 3, bias=False)
    with torch.no_grad():
        linear.weight.copy_(torch.from_numpy(band_weights().T))
    model = torch.nn.Sequential(torch.nn.Flatten(), linear)
    parity_fp32(model, onnx_path, images, batch_sizes=(1, 4))
    batches = [(torch.from_numpy(images[i:i + 4]),) for i in range(0, len(images), 4)]
    teacher_logits_for(model, batches, torch.device("cpu"))


LONG_STEP_BARS = ("check: accuracy and latency", "robustness: corruptions", "parity gemm.onnx", "distill: teacher logits")


def test_every_long_step_draws_a_bar_on_a_terminal_and_none_when_quiet(monkeypatch, tmp_path: Path) -> None:
    monkeypatch.delenv(progress.ENV, raising=False)
    tty = _Terminal()
    monkeypatch.setattr(sys, "stderr", tty)
    _long_steps(tmp_path)
    shown = tty.getvalue()
    for desc in LONG_STEP_BARS:
        assert desc in shown, (desc, shown)
    monkeypatch.setenv(progress.ENV, "0")  # --quiet
    quiet = _Terminal()
    monkeypatch.setattr(sys, "stderr", quiet)
    _long_steps(tmp_path)
    assert quiet.getvalue() == ""
