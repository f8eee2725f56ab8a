"""Did a training stage diverge? Checked right after the stage, before anything downstream uses it.

A diverged teacher or student used to carry on to export and fail there on fp32 parity (logits of
|240|), minutes later and far from the cause. :func:`check_health` reads the stage's per-epoch
history (``edgekd.train.engine.fit``) and raises :class:`~edgekd.errors.DivergenceError`, so the
pipeline stops with the stage named and does not keep its outputs, when:

- **not finite**: a train or validation loss is NaN or infinite (any schedule);
- **rising**: the last epoch's train loss is above ``RISE_FACTOR`` x the lowest epoch's (>= 2 epochs);
- **at chance**: the best validation accuracy is no better than always answering the validation
  set's most common class, within 3 binomial standard deviations.

The last two need at least ``MIN_STEPS`` optimizer steps: a smoke schedule of a few steps cannot
tell divergence from too little training. ``<train>.divergence_check: false`` turns the check off.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, Sequence

import numpy as np

from ..errors import DivergenceError

RISE_FACTOR = 1.5  # a real rise, not the noise of a short epoch or of observers freezing in QAT
MIN_STEPS = 20
SIGMAS = 3.0


@dataclass
class Health:
    """The verdict: ``problems`` is empty when the stage looks healthy."""

    problems: list[str]
    chance_bound: float

    @property
    def ok(self) -> bool:
        return not self.problems


def majority_share(labels: np.ndarray) -> float:
    """Accuracy of always answering the most common class of ``labels``."""
    return float(np.bincount(labels).max()) / len(labels) if len(labels) else 1.0


def chance_bound(val_labels: np.ndarray) -> float:
    """Accuracy a model must beat to be above chance on ``val_labels``: majority share + 3 sigma."""
    p = majority_share(val_labels)
    return p + SIGMAS * math.sqrt(p * (1 - p) / max(len(val_labels), 1))


def diagnose(history: Sequence[dict[str, Any]], val_labels: np.ndarray) -> Health:
    """What is wrong with a stage's training ``history`` (one dict per epoch, as ``fit`` records it)."""
    bound = chance_bound(val_labels)
    problems: list[str] = []
    if not history:
        return Health(problems, bound)
    losses = [float(r["train_loss"]) for r in history]
    val_losses = [float(r.get("val_loss", 0.0)) for r in history]
    if not all(math.isfinite(v) for v in losses + val_losses):
        problems.append(f"the loss is not finite (train {_fmt(losses)}; val {_fmt(val_losses)})")
    steps = int(history[-1].get("steps", 0))
    if steps >= MIN_STEPS:
        finite = [v for v in losses if math.isfinite(v)]
        if len(history) >= 2 and finite and math.isfinite(losses[-1]) and losses[-1] > RISE_FACTOR * min(finite):
            problems.append(f"the train loss rose to {losses[-1]:.4g}, over {RISE_FACTOR}x its lowest "
                            f"{min(finite):.4g} (per epoch: {_fmt(losses)})")
        best = max(float(r["val_accuracy"]) for r in history)
        if best <= bound:
            problems.append(f"the best validation accuracy {best:.3f} is at chance (the most common class alone "
                            f"scores {majority_share(val_labels):.3f}; above chance needs > {bound:.3f} "
                            f"on {len(val_labels)} images)")
    return Health(problems, bound)


def _fmt(values: Sequence[float]) -> str:
    shown = ", ".join(f"{v:.4g}" for v in values[:8])
    return shown + (", ..." if len(values) > 8 else "")


def check_health(stage: str, train_key: str, history: Sequence[dict[str, Any]], val_labels: np.ndarray,
                 lr: float, grad_clip: float | None) -> None:
    """Raise DivergenceError naming the stage, what went wrong and the settings to change."""
    health = diagnose(history, val_labels)
    if health.ok:
        return
    clip = f"set {train_key}.grad_clip (e.g. 2.0)" if not grad_clip else f"lower {train_key}.grad_clip (now {grad_clip:g})"
    raise DivergenceError(
        f"{stage}: training diverged: {'; '.join(health.problems)}. The run stops here; the {stage} stage's "
        "outputs were not kept and no later stage ran",
        f"lower {train_key}.lr (now {lr:g}, e.g. to {lr / 10:g}), {clip}, raise {train_key}.warmup_fraction, "
        f"or train longer ({train_key}.epochs); {train_key}.divergence_check: false turns this check off",
    )
