"""Convolutions whose CPU bf16 weight gradients are wrong, and the fp32 fallback that avoids them.

Measured (torch 2.14.1, AMD EPYC with AVX512-BF16, and with ``ONEDNN_MAX_CPU_ISA=AVX512_CORE_VNNI``):
under bf16 autocast, oneDNN's ``jit_bf16`` backward-weights kernel returns uninitialized values
(NaN, or finite garbage up to 1e38) for the kernel taps that fall on padding, when a 3x3 conv is
strided along the width of a map that is one column wide at its output. 18-26 of 30 trials were
wrong for ``Conv2d(64, 128, 3, stride=2, padding=1)`` on a 1x1 map; 0 of 30 for the same conv on a
3x3 map, with stride along the height only, with a 3x1 kernel, or depthwise; the AVX2 path (no
AVX-512) and fp32 are exact (``benchmarks/bf16_conv_probe.py`` measures every shape on any machine).
A ResNet's last stage meets this on images of 8x8 pixels (8 -> 4 -> 2 -> 1 -> stride 2). The forward
pass is correct, so evaluation under bf16 is unaffected; training is not: the first such step writes
NaN or huge weights.

edgekd does not try to pin down oneDNN's exact condition; it flags every conv strided along a width
with a kernel wider than one and an output one column wide, which covers every failing case measured
(and some that passed: stride 2 on a 2-wide map, depthwise, 8 channels), and trains the stage in fp32
where one exists. A false positive costs speed, never correctness.
"""
from __future__ import annotations

import copy
from typing import Any, Sequence

import torch
from torch import nn

from .distributed import Precision


def degenerate_strided_convs(model: nn.Module, input_shape: Sequence[int]) -> list[str]:
    """Names of the ``Conv2d`` modules of ``model`` that, on one ``[1, *input_shape]`` input, are strided
    along a width whose output is one column, with a kernel wider than one column (see module doc).

    Runs one fp32 forward pass without gradients on a copy of ``model`` in eval mode, so nothing that
    updates on a forward pass (BatchNorm statistics, QAT observers, a step counter) sees the probe.
    """
    found: list[str] = []
    model = copy.deepcopy(model)  # the hooks die with the copy

    def watch(name: str) -> Any:
        def hook(conv: nn.Conv2d, _inp: Any, out: torch.Tensor) -> None:
            if conv.stride[1] > 1 and conv.kernel_size[1] > 1 and out.shape[-1] == 1:
                found.append(name)
        return hook

    for name, module in model.named_modules():
        if isinstance(module, nn.Conv2d):
            module.register_forward_hook(watch(name))
    param = next(model.parameters(), None)
    device = param.device if param is not None else torch.device("cpu")
    model.eval()
    with torch.no_grad():
        model(torch.zeros(1, *input_shape, device=device))
    return found


def guard_cpu_bf16(precision: Precision, model: nn.Module, input_shape: Sequence[int] | None,
                   device: torch.device) -> Precision:
    """``precision``, or fp32 when it is CPU bf16 and ``model`` has a conv the oneDNN bug hits (module doc).

    An explicit ``amp: on`` falls back too: it asks for speed, and these gradients are garbage. The
    returned precision's ``reason`` names the convs and the fix.
    """
    if device.type != "cpu" or precision.dtype is not torch.bfloat16 or input_shape is None:
        return precision
    bad = degenerate_strided_convs(model, input_shape)
    if not bad:
        return precision
    shown = ", ".join(repr(n) for n in bad[:3]) + (f" and {len(bad) - 3} more" if len(bad) > 3 else "")
    subject = f"conv {shown} is" if len(bad) == 1 else f"convs {shown} are"
    return Precision(reason=(
        f"cpu: fp32, not bf16 ({precision.reason}): {subject} strided over a map one column wide "
        f"at {tuple(input_shape)} inputs, where oneDNN's bf16 backward-weights kernel returns uninitialized "
        "gradients (edgekd.train.bf16_guard); larger images (data.image_size) or a model that "
        "downsamples less (e.g. teacher.maxpool: false) avoid it"))


def loader_input_shape(loader: Any) -> tuple[int, ...] | None:
    """(C, H, W) of the loader's images: its ``image_shape`` where it has one, else its first batch's."""
    shape = getattr(loader, "image_shape", None)
    if shape is not None:
        return tuple(int(s) for s in shape)
    for batch in loader:
        x = batch[0] if isinstance(batch, (tuple, list)) else batch
        return tuple(int(s) for s in x.shape[1:]) if isinstance(x, torch.Tensor) and x.ndim == 4 else None
    return None


__all__ = ["degenerate_strided_convs", "guard_cpu_bf16", "loader_input_shape"]
