"""Robustness metrics (numpy only): calibration, OOD scores and AUROC, corruption error.

- ECE / reliability diagram: Guo et al. 2017, equal-width confidence bins.
- Temperature scaling: one scalar T fitted on the validation split by minimising NLL.
- AUROC: the Mann-Whitney U statistic, so ties count one half.
- OOD scores: maximum softmax probability (Hendrycks & Gimpel 2017) and negative free
  energy (Liu et al. 2020); both are "higher = more in-distribution".
- mCE / relative mCE: Hendrycks & Dietterich 2019.
"""
from __future__ import annotations

import math
from typing import Mapping, Optional, Sequence

import numpy as np

from ..errors import ConfigError


def softmax(logits: np.ndarray, temperature: float = 1.0) -> np.ndarray:
    """Row-wise softmax of ``logits / temperature`` in float64 (numerically stable)."""
    z = np.asarray(logits, dtype=np.float64) / temperature
    z = z - z.max(axis=1, keepdims=True)
    e = np.exp(z)
    return e / e.sum(axis=1, keepdims=True)


def _logsumexp(z: np.ndarray) -> np.ndarray:
    m = z.max(axis=1, keepdims=True)
    return (m + np.log(np.exp(z - m).sum(axis=1, keepdims=True)))[:, 0]


def nll(logits: np.ndarray, labels: np.ndarray, temperature: float = 1.0) -> float:
    """Mean negative log-likelihood of ``labels`` under ``softmax(logits / temperature)``."""
    z = np.asarray(logits, dtype=np.float64) / temperature
    y = np.asarray(labels, dtype=np.int64)
    return float(np.mean(_logsumexp(z) - z[np.arange(len(y)), y]))


def _bin_index(conf: np.ndarray, n_bins: int) -> np.ndarray:
    # bins are (k/n, (k+1)/n]; confidence 0 falls in the first bin
    return np.clip(np.ceil(conf * n_bins).astype(np.int64) - 1, 0, n_bins - 1)


def reliability(probs: np.ndarray, labels: np.ndarray, n_bins: int = 15) -> dict[str, list]:
    """Reliability diagram data over ``n_bins`` equal-width confidence bins.

    Returns ``bins`` (bin centres), ``accuracy`` and ``confidence`` (bin means; 0.0 in an empty
    bin) and ``count`` (samples per bin), all lists of length ``n_bins``, JSON-ready.
    """
    p = np.asarray(probs, dtype=np.float64)
    y = np.asarray(labels, dtype=np.int64)
    if p.ndim != 2 or len(p) != len(y) or len(y) == 0:
        raise ConfigError(f"reliability needs probs [N, K] and labels [N], got {p.shape} and {y.shape}")
    conf = p.max(axis=1)
    correct = (p.argmax(axis=1) == y).astype(np.float64)
    idx = _bin_index(conf, n_bins)
    count = np.bincount(idx, minlength=n_bins)
    safe = np.maximum(count, 1)
    acc = np.bincount(idx, weights=correct, minlength=n_bins) / safe
    mean_conf = np.bincount(idx, weights=conf, minlength=n_bins) / safe
    centres = (np.arange(n_bins) + 0.5) / n_bins
    return {
        "bins": [float(c) for c in centres],
        "accuracy": [float(a) for a in acc],
        "confidence": [float(c) for c in mean_conf],
        "count": [int(c) for c in count],
    }


def ece(probs: np.ndarray, labels: np.ndarray, n_bins: int = 15) -> float:
    """Expected calibration error: sum over bins of (bin size / N) * |accuracy - confidence|."""
    r = reliability(probs, labels, n_bins)
    count = np.asarray(r["count"], dtype=np.float64)
    gap = np.abs(np.asarray(r["accuracy"]) - np.asarray(r["confidence"]))
    return float((count * gap).sum() / count.sum())


T_MIN, T_MAX = 0.05, 20.0  # the temperature search range


def temperature_at_bound(t: float, t_min: float = T_MIN, t_max: float = T_MAX) -> bool:
    """The fit ran to an end of its search range: NLL was still falling there (e.g. a validation split the
    model classifies perfectly, where T -> 0 keeps lowering it), so T calibrates nothing."""
    return not t_min * 1.01 < t < t_max / 1.01


