"""Fake-quant building blocks written with ``torch.fake_quantize_*`` so they export to QDQ.

Activations: per-tensor uint8 affine with an EMA min/max observer whose state lives in buffers
(scale, zero point, running min/max, enabled flag), so ``state_dict`` carries frozen scales.
Weights: per-channel symmetric int8, scale = max|w| / 127 snapped to float16 precision relative to
the layer's largest scale, recomputed from the live weights.
"""
from __future__ import annotations

from typing import Any

import torch
from torch import nn

ACT_QMIN, ACT_QMAX = 0, 255  # uint8 activations: one of the ranges the ONNX exporter accepts
W_QMIN, W_QMAX = -128, 127  # int8 weights; symmetric scale uses 127 so -128 is never produced
SCALE_EPS = 1e-8  # a scale of 0 is invalid in ONNX; dead channels/tensors get this instead
# A layer's weight scales are stored in the INT8 file as float16 values times one float32 factor
# (edgekd.exporting.slim); QAT snaps them to that form so the file holds exactly what training used.
WEIGHT_SCALE_SIGNIFICANT_BITS = 11  # float16's precision
WEIGHT_SCALE_TOP = 2.0 ** 14  # the layer's largest scale maps to this float16 value (far from 65504)
WEIGHT_SCALE_BOTTOM = 2.0 ** -14  # float16's smallest normal: smaller (dead) channels are raised to it


def round_up_significant_bits(x: torch.Tensor, bits: int = WEIGHT_SCALE_SIGNIFICANT_BITS) -> torch.Tensor:
    """Positive normal float32 ``x`` rounded up to the next value with ``bits`` significant bits (exact).

    Works on the bit pattern: adding ``2**drop - 1`` and clearing the ``drop`` low mantissa bits is a
    ceiling (a carry out of the mantissa moves to the next power of two, also exact); plain integer ops,
    so it runs alike on every device and under torch.compile. At most ``2**(1 - bits)`` above ``x``.
    """
    drop = 24 - bits  # float32 carries 24 significant bits (23 stored + the implicit one)
    raw = x.float().contiguous().view(torch.int32)
    return ((raw + (2 ** drop - 1)) & ~(2 ** drop - 1)).view(torch.float32)


def weight_scale(weight: torch.Tensor) -> torch.Tensor:
    """Per-output-channel symmetric scale ``max|w| / 127``, snapped to what float16 can store (detached).

    Each scale becomes ``h * c``: ``c = max_channel_scale * 2**-14`` (one float32 factor per layer, exact)
    and ``h`` the channel's ``scale / c`` rounded *up* to 11 significant bits, float16's precision, so the
    file stores ``h`` as float16 and ``c`` once, bit-exactly. A scale moves by at most 2**-10 (0.1 %),
    upwards, so no weight moves past ±127; QAT trains with the snapped scale. Why not plain 11-bit scales
    (a power-of-two ``c``): with few significant bits, the int8 kernels' requantization meets exact rounding
    ties, which onnxruntime and torch's fake quant break differently: on the test student, 3 of 256 images
    fell beyond the export parity check's 3-step logit bound in 5 of 9 calibrations × image sets (1 of 9
    with unsnapped scales; none in this form, 99.78 % within on average; benchmarks/scale_ties_probe.py).
    """
    w = weight.detach().float()
    exact = (w.abs().reshape(w.shape[0], -1).amax(dim=1) / W_QMAX).clamp_min(SCALE_EPS)
    factor = exact.max() / WEIGHT_SCALE_TOP  # a power-of-two step: exact
    return round_up_significant_bits((exact / factor).clamp_min(WEIGHT_SCALE_BOTTOM)) * factor


def fake_quant_weight(weight: torch.Tensor, scale: torch.Tensor) -> torch.Tensor:
    """Fake-quantize ``weight`` per output channel (axis 0), zero point 0; straight-through gradient."""
    zero = torch.zeros(scale.shape, dtype=torch.int32, device=weight.device)
    return torch.fake_quantize_per_channel_affine(weight, scale, zero, 0, W_QMIN, W_QMAX)


