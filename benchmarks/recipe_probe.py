"""Short probes behind the default CPU recipe: augmentation on/off and peak learning rate.

Trains a fresh model for a fixed number of steps (linear warm-up over 50 steps, then constant lr)
on the real Fashion-MNIST training split and reports train accuracy over the last 50 steps and
validation accuracy. The default recipe (configs/fashion_mnist.yaml) was chosen from these:

    python benchmarks/recipe_probe.py --model resnet18 --lr 0.05 --no-augment --bf16
    python benchmarks/recipe_probe.py --model resnet18 --lr 0.05 --bf16
    python benchmarks/recipe_probe.py --model mobilenet_v2 --width 0.5 --lr 0.05 --no-augment
"""
from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import torch  # noqa: E402
import torch.nn.functional as F  # noqa: E402

from edgekd.config import AugmentConfig, DataConfig, ModelConfig  # noqa: E402
from edgekd.data import build_dataset  # noqa: E402
from edgekd.data.loader import BatchLoader  # noqa: E402
from edgekd.train.engine import evaluate  # noqa: E402
from edgekd.models import STUDENTS, build_student, build_teacher  # noqa: E402


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--model", default="resnet18")
    p.add_argument("--width", type=float, default=1.0)
    p.add_argument("--lr", type=float, default=0.05)
    p.add_argument("--steps", type=int, default=250)
    p.add_argument("--no-augment", action="store_true")
    p.add_argument("--bf16", action="store_true", help="bf16 autocast (CPU with AMX)")
    a = p.parse_args()
    torch.manual_seed(0)
    bundle = build_dataset(DataConfig(val_size=5000), seed=0)
    train = BatchLoader(bundle.train, 128, shuffle=True, augment=None if a.no_augment else AugmentConfig(), seed=0)
    val = BatchLoader(bundle.val, 512, shuffle=False, seed=0)
    build = build_student if a.model in STUDENTS else build_teacher
    model = build(ModelConfig(arch=a.model, width=a.width), bundle).to(memory_format=torch.channels_last)
    opt = torch.optim.SGD(model.parameters(), lr=a.lr, momentum=0.9, nesterov=True, weight_decay=5e-4)
    accs: list[float] = []
    t0 = time.time()
    train.set_epoch(0)
    for step, (x, y) in enumerate(train):
        if step >= a.steps:
            break
        for g in opt.param_groups:
            g["lr"] = a.lr * min(1.0, (step + 1) / 50)
        with torch.autocast("cpu", torch.bfloat16, enabled=a.bf16):
            out = model(x.contiguous(memory_format=torch.channels_last))
        loss = F.cross_entropy(out.float(), y)
        opt.zero_grad()
        loss.backward()
        opt.step()
        accs.append((out.argmax(1) == y).float().mean().item())
    val_acc = evaluate(model, val, torch.device("cpu"))["accuracy"]
    tail = accs[-50:]
    print(f"{a.model} x{a.width} lr {a.lr} augment {not a.no_augment} bf16 {a.bf16}: "
          f"train (last 50 steps) {sum(tail) / len(tail):.3f}  val {val_acc:.3f}  {time.time() - t0:.0f} s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
