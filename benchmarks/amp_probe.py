"""What bf16 autocast costs or gains on this CPU: ResNet-18 train steps, fp32 vs bf16.

The default recipe's teacher (ResNet-18, 3x3 stem + maxpool, 28x28 grayscale, batch 128,
channels_last, SGD) is timed for a few optimizer steps in fp32 and under bf16 autocast, on random
pixels (the speed of a conv does not depend on the values). It prints one JSON line with images/s
for both, their ratio, the CPU features and what ``amp: auto`` picks here, so the feature rule in
edgekd/hardware.py can be checked against a measurement on any machine:

    python benchmarks/amp_probe.py                 # 2 warm-up + 4 timed steps each
    ONEDNN_MAX_CPU_ISA=AVX2 python benchmarks/amp_probe.py
"""
from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path
from types import SimpleNamespace

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import torch  # noqa: E402
import torch.nn.functional as F  # noqa: E402

from edgekd.config import ModelConfig  # noqa: E402
from edgekd.train.distributed import resolve_amp  # noqa: E402
from edgekd.hardware import detect_cpu_features  # noqa: E402
from edgekd.models import build_teacher  # noqa: E402

FASHION = SimpleNamespace(channels=1, classes=10, image_size=28, mean=[0.286], std=[0.353])


def images_per_second(dtype: torch.dtype | None, batch: int, warmup: int, steps: int, arch: str) -> float:
    """Train-step throughput of a fresh teacher under ``dtype`` autocast (None = fp32)."""
    torch.manual_seed(0)
    model = build_teacher(ModelConfig(arch=arch, maxpool=True), FASHION).to(memory_format=torch.channels_last).train()
    opt = torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.9)
    x = torch.rand(batch, 1, 28, 28).contiguous(memory_format=torch.channels_last)
    y = torch.randint(0, 10, (batch,))
    t0 = 0.0
    for step in range(warmup + steps):
        if step == warmup:
            t0 = time.perf_counter()
        with torch.autocast("cpu", dtype=dtype or torch.float32, enabled=dtype is not None):
            loss = F.cross_entropy(model(x).float(), y)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
    return batch * steps / (time.perf_counter() - t0)


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--arch", default="resnet18")
    p.add_argument("--batch", type=int, default=128)
    p.add_argument("--warmup", type=int, default=2)
    p.add_argument("--steps", type=int, default=4)
    a = p.parse_args()
    fp32 = images_per_second(None, a.batch, a.warmup, a.steps, a.arch)
    bf16 = images_per_second(torch.bfloat16, a.batch, a.warmup, a.steps, a.arch)
    auto = resolve_amp("auto", torch.device("cpu"))
    print(json.dumps({
        "arch": a.arch, "batch": a.batch, "steps": a.steps, "threads": torch.get_num_threads(),
        "fp32_images_per_second": round(fp32, 1), "bf16_images_per_second": round(bf16, 1),
        "bf16_over_fp32": round(bf16 / fp32, 3), "cpu_features": detect_cpu_features().to_dict(),
        "auto_picks": "bf16" if auto.enabled else "fp32", "auto_reason": auto.reason,
    }, sort_keys=True))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
