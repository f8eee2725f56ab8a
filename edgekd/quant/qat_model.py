"""``QATModel`` (normalization + quantized input + fake-quant net), ``prepare_qat`` and the observer schedule."""
from __future__ import annotations

import contextlib
from typing import Any, Collection, Iterable, Iterator

import torch
from torch import nn

from ..errors import ConfigError
from .modules import QConv2d, QLinear
from .observers import ActFakeQuant
from .prepare import deepcopy_model, quantize_graph


class QATModel(nn.Module):
    """``forward(x) = net(fq_in((x - mean) / std))`` for pixels ``x`` in [0, 1], NCHW.

    ``net`` is the fx-rewritten classifier (folded BN, int8 fake-quant weights, uint8 fake-quant
    activations). Everything the INT8 export needs (scales, zero points, frozen flags) is a buffer,
    so ``state_dict`` / ``load_state_dict`` round-trip a calibrated or frozen model exactly.
    """

    def __init__(self, net: nn.Module, mean: torch.Tensor, std: torch.Tensor) -> None:
        super().__init__()
        self.net = net
        self.register_buffer("mean", mean.detach().clone().float().reshape(1, -1, 1, 1))
        self.register_buffer("std", std.detach().clone().float().reshape(1, -1, 1, 1))
        self.input_fq = ActFakeQuant("any")
        for node in getattr(net, "graph", None).nodes if hasattr(net, "graph") else ():
            if node.op == "placeholder":  # layers reading the raw input read the quantized input
                for user in node.users:
                    layer = net.get_submodule(str(user.target)) if user.op == "call_module" else None
                    if isinstance(layer, (QConv2d, QLinear)):
                        layer.link_input_quant(self.input_fq)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.device.type in ("cuda", "cpu") and torch.is_autocast_enabled(x.device.type):
            # fake quant must see fp32 values: the int8 grid is defined in fp32
            with torch.autocast(device_type=x.device.type, enabled=False):
                return self._forward(x.float())
        return self._forward(x)

    def _forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(self.input_fq((x - self.mean) / self.std))

    def weight_layers(self) -> list[tuple[str, nn.Module]]:
        return [(n, m) for n, m in self.named_modules() if isinstance(m, (QConv2d, QLinear))]

    @torch.no_grad()
    def sync_weight_scales(self) -> None:
        """Refresh each layer's ``w_scale`` buffer from its current weights (before export)."""
        from .observers import weight_scale

        for _, layer in self.weight_layers():
            layer.w_scale.copy_(weight_scale(layer.weight))


@contextlib.contextmanager
def calibrating(model: nn.Module) -> Iterator[None]:
    """Let the observers of ``model`` record ranges in eval mode (BN folded, dropout off)."""
    quantizers = [m for m in model.modules() if isinstance(m, ActFakeQuant)]
    for q in quantizers:
        q.force_observe = True
    try:
        yield
    finally:
        for q in quantizers:
            q.force_observe = False


def _images(batch: Any) -> torch.Tensor:
    return batch[0] if isinstance(batch, (tuple, list)) else batch


@torch.no_grad()
def calibrate(model: nn.Module, loader: Iterable[Any], num_batches: int) -> int:
    """Run up to ``num_batches`` batches through ``model`` with observers on; returns batches used."""
    device = next(model.parameters()).device
    was_training = model.training
    model.eval()
    used = 0
    with calibrating(model):
        for batch in loader:
            if used >= num_batches:
                break
            model(_images(batch).to(device, torch.float32))
            used += 1
    model.train(was_training)
    return used


def prepare_qat(model: nn.Module, calib_loader: Iterable[Any] | None = None, num_batches: int = 0,
                keep_float: Collection[str] = ()) -> QATModel:
    """The QAT twin of a ``Normalized`` model (the input is copied, never mutated).

    ``keep_float`` names Conv2d/Linear layers of ``model.net`` to leave in float (mixed precision): they
    are trained in float and export as float Conv/Gemm (see :func:`quantize_graph`).

    BN is folded into convs, weights get per-channel symmetric int8 fake quant, activations
    per-tensor uint8 fake quant at the points onnxruntime fuses into int8 kernels. With a
    ``calib_loader`` the observers are calibrated on ``num_batches`` batches (eval mode);
    without one (``num_batches=0``) the model is ready for ``load_state_dict`` of a saved QAT state.
    """
    for attr in ("net", "mean", "std"):
        if not hasattr(model, attr):
            raise ConfigError(f"prepare_qat needs a Normalized model (with .net/.mean/.std); got {type(model).__name__}",
                              "wrap the classifier in edgekd.models.Normalized(net, mean, std)")
    src = deepcopy_model(model).eval()
    qmodel = QATModel(quantize_graph(src.net, keep_float), torch.as_tensor(src.mean), torch.as_tensor(src.std))
    qmodel.to(next(src.parameters()).device)
    if calib_loader is not None and num_batches > 0:
        used = calibrate(qmodel, calib_loader, num_batches)
        if used == 0:
            raise ConfigError("the calibration loader yielded no batches", "give qat a non-empty training split")
    return qmodel.eval()


def freeze_observers(model: nn.Module) -> int:
    """Freeze every activation observer in ``model`` (scales stop moving); returns how many."""
    quantizers = [m for m in model.modules() if isinstance(m, ActFakeQuant)]
    for q in quantizers:
        q.freeze()
    return len(quantizers)
