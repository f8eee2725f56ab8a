"""How far may an INT8 file's logits legitimately drift from its QAT model's? A bound from the scales.

onnxruntime's int8 kernels requantize with their own integer/float arithmetic, so an activation can
land one quantization step (``scale``) away from torch's fake quant where the float value sits near
a rounding boundary. The last weight layer (``logits = W a + b``) maps a change of ``k`` steps in
each of its inputs to at most ``k * s * ||W_j||_1`` in logit ``j`` (triangle inequality), and the
difference of two logits ``a, b`` by at most ``k * s * ||W_a - W_b||_1``. A quantized output adds one
output step. These bounds come from the reference (torch) model's frozen scales and weights, never
from the file under test, so a damaged file cannot widen its own tolerance.
"""
from __future__ import annotations

from typing import Any

import numpy as np
import torch
from torch import nn

from ..errors import ArtifactError
from .call_order import is_weight_layer, record_calls

# float32 accumulation slack on top of the quantization bound: logits of O(10) computed in fp32
# differ by ~1e-6 between kernels; 1e-4 keeps an exact-tie image (margin 0) from failing on that.
FLOAT_SLACK = 1e-4


def _is_act_quant(mod: nn.Module) -> bool:
    from ..quant import ActFakeQuant

    return isinstance(mod, ActFakeQuant)


def _last_layer(calls: list[tuple[str, nn.Module, Any]]) -> tuple[int, str, nn.Module]:
    idx = [i for i, (_, m, _) in enumerate(calls) if is_weight_layer(m)]
    if not idx:
        raise ArtifactError("the QAT model runs no Conv/Linear layer", "export a model built by edgekd.quant.prepare_qat")
    i = idx[-1]
    return i, calls[i][0], calls[i][1]


def _scale(mod: nn.Module) -> float:
    return float(torch.as_tensor(mod.scale).float().max())


def _flat_weight(layer: nn.Module) -> np.ndarray:
    """The weight the int8 file stores (fake-quantized when the layer has it), one row per output."""
    with torch.no_grad():
        w = layer.quantized_weight() if hasattr(layer, "quantized_weight") else layer.weight
    return w.detach().float().cpu().reshape(w.shape[0], -1).numpy().astype(np.float64)


def int8_noise_bounds(qat_model: nn.Module, sample: np.ndarray, steps: float = 1.0) -> dict[str, Any]:
    """Per-class logit bound [C] and pairwise margin bound [C, C] for ``steps`` quantization steps of drift.

    ``sample`` (one NCHW image suffices) only drives the call order. The input scale is that of the
    last activation quantizer run before the last weight layer; a quantizer after it (quantized
    logits) adds its own step. Returns ``{"logit_bound", "margin_bound", "input_scale",
    "output_scale", "layer"}``.
    """
    device = next(qat_model.parameters()).device
    x = torch.from_numpy(np.ascontiguousarray(sample[:1], dtype=np.float32)).to(device)
    calls = record_calls(qat_model, x, lambda m: _is_act_quant(m) or is_weight_layer(m))
    i, name, layer = _last_layer(calls)
    before = [m for _, m, _ in calls[:i] if _is_act_quant(m)]
    after = [m for _, m, _ in calls[i + 1:] if _is_act_quant(m)]
    if not before:
        raise ArtifactError(f"no activation quantizer runs before the last layer {name}: its input is not int8",
                            "prepare the model with edgekd.quant.prepare_qat so every layer reads quantized input")
    s_in = _scale(before[-1])
    s_out = _scale(after[0]) if after else 0.0
    w = _flat_weight(layer)
    logit = steps * s_in * np.abs(w).sum(1) + s_out + FLOAT_SLACK
    margin = steps * s_in * np.abs(w[:, None, :] - w[None, :, :]).sum(2) + 2 * (s_out + FLOAT_SLACK)
    return {"logit_bound": logit, "margin_bound": margin, "input_scale": s_in, "output_scale": s_out, "layer": name}
