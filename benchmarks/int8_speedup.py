"""Is the INT8 file smaller and faster than FP32 in onnxruntime on this CPU? Side by side, interleaved.

Two ways to get files:

- default: each ``--students`` entry (``arch:width``) is built for Fashion-MNIST (28x28x1), its BN
  statistics taken from real training images, fake-quantized with edgekd's QAT modules, calibrated,
  and exported three times with edgekd's exporter: FP32, INT8 as exported today, and INT8 as exported
  before ``edgekd.exporting.slim`` (the benchmark switches that pass off: the "before" row).
  Weights are not trained: size and latency do not depend on their values.
- ``--files LABEL=PATH ...``: time given files (e.g. a finished run's ``model.fp32.onnx`` and a
  re-export); the first is the reference every ratio divides by.

Every (batch, threads) setting times all files of a student in the same process, *interleaved* as the
check stage does (``edgekd.deploy.runtime.latency.measure_latency_interleaved``: alternating blocks of
10 runs, each block after one untimed run, among files within x4 of each other's cost), so a background
load slows every file alike. The ratios, not the
absolute times, are the result. Writes ``benchmarks/results/int8_speedup.{json,md}``.
"""
from __future__ import annotations

import argparse
import sys
import tempfile
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from edgekd.deploy.runtime.latency import measure_latency_interleaved  # noqa: E402
from edgekd.environment import cpu_info, package_versions  # noqa: E402
from edgekd.io import atomic_write_json, atomic_write_text  # noqa: E402


def build_files(arch: str, width: float, out: Path) -> dict[str, Path]:
    """FP32, INT8 (today's exporter) and INT8 without the slim pass, for an untrained, BN-calibrated student."""
    import torch

    import edgekd.exporting.export as export_mod
    from edgekd.config import DataConfig, ModelConfig
    from edgekd.data import build_dataset
    from edgekd.data.loader import BatchLoader
    from edgekd.models import build_student
    from edgekd.quant import freeze_observers, prepare_qat

    torch.manual_seed(0)
    bundle = build_dataset(DataConfig(train_subset=1024, val_size=500, test_subset=500), seed=0)
    calib = BatchLoader(bundle.train, 128, shuffle=False, augment=None, seed=0)
    model = build_student(ModelConfig(arch=arch, width=width, stem_stride=1), bundle)
    model.train()  # BN statistics of real images and non-trivial BN affine: folded biases are distinct and non-zero
    with torch.no_grad():
        for i, batch in enumerate(calib):
            model(batch[0])
            if i >= 4:
                break
        for m in model.modules():
            if isinstance(m, torch.nn.BatchNorm2d):
                m.weight.uniform_(0.5, 1.5)
                m.bias.normal_(0.0, 0.2)
    model.eval()
    q = prepare_qat(model, calib, 4)
    freeze_observers(q)
    shape = (1, bundle.channels, *bundle.image_size)
    files = {"fp32": out / "fp32.onnx", "int8": out / "int8.onnx", "int8_before_slim": out / "int8.before.onnx"}
    export_mod.export_fp32(model, files["fp32"], shape)
    export_mod.export_int8(q, files["int8"], shape)
    slim = export_mod.slim_int8
    export_mod.slim_int8 = lambda onx: {}  # the exporter as it was before edgekd.exporting.slim
    try:
        export_mod.export_int8(q, files["int8_before_slim"], shape)
    finally:
        export_mod.slim_int8 = slim
    return files


def measure(student: str, files: dict[str, Path], batches: list[int], threads: list[int], warmup: int,
            runs: int) -> list[dict[str, Any]]:
    ref = next(iter(files))
    rows = []
    for b in batches:
        for t in threads:
            n = max(30, runs // b) if b > 1 else runs  # large batches: fewer runs (at least 30)
            lat = measure_latency_interleaved(files, batch=b, threads=t, warmup=warmup, runs=n)
            for k, p in files.items():
                rows.append({"student": student, "file": k, "batch": b, "threads": t, "runs": n,
                             "median_ms": lat[k]["median_ms"], "p90_ms": lat[k]["p90_ms"], "min_ms": lat[k]["min_ms"],
                             "latency_ratio": lat[k]["median_ms"] / lat[ref]["median_ms"],
                             "min_latency_ratio": lat[k]["min_ms"] / lat[ref]["min_ms"],
                             "size_bytes": p.stat().st_size, "size_ratio": p.stat().st_size / files[ref].stat().st_size})
                print({k2: (round(v, 4) if isinstance(v, float) else v) for k2, v in rows[-1].items()}, flush=True)
    return rows


def markdown(rows: list[dict[str, Any]], env: dict[str, Any], args: argparse.Namespace) -> str:
    md = ["| student | file | batch | threads | median ms | / reference (median) | / reference (min) | / reference size |",
          "|---|---|---|---|---|---|---|---|"]
    md += [f"| {r['student']} | {r['file']} | {r['batch']} | {'all' if r['threads'] == 0 else r['threads']} | "
           f"{r['median_ms']:.3f} | x{r['latency_ratio']:.2f} | x{r['min_latency_ratio']:.2f} | x{r['size_ratio']:.4f} |"
           for r in rows]
    md.append(f"\nonnxruntime {env['versions'].get('onnxruntime')}, {env['cpu'].get('model')}; each setting times the "
              f"files interleaved ({args.runs} runs at batch 1, fewer at larger batches, after {args.warmup} warm-up "
              "runs); threads 'all' = every core (the check stage's threads: 0). The reference is the first file "
              "(fp32). 'min' ratios compare the fastest runs: on a loaded machine they are closer to what an idle "
              "one measures.\n")
    return "\n".join(md)


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--students", nargs="+", default=["mobilenet_v2:0.5", "mobilenet_v2:1.0", "mobilenet_v3_small:1.0",
                                                      "mobilenet_v3_large:1.0"], help="arch:width entries to build")
    p.add_argument("--files", nargs="+", metavar="LABEL=PATH", help="time these files instead (first = reference)")
    p.add_argument("--runs", type=int, default=300)
    p.add_argument("--warmup", type=int, default=20)
    p.add_argument("--batches", type=int, nargs="+", default=[1, 32])
    p.add_argument("--threads", type=int, nargs="+", default=[1, 0], help="0 = all cores (as the check stage)")
    p.add_argument("--out", default=str(ROOT / "benchmarks" / "results"))
    p.add_argument("--name", default="int8_speedup", help="result file stem")
    a = p.parse_args()
    rows: list[dict[str, Any]] = []
    with tempfile.TemporaryDirectory() as tmp:
        if a.files:
            files = {s.split("=", 1)[0]: Path(s.split("=", 1)[1]) for s in a.files}
            rows += measure("given files", files, a.batches, a.threads, a.warmup, a.runs)
        else:
            for entry in a.students:
                arch, width = entry.split(":")
                d = Path(tmp) / entry.replace(":", "_")
                d.mkdir()
                rows += measure(f"{arch} x{width}", build_files(arch, float(width), d), a.batches, a.threads,
                                a.warmup, a.runs)
    env = {"cpu": cpu_info(), "versions": package_versions()}
    atomic_write_json(Path(a.out) / f"{a.name}.json", {"rows": rows, "environment": env,
                                                       "settings": {"runs": a.runs, "warmup": a.warmup}})
    md = markdown(rows, env, a)
    atomic_write_text(Path(a.out) / f"{a.name}.md", md)
    print(md)
    return 0


if __name__ == "__main__":
    sys.exit(main())
