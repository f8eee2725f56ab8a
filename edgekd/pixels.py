"""The one uint8 -> float pixel conversion (imports no torch, so both sides share it).

Training (``edgekd.data``), export parity, the onnxruntime checks (``edgekd.deploy.runtime``)
and robustness evaluation all feed models float32 pixels in [0, 1] through ``to_float``.
"""
from __future__ import annotations

from typing import Any

import numpy as np


def to_float(images: Any) -> Any:
    """uint8 pixels -> float32 in [0, 1] (same shape); float input is passed through as float32.

    Takes a numpy array, or a torch tensor (duck-typed, so this module never imports torch):
    the training loader converts on the device, where the uint8 batch already lives, to avoid
    moving four times the bytes.
    """
    if hasattr(images, "div_"):  # a torch tensor
        return images.float().div_(255.0)
    x = np.asarray(images)
    if x.dtype == np.uint8:
        return x.astype(np.float32) / np.float32(255.0)
    return x.astype(np.float32, copy=False)
