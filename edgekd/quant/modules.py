"""Conv / Linear with per-channel int8 fake-quant weights, and BatchNorm folding."""
from __future__ import annotations

from typing import Any

import torch
from torch import nn
import torch.nn.functional as F

from .observers import fake_quant_weight, weight_scale


class _WeightFakeQuant:
    """Mixin: the weight is fake-quantized per output channel on every forward.

    The scale follows the weights while training. ``w_scale`` is a buffer refreshed on each
    forward; during ONNX export it is used as a constant, so the file carries exactly it.
    """

    weight: nn.Parameter
    bias: torch.Tensor
    w_scale: torch.Tensor

    def _load_float(self, src: nn.Conv2d | nn.Linear) -> None:
        """Copy ``src``'s weight and bias (zeros when it has none) and initialise the weight scale."""
        with torch.no_grad():
            self.weight.copy_(src.weight)
            self.bias.copy_(src.bias if src.bias is not None else torch.zeros_like(self.bias))
        self._init_scale()

    def _init_scale(self) -> None:
        self.register_buffer("w_scale", weight_scale(self.weight))  # type: ignore[attr-defined]
        self._input_quant: list[Any] = []  # the ActFakeQuant feeding this layer (a list: not a submodule)

    def link_input_quant(self, fq: Any) -> None:
        """Remember the quantizer of this layer's input: the bias is rounded to its scale * w_scale."""
        self._input_quant = [fq]

    def quantized_bias(self, w_scale: torch.Tensor) -> torch.Tensor:
        """The bias on the int32 grid of ``input_scale * w_scale`` (as the INT8 file stores it), STE gradient.

        During export the float bias is emitted; the export post-processing rounds it the same way.
        """
        if torch.onnx.is_in_onnx_export() or not self._input_quant or not self._input_quant[0].calibrated:
            return self.bias
        step = (self._input_quant[0].scale * w_scale).detach()
        return self.bias + (torch.round(self.bias / step) * step - self.bias).detach()

    def quantized_weight(self) -> torch.Tensor:
        if torch.onnx.is_in_onnx_export():
            scale = self.w_scale  # constant in the graph: exported as an initializer
        else:
            scale = weight_scale(self.weight)
            with torch.no_grad():
                self.w_scale.copy_(scale)
        return fake_quant_weight(self.weight, scale)

    def quantized_params(self) -> tuple[torch.Tensor, torch.Tensor]:
        """(fake-quant weight, grid-rounded bias) for this forward."""
        weight = self.quantized_weight()
        return weight, self.quantized_bias(self.w_scale)


class QConv2d(_WeightFakeQuant, nn.Conv2d):
    """``nn.Conv2d`` whose weight is fake-quantized to int8 (per output channel, symmetric)."""

    @classmethod
    def from_float(cls, conv: nn.Conv2d) -> "QConv2d":
        q = cls(conv.in_channels, conv.out_channels, conv.kernel_size, conv.stride, conv.padding,
                conv.dilation, conv.groups, bias=True, padding_mode=conv.padding_mode,
                device=conv.weight.device, dtype=conv.weight.dtype)
        q._load_float(conv)
        return q

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self._conv_forward(x, *self.quantized_params())


class QLinear(_WeightFakeQuant, nn.Linear):
    """``nn.Linear`` whose weight is fake-quantized to int8 (per output feature, symmetric)."""

    @classmethod
    def from_float(cls, lin: nn.Linear) -> "QLinear":
        q = cls(lin.in_features, lin.out_features, bias=True, device=lin.weight.device, dtype=lin.weight.dtype)
        q._load_float(lin)
        return q

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.linear(x, *self.quantized_params())


@torch.no_grad()
def fold_bn(conv: nn.Conv2d, bn: nn.BatchNorm2d) -> nn.Conv2d:
    """A new conv computing ``bn(conv(x))`` with BN's running statistics folded into weight and bias."""
    if bn.running_mean is None or bn.running_var is None:
        raise ValueError("cannot fold a BatchNorm without running statistics (track_running_stats=False)")
    fused = nn.Conv2d(conv.in_channels, conv.out_channels, conv.kernel_size, conv.stride, conv.padding,
                      conv.dilation, conv.groups, bias=True, padding_mode=conv.padding_mode,
                      device=conv.weight.device, dtype=conv.weight.dtype)
    inv_std = torch.rsqrt(bn.running_var + bn.eps)
    gamma = bn.weight if bn.weight is not None else torch.ones_like(inv_std)
    beta = bn.bias if bn.bias is not None else torch.zeros_like(inv_std)
    factor = gamma * inv_std
    fused.weight.copy_(conv.weight * factor.reshape(-1, 1, 1, 1))
    bias = conv.bias if conv.bias is not None else torch.zeros_like(bn.running_mean)
    fused.bias.copy_(beta + (bias - bn.running_mean) * factor)
    return fused
