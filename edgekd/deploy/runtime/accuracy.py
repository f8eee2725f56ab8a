"""Accuracy, per-class accuracy and the confusion matrix from logits. numpy only."""
from __future__ import annotations

from typing import Any

import numpy as np

from ...errors import ConfigError


def confusion_matrix(pred: np.ndarray, labels: np.ndarray, num_classes: int) -> np.ndarray:
    """``[true, predicted]`` counts, int64 ``[num_classes, num_classes]``."""
    cm = np.zeros((num_classes, num_classes), dtype=np.int64)
    np.add.at(cm, (labels.astype(np.int64), pred.astype(np.int64)), 1)
    return cm


def accuracy_report(logits: np.ndarray, labels: np.ndarray, num_classes: int) -> dict[str, Any]:
    """``{"accuracy", "per_class_accuracy", "confusion"}`` (plain Python types, JSON-ready).

    Rows of ``confusion`` are true classes, columns predictions. A class absent from
    ``labels`` has no accuracy to report, so its entry is None (0.0 would read as a failure).
    """
    logits = np.asarray(logits)
    labels = np.asarray(labels).astype(np.int64)
    if logits.ndim != 2 or len(logits) != len(labels):
        raise ConfigError(
            f"logits {logits.shape} and labels {labels.shape} do not line up",
            "pass logits [N, num_classes] and labels [N]",
        )
    if len(labels) and (labels.min() < 0 or labels.max() >= num_classes):
        raise ConfigError(f"labels must lie in [0, {num_classes}), got [{labels.min()}, {labels.max()}]",
                          "check num_classes against the dataset's classes")
    pred = logits.argmax(axis=1)
    cm = confusion_matrix(pred, labels, num_classes)
    support = cm.sum(axis=1)
    per_class = [float(cm[c, c] / support[c]) if support[c] else None for c in range(num_classes)]
    return {
        "accuracy": float((pred == labels).mean()) if len(labels) else 0.0,
        "per_class_accuracy": per_class,
        "confusion": cm.tolist(),
    }
