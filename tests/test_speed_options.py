"""The speed options of issue 11: determinism as a config switch, torch.compile, fused optimizers,
data and cached teacher logits on the training device, the linear LR rule, and the throughput benchmark.

CPU tests check the decisions (which kernel, which determinism, why) and the code paths that run on
a CPU; the ``cuda`` tests run the same paths on a GPU and skip cleanly without one.
"""
from __future__ import annotations

import importlib.util
import json
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from torch import nn

from conftest import fmnist_prefix, requires_fashion_mnist
from edgekd.config import TrainConfig, config_from_dict
from edgekd.data.base import Split
from edgekd.errors import ConfigError
from edgekd.train.distributed import gather_strided, resolve_compile, resolve_deterministic, seed_everything
from edgekd.train.engine import fit, make_criterion
from edgekd.train.optim import build_optimizer, kernel_options, scaled_lr

ROOT = Path(__file__).resolve().parents[1]
CPU, CUDA = torch.device("cpu"), torch.device("cuda", 0)


@pytest.fixture(autouse=True)
def one_thread():
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


def tiny_cnn() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(nn.Conv2d(1, 6, 3, padding=1), nn.BatchNorm2d(6), nn.ReLU(), nn.MaxPool2d(4),
                         nn.Flatten(), nn.Linear(6 * 49, 10))


class Batches:
    """The engine's loader interface over in-memory real images (fixed order, full batches)."""

    def __init__(self, n: int, batch: int, device: torch.device = CPU) -> None:
        images, labels = fmnist_prefix("train", n)
        self.x = torch.from_numpy(images.astype(np.float32) / 255.0).to(device)
        self.y = torch.from_numpy(labels.copy()).to(device)
        self.batch = batch

    def set_epoch(self, epoch: int) -> None:
        pass

    def __len__(self) -> int:
        return len(self.y) // self.batch

    def __iter__(self):
        for i in range(len(self)):
            s = slice(i * self.batch, (i + 1) * self.batch)
            yield self.x[s], self.y[s]


def ce_step(cfg: TrainConfig):
    criterion = make_criterion(cfg)

    def step(m, batch):
        logits = m(batch[0])
        return criterion(logits, batch[1]), logits

    return step


# ------------------------------------------------------------------ determinism


def test_deterministic_auto_is_on_for_cpu_and_off_for_cuda_with_a_reason():
    cpu, cuda = resolve_deterministic("auto", CPU), resolve_deterministic("auto", "cuda:0")
    assert cpu.enabled and not cuda.enabled
    assert "bit-exact" in cpu.reason and "cudnn.benchmark" in cuda.reason
    assert cuda.to_dict() == {"deterministic": False, "cudnn_benchmark": True, "reason": cuda.reason}
    assert resolve_deterministic("on", "cuda").enabled and not resolve_deterministic("off", CPU).enabled
    assert resolve_deterministic(True, "cuda").enabled and not resolve_deterministic(False, CPU).enabled


def test_deterministic_config_values(tmp_path):
    assert config_from_dict({}).deterministic == "auto"
    assert config_from_dict({"deterministic": True}).deterministic == "on"  # YAML true/false mean on/off
    assert config_from_dict({"deterministic": False}).deterministic == "off"
    with pytest.raises(ConfigError, match="deterministic.*valid: auto, on, off"):
        config_from_dict({"deterministic": "sometimes"})
    with pytest.raises(ConfigError, match=r"teacher_train\.compile.*valid: auto, on, off"):
        config_from_dict({"teacher_train": {"compile": "fast"}})


def test_seed_everything_applies_the_switch(monkeypatch):
    used = []
    monkeypatch.setattr(torch, "use_deterministic_algorithms", lambda flag, **k: used.append(flag))
    monkeypatch.setattr(torch.backends.cudnn, "benchmark", False)
    monkeypatch.setattr(torch.backends.cudnn, "deterministic", True)
    seed_everything(0, "auto", CUDA)  # the string "off"/"auto" must never be read as a truthy bool
    assert torch.backends.cudnn.benchmark and not torch.backends.cudnn.deterministic and used == []
    seed_everything(0, "auto", CPU)
    assert used == [True] and torch.backends.cudnn.deterministic and not torch.backends.cudnn.benchmark
    seed_everything(0, "off", CPU)
    assert used == [True, False]
    torch.set_float32_matmul_precision("highest")  # seed_everything(cuda, off) allowed TF32; undo for other tests


