"""Which torch modules run, in which order: the bridge from a torch model to its exported graph.

The TorchScript exporter writes ONNX nodes in trace (= execution) order, so the k-th call of a
Conv/Linear module is the k-th Conv/Gemm node, and the k-th activation fake quant the k-th
activation QuantizeLinear. Node names alone are not unique enough (fx-rewritten models).
"""
from __future__ import annotations

from typing import Callable, Iterable

import torch
from torch import nn


Hook = Callable[[nn.Module, object, torch.Tensor], None]


def run_with_hooks(model: nn.Module, x: torch.Tensor, hooks: Iterable[tuple[nn.Module, Hook]]) -> None:
    """Run ``model(x)`` in eval mode without grad with forward ``hooks`` attached to their modules.

    The hooks are removed and the model's train/eval mode restored afterwards, even on error.
    """
    handles = []
    was_training = model.training
    try:
        for mod, hook in hooks:
            handles.append(mod.register_forward_hook(hook))
        model.eval()
        with torch.no_grad():
            model(x)
    finally:
        for h in handles:
            h.remove()
        model.train(was_training)


def record_calls(model: nn.Module, x: torch.Tensor, select: Callable[[nn.Module], bool],
                 keep_outputs: bool = False) -> list[tuple[str, nn.Module, torch.Tensor | None]]:
    """Run ``model(x)`` (eval, no grad) and list (name, module, output or None) of selected modules in call order."""
    calls: list[tuple[str, nn.Module, torch.Tensor | None]] = []

    def recorder(name: str) -> Hook:
        def hook(m: nn.Module, _inp: object, out: torch.Tensor) -> None:
            calls.append((name, m, out.detach().float().cpu() if keep_outputs else None))
        return hook

    run_with_hooks(model, x, [(mod, recorder(name)) for name, mod in model.named_modules() if select(mod)])
    return calls


def is_weight_layer(mod: nn.Module) -> bool:
    """Modules that export to Conv / Gemm nodes."""
    return isinstance(mod, (nn.Conv2d, nn.Linear))
