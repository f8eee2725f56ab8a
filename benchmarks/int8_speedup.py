"""Which student gains from INT8 in onnxruntime on this CPU? MobileNetV2 vs MobileNetV3, side by side.

Each student is built for Fashion-MNIST (28×28×1), BN-folded and fake-quantized with edgekd's QAT
modules, calibrated on real training images, and exported twice (FP32 and INT8 QDQ) with
edgekd's exporter. Latency of both files is measured in the same process, back to back, with
``edgekd.deploy.runtime.measure_latency``; the ratios, not the absolute times, are the result. Weights
are not trained: latency does not depend on them. Writes ``benchmarks/results/int8_speedup.{json,md}``.
"""
from __future__ import annotations

import argparse
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from edgekd.config import DataConfig, ModelConfig  # noqa: E402
from edgekd.data import build_dataset  # noqa: E402
from edgekd.data.loader import BatchLoader  # noqa: E402
from edgekd.environment import cpu_info, package_versions  # noqa: E402
from edgekd.exporting import export_fp32, export_int8  # noqa: E402
from edgekd.io import atomic_write_json, atomic_write_text  # noqa: E402
from edgekd.models import build_student  # noqa: E402
from edgekd.quant import freeze_observers, prepare_qat  # noqa: E402
from edgekd.deploy.runtime import measure_latency  # noqa: E402

STUDENTS = [("mobilenet_v2", 0.5), ("mobilenet_v2", 1.0), ("mobilenet_v3_small", 1.0), ("mobilenet_v3_large", 1.0)]


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--runs", type=int, default=200)
    p.add_argument("--batches", type=int, nargs="+", default=[1, 32])
    p.add_argument("--out", default=str(ROOT / "benchmarks" / "results"))
    a = p.parse_args()
    bundle = build_dataset(DataConfig(train_subset=1024, val_size=500, test_subset=500), seed=0)
    calib = BatchLoader(bundle.train, 128, shuffle=False, augment=None, seed=0)
    shape = (1, bundle.channels, *bundle.image_size)
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        for arch, width in STUDENTS:
            model = build_student(ModelConfig(arch=arch, width=width, stem_stride=1), bundle).eval()
            q = prepare_qat(model, calib, 8)
            freeze_observers(q)
            q.eval()
            f32, i8 = Path(tmp) / f"{arch}_{width}.fp32.onnx", Path(tmp) / f"{arch}_{width}.int8.onnx"
            export_fp32(model, f32, shape)
            export_int8(q, i8, shape)
            for batch in a.batches:
                lf = measure_latency(f32, batch=batch, threads=1, warmup=20, runs=a.runs, input_shape=shape[1:])
                li = measure_latency(i8, batch=batch, threads=1, warmup=20, runs=a.runs, input_shape=shape[1:])
                rows.append({"student": f"{arch} x{width}", "batch": batch, "threads": 1,
                             "fp32_median_ms": lf["median_ms"], "int8_median_ms": li["median_ms"],
                             "latency_ratio": li["median_ms"] / lf["median_ms"],
                             "size_ratio": i8.stat().st_size / f32.stat().st_size})
                print(rows[-1], flush=True)
    env = {"cpu": cpu_info(), "versions": package_versions()}
    atomic_write_json(Path(a.out) / "int8_speedup.json", {"rows": rows, "environment": env})
    md = ["| student | batch | threads | fp32 median ms | int8 median ms | int8/fp32 latency | int8/fp32 size |",
          "|---|---|---|---|---|---|---|"]
    md += [f"| {r['student']} | {r['batch']} | {r['threads']} | {r['fp32_median_ms']:.3f} | {r['int8_median_ms']:.3f} | "
           f"×{r['latency_ratio']:.2f} | ×{r['size_ratio']:.2f} |" for r in rows]
    md.append(f"\nonnxruntime {env['versions']['onnxruntime']}, {env['cpu']['model']}, {a.runs} timed runs after 20 warm-up.\n")
    atomic_write_text(Path(a.out) / "int8_speedup.md", "\n".join(md))
    print("\n".join(md))
    return 0


if __name__ == "__main__":
    sys.exit(main())