def test_environment_records_determinism_and_compile():
    from edgekd.environment import environment

    cfg = config_from_dict({"device": "cpu", "teacher_train": {"compile": "auto"}, "distill": {"train": {"compile": "on"}}})
    env = environment(cfg)
    assert env["determinism"]["mode"] == "auto" and env["determinism"]["deterministic"] is True
    assert "cpu" in env["determinism"]["reason"]
    assert env["precision"]["teacher"]["compile"] is False  # auto compiles on CUDA only
    assert env["precision"]["distill"]["compile"] is True and env["precision"]["qat"]["compile"] is False


# ------------------------------------------------------------------ compile


def test_compile_switch():
    assert not resolve_compile("auto", CPU) and resolve_compile("auto", "cuda:0")
    assert resolve_compile("on", CPU) and not resolve_compile("off", "cuda")


@requires_fashion_mnist
def test_fit_with_compile_matches_eager(tmp_path, monkeypatch):
    """The engine trains the compiled model and keeps evaluating/checkpointing the plain one.

    The inductor's first C++ build takes 100 s on this shared 2-core CPU (10 s with a warm cache), so
    the compiler here is dynamo + AOTAutograd with eager kernels (``aot_eager``): the same graph capture,
    functionalization and joint forward/backward graph as inductor, without the C++ build. Inductor
    itself runs in the cuda tests. The two runs see the same batches from the same init; aot_eager runs
    the same aten kernels, so the weights agree to float rounding: 1e-5 of their norm.
    """
    cfg = TrainConfig(epochs=1, lr=0.05, amp="off", channels_last="off", compile="on", schedule="constant",
                      warmup_fraction=0.0, log_every=1000)
    compiled_calls = []
    real_compile = torch.compile

    def spy(model, **kw):
        compiled_calls.append(kw)
        return real_compile(model, backend="aot_eager", **kw)

    monkeypatch.setattr(torch, "compile", spy)
    data, val = Batches(192, 32), Batches(64, 64)
    eager, compiled = tiny_cnn(), tiny_cnn()
    r_eager = fit(eager, ce_step(cfg), data, val, TrainConfig(**{**cfg.__dict__, "compile": "off"}),
                  tmp_path / "eager", "cpu", seed=0)
    r_comp = fit(compiled, ce_step(cfg), data, val, cfg, tmp_path / "compiled", "cpu", seed=0)
    assert compiled_calls == [{"dynamic": False}]  # off: never compiled; on: once, fixed shapes
    assert not hasattr(compiled, "_orig_mod")  # the caller's model stays a plain module
    num = sum(float((r_comp.best_state[k].double() - r_eager.best_state[k].double()).norm() ** 2)
              for k in r_eager.best_state if r_eager.best_state[k].is_floating_point())
    den = sum(float(v.double().norm() ** 2) for v in r_eager.best_state.values() if v.is_floating_point())
    assert (num / den) ** 0.5 < 1e-5
    assert abs(r_comp.history[0]["train_loss"] - r_eager.history[0]["train_loss"]) <= 1e-5 * r_eager.history[0]["train_loss"]


# ------------------------------------------------------------------ optimizers and the LR rule


def test_fused_kernels_on_cuda_only():
    assert kernel_options(torch.optim.SGD, "cpu") == {} and kernel_options(torch.optim.AdamW, None) == {}
    assert kernel_options(torch.optim.SGD, "cuda:0") == {"fused": True}  # torch >= 2.3 has fused SGD
    assert kernel_options(torch.optim.AdamW, CUDA) == {"fused": True}

    class OldSGD:  # a torch without the fused argument: the multi-tensor kernel instead
        def __init__(self, params, lr, foreach=None): ...

    assert kernel_options(OldSGD, "cuda") == {"foreach": True}
    opt = build_optimizer(tiny_cnn(), TrainConfig(optimizer="sgd"), CPU)
    assert not opt.defaults.get("fused")  # the CPU path keeps torch's default kernel


