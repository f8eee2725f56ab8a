"""Which student architectures go through edgekd's QAT and INT8 export: build, QAT-prepare, calibrate,
export FP32 + INT8 ONNX, fp32 parity and int8 top-1 agreement against the torch QAT model.

Untrained models (BatchNorm statistics set on random images) on random [0, 1] images: this measures
the tool chain, not accuracy; 32x32 RGB, 10 classes.
Writes benchmarks/results/student_support.{json,md}.

    .venv/bin/python benchmarks/student_support.py [--archs a,b,...] [--size 32]
"""
from __future__ import annotations

import argparse
import json
import tempfile
import time
import traceback
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import torch

DEFAULT_ARCHS = ("mobilenet_v2,mobilenet_v3_small,timm:tf_mobilenetv3_small_100,torchvision:vit_b_16,torchvision:mobilenet_v2,torchvision:mobilenet_v3_small,"
                 "torchvision:mnasnet0_5,torchvision:efficientnet_b0,torchvision:shufflenet_v2_x0_5,"
                 "torchvision:squeezenet1_1,torchvision:resnet18,timm:mobilenetv4_conv_small,"
                 "timm:mobilenetv3_small_050,timm:lcnet_050,timm:efficientnet_b0")


def probe(arch: str, size: int, out: Path) -> dict:
    from edgekd.config import ModelConfig
    from edgekd.errors import EdgekdError
    from edgekd.exporting import export_fp32, export_int8, parity_fp32, parity_int8
    from edgekd.models import build_student
    from edgekd.quant import freeze_observers, prepare_qat

    bundle = SimpleNamespace(channels=3, classes=[f"c{i}" for i in range(10)], image_size=(size, size),
                             mean=(0.5, 0.5, 0.5), std=(0.25, 0.25, 0.25))
    row: dict = {"arch": arch}
    t0 = time.perf_counter()
    step = "build"
    try:
        torch.manual_seed(0)
        model = build_student(ModelConfig(arch=arch), bundle)
        gen = torch.Generator().manual_seed(0)
        with torch.no_grad():  # BN statistics of real-ish activations: an untrained net has dead layers otherwise
            for mod in model.modules():
                if isinstance(mod, torch.nn.modules.batchnorm._BatchNorm):
                    mod.momentum = None  # cumulative average over the passes
            for _ in range(4):
                model.train()(torch.rand(32, 3, size, size, generator=gen))
        model.eval()
        row["params"] = sum(p.numel() for p in model.parameters())
        step = "qat-prepare"
        calib = [(torch.rand(16, 3, size, size, generator=gen),) for _ in range(2)]
        q = prepare_qat(model, calib, num_batches=2)
        freeze_observers(q)
        images = torch.rand(64, 3, size, size, generator=gen).numpy()
        shape = (1, 3, size, size)
        step = "export-fp32"
        export_fp32(model, out / "m.fp32.onnx", shape)
        step = "parity-fp32"
        p32 = parity_fp32(model, out / "m.fp32.onnx", images, batch_sizes=[1, 16])
        step = "export-int8"
        export_int8(q, out / "m.int8.onnx", shape)
        step = "parity-int8"
        p8 = parity_int8(q, out / "m.int8.onnx", images, min_agreement=0.0)
        row.update(ok=True, fp32_max_abs_diff=p32.get("max_abs_diff"), int8_agreement=p8.get("agreement"),
                   int8_decided_images=p8.get("decided_images"), int8_logits_within_bound=p8.get("logits_within_bound"),
                   int8_mb=(out / "m.int8.onnx").stat().st_size / 1e6, fp32_mb=(out / "m.fp32.onnx").stat().st_size / 1e6)
    except (EdgekdError, Exception) as e:  # the point is to record every failure, named by its step
        row.update(ok=False, failed_at=step, error=f"{type(e).__name__}: {str(e).strip().splitlines()[0][:240]}")
        if not isinstance(e, EdgekdError):
            row["trace"] = traceback.format_exc().splitlines()[-3:]
    row["seconds"] = round(time.perf_counter() - t0, 1)
    return row


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--archs", default=DEFAULT_ARCHS, help="comma-separated student archs")
    ap.add_argument("--size", type=int, default=32)
    ap.add_argument("--out", default=str(Path(__file__).parent / "results"))
    args = ap.parse_args()
    torch.set_num_threads(1)
    rows = []
    for arch in args.archs.split(","):
        with tempfile.TemporaryDirectory() as tmp:
            rows.append(probe(arch, args.size, Path(tmp)))
        print(json.dumps(rows[-1]), flush=True)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    (out / "student_support.json").write_text(json.dumps(rows, indent=1))
    lines = ["| student | QAT + INT8 export | int8 logits within bound | int8 top-1 agreement (decided images) | fp32 MB "
             "| int8 MB | failed at / error |", "|---|---|---|---|---|---|---|"]
    for r in rows:
        agree = f"{r['int8_agreement']:.3f}" if r.get("int8_agreement") is not None else "-"
        bound = f"{r['int8_logits_within_bound']:.3f}" if r.get("int8_logits_within_bound") is not None else "-"
        agree += f" ({r.get('int8_decided_images', '-')})"
        lines.append(f"| {r['arch']} | {'yes' if r['ok'] else 'no'} | {bound} | {agree} | {r.get('fp32_mb', 0):.2f} | "
                     f"{r.get('int8_mb', 0):.2f} | {'' if r['ok'] else r['failed_at'] + ': ' + r['error']} |")
    (out / "student_support.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
