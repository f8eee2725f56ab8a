"""The one training loop behind the teacher, distill and qat stages.

The stages differ in the model, the loss (``step_fn``) and the schedule; this module handles the
rest once: device placement, AMP, channels_last, DDP, per-step schedules, epoch checkpoints that a
crash cannot corrupt, exact resume, best-on-validation selection, progress and metrics.
"""
from __future__ import annotations

import dataclasses
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterable, Sequence

import torch
import torch.nn.functional as F

from .bf16_guard import guard_cpu_bf16, loader_input_shape
from .checkpoint import capture_rng, cpu_state, save_checkpoint
from .loop_state import CHECKPOINT_NAME, METRICS_NAME, LoopState, prepare_work_dir, resume_from
from ..config import TrainConfig
from .distributed import (
    Precision,
    all_gather_objects,
    all_reduce_sum,
    broadcast_buffers,
    distributed_context,
    init_distributed,
    resolve_amp,
    resolve_channels_last,
    resolve_compile,
    resolve_device,
    seed_everything,
    wrap_ddp,
)
from ..errors import ConfigError, EdgekdError
from ..faults import fault_point
from ..io import append_jsonl
from ..progress import enabled as progress_enabled, is_quiet
from .optim import build_optimizer, build_schedule

__all__ = ["FitResult", "Precision", "evaluate", "fit", "make_criterion", "resolve_amp", "resolve_channels_last",
           "resolve_device", "seed_everything", "to_device", "train_step"]

StepFn = Callable[[torch.nn.Module, tuple], tuple[torch.Tensor, "torch.Tensor | None"]]
Hook = Callable[[int, torch.nn.Module], None]


@dataclass
class FitResult:
    """What :func:`fit` returns. Epochs are 0-based everywhere (hooks, history, best_epoch)."""

    best_state: dict[str, torch.Tensor]  # CPU tensors, ready for model.load_state_dict
    best_val_accuracy: float
    best_epoch: int
    history: list[dict[str, Any]] = field(default_factory=list)
    seconds: float = 0.0  # wall time of the whole fit, over every sitting a resume continued
    best_aux_state: dict[str, torch.Tensor] | None = None  # ``aux`` as it was at best_epoch (None: no aux)
    precision: dict[str, Any] = field(default_factory=dict)  # what training ran in: Precision.to_dict()


def make_criterion(cfg: TrainConfig) -> torch.nn.Module:
    """Cross-entropy with the config's label smoothing (the stages' plain-label loss)."""
    return torch.nn.CrossEntropyLoss(label_smoothing=cfg.label_smoothing)


def to_device(batch: Sequence[Any], device: torch.device, channels_last: bool) -> tuple:
    """The batch's tensors on ``device`` (non_blocking; a no-op for a loader already there), 4-D floats channels_last."""
    out = []
    for t in batch:
        if isinstance(t, torch.Tensor):
            t = t.to(device, non_blocking=True)
            if channels_last and t.ndim == 4 and t.is_floating_point():
                t = t.contiguous(memory_format=torch.channels_last)
        out.append(t)
    return tuple(out)


def evaluate(
    model: torch.nn.Module,
    loader: Iterable,
    device: torch.device,
    amp: bool | Precision = False,
    channels_last: bool = False,
    reduce: bool = False,
) -> dict[str, float]:
    """Top-1 accuracy, mean cross-entropy and sample count over ``loader`` (eval mode, inference_mode).

    ``reduce`` sums the counts over DDP ranks (every rank must call it then). The model's
    train/eval mode is restored afterwards.
    """
    precision = amp if isinstance(amp, Precision) else resolve_amp(bool(amp), device)
    was_training = model.training
    model.eval()
    correct = torch.zeros((), dtype=torch.float64, device=device)
    loss_sum = torch.zeros((), dtype=torch.float64, device=device)
    count = 0
    try:
        with torch.inference_mode():
            for batch in loader:
                x, y = to_device(batch[:2], device, channels_last)
                with precision.autocast(device):
                    logits = model(x)
                logits = logits.float()
                loss_sum += F.cross_entropy(logits, y, reduction="sum").double()
                correct += (logits.argmax(1) == y).sum()
                count += int(y.shape[0])
    finally:
        model.train(was_training)
    totals = [float(correct), float(loss_sum), float(count)]
    if reduce:
        totals = all_reduce_sum(totals, device)
    n = max(totals[2], 1.0)
    return {"accuracy": totals[0] / n, "loss": totals[1] / n, "count": int(totals[2])}


def _progress_enabled(is_main: bool) -> bool:
    return is_main and progress_enabled()  # a terminal, not --quiet (edgekd.progress)


