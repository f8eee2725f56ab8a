"""The training loop's state across processes: what an epoch checkpoint carries, and resuming from one.

``fit`` (edgekd.train.engine) keeps a :class:`LoopState`, writes it into ``checkpoint.pt`` after each
epoch (with the model, optimizer, RNG and the KD loss's ``aux`` state), and on ``--resume`` rebuilds it
with :func:`resume_from`, refusing a checkpoint of another config or model (CheckpointError).
"""
from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from ..errors import CheckpointError
from ..io import atomic_write_text
from .checkpoint import check_fits, check_meta, load_training_checkpoint, restore_rng, resume_fix

CHECKPOINT_NAME, METRICS_NAME = "checkpoint.pt", "metrics.jsonl"


@dataclass
class LoopState:
    """Loop state that a checkpoint carries across processes."""

    epoch: int = 0  # next epoch to run
    global_step: int = 0
    best_state: dict[str, torch.Tensor] | None = None
    best_aux: dict[str, torch.Tensor] | None = None
    best_acc: float = -1.0
    best_epoch: int = -1
    history: list[dict[str, Any]] = field(default_factory=list)
    # wall seconds that earlier processes spent in this fit up to the checkpoint: a resumed stage's
    # train_seconds is the whole training time, not only the last sitting's
    elapsed: float = 0.0


def resume_from(path: Path, model: torch.nn.Module, optimizer: torch.optim.Optimizer, scaler: Any,
                meta: dict[str, Any], rank: int, world: int, aux: torch.nn.Module | None = None) -> LoopState:
    """Load ``path`` into model/optimizer/scaler/RNG; raise CheckpointError when it does not belong here."""
    ckpt = load_training_checkpoint(path)
    check_meta(path, ckpt.get("meta", {}), meta)
    check_fits(model, ckpt["model"], f"checkpoint {path}", resume_fix(path))
    try:
        model.load_state_dict(ckpt["model"])
        if aux is not None:
            aux.load_state_dict(ckpt.get("aux", {}))
        optimizer.load_state_dict(ckpt["optimizer"])
        if scaler is not None and ckpt.get("scaler"):
            scaler.load_state_dict(ckpt["scaler"])
    except (RuntimeError, ValueError, KeyError) as e:
        raise CheckpointError(f"checkpoint {path} does not fit this model/optimizer ({e})",
                              resume_fix(path)) from None
    rngs = ckpt.get("rng", [])
    if len(rngs) == world:
        restore_rng(rngs[rank])
    return LoopState(epoch=int(ckpt["epoch"]) + 1, global_step=int(ckpt["global_step"]), best_state=ckpt["best_state"],
                     best_aux=best_aux_from(path, ckpt, aux), best_acc=float(ckpt["best_val_accuracy"]),
                     best_epoch=int(ckpt["best_epoch"]), history=list(ckpt["history"]),
                     elapsed=float(ckpt.get("elapsed_seconds", _epoch_seconds(ckpt["history"]))))


def _epoch_seconds(history: list[dict[str, Any]]) -> float:
    """A checkpoint from before edgekd kept the elapsed time: the restored epochs' training seconds
    (their validation passes uncounted), still far closer than counting none of them."""
    return float(sum(h.get("seconds", 0.0) for h in history))


def best_aux_from(path: Path, ckpt: dict[str, Any], aux: torch.nn.Module | None) -> dict[str, torch.Tensor] | None:
    """``aux`` at the checkpoint's best epoch. A checkpoint from before edgekd kept it has only the last
    epoch's aux: exact when that epoch was the best, else refused (the best student would get other adapters)."""
    if aux is None or not aux.state_dict():
        return None
    if "best_aux" in ckpt:
        return ckpt["best_aux"] or None
    if not getattr(aux, "carries_to_qat", True):  # only its last state is ever used (an EMA teacher)
        return None
    if int(ckpt["best_epoch"]) == int(ckpt["epoch"]):
        return ckpt.get("aux") or None
    raise CheckpointError(f"checkpoint {path} is from an older edgekd: it lacks the KD loss's state at its best "
                          f"epoch ({ckpt['best_epoch']}), which the best student needs",
                          resume_fix(path))


def prepare_work_dir(work_dir: Path, resume: bool, history: list[dict[str, Any]]) -> None:
    """Rank 0: drop temp files of a killed save; a fresh run drops the old checkpoint and metrics,
    a resumed run rewrites metrics.jsonl from the checkpoint (lines past it were never checkpointed)."""
    work_dir.mkdir(parents=True, exist_ok=True)
    for stale in work_dir.glob(f".{CHECKPOINT_NAME}.*.tmp"):
        stale.unlink()
    if not resume:
        (work_dir / CHECKPOINT_NAME).unlink(missing_ok=True)
    lines = "".join(json_line(r) for r in history) if resume else ""
    atomic_write_text(work_dir / METRICS_NAME, lines)


def json_line(record: dict[str, Any]) -> str:
    """One metrics.jsonl line (keys sorted, so equal records give equal lines)."""
    return json.dumps(record, sort_keys=True, default=str) + "\n"
