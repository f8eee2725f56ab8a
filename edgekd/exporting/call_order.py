"""Which torch modules run, in which order: the bridge from a torch model to its exported graph.

The TorchScript exporter writes ONNX nodes in trace (= execution) order, so the k-th call of a
Conv/Linear module is the k-th Conv/Gemm node, and the k-th activation fake quant the k-th
activation QuantizeLinear. Node names alone are not unique enough (fx-rewritten models).
"""
from __future__ import annotations

from typing import Callable

import torch
from torch import nn


def record_calls(model: nn.Module, x: torch.Tensor, select: Callable[[nn.Module], bool],
                 keep_outputs: bool = False) -> list[tuple[str, nn.Module, torch.Tensor | None]]:
    """Run ``model(x)`` (eval, no grad) and list (name, module, output or None) of selected modules in call order."""
    calls: list[tuple[str, nn.Module, torch.Tensor | None]] = []
    handles = []
    for name, mod in model.named_modules():
        if select(mod):
            def hook(m: nn.Module, _inp: object, out: torch.Tensor, name: str = name) -> None:
                calls.append((name, m, out.detach().float().cpu() if keep_outputs else None))
            handles.append(mod.register_forward_hook(hook))
    was_training = model.training
    model.eval()
    try:
        with torch.no_grad():
            model(x)
    finally:
        for h in handles:
            h.remove()
        model.train(was_training)
    return calls


def is_weight_layer(mod: nn.Module) -> bool:
    """Modules that export to Conv / Gemm nodes."""
    return isinstance(mod, (nn.Conv2d, nn.Linear))