def test_linear_lr_scaling_rule():
    assert scaled_lr(0.1, 1024, 256) == pytest.approx(0.4) and scaled_lr(0.05, 128, 128) == 0.05
    with pytest.raises(ValueError):
        scaled_lr(0.1, 0, 256)


# ------------------------------------------------------------------ data and cached logits on the device


def test_gather_strided_is_the_identity_in_one_process():
    t = torch.arange(12.0).reshape(6, 2)
    assert torch.equal(gather_strided(t, 6), t)


def test_cached_teacher_logits_cover_the_split_in_order_on_the_device():
    from edgekd.stages.distill import cached_teacher_logits

    rng = np.random.default_rng(0)
    split = Split(rng.integers(0, 256, (70, 1, 28, 28), dtype=np.uint8), rng.integers(0, 10, 70))
    teacher = tiny_cnn().eval()
    logits = cached_teacher_logits(teacher, split, 32, seed=0, device=CPU)  # 3 batches, the last partial
    with torch.no_grad():
        direct = teacher(torch.from_numpy(split.images).float() / 255.0)
    assert logits.shape == (70, 10) and logits.device == CPU and not logits.is_inference()
    torch.testing.assert_close(logits, direct, rtol=1e-5, atol=1e-5)  # same net, batching only


# ------------------------------------------------------------------ the benchmark


def _load_benchmark():
    spec = importlib.util.spec_from_file_location("throughput", ROOT / "benchmarks" / "throughput.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules["throughput"] = module
    spec.loader.exec_module(module)
    return module


def test_throughput_benchmark_writes_json_and_markdown(tmp_path):
    bench = _load_benchmark()
    rc = bench.main(["--device", "cpu", "--workloads", "student,kd_cached", "--steps", "1", "--warmup", "0",
                     "--repeats", "2", "--profile", "--set", "data.batch_size=8", "--set", "student.width=0.25",
                     "--out", str(tmp_path)])
    data = json.loads((tmp_path / "throughput_cpu.json").read_text())
    assert rc == 0 and [r["workload"] for r in data["rows"]] == ["student", "kd_cached"]
    s, kd = data["rows"]
    assert s["gflop_per_step"] > 0 and s["gflop_per_step"] == kd["gflop_per_step"]  # cached: no teacher FLOPs
    assert s["images_per_second"] > 0 and data["kd_overhead"]["kd_cached_over_student"] > 0
    assert "| kd_cached | 8 |" in (tmp_path / "throughput_cpu.md").read_text()
    prof = s["profile"]  # CPU: time inside torch ops against wall time; some of the wall is Python
    assert 0 < prof["busy_s"] and 0 < prof["busy_fraction"] <= 1.05 and prof["top"][0]["ms"] > 0


# ------------------------------------------------------------------ CUDA


@pytest.mark.cuda
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
@requires_fashion_mnist
def test_cuda_compile_fused_benchmark_mode_and_device_data(tmp_path):
    """On a GPU: compile auto (inductor) trains, deterministic auto turns cudnn.benchmark on, the
    optimizer is fused, and cached teacher logits stay on the GPU."""
    cfg = TrainConfig(epochs=1, lr=0.05, amp="auto", channels_last="auto", compile="auto", log_every=1000)
    seed_everything(0, "auto", CUDA)
    assert torch.backends.cudnn.benchmark
    model = tiny_cnn()
    result = fit(model, ce_step(cfg), Batches(512, 64, CUDA), Batches(128, 128, CUDA), cfg, tmp_path, "cuda",
                 seed=0, deterministic="auto")
    assert result.history[0]["train_loss"] < 2.3 and next(model.parameters()).is_cuda
    assert build_optimizer(model, cfg, CUDA).defaults.get("fused") is True
    from edgekd.stages.distill import cached_teacher_logits

    split = Split(np.zeros((10, 1, 28, 28), np.uint8), np.zeros(10, np.int64))
    assert cached_teacher_logits(model.eval(), split, 4, 0, CUDA).device.type == "cuda"
