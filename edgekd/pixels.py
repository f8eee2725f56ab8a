"""The one uint8 -> float pixel conversion (numpy only, so both sides share it).

Training (``edgekd.data``), export parity, the onnxruntime checks (``edgekd.deploy.runtime``)
and robustness evaluation all feed models float32 pixels in [0, 1] through ``to_float``.
"""
from __future__ import annotations

import numpy as np


def to_float(images: np.ndarray) -> np.ndarray:
    """uint8 pixels -> float32 in [0, 1] (same shape); float input is passed through as float32."""
    x = np.asarray(images)
    if x.dtype == np.uint8:
        return x.astype(np.float32) / np.float32(255.0)
    return x.astype(np.float32, copy=False)