def fit_temperature(
    logits: np.ndarray, labels: np.ndarray, t_min: float = T_MIN, t_max: float = T_MAX, iters: int = 80
) -> float:
    """Temperature T minimising validation NLL of ``softmax(logits / T)``.

    NLL is unimodal in log T (it is convex in 1/T), so a golden-section search over
    log T in [log t_min, log t_max] finds the minimum deterministically without scipy.
    """
    a, b = math.log(t_min), math.log(t_max)
    g = (math.sqrt(5.0) - 1.0) / 2.0
    c, d = b - g * (b - a), a + g * (b - a)
    fc, fd = nll(logits, labels, math.exp(c)), nll(logits, labels, math.exp(d))
    for _ in range(iters):
        if fc <= fd:
            b, d, fd = d, c, fc
            c = b - g * (b - a)
            fc = nll(logits, labels, math.exp(c))
        else:
            a, c, fc = c, d, fd
            d = a + g * (b - a)
            fd = nll(logits, labels, math.exp(d))
    return float(math.exp((a + b) / 2.0))


def _average_ranks(x: np.ndarray) -> np.ndarray:
    """1-based ranks, ties sharing the mean of the ranks they span."""
    _, inverse, counts = np.unique(x, return_inverse=True, return_counts=True)
    ends = np.cumsum(counts)  # rank of the last member of each tie group
    mean_rank = ends - (counts - 1) / 2.0
    return mean_rank[inverse]


def auroc(scores_in: np.ndarray, scores_out: np.ndarray) -> float:
    """Area under the ROC curve for "in-distribution scores higher": P(s_in > s_out) + P(tie)/2."""
    s_in = np.asarray(scores_in, dtype=np.float64).ravel()
    s_out = np.asarray(scores_out, dtype=np.float64).ravel()
    if len(s_in) == 0 or len(s_out) == 0:
        raise ConfigError("auroc needs at least one in-distribution and one outlier score")
    ranks = _average_ranks(np.concatenate([s_in, s_out]))
    n_in, n_out = len(s_in), len(s_out)
    u = ranks[:n_in].sum() - n_in * (n_in + 1) / 2.0
    return float(u / (n_in * n_out))


def msp_score(logits: np.ndarray) -> np.ndarray:
    """Maximum softmax probability per sample (higher = more in-distribution)."""
    return softmax(logits).max(axis=1)


def energy_score(logits: np.ndarray, T: float = 1.0) -> np.ndarray:
    """Negative free energy ``T * logsumexp(logits / T)`` per sample (higher = more in-distribution)."""
    return T * _logsumexp(np.asarray(logits, dtype=np.float64) / T)


def mce(
    errors_model: Mapping[str, Sequence[float]],
    errors_ref: Mapping[str, Sequence[float]],
    clean_error_model: Optional[float] = None,
    clean_error_ref: Optional[float] = None,
) -> tuple[float, Optional[float]]:
    """Mean corruption error and relative mCE against a reference model.

    ``CE_c = sum_s E_{s,c} / sum_s E^ref_{s,c}``; ``mCE = mean_c CE_c``.
    ``relCE_c = sum_s (E_{s,c} - E_clean) / sum_s (E^ref_{s,c} - E^ref_clean)``; relative mCE is
    its mean over c (``None`` when the clean errors are not given). Averaged over the corruptions
    both dicts share; a corruption whose reference denominator is 0 contributes NaN and is
    left out of the mean (it cannot be normalised), and an all-NaN result stays NaN.
    """
    names = [n for n in errors_model if n in errors_ref]
    if not names:
        raise ConfigError(
            f"mCE needs shared corruptions; model has {sorted(errors_model)}, reference has {sorted(errors_ref)}",
            "evaluate the model and the reference with the same check.robustness.corruptions",
        )
    ce, rel = [], []
    for n in names:
        e, r = np.asarray(errors_model[n], np.float64), np.asarray(errors_ref[n], np.float64)
        if e.shape != r.shape:
            raise ConfigError(f"corruption '{n}': {len(e)} severities for the model, {len(r)} for the reference")
        ce.append(e.sum() / r.sum() if r.sum() > 0 else math.nan)
        if clean_error_model is not None and clean_error_ref is not None:
            den = (r - clean_error_ref).sum()
            rel.append((e - clean_error_model).sum() / den if den != 0 else math.nan)

    def _mean(v: list[float]) -> float:
        a = np.asarray(v, dtype=np.float64)
        return float(np.nanmean(a)) if np.isfinite(a).any() else math.nan

    return _mean(ce), (_mean(rel) if rel else None)
