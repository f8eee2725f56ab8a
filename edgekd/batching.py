"""Run a function over an array in fixed-size slices (numpy only).

The one batching loop behind every "logits of these images" helper: onnxruntime sessions
(``runtime.onnx_logits``), numpy ``predict_fn`` callables (robustness) and torch models
(export parity). It imports numpy only, so torch-free and onnxruntime-free code can share it.
"""
from __future__ import annotations

from typing import Callable

import numpy as np


def map_batches(fn: Callable[[np.ndarray], np.ndarray], items: np.ndarray, batch_size: int) -> np.ndarray:
    """``fn`` applied to ``items[i:i + batch_size]`` for each batch, results concatenated along axis 0.

    ``items`` must not be empty (there is nothing to concatenate); callers that accept empty
    input decide what an empty result looks like.
    """
    return np.concatenate([fn(items[start:start + batch_size]) for start in range(0, len(items), batch_size)])
