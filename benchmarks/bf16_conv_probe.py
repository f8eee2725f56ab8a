"""Are CPU bf16 conv weight gradients right on this machine? The shapes behind edgekd.train.bf16_guard.

For each conv shape, ``--trials`` fresh convs run forward under bf16 autocast and backward; the weight
gradient is compared with an fp32 conv on the same bf16-rounded operands. A trial is wrong when the
gradient is not finite or differs by more than 5 % of the reference's largest entry (bf16 rounding of
the products stays far below that). Prints, per shape, the wrong trials and whether the guard flags it.

    .venv/bin/python benchmarks/bf16_conv_probe.py [--trials 30] [--threads 1]

Measured on an AMD EPYC (AVX512-BF16), torch 2.14.1: 18-26/30 wrong for a stride-2 3x3 conv on a 1x1 map;
the AVX2 kernels (``ONEDNN_MAX_CPU_ISA=AVX2``) and fp32 are exact.
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

import torch
from torch import nn

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from edgekd.train.bf16_guard import degenerate_strided_convs  # noqa: E402

# (in channels, out channels, input H x W, stride, kernel, padding, groups)
SHAPES = [
    (64, 128, (1, 1), 2, 3, 1, 1), (64, 128, (5, 1), 2, 3, 1, 1), (64, 128, (1, 1), (1, 2), 3, 1, 1),
    (64, 128, (2, 2), 3, 3, 1, 1), (64, 128, (1, 1), 2, 5, 2, 1), (64, 128, (1, 5), 2, 3, 1, 1),
    (64, 128, (1, 1), (2, 1), 3, 1, 1), (64, 128, (1, 1), 2, (3, 1), (1, 0), 1), (64, 128, (3, 3), 2, 3, 1, 1),
    (64, 64, (1, 1), 2, 3, 1, 64), (8, 8, (1, 1), 2, 3, 1, 1),
]


def wrong_trials(cin: int, cout: int, hw: tuple[int, int], stride, kernel, pad, groups: int, trials: int) -> int:
    wrong = 0
    for seed in range(trials):
        torch.manual_seed(seed)
        conv = nn.Conv2d(cin, cout, kernel, stride, pad, bias=False, groups=groups)
        x = torch.randn(16, cin, *hw)
        with torch.autocast("cpu", dtype=torch.bfloat16):
            y = conv(x)
        y.float().backward(torch.ones(y.shape))
        ref_w = conv.weight.detach().bfloat16().float().requires_grad_(True)
        ref = nn.functional.conv2d(x.bfloat16().float(), ref_w, None, stride, pad, groups=groups)
        ref.backward(torch.ones(ref.shape))
        got, want = conv.weight.grad, ref_w.grad
        if not torch.isfinite(got).all() or (got - want).abs().max() > 0.05 * want.abs().max() + 1e-3:
            wrong += 1
    return wrong


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--trials", type=int, default=30)
    p.add_argument("--threads", type=int, default=1)
    a = p.parse_args()
    torch.set_num_threads(a.threads)
    print(f"torch {torch.__version__}, cpu capability {torch.backends.cpu.get_cpu_capability()}, {a.trials} trials")
    print("| in -> out | input HxW | stride | kernel | padding | groups | wrong trials | guard flags it |")
    print("|---|---|---|---|---|---|---|---|")
    for cin, cout, hw, stride, kernel, pad, groups in SHAPES:
        n = wrong_trials(cin, cout, hw, stride, kernel, pad, groups, a.trials)
        flagged = bool(degenerate_strided_convs(nn.Conv2d(cin, cout, kernel, stride, pad, groups=groups), (cin, *hw)))
        print(f"| {cin} -> {cout} | {hw[0]}x{hw[1]} | {stride} | {kernel} | {pad} | {groups} | {n}/{a.trials} | "
              f"{'yes' if flagged else 'no'} |")


if __name__ == "__main__":
    main()
