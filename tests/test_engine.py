"""The training engine: learning, schedules, optimizer groups, crash-safe checkpoints, exact resume, DDP, AMP.

Real Fashion-MNIST subsets (read straight from the Debian .gz files) and a tiny CNN keep it to
seconds. Crash tests run this file as a child process (``python tests/test_engine.py <mode> ...``)
that really dies mid-epoch or mid-save; the DDP test launches it under torchrun with 2 gloo ranks.
"""
from __future__ import annotations

import dataclasses
import json
import os
import signal
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from torch import nn

from conftest import fmnist_prefix, requires_fashion_mnist
from edgekd.pixels import to_float
from edgekd.train.checkpoint import load_training_checkpoint
from edgekd.config import TrainConfig, config_from_dict
from edgekd.train.engine import Precision, evaluate, fit, make_criterion, resolve_amp, resolve_device
from edgekd.errors import CheckpointError, ConfigError, EdgekdError
from edgekd.hardware import cpu_bf16_is_fast, detect_cpu_features
from edgekd.train.optim import Schedule, build_optimizer, param_groups

REPO = Path(__file__).resolve().parents[1]
THIS = Path(__file__).resolve()
requires_fmnist = requires_fashion_mnist  # skips without the data; fails in CI


# ---------------------------------------------------------------- real data, tiny model, stand-in loader


def read_fmnist(n: int) -> tuple[torch.Tensor, torch.Tensor]:
    """The first ``n`` Fashion-MNIST training images (uint8 [n,1,28,28]) and labels, as tensors."""
    images, labels = fmnist_prefix("train", n)
    return torch.from_numpy(images.copy()), torch.from_numpy(labels.copy())


