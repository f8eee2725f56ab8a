"""Optimizer and learning-rate schedule for the engine.

The schedule is a pure function of the global step (no scheduler object with hidden state), so a
resumed run only needs the step count to land on the exact learning rate it would have had.
"""
from __future__ import annotations

import inspect
import math
from dataclasses import dataclass

import torch

from ..config import TrainConfig
from ..errors import ConfigError
from ..validation import OPTIMIZERS, SCHEDULES  # the valid names; user input is checked at config load

ONECYCLE_DIV = 25.0  # onecycle starts at lr / 25 (torch's OneCycleLR default) ...
ONECYCLE_FINAL_DIV = 1e4  # ... and ends at lr / 25 / 1e4


def param_groups(model: torch.nn.Module, weight_decay: float) -> list[dict]:
    """Two groups: matrices/kernels decay; BN/LayerNorm affine params and biases (ndim <= 1) do not.

    Decaying norm scales and biases only fights the normalization and hurts accuracy.
    """
    decay, no_decay = [], []
    for p in model.parameters():
        if p.requires_grad:
            (decay if p.ndim > 1 else no_decay).append(p)
    groups = [{"params": decay, "weight_decay": weight_decay}, {"params": no_decay, "weight_decay": 0.0}]
    return [g for g in groups if g["params"]]


def kernel_options(optimizer_cls: type, device: torch.device | str | None) -> dict[str, bool]:
    """Which update kernel the optimizer uses: ``{"fused": True}`` on CUDA where this torch has it, else ``{}``.

    On CUDA the per-parameter update loop is a few hundred tiny kernel launches per step (one per
    tensor and op); the fused kernel does the whole update in a handful, and beats ``foreach``.
    torch has fused AdamW since 2.0 and fused SGD since 2.3 (both are in 2.11..2.14); an older build
    without the argument falls back to ``foreach`` (multi-tensor). CPU keeps torch's default (the
    measured CPU path is unchanged): ``{}``.
    """
    if device is None or torch.device(device).type != "cuda":
        return {}
    params = inspect.signature(optimizer_cls.__init__).parameters
    if "fused" in params:
        return {"fused": True}
    return {"foreach": True} if "foreach" in params else {}


def build_optimizer(model: torch.nn.Module, cfg: TrainConfig,
                    device: torch.device | str | None = None) -> torch.optim.Optimizer:
    """SGD (momentum, optional Nesterov) or AdamW over :func:`param_groups`; fused kernels on CUDA
    (:func:`kernel_options`). ``device`` is where the parameters live (default: CPU behaviour)."""
    assert cfg.optimizer in OPTIMIZERS, f"optimizer {cfg.optimizer!r} is not one of {OPTIMIZERS}"
    groups = param_groups(model, cfg.weight_decay)
    if not groups:
        raise ConfigError("the model has no trainable parameters", "unfreeze some parameters before training")
    if cfg.optimizer == "sgd":
        nesterov = cfg.nesterov and cfg.momentum > 0  # torch rejects nesterov without momentum
        return torch.optim.SGD(groups, lr=cfg.lr, momentum=cfg.momentum, nesterov=nesterov,
                               **kernel_options(torch.optim.SGD, device))
    return torch.optim.AdamW(groups, lr=cfg.lr, **kernel_options(torch.optim.AdamW, device))


def scaled_lr(base_lr: float, batch_size: int, base_batch: int) -> float:
    """The linear scaling rule (Goyal et al. 2017): ``lr = base_lr * batch_size / base_batch``.

    Use it with a warm-up (``warmup_fraction``, e.g. 0.15-0.3 of the steps with onecycle): the first
    steps at a large batch's lr diverge without one. docs/gpu.md shows the GPU recipe's numbers.
    """
    if batch_size < 1 or base_batch < 1:
        raise ValueError(f"batch sizes must be >= 1, got {batch_size} and {base_batch}")
    return base_lr * batch_size / base_batch


@dataclass(frozen=True)
class Schedule:
    """Per-step learning rate: ``onecycle`` | ``cosine`` | ``constant``, with a warm-up fraction.

    - onecycle: cosine rise from lr/25 to lr over the warm-up steps, then cosine down to lr/2.5e5.
    - cosine: linear warm-up from ~0 to lr, then cosine down to 0.
    - constant: linear warm-up (if any), then lr.
    """

    kind: str
    lr: float
    total_steps: int
    warmup_fraction: float

    def __post_init__(self) -> None:  # user input is checked at config load (edgekd.validation)
        assert self.kind in SCHEDULES, f"schedule {self.kind!r} is not one of {SCHEDULES}"
        assert 0.0 <= self.warmup_fraction < 1.0, f"warmup_fraction {self.warmup_fraction} is not in [0, 1)"

    @property
    def warmup_steps(self) -> int:
        return int(round(self.warmup_fraction * self.total_steps))

    def lr_at(self, step: int) -> float:
        """Learning rate for 0-based ``step``; ``step == total_steps`` is the schedule's end value."""
        total, warm = max(1, self.total_steps), self.warmup_steps
        step = min(max(step, 0), total)
        if self.kind == "onecycle":
            start, end = self.lr / ONECYCLE_DIV, self.lr / ONECYCLE_DIV / ONECYCLE_FINAL_DIV
            if step < warm:
                return _cos_interp(start, self.lr, step / warm)
            return _cos_interp(self.lr, end, (step - warm) / max(1, total - warm))
        if step < warm:  # linear warm-up for cosine/constant: never exactly 0 on the first step
            return self.lr * (step + 1) / (warm + 1)
        if self.kind == "constant":
            return self.lr
        return _cos_interp(self.lr, 0.0, (step - warm) / max(1, total - warm))

    def apply(self, optimizer: torch.optim.Optimizer, step: int) -> float:
        """Set every param group's lr for ``step``; returns it."""
        lr = self.lr_at(step)
        for g in optimizer.param_groups:
            g["lr"] = lr
        return lr


def _cos_interp(a: float, b: float, t: float) -> float:
    """Cosine from ``a`` (t=0) to ``b`` (t=1)."""
    t = min(max(t, 0.0), 1.0)
    return b + (a - b) * 0.5 * (1.0 + math.cos(math.pi * t))


def build_schedule(cfg: TrainConfig, steps_per_epoch: int) -> Schedule:
    """The schedule over ``cfg.epochs * steps_per_epoch`` optimizer steps."""
    return Schedule(cfg.schedule, cfg.lr, max(1, cfg.epochs * steps_per_epoch), cfg.warmup_fraction)