def _log(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


def fit(
    model: torch.nn.Module,
    step_fn: StepFn,
    train_loader: Any,
    val_loader: Any,
    cfg: TrainConfig,
    work_dir: str | Path,
    device: torch.device | str,
    seed: int,
    resume: bool = False,
    hooks: Sequence[Hook] = (),
    desc: str = "train",
    eval_fn: Callable[[torch.nn.Module], dict[str, float]] | None = None,
    meta: dict[str, Any] | None = None,
    deterministic: bool | str = True,
    on_epoch: Sequence[Callable[[dict[str, Any]], None]] = (),
    aux: torch.nn.Module | None = None,
) -> FitResult:
    """Train ``model`` for ``cfg.epochs`` epochs and return the best-on-validation state.

    - ``step_fn(model, batch) -> (loss, logits)``: ``batch`` is the loader's tuple ``(x, y, *extras)``
      on ``device``; ``model`` may be DDP-wrapped. ``logits`` (or None) feed the train accuracy.
    - ``hooks``: ``hook(epoch, model)`` at each epoch start, on the unwrapped model (QAT freezing).
    - ``eval_fn(model) -> {"accuracy", "loss"}`` replaces the default :func:`evaluate` on ``val_loader``.
    - ``work_dir/checkpoint.pt`` is written atomically after every epoch (rank 0), with ``meta``
      (e.g. the config fingerprint); ``resume`` continues from it, bit-exactly on CPU, and refuses a
      checkpoint from another config or model (CheckpointError). ``work_dir/metrics.jsonl`` gets
      one line per epoch.
    - ``on_epoch``: ``callback(record)`` on rank 0 after each epoch, with the record ``metrics.jsonl``
      gets (TensorBoard: :mod:`edgekd.train.logging_hooks`).
    - ``aux``: a module trained beside ``model`` but not part of it (a KD loss's adapters or learned
      temperature): optimized with it, checkpointed and resumed with it, never in ``best_state``;
      ``result.best_aux_state`` is its state at the best epoch (what the adapters were for that student).
    - On return ``model`` holds the last epoch's weights; load ``result.best_state`` for the best.
    - ``deterministic`` (default on; or a switch ``auto`` | ``on`` | ``off``) picks reproducible kernels;
      see :func:`seed_everything` and :func:`~edgekd.train.distributed.resolve_deterministic`.
    - ``cfg.compile`` wraps the (DDP) training model in ``torch.compile`` (fixed shapes: the train
      loader drops the last partial batch); evaluation and checkpoints use the plain ``model``.
    """
    t_start = time.perf_counter()
    work_dir = Path(work_dir)
    device = resolve_device(device) if isinstance(device, str) else torch.device(device)
    init_distributed(device)
    dctx = distributed_context()
    seed_everything(seed + dctx.rank, deterministic, device)

    steps_per_epoch = len(train_loader)
    if cfg.max_steps_per_epoch:
        steps_per_epoch = min(steps_per_epoch, cfg.max_steps_per_epoch)
    if steps_per_epoch < 1 and cfg.epochs > 0:
        raise ConfigError(f"{desc}: the training loader yields no batch", "use a larger train split or a smaller batch_size")
    channels_last = resolve_channels_last(cfg.channels_last, device)
    model.to(device)
    if channels_last:
        model.to(memory_format=torch.channels_last)
    if aux is not None:
        aux.to(device)
    # aux (a KD loss's adapters / learned temperature) trains with the model but is never part of it
    optimizer = build_optimizer(model if aux is None else torch.nn.ModuleList([model, aux]), cfg, device)
    schedule = build_schedule(cfg, steps_per_epoch)
    precision = resolve_amp(cfg.amp, device)
    if precision.dtype is torch.bfloat16 and device.type == "cpu":
        guarded = guard_cpu_bf16(precision, model, loader_input_shape(train_loader), device)
        if guarded != precision and dctx.is_main:
            _log(f"[edgekd] {desc}: {guarded.reason}")
        precision = guarded
    scaler = torch.amp.GradScaler(device.type) if precision.scaler else None
    full_meta = {**(meta or {}), "train_config": dataclasses.asdict(cfg), "steps_per_epoch": steps_per_epoch,
                 "world_size": dctx.world_size}

    ckpt_path = work_dir / CHECKPOINT_NAME
    state = LoopState()
    if resume and ckpt_path.exists():
        state = resume_from(ckpt_path, model, optimizer, scaler, full_meta, dctx.rank, dctx.world_size, aux)
        if dctx.is_main:
            _log(f"[edgekd] {desc}: resumed from {ckpt_path} at epoch {state.epoch}/{cfg.epochs}")
    elif resume and dctx.is_main:
        _log(f"[edgekd] {desc}: no checkpoint in {work_dir}, starting from epoch 0")
    if dctx.is_main:
        prepare_work_dir(work_dir, resume, state.history)
    ddp_model = wrap_ddp(model, device)
    if aux is not None and dctx.world_size > 1:
        _sync_over_ranks(aux)  # what DDP does for the model: rank 0's start state, averaged gradients
    if resolve_compile(cfg.compile, device):
        # compiled around DDP, so its optimizer splits graphs at bucket boundaries (overlapping all-reduce)
        ddp_model = torch.compile(ddp_model, dynamic=False)
        if dctx.is_main:
            _log(f"[edgekd] {desc}: torch.compile on ({device.type}); the first steps include compilation")

    for epoch in range(state.epoch, cfg.epochs):
        for hook in hooks:
            hook(epoch, model)
        train_loader.set_epoch(epoch)
        record = _train_epoch(ddp_model, step_fn, train_loader, optimizer, schedule, scaler, precision, cfg,
                              device, channels_last, state, steps_per_epoch, epoch, desc, dctx.is_main)
        broadcast_buffers(model)
        val = eval_fn(model) if eval_fn is not None else evaluate(
            model, val_loader, device, amp=precision, channels_last=channels_last, reduce=True)
        record.update(val_loss=float(val.get("loss", float("nan"))), val_accuracy=float(val["accuracy"]))
        record["seconds"] = round(record["seconds"], 3)
        state.history.append(record)
        if record["val_accuracy"] > state.best_acc:
            state.best_acc, state.best_epoch, state.best_state = record["val_accuracy"], epoch, cpu_state(model)
            state.best_aux = cpu_state(aux) if aux is not None else None
        # every checkpoint_every epochs and after the last: a checkpoint costs a full state copy and write
        due = (epoch + 1) % cfg.checkpoint_every == 0 or epoch + 1 == cfg.epochs
        rngs = all_gather_objects(capture_rng()) if due else []  # every rank's RNG: a resumed DDP run continues each stream
        if dctx.is_main and due:
            save_checkpoint(ckpt_path, {
                "model": cpu_state(model), "optimizer": optimizer.state_dict(),
                "aux": cpu_state(aux) if aux is not None else {},
                "scheduler": {"kind": schedule.kind, "step": state.global_step, "total_steps": schedule.total_steps},
                "scaler": scaler.state_dict() if scaler is not None else {},
                "epoch": epoch, "global_step": state.global_step, "best_state": state.best_state,
                "best_aux": state.best_aux or {},
                "best_val_accuracy": state.best_acc, "best_epoch": state.best_epoch, "history": state.history,
                "elapsed_seconds": state.elapsed + time.perf_counter() - t_start, "rng": rngs, "meta": full_meta,
            })
        if dctx.is_main:
            append_jsonl(work_dir / METRICS_NAME, record)
            for callback in on_epoch:
                callback(record)
            _log(f"[edgekd] {desc} epoch {epoch + 1}/{cfg.epochs}: loss {record['train_loss']:.4f} "
                 f"train {record['train_acc']:.4f} val {record['val_accuracy']:.4f} "
                 f"({record['images_per_second']:.0f} img/s)")

    if state.best_state is None:  # nothing trained (epochs == 0): the current weights are the result
        val = eval_fn(model) if eval_fn is not None else evaluate(model, val_loader, device, reduce=True)
        state.best_state, state.best_acc = cpu_state(model), float(val["accuracy"])
        state.best_aux = cpu_state(aux) if aux is not None else None
    return FitResult(best_state=state.best_state, best_val_accuracy=state.best_acc, best_epoch=state.best_epoch,
                     history=state.history, seconds=state.elapsed + time.perf_counter() - t_start,
                     best_aux_state=state.best_aux, precision=precision.to_dict())


def _train_epoch(model, step_fn, loader, optimizer, schedule, scaler, precision, cfg, device, channels_last,
                 state: LoopState, steps: int, epoch: int, desc: str, is_main: bool) -> dict[str, Any]:
    """One epoch of optimizer steps; returns the epoch's train metrics (reduced over ranks)."""
    model.train()
    loss_sum = torch.zeros((), dtype=torch.float64, device=device)
    correct = torch.zeros((), dtype=torch.float64, device=device)
    bad = torch.zeros((), dtype=torch.float64, device=device)  # non-finite losses (device-side: no sync per step)
    seen = acc_seen = 0
    lr = schedule.lr_at(state.global_step)
    bar = None
    if _progress_enabled(is_main):
        from tqdm import tqdm

        bar = tqdm(total=steps, desc=f"{desc} {epoch + 1}/{cfg.epochs}", leave=False, dynamic_ncols=True)
    t0 = time.perf_counter()
    try:
        for i, batch in enumerate(loader):
            if i >= steps:
                break
            batch = to_device(batch, device, channels_last)
            lr = schedule.apply(optimizer, state.global_step)
            loss, logits = train_step(model, step_fn, batch, optimizer, scaler, precision, device, cfg.grad_clip)
            n = int(batch[1].shape[0])
            finite = torch.isfinite(loss.detach())
            loss_sum += torch.where(finite, loss.detach().double(), 0.0) * n
            bad += (~finite).double()
            if logits is not None and logits.ndim == 2:
                correct += (logits.detach().argmax(1) == batch[1]).sum()
                acc_seen += n
            seen += n
            state.global_step += 1
            fault_point(f"{desc}:step:{state.global_step}")  # test hook (edgekd.faults): no-op unless set
            if (i + 1) % max(1, cfg.log_every) == 0 or i + 1 == steps:
                _check_finite(bad, i + 1, scaler, desc, epoch)
                if bar is not None:
                    bar.set_postfix(loss=f"{float(loss_sum) / max(seen, 1):.4f}", lr=f"{lr:.2e}")
                elif is_main and not is_quiet() and i + 1 < steps:
                    _log(f"[edgekd] {desc} epoch {epoch + 1} step {i + 1}/{steps} "
                         f"loss {float(loss_sum) / max(seen, 1):.4f} lr {lr:.2e}")
            if bar is not None:
                bar.update(1)
    finally:
        if bar is not None:
            bar.close()
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    seconds = time.perf_counter() - t0
    tot_loss, tot_correct, tot_seen, tot_acc_seen = all_reduce_sum(
        [float(loss_sum), float(correct), float(seen), float(acc_seen)], device)
    return {
        "epoch": epoch, "train_loss": tot_loss / max(tot_seen, 1.0),
        "train_acc": tot_correct / tot_acc_seen if tot_acc_seen else float("nan"),
        "lr": lr, "seconds": seconds, "images_per_second": tot_seen / max(seconds, 1e-9), "steps": state.global_step,
    }


def _sync_over_ranks(module: torch.nn.Module) -> None:
    """Give every rank rank 0's state of ``module``, and hook its trainable parameters so each gradient
    is averaged over the ranks once accumulated (DDP does both for the model it wraps)."""
    import torch.distributed as dist

    with torch.no_grad():
        for t in module.state_dict().values():
            dist.broadcast(t, src=0)

    def average(p: torch.Tensor) -> None:
        dist.all_reduce(p.grad)
        p.grad.div_(dist.get_world_size())

    for p in module.parameters():
        if p.requires_grad:
            p.register_post_accumulate_grad_hook(average)


def train_step(model: torch.nn.Module, step_fn: StepFn, batch: tuple, optimizer: torch.optim.Optimizer, scaler: Any,
               precision: Precision, device: torch.device, grad_clip: float | None = None
               ) -> tuple[torch.Tensor, "torch.Tensor | None"]:
    """One optimizer step on a batch already on ``device``: forward under autocast, backward, (clip), update.

    The engine's inner step, public so that benchmarks/throughput.py times exactly what training runs.
    Returns ``step_fn``'s ``(loss, logits)``; nothing here waits for the device.
    """
    with precision.autocast(device):
        loss, logits = step_fn(model, batch)
    optimizer.zero_grad(set_to_none=True)
    _backward_step(loss, optimizer, scaler, grad_clip, model)
    return loss, logits


def _backward_step(loss: torch.Tensor, optimizer: torch.optim.Optimizer, scaler: Any, grad_clip: float | None,
                   model: torch.nn.Module) -> None:
    """Backward + (clip) + optimizer step; the fp16 GradScaler unscales before clipping and skips inf steps."""
    if scaler is not None:
        scaler.scale(loss).backward()
        if grad_clip:
            scaler.unscale_(optimizer)
            torch.nn.utils.clip_grad_norm_(model.parameters(), grad_clip)
        scaler.step(optimizer)
        scaler.update()
        return
    loss.backward()
    if grad_clip:
        torch.nn.utils.clip_grad_norm_(model.parameters(), grad_clip)
    optimizer.step()


def _check_finite(bad: torch.Tensor, steps_done: int, scaler: Any, desc: str, epoch: int) -> None:
    """Without a GradScaler a NaN/inf loss has already corrupted the weights: stop with a fix."""
    n_bad = int(bad)
    if n_bad and (scaler is None or n_bad >= steps_done):
        raise EdgekdError(
            f"{desc}: training diverged, the loss was NaN/inf in {n_bad} of the first {steps_done} steps of epoch {epoch}",
            "lower train.lr, set train.grad_clip (e.g. 5.0), or turn train.amp off",
        )