class TinyLoader:
    """BatchLoader's interface (set_epoch, __len__, rank sharding, seeded shuffle) over in-memory tensors."""

    def __init__(self, x: torch.Tensor, y: torch.Tensor, batch_size: int, shuffle: bool, seed: int = 0,
                 rank: int = 0, world_size: int = 1) -> None:
        self.x, self.y, self.batch_size, self.shuffle = x, y, batch_size, shuffle
        self.seed, self.rank, self.world_size, self.epoch = seed, rank, world_size, 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def _order(self) -> torch.Tensor:
        n = len(self.y)
        order = torch.randperm(n, generator=torch.Generator().manual_seed(self.seed * 1000 + self.epoch)) \
            if self.shuffle else torch.arange(n)
        return order[: n // self.world_size * self.world_size][self.rank:: self.world_size]

    def __len__(self) -> int:
        n = len(self._order())
        return n // self.batch_size if self.shuffle else -(-n // self.batch_size)

    def __iter__(self):
        order = self._order()
        for b in range(len(self)):
            idx = order[b * self.batch_size:(b + 1) * self.batch_size]
            yield to_float(self.x[idx]), self.y[idx]


def tiny_cnn(width: int = 8) -> nn.Module:
    return nn.Sequential(
        nn.Conv2d(1, width, 3, padding=1), nn.BatchNorm2d(width), nn.ReLU(), nn.MaxPool2d(2),
        nn.Conv2d(width, 2 * width, 3, padding=1), nn.BatchNorm2d(2 * width), nn.ReLU(), nn.MaxPool2d(2),
        nn.Flatten(), nn.Linear(2 * width * 49, 10),
    )


def ce_step(cfg: TrainConfig):
    criterion = make_criterion(cfg)

    def step(model: nn.Module, batch: tuple) -> tuple[torch.Tensor, torch.Tensor]:
        logits = model(batch[0])
        return criterion(logits, batch[1]), logits

    return step


def noisy_step(cfg: TrainConfig):
    """CE step that draws from the python, numpy and torch RNGs (as noise augmentation and dropout do),
    so an exact resume needs every RNG stream restored."""
    import random

    criterion = make_criterion(cfg)

    def step(model: nn.Module, batch: tuple) -> tuple[torch.Tensor, torch.Tensor]:
        scale = 0.02 * random.random() + 0.01 * float(np.random.rand())
        x = (batch[0] + scale * torch.randn_like(batch[0])).clamp(0, 1)
        logits = model(torch.nn.functional.dropout(x, 0.1))
        return criterion(logits, batch[1]), logits

    return step


def resume_cfg() -> TrainConfig:
    """The config of the crash/resume tests (parent and child must agree: it is in the checkpoint meta)."""
    return TrainConfig(epochs=2, lr=0.05, schedule="onecycle", warmup_fraction=0.3, amp="off",
                       channels_last="auto", log_every=1000)


def resume_data(world_size: int = 1, rank: int = 0) -> tuple[TinyLoader, TinyLoader]:
    x, y = read_fmnist(384)
    return (TinyLoader(x[:256], y[:256], 32, shuffle=True, seed=3, rank=rank, world_size=world_size),
            TinyLoader(x[256:], y[256:], 64, shuffle=False))


def run_resume_fit(work_dir: Path, init_seed: int, resume: bool, step_wrapper=None, meta=None, model=None):
    torch.manual_seed(init_seed)
    model = model if model is not None else tiny_cnn()
    train, val = resume_data()
    cfg = resume_cfg()
    step = noisy_step(cfg)
    if step_wrapper is not None:
        step = step_wrapper(step)
    result = fit(model, step, train, val, cfg, work_dir=work_dir, device="cpu", seed=7, resume=resume,
                 desc="t", meta=meta if meta is not None else {"fingerprint": "abc"})
    return model, result


@pytest.fixture(autouse=True)
def one_thread():
    """One intra-op thread: polite on the shared CPU, and identical kernels in parent and child processes."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


def run_child(*args: str, timeout: int = 180) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHONPATH": str(REPO), "OMP_NUM_THREADS": "1", "EDGEKD_PROGRESS": "0"}
    return subprocess.run([sys.executable, str(THIS), *args], env=env, capture_output=True, text=True,
                          timeout=timeout, cwd=REPO)


# ---------------------------------------------------------------- learning


@requires_fmnist
def test_fit_learns_fashion_mnist_and_keeps_best_on_validation(tmp_path):
    x, y = read_fmnist(1500)
    train, val = TinyLoader(x[:1000], y[:1000], 32, shuffle=True), TinyLoader(x[1000:], y[1000:], 250, shuffle=False)
    torch.manual_seed(0)
    model = tiny_cnn()
    before = evaluate(model, val, torch.device("cpu"))
    calls = []
    cfg = TrainConfig(epochs=2, lr=0.05, schedule="onecycle", warmup_fraction=0.2, amp="off")
    result = fit(model, ce_step(cfg), train, val, cfg, work_dir=tmp_path, device="cpu", seed=0, resume=False,
                 hooks=(lambda epoch, m: calls.append((epoch, m is model)),), desc="learn")
    accs = [h["val_accuracy"] for h in result.history]
    assert calls == [(0, True), (1, True)]
    assert before["count"] == 500 and before["accuracy"] < 0.3
    assert result.best_val_accuracy == max(accs) > 0.5
    assert result.best_epoch == int(np.argmax(accs))
    assert all(v.device.type == "cpu" for v in result.best_state.values())
    model.load_state_dict(result.best_state)
    assert evaluate(model, val, torch.device("cpu"))["accuracy"] == pytest.approx(result.best_val_accuracy)
    lines = [json.loads(s) for s in (tmp_path / "metrics.jsonl").read_text().splitlines()]
    assert [r["epoch"] for r in lines] == [0, 1]
    assert {"train_loss", "train_acc", "val_loss", "val_accuracy", "lr", "seconds", "images_per_second"} <= set(lines[0])
    assert lines[1]["train_loss"] < lines[0]["train_loss"]
    assert lines[1]["lr"] < 2e-3 * cfg.lr  # onecycle ends near 0, and the optimizer really used it


# ---------------------------------------------------------------- schedules and optimizer


def test_onecycle_starts_low_peaks_at_lr_and_ends_near_zero():
    s = Schedule("onecycle", lr=0.1, total_steps=100, warmup_fraction=0.3)
    lrs = [s.lr_at(i) for i in range(100)]
    assert lrs[0] == pytest.approx(0.1 / 25)
    assert max(lrs) == pytest.approx(0.1) and int(np.argmax(lrs)) == 30
    assert all(a <= b for a, b in zip(lrs[:30], lrs[1:31])) and all(a >= b for a, b in zip(lrs[30:], lrs[31:]))
    assert lrs[-1] < 1e-3 * 0.1 and s.lr_at(100) == pytest.approx(0.1 / 25 / 1e4)


def test_cosine_warms_up_linearly_then_decays_to_zero_and_constant_holds():
    s = Schedule("cosine", lr=0.2, total_steps=50, warmup_fraction=0.2)
    lrs = [s.lr_at(i) for i in range(51)]
    assert lrs[0] == pytest.approx(0.2 / 11) and lrs[0] > 0
    assert np.allclose(np.diff(lrs[:11]), 0.2 / 11)  # linear ramp over the 10 warm-up steps
    assert lrs[10] == pytest.approx(0.2) and lrs[35] < 0.2 / 2 and lrs[50] == pytest.approx(0.0, abs=1e-12)
    c = Schedule("constant", lr=0.3, total_steps=10, warmup_fraction=0.0)
    assert {c.lr_at(i) for i in range(10)} == {0.3}
    # a bad schedule, optimizer or warm-up is a ConfigError at config load; the engine only asserts
    with pytest.raises(ConfigError, match="valid: onecycle, cosine, constant"):
        config_from_dict({"teacher_train": {"schedule": "step"}})
    with pytest.raises(ConfigError, match="valid: sgd, adamw"):
        config_from_dict({"qat": {"train": {"optimizer": "adam"}}})
    with pytest.raises(ConfigError, match="warmup_fraction"):
        config_from_dict({"distill": {"train": {"warmup_fraction": 1.0}}})


def test_weight_decay_skips_batchnorm_and_bias():
    torch.manual_seed(0)
    model = tiny_cnn()
    decay, no_decay = param_groups(model, 5e-4)
    assert decay["weight_decay"] == 5e-4 and no_decay["weight_decay"] == 0.0
    assert {id(p) for p in decay["params"]} == {id(model[i].weight) for i in (0, 4, 9)}
    # behaviour: zero gradients + one SGD step shrinks conv/linear kernels only
    opt = build_optimizer(model, TrainConfig(lr=0.1, momentum=0.0, weight_decay=0.01))
    before = {n: p.detach().clone() for n, p in model.named_parameters()}
    for p in model.parameters():
        p.grad = torch.zeros_like(p)
    opt.step()
    for name, p in model.named_parameters():
        moved = not torch.equal(before[name], p)
        assert moved == (p.ndim > 1), name
    assert isinstance(build_optimizer(model, TrainConfig(optimizer="adamw")), torch.optim.AdamW)


# ---------------------------------------------------------------- crash safety and exact resume


@requires_fmnist
def test_killed_mid_epoch_then_resumed_is_bitwise_equal_to_straight_run(tmp_path):
    """A child process trains, checkpoints epoch 0, and is killed (os._exit) in the middle of epoch 1.
    A fresh model in this process resumes from the checkpoint; the result equals an uninterrupted run."""
    crashed = tmp_path / "crashed"
    proc = run_child("kill_in_step", str(crashed), "11")  # 8 steps per epoch: dies at step 3 of epoch 1
    assert proc.returncode == 17, proc.stderr[-2000:]
    ckpt = load_training_checkpoint(crashed / "checkpoint.pt")  # weights_only=True load
    assert ckpt["epoch"] == 0 and ckpt["global_step"] == 8
    assert len((crashed / "metrics.jsonl").read_text().splitlines()) == 1

    resumed, r_res = run_resume_fit(crashed, init_seed=123, resume=True)  # other init: weights must come from disk
    straight, r_str = run_resume_fit(tmp_path / "straight", init_seed=0, resume=False)
    for (name, a), b in zip(straight.state_dict().items(), resumed.state_dict().values()):
        assert torch.equal(a, b), name
    assert all(torch.equal(r_str.best_state[k], r_res.best_state[k]) for k in r_str.best_state)
    assert [h["val_accuracy"] for h in r_res.history] == [h["val_accuracy"] for h in r_str.history]
    assert [json.loads(s)["epoch"] for s in (crashed / "metrics.jsonl").read_text().splitlines()] == [0, 1]
    # the training time counts the killed process's epoch too, not only this sitting's
    assert ckpt["elapsed_seconds"] >= ckpt["history"][0]["seconds"] > 0
    assert r_res.seconds >= ckpt["elapsed_seconds"] + r_res.history[1]["seconds"]


@requires_fmnist
def test_killed_while_saving_leaves_previous_checkpoint_and_resume_finishes(tmp_path):
    """The child dies after writing half of the epoch-1 checkpoint: checkpoint.pt must still be epoch 0."""
    work = tmp_path / "w"
    proc = run_child("kill_in_save", str(work))
    assert proc.returncode == -signal.SIGKILL, proc.stderr[-2000:]
    assert list(work.glob(".checkpoint.pt.*.tmp")), "the child should have died with a half-written temp file"
    assert load_training_checkpoint(work / "checkpoint.pt")["epoch"] == 0
    _, result = run_resume_fit(work, init_seed=5, resume=True)
    assert [h["epoch"] for h in result.history] == [0, 1]
    assert load_training_checkpoint(work / "checkpoint.pt")["epoch"] == 1
    assert not list(work.glob(".checkpoint.pt.*.tmp"))  # stale temp files are cleaned up


@requires_fmnist
def test_bad_checkpoints_raise_checkpoint_error_with_a_fix(tmp_path):
    cfg = resume_cfg()
    work = tmp_path / "w"
    train, val = resume_data()
    torch.manual_seed(0)
    short = TrainConfig(**{**cfg.__dict__, "epochs": 1, "max_steps_per_epoch": 2})
    fit(tiny_cnn(), ce_step(short), train, val, short, work_dir=work, device="cpu", seed=0, meta={"fingerprint": "a"})
    good = (work / "checkpoint.pt").read_bytes()
    torch.load(work / "checkpoint.pt", weights_only=True)  # plain data only

    def resume(meta={"fingerprint": "a"}, model=None, c=short):
        return fit(model or tiny_cnn(), ce_step(c), train, val, c, work_dir=work, device="cpu", seed=0,
                   resume=True, meta=meta)

    with pytest.raises(CheckpointError, match="fingerprint") as e:
        resume(meta={"fingerprint": "b"})
    assert "--resume" in e.value.fix and "delete" in e.value.fix
    with pytest.raises(CheckpointError, match="train_config"):
        resume(c=TrainConfig(**{**short.__dict__, "lr": 0.01}))
    with pytest.raises(CheckpointError, match="mis-shaped"):
        resume(model=tiny_cnn(width=4))
    (work / "checkpoint.pt").write_bytes(good[: len(good) // 2])
    with pytest.raises(CheckpointError, match="unreadable or truncated"):
        resume()
    (work / "checkpoint.pt").write_bytes(b"definitely not a checkpoint")
    with pytest.raises(CheckpointError, match="unreadable or truncated"):
        resume()


# ---------------------------------------------------------------- devices, AMP, DDP


def test_resolve_device_and_amp_policy():
    assert resolve_device("cpu") == torch.device("cpu")
    assert resolve_device("auto").type == ("cuda" if torch.cuda.is_available() else "cpu")
    with pytest.raises(ConfigError, match="valid: auto, cpu, cuda"):
        resolve_device("tpu")
    if not torch.cuda.is_available():
        with pytest.raises(ConfigError, match="no CUDA GPU") as e:
            resolve_device("cuda:0")
        assert "device: cpu" in e.value.fix
    cpu = torch.device("cpu")
    # auto: bf16 only where this CPU runs it natively (AMX / AVX512-BF16); tests/test_precision.py plays other CPUs
    assert resolve_amp("auto", cpu).enabled is cpu_bf16_is_fast(detect_cpu_features())[0]
    assert not resolve_amp("off", cpu).enabled
    assert resolve_amp("on", cpu).dtype == torch.bfloat16 and not resolve_amp("on", cpu).scaler


@requires_fmnist
def test_cpu_bf16_autocast_trains_with_finite_loss(tmp_path):
    train, val = resume_data()
    torch.manual_seed(0)
    cfg = TrainConfig(epochs=1, lr=0.05, amp="on", max_steps_per_epoch=3)
    result = fit(tiny_cnn(), ce_step(cfg), train, val, cfg, work_dir=tmp_path, device="cpu", seed=0)
    assert np.isfinite(result.history[0]["train_loss"]) and result.history[0]["steps"] == 3


def _scaler_precision(monkeypatch) -> None:
    """Make fit() take the fp16 path's GradScaler branch on CPU: fp32 math, the CUDA path's scaler logic."""
    import edgekd.train.engine as engine

    monkeypatch.setattr(engine, "resolve_amp", lambda mode, device: Precision(None, scaler=True, reason="test"))


@requires_fmnist
def test_grad_scaler_branch_runs_and_resumes_on_cpu(tmp_path, monkeypatch):
    """The GradScaler branch (scale, unscale before clipping, step, update, checkpoint, resume) without a GPU."""
    _scaler_precision(monkeypatch)
    train, val = resume_data()
    torch.manual_seed(0)
    cfg = TrainConfig(epochs=2, lr=0.05, amp="on", grad_clip=1.0, max_steps_per_epoch=3)
    result = fit(tiny_cnn(), ce_step(cfg), train, val, cfg, work_dir=tmp_path, device="cpu", seed=0)
    assert all(np.isfinite(h["train_loss"]) for h in result.history)
    scaler_state = load_training_checkpoint(tmp_path / "checkpoint.pt")["scaler"]
    assert scaler_state and scaler_state["scale"] == 65536.0  # no overflow: the initial scale stays
    loaded = []
    original = torch.amp.GradScaler.load_state_dict
    monkeypatch.setattr(torch.amp.GradScaler, "load_state_dict", lambda self, sd: (loaded.append(sd), original(self, sd)))
    again = fit(tiny_cnn(), ce_step(cfg), train, val, cfg, work_dir=tmp_path, device="cpu", seed=0, resume=True)
    assert loaded and loaded[0]["scale"] == 65536.0 and len(again.history) == 2  # resume restores the scaler


@requires_fmnist
def test_grad_scaler_skips_an_overflowing_step_instead_of_stopping(tmp_path, monkeypatch):
    """fp16 overflow: with a scaler an inf loss skips that step and halves the scale; without one, training stops."""
    train, val = resume_data()
    cfg = TrainConfig(epochs=1, lr=0.05, amp="on", max_steps_per_epoch=3, log_every=1)
    base, calls = ce_step(cfg), []

    def overflow_once(model, batch):
        loss, logits = base(model, batch)
        calls.append(1)
        return (loss * float("inf") if len(calls) == 2 else loss), logits

    _scaler_precision(monkeypatch)
    torch.manual_seed(0)
    fit(tiny_cnn(), overflow_once, train, val, cfg, work_dir=tmp_path / "scaled", device="cpu", seed=0)
    assert load_training_checkpoint(tmp_path / "scaled" / "checkpoint.pt")["scaler"]["scale"] == 32768.0
    monkeypatch.undo()
    calls.clear()
    with pytest.raises(EdgekdError, match="diverged"):
        cfg_off = dataclasses.replace(cfg, amp="off")
        fit(tiny_cnn(), overflow_once, train, val, cfg_off, work_dir=tmp_path / "plain", device="cpu", seed=0)


@pytest.mark.cuda
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
@requires_fmnist
def test_cuda_fp16_amp_uses_grad_scaler(tmp_path, monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_bf16_supported", lambda *a, **k: False)  # force the fp16 + scaler path
    device = torch.device("cuda")
    precision = resolve_amp("on", device)
    assert precision.dtype == torch.float16 and precision.scaler
    train, val = resume_data()
    torch.manual_seed(0)
    cfg = TrainConfig(epochs=1, lr=0.05, amp="on", max_steps_per_epoch=5)
    result = fit(tiny_cnn(), ce_step(cfg), train, val, cfg, work_dir=tmp_path, device=device, seed=0)
    assert np.isfinite(result.history[0]["train_loss"]) and result.best_val_accuracy > 0.1
    scaler_state = load_training_checkpoint(tmp_path / "checkpoint.pt")["scaler"]
    assert scaler_state and scaler_state["scale"] > 0  # the GradScaler ran and was checkpointed


@requires_fmnist
def test_ddp_two_gloo_ranks_end_with_identical_weights(tmp_path):
    if not torch.distributed.is_available() or not torch.distributed.is_gloo_available():
        pytest.skip("this torch build has no torch.distributed gloo backend")
    env = {**os.environ, "PYTHONPATH": str(REPO), "OMP_NUM_THREADS": "1", "EDGEKD_PROGRESS": "0"}
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2",
           str(THIS), "ddp", str(tmp_path)]
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=240, cwd=REPO)
    if proc.returncode != 0 and "Address already in use" in proc.stderr:
        pytest.skip("no free local port for the gloo rendezvous")
    assert proc.returncode == 0, proc.stderr[-3000:]
    s0, s1 = (torch.load(tmp_path / f"rank{r}.pt", weights_only=True) for r in (0, 1))
    for k in s0["state"]:
        assert torch.equal(s0["state"][k], s1["state"][k]), k
    assert s0["shard"] != s1["shard"] and s0["steps"] == s1["steps"] == 4  # 2 x 128 samples, batch 32
    assert s0["val"] == s1["val"]  # all-reduced validation
    assert len((tmp_path / "metrics.jsonl").read_text().splitlines()) == 1  # rank 0 alone writes


@requires_fmnist
def test_checkpoint_every_k_epochs_and_after_the_last(tmp_path):
    """checkpoint_every=2 over 3 epochs: no checkpoint after epoch 0, one after epoch 1, and after the last."""
    seen = {}

    def spy(epoch, model):  # runs at each epoch start: what a kill just before it would leave to resume from
        path = tmp_path / "checkpoint.pt"
        seen[epoch] = load_training_checkpoint(path)["epoch"] if path.exists() else None

    train, val = resume_data()
    cfg = dataclasses.replace(resume_cfg(), epochs=3, checkpoint_every=2)
    torch.manual_seed(0)
    fit(tiny_cnn(), ce_step(cfg), train, val, cfg, work_dir=tmp_path, device="cpu", seed=0, hooks=(spy,))
    assert seen == {0: None, 1: None, 2: 1}
    assert load_training_checkpoint(tmp_path / "checkpoint.pt")["epoch"] == 2
    assert len((tmp_path / "metrics.jsonl").read_text().splitlines()) == 3  # metrics every epoch regardless


# ---------------------------------------------------------------- child-process entry points


def _child(argv: list[str]) -> None:
    torch.set_num_threads(1)
    mode, work = argv[0], Path(argv[1])
    if mode == "kill_in_step":
        kill_at, calls = int(argv[2]), [0]

        def wrapper(step):
            def dying(model, batch):
                calls[0] += 1
                if calls[0] > kill_at:
                    os._exit(17)  # no cleanup, no flush: as abrupt as a SIGKILL
                return step(model, batch)
            return dying

        run_resume_fit(work, init_seed=0, resume=False, step_wrapper=wrapper)
    elif mode == "kill_in_save":
        # edgekd.faults test hook: SIGKILL half-way through writing the epoch-1 checkpoint's temp file
        # (checkpoints are serialized in memory first, so patching torch.save no longer reaches the file)
        os.environ["EDGEKD_FAULT_AT"] = f"{Path(work).name}:checkpoint-write:1"
        run_resume_fit(work, init_seed=0, resume=False)
    elif mode == "ddp":
        from edgekd.train.distributed import finish_distributed, rank_and_world

        rank, world = rank_and_world()
        train, val = resume_data(world_size=world, rank=rank)
        torch.manual_seed(rank)  # different inits on purpose: DDP must broadcast rank 0's weights
        model = tiny_cnn()
        cfg = TrainConfig(epochs=1, lr=0.05, amp="off", channels_last="off")
        result = fit(model, ce_step(cfg), train, val, cfg, work_dir=work, device="cpu", seed=0)
        torch.save({"state": {k: v.detach().cpu() for k, v in model.state_dict().items()},
                    "shard": train._order().tolist(), "steps": result.history[0]["steps"],
                    "val": result.history[0]["val_accuracy"]}, work / f"rank{rank}.pt")
        finish_distributed()  # as a training script should: every rank done, then leave together
    else:
        raise SystemExit(f"unknown child mode {mode}")


if __name__ == "__main__":
    _child(sys.argv[1:])
