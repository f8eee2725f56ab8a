"""Score-based black-box attack (numpy only): the L-inf Square Attack.

Andriushchenko, Croce, Flammarion & Hein 2020, "Square Attack: a query-efficient black-box
adversarial attack via random search". It needs only logits, so it attacks the deployed file
itself (an onnxruntime session, INT8 included) through ``predict_fn(images) -> logits``.
This follows the authors' ``square_attack_linf``: vertical-stripe initialisation, then per
query one random square per image whose perturbation is re-drawn as +-eps per channel, kept
when the margin loss drops; the square's area shrinks on the paper's schedule.
"""
from __future__ import annotations

from typing import Callable

import numpy as np

from ..batching import map_batches
from ..errors import ConfigError

PredictFn = Callable[[np.ndarray], np.ndarray]

# (fraction of the query budget * 10000, divisor of p_init), from the authors' p_selection
_P_SCHEDULE = (
    (10, 1), (50, 2), (200, 4), (500, 8), (1000, 16), (2000, 32), (4000, 64), (6000, 128), (8000, 256), (10000, 512),
)


def p_selection(p_init: float, it: int, n_iters: int) -> float:
    """Fraction of pixels the square covers at iteration ``it`` of ``n_iters``."""
    t = int(it / n_iters * 10000)
    for upper, div in _P_SCHEDULE:
        if t <= upper:
            return p_init / div
    return p_init


def margin(logits: np.ndarray, y: np.ndarray) -> np.ndarray:
    """``logit_y - max_{j != y} logit_j``; negative means misclassified."""
    z = np.asarray(logits, dtype=np.float64)
    idx = np.arange(len(y))
    true = z[idx, y]
    other = z.copy()
    other[idx, y] = -np.inf
    return true - other.max(axis=1)


def square_attack(
    predict_fn: PredictFn,
    x: np.ndarray,
    y: np.ndarray,
    epsilon: float,
    queries: int,
    rng: np.random.Generator,
    p_init: float = 0.05,
    batch_size: int = 256,
) -> np.ndarray:
    """Run the L-inf Square Attack; return adversarial images (float32, same shape as ``x``).

    Each image uses at most ``queries`` model evaluations (the initialisation counts as one) and
    stops once misclassified. Every output satisfies ``|x_adv - x| <= epsilon`` and [0, 1].
    """
    if epsilon < 0 or queries < 1:
        raise ConfigError(f"square attack needs epsilon >= 0 and queries >= 1, got {epsilon}, {queries}")
    x = np.asarray(x, dtype=np.float32)
    y = np.asarray(y, dtype=np.int64)
    if epsilon == 0:
        return x.copy()
    n, c, h, w = x.shape
    eps = np.float32(epsilon)
    # vertical stripes: one random sign per (image, channel, column)
    x_best = np.clip(x + rng.choice(np.array([-eps, eps]), size=(n, c, 1, w)), 0.0, 1.0).astype(np.float32)
    margin_min = margin(map_batches(predict_fn, x_best, batch_size), y)
    rows = np.arange(h)[None, :, None]
    cols = np.arange(w)[None, None, :]
    for it in range(queries - 1):
        active = np.flatnonzero(margin_min > 0)
        if active.size == 0:
            break
        xa, xb = x[active], x_best[active]
        deltas = xb - xa
        s = int(round(np.sqrt(p_selection(p_init, it, queries) * h * w)))
        s = min(max(s, 1), h - 1)
        top = rng.integers(0, h - s, size=active.size)[:, None, None]
        left = rng.integers(0, w - s, size=active.size)[:, None, None]
        win = ((rows >= top) & (rows < top + s) & (cols >= left) & (cols < left + s))[:, None]  # [n,1,h,w]
        # re-draw the square's sign until it changes the image (the authors' while-loop, capped)
        todo = np.ones(active.size, dtype=bool)
        for _ in range(16):
            signs = rng.choice(np.array([-eps, eps]), size=(active.size, c, 1, 1))
            deltas = np.where(win & todo[:, None, None, None], signs, deltas)
            changed = (np.abs(np.clip(xa + deltas, 0, 1) - xb) >= 1e-7) & win
            todo = ~changed.reshape(active.size, -1).any(axis=1)
            if not todo.any():
                break
        x_new = np.clip(xa + deltas, 0.0, 1.0).astype(np.float32)
        m = margin(map_batches(predict_fn, x_new, batch_size), y[active])
        better = m < margin_min[active]
        margin_min[active] = np.where(better, m, margin_min[active])
        x_best[active] = np.where(better[:, None, None, None], x_new, xb)
    return x_best