class ActFakeQuant(nn.Module):
    """Per-tensor uint8 fake quant of an activation with an EMA min/max observer.

    ``kind`` fixes the range the observer may use: ``"relu"`` clamps min to 0 (zero point 0, so
    onnxruntime drops the Relu before Q), ``"relu6"`` clamps to [0, 6] (so the Clip before Q is
    dropped too), ``"any"`` is plain affine. Observation happens in training mode (or inside
    :func:`calibrating`) while ``observer_enabled`` is set; :meth:`freeze` clears it for good.
    The first ``1/averaging_constant`` batches are averaged uniformly (calibration), later ones
    move the range by an EMA with ``averaging_constant``.
    """

    def __init__(self, kind: str = "any", averaging_constant: float = 0.01) -> None:
        super().__init__()
        if kind not in ("any", "relu", "relu6"):
            raise ValueError(f"unknown activation kind {kind!r}; valid: any, relu, relu6")
        self.kind = kind
        self.averaging_constant = averaging_constant
        self.force_observe = False  # set by calibrating(): observe even in eval mode
        self.register_buffer("scale", torch.tensor(1.0))
        self.register_buffer("zero_point", torch.tensor(0, dtype=torch.int32))
        self.register_buffer("min_val", torch.tensor(0.0))
        self.register_buffer("max_val", torch.tensor(0.0))
        self.register_buffer("num_batches", torch.tensor(0, dtype=torch.int64))
        self.register_buffer("observer_enabled", torch.tensor(1, dtype=torch.uint8))
        # Host copy of (observer_enabled, num_batches): reading the buffers with .item() in every
        # forward is a device sync per quantizer per step on a GPU. Rebuilt from the buffers after a
        # state_dict load; the buffers stay the truth that checkpoints carry.
        self._host: tuple[bool, int] | None = None

    def _host_state(self) -> tuple[bool, int]:
        if self._host is None:
            self._host = (bool(self.observer_enabled.item()), int(self.num_batches.item()))
        return self._host

    def _load_from_state_dict(self, *args: Any, **kwargs: Any) -> None:
        super()._load_from_state_dict(*args, **kwargs)
        self._host = None

    @property
    def calibrated(self) -> bool:
        return self._host_state()[1] > 0

    @property
    def frozen(self) -> bool:
        return not self._host_state()[0]

    def freeze(self) -> None:
        """Stop observing: scale and zero point stay what they are now (and in ``state_dict``)."""
        self.observer_enabled.fill_(0)
        self._host = (False, self._host_state()[1])

    @torch.no_grad()
    def observe(self, x: torch.Tensor) -> None:
        """Fold one batch's min/max into the running range and recompute scale / zero point."""
        lo, hi = torch.aminmax(x.detach().float())
        enabled, n = self._host_state()
        c = max(1.0 / (n + 1), self.averaging_constant)
        if n == 0:
            self.min_val.copy_(lo)
            self.max_val.copy_(hi)
        else:
            self.min_val.add_(c * (lo - self.min_val))
            self.max_val.add_(c * (hi - self.max_val))
        self.num_batches.add_(1)
        self._host = (enabled, n + 1)
        self._update_qparams()

    def _update_qparams(self) -> None:
        lo = torch.clamp(self.min_val, max=0.0)  # the range must contain 0 (exact zero padding)
        hi = torch.clamp(self.max_val, min=0.0)
        if self.kind in ("relu", "relu6"):
            lo = torch.zeros_like(lo)
        if self.kind == "relu6":
            hi = torch.clamp(hi, max=6.0)
        scale = ((hi - lo) / (ACT_QMAX - ACT_QMIN)).clamp_min(SCALE_EPS)
        zp = torch.clamp(torch.round(ACT_QMIN - lo / scale), ACT_QMIN, ACT_QMAX)
        self.scale.copy_(scale)
        self.zero_point.copy_(zp.to(torch.int32))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if torch.onnx.is_in_onnx_export():  # frozen constants only: no data-dependent Python branches
            return torch.fake_quantize_per_tensor_affine(x, self.scale, self.zero_point, ACT_QMIN, ACT_QMAX)
        if (self.training or self.force_observe) and self._host_state()[0]:
            self.observe(x)
        if not self.calibrated:
            return x  # nothing observed yet: no range to quantize to
        return torch.fake_quantize_per_tensor_affine(x, self.scale, self.zero_point, ACT_QMIN, ACT_QMAX)

    def extra_repr(self) -> str:
        return f"kind={self.kind}, scale={float(self.scale):.6g}, zero_point={int(self.zero_point)}, frozen={self.frozen}"
