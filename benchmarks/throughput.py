"""Training throughput of each stage's step: images/s, KD overhead, achieved TFLOP/s (CPU or CUDA).

Times the engine's own step (``edgekd.train.engine.train_step``, the loader's batches, the
stage's precision / channels_last / compile / fused optimizer as the config resolves them on the
device) for five workloads:

- ``teacher``: the teacher with cross-entropy (the teacher stage);
- ``student``: the student with cross-entropy alone (the reference for the KD overhead);
- ``kd_live``: the student with the KD loss and a live teacher forward per step (distill, augmented);
- ``kd_cached``: the student with the KD loss on cached teacher logits (distill with caching);
- ``qat``: the fake-quant student with KD and a live teacher (the qat stage).

The KD overhead ratio is KD step time / plain student step time (target <= 1.10 with cached
logits). FLOPs per step (forward + backward, plus the teacher's forward where it runs) are counted
once with ``torch.utils.flop_counter.FlopCounterMode``; TFLOP/s = FLOPs per step / step time.
Pixels are random uint8 (a conv's speed does not depend on the values), held by the real
``BatchLoader`` on the device. ``--profile`` adds a ``torch.profiler`` pass per workload that reports
device (GPU kernel) busy time against wall time; it is a diagnostic, not part of the timing.

    python benchmarks/throughput.py --device cpu --steps 6 --warmup 2       # minutes on 2 cores
    python benchmarks/throughput.py --device cuda --profile                  # on a GPU machine

Writes ``benchmarks/results/throughput_<cpu|cuda>.json`` and ``.md`` (or under ``--out``).
"""
from __future__ import annotations

import argparse
import copy
import json
import os
import sys
import time
from dataclasses import replace
from pathlib import Path
from types import SimpleNamespace
from typing import Any, Callable, Sequence

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

import numpy as np  # noqa: E402
import torch  # noqa: E402
import torch.nn.functional as F  # noqa: E402

from edgekd.config import Config, TrainConfig, load_config  # noqa: E402
from edgekd.data.base import Split  # noqa: E402
from edgekd.data.loader import BatchLoader  # noqa: E402
from edgekd.losses import Distiller  # noqa: E402
from edgekd.models import build_student, build_teacher  # noqa: E402
from edgekd.train.distributed import (resolve_amp, resolve_channels_last, resolve_compile,  # noqa: E402
                                      resolve_deterministic, resolve_device, seed_everything)
from edgekd.train.engine import to_device, train_step  # noqa: E402
from edgekd.train.optim import build_optimizer, kernel_options  # noqa: E402

WORKLOADS = ("teacher", "student", "kd_live", "kd_cached", "qat")
FASHION = SimpleNamespace(channels=1, classes=list(range(10)), image_size=28, mean=[0.286], std=[0.353])


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--device", default="auto", help="auto (cuda if present), cpu, cuda, cuda:N")
    p.add_argument("--config", default=None,
                   help="config whose models and train settings are timed (default: fashion_mnist_gpu on CUDA, "
                        "fashion_mnist on CPU)")
    p.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                   help="config overrides, e.g. data.batch_size=512 (repeatable)")
    p.add_argument("--workloads", default=",".join(WORKLOADS), help=f"comma list of {', '.join(WORKLOADS)}")
    p.add_argument("--steps", type=int, default=20, help="timed steps per workload")
    p.add_argument("--warmup", type=int, default=5, help="untimed steps first (compile, cuDNN autotune, allocator)")
    p.add_argument("--repeats", type=int, default=3, help="timed windows per workload (round robin); the fastest is kept")
    p.add_argument("--profile", action="store_true", help="also profile a few steps: device busy time vs wall time")
    p.add_argument("--out", default=str(ROOT / "benchmarks" / "results"), help="folder for the JSON and markdown")
    p.add_argument("--tag", default="", help="suffix of the result files: throughput_<device>[_<tag>].json")
    return p.parse_args(argv)


# ------------------------------------------------------------------ the workloads


def _ce(m: torch.nn.Module, batch: tuple) -> tuple[torch.Tensor, torch.Tensor]:
    logits = m(batch[0])
    return F.cross_entropy(logits, batch[1]), logits


def build_workload(name: str, cfg: Config, device: torch.device, teacher: torch.nn.Module,
                   calib: Callable[[], BatchLoader]) -> tuple[torch.nn.Module, Callable, TrainConfig, bool]:
    """``(trained model, step_fn, its TrainConfig, needs cached logits)`` of one workload, on ``device``."""
    if name == "teacher":
        return copy.deepcopy(teacher).requires_grad_(True).train(), _ce, cfg.teacher_train, False
    torch.manual_seed(1)
    student = build_student(cfg.student, FASHION).to(device)
    if name == "student":
        return student, _ce, cfg.distill.train, False
    if name == "qat":
        from edgekd.quant import prepare_qat

        qmodel = prepare_qat(student.eval(), calib(), 2).to(device)
        return qmodel, Distiller.from_config(qmodel, teacher, cfg.distill).step, cfg.qat.train, False
    distiller = Distiller.from_config(student, teacher, cfg.distill)
    return student, distiller.step, cfg.distill.train, name == "kd_cached"


def synthetic_split(n: int, seed: int = 0) -> Split:
    rng = np.random.default_rng(seed)
    return Split(rng.integers(0, 256, (n, 1, 28, 28), dtype=np.uint8), rng.integers(0, 10, n).astype(np.int64))


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def count_flops(model: torch.nn.Module, step_fn: Callable, batch: tuple, precision: Any, device: torch.device) -> float:
    """FLOPs of one forward + backward of ``step_fn`` (the teacher's forward included when it runs)."""
    from torch.utils.flop_counter import FlopCounterMode

    counter = FlopCounterMode(display=False)
    with counter:
        with precision.autocast(device):
            loss, _ = step_fn(model, batch)
        loss.backward()
    model.zero_grad(set_to_none=True)
    return float(counter.get_total_flops())


def time_steps(run_step: Callable[[tuple], Any], batches: Callable[[], Any], steps: int, device: torch.device) -> float:
    """Seconds per step over ``steps`` steps (the device synchronized at both ends)."""
    it = batches()
    _sync(device)
    t0 = time.perf_counter()
    for _ in range(steps):
        run_step(next(it))
    _sync(device)
    return (time.perf_counter() - t0) / steps


def profile_steps(run_step: Callable[[tuple], Any], batches: Callable[[], Any], steps: int,
                  device: torch.device) -> dict[str, Any]:
    """Device busy time (sum of kernel self times) against wall time over ``steps`` steps, and the top kernels."""
    from torch.profiler import ProfilerActivity, profile

    activities = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if device.type == "cuda" else [])
    it = batches()
    _sync(device)
    with profile(activities=activities) as prof:
        t0 = time.perf_counter()
        for _ in range(steps):
            run_step(next(it))
        _sync(device)
        wall = time.perf_counter() - t0
    if device.type == "cuda":
        # kernel events only (CPU ops carry their kernels' time too: summing both would count it twice);
        # busy = the union of the kernels' intervals, so overlapping streams are not counted twice either
        from torch.autograd import DeviceType

        kernels = [e for e in prof.events()
                   if e.device_type == DeviceType.CUDA and not getattr(e, "is_user_annotation", False)]
        busy_us = _union_us([(e.time_range.start, e.time_range.end) for e in kernels])
        totals: dict[str, float] = {}
        for e in kernels:
            totals[e.name] = totals.get(e.name, 0.0) + (e.time_range.end - e.time_range.start)
        top_rows = [{"name": k[:60], "ms": round(v / 1e3, 2)}
                    for k, v in sorted(totals.items(), key=lambda kv: kv[1], reverse=True)[:6]]
    else:  # CPU: the time inside torch ops (self CPU time), what is left is Python and waiting
        events = prof.key_averages()
        busy_us = sum(float(e.self_cpu_time_total) for e in events)
        top = sorted(events, key=lambda e: e.self_cpu_time_total, reverse=True)[:6]
        top_rows = [{"name": e.key[:60], "ms": round(e.self_cpu_time_total / 1e3, 2)} for e in top]
    busy = busy_us / 1e6
    return {"steps": steps, "wall_s": round(wall, 4), "busy_s": round(busy, 4),
            "busy_fraction": round(busy / wall, 3) if wall > 0 else None, "top": top_rows,
            "busy_means": "sum of GPU kernel self times" if device.type == "cuda" else "sum of torch ops' self CPU time"}


def _union_us(intervals: list[tuple[float, float]]) -> float:
    """Total length of the union of ``[start, end]`` intervals."""
    total, end = 0.0, float("-inf")
    for lo, hi in sorted(intervals):
        if hi > end:
            total += hi - max(lo, end)
            end = hi
    return total


def prepare_workload(name: str, cfg: Config, device: torch.device, teacher: torch.nn.Module, args: argparse.Namespace
                     ) -> tuple[dict[str, Any], Callable[[], float], Callable[[], dict[str, Any]]]:
    """Build, count FLOPs and warm up one workload: ``(row, time_window() -> s/step, profile() -> dict)``."""
    batch_size = cfg.data.batch_size
    n_batches = args.warmup + args.steps
    split = synthetic_split(batch_size * max(n_batches, 4))

    def calib() -> BatchLoader:
        return BatchLoader(split, batch_size, shuffle=False, device=device)

    model, step_fn, tc, cached = build_workload(name, cfg, device, teacher, calib)
    precision = resolve_amp(tc.amp, device)
    channels_last = resolve_channels_last(tc.channels_last, device)
    if channels_last:
        model.to(memory_format=torch.channels_last)
    extras = None
    if cached:
        with torch.inference_mode():
            logits = torch.cat([teacher(b[0]).float() for b in calib()])
        extras = [logits.clone()]  # cloned outside inference mode, as the distill stage's cache is
    augment = cfg.data.augment if not cached else None  # caching needs fixed inputs (validated by the config)
    loader = BatchLoader(split, batch_size, shuffle=True, augment=augment, seed=0, extras=extras, device=device,
                         photometric="student" if name != "teacher" and name != "student" else "input")
    optimizer = build_optimizer(model, tc, device)
    scaler = torch.amp.GradScaler(device.type) if precision.scaler else None
    compiled = resolve_compile(tc.compile, device)
    train_model = torch.compile(model, dynamic=False) if compiled else model
    train_model.train()

    def batches():
        while True:
            for b in loader:
                yield to_device(b, device, channels_last)

    def run_step(batch: tuple) -> None:
        train_step(train_model, step_fn, batch, optimizer, scaler, precision, device, tc.grad_clip)

    first = next(batches())
    flops = count_flops(model, step_fn, first, precision, device)  # eager model: the counter sees aten ops
    t_warm = time.perf_counter()
    for _, b in zip(range(args.warmup), batches()):
        run_step(b)
    _sync(device)
    warmup_s = time.perf_counter() - t_warm
    row = {"workload": name, "batch": batch_size, "precision": precision.name, "channels_last": channels_last,
           "compile": compiled, "optimizer": tc.optimizer, "optimizer_kernel": kernel_options(
               torch.optim.SGD if tc.optimizer == "sgd" else torch.optim.AdamW, device) or "default",
           "flops_per_step": flops, "warmup_s": round(warmup_s, 2)}
    return (row, lambda: time_steps(run_step, batches, args.steps, device),
            lambda: profile_steps(run_step, batches, min(args.steps, 10), device))


def finish_row(row: dict[str, Any], step_s: float) -> dict[str, Any]:
    """Add the timing columns (from the fastest window) to a prepared row."""
    flops = row.pop("flops_per_step")
    row.update(step_ms=round(step_s * 1e3, 3), images_per_second=round(row["batch"] / step_s, 1),
               gflop_per_step=round(flops / 1e9, 3), tflops=round(flops / step_s / 1e12, 4))
    return row


# ------------------------------------------------------------------ report


def device_name(device: torch.device) -> str:
    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    from edgekd.environment import cpu_info

    return f"{cpu_info().get('model')} ({torch.get_num_threads()} threads)"


def add_ratios(rows: list[dict[str, Any]]) -> dict[str, float]:
    """KD step time over the plain student's, for the KD workloads that ran with it."""
    by = {r["workload"]: r for r in rows}
    out = {}
    if "student" in by:
        for name in ("kd_cached", "kd_live", "qat"):
            if name in by:
                out[f"{name}_over_student"] = round(by[name]["step_ms"] / by["student"]["step_ms"], 3)
    return out


def markdown(result: dict[str, Any]) -> str:
    lines = [f"Training throughput on {result['device_name']} (torch {result['torch']}, {result['config']}, "
             f"{result['steps']} timed steps x {result.get('repeats', 1)} round-robin windows, the fastest kept, after "
             f"{result['warmup']} warm-up)", "",
             "| workload | batch | precision | compile | images/s | step ms | GFLOP/step | TFLOP/s | busy |",
             "|---|---|---|---|---|---|---|---|---|"]
    for r in result["rows"]:
        busy = r.get("profile", {}).get("busy_fraction")
        lines.append(f"| {r['workload']} | {r['batch']} | {r['precision']} | {'on' if r['compile'] else 'off'} | "
                     f"{r['images_per_second']:.0f} | {r['step_ms']:.2f} | {r['gflop_per_step']:.2f} | "
                     f"{r['tflops']:.3f} | {'' if busy is None else f'{busy:.0%}'} |")
    for name, err in (result.get("errors") or {}).items():
        lines.append(f"| {name} | failed: {err[:120]} |")
    ratios = result["kd_overhead"]
    if ratios:
        lines += ["", "KD overhead (KD step time / plain student step time): "
                  + ", ".join(f"{k.removesuffix('_over_student')} {v:.2f}" for k, v in ratios.items())]
    if result.get("note"):
        lines += ["", f"Note: {result['note']}"]
    return "\n".join(lines) + "\n"


def write(result: dict[str, Any], out: Path) -> Path:
    out.mkdir(parents=True, exist_ok=True)
    stem = out / f"throughput_{result['device_kind']}{'_' + result['tag'] if result.get('tag') else ''}"
    for suffix, text in ((".json", json.dumps(result, indent=2, sort_keys=True) + "\n"), (".md", markdown(result))):
        tmp = stem.with_name(f".{stem.name}{suffix}.tmp")
        tmp.write_text(text)
        os.replace(tmp, stem.with_suffix(suffix))
    return stem.with_suffix(".json")


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    device = resolve_device(args.device)
    config = args.config or str(ROOT / "configs" / ("fashion_mnist_gpu.yaml" if device.type == "cuda"
                                                     else "fashion_mnist.yaml"))
    cfg = load_config(config, [f"device={device}"] + list(args.overrides))
    names = [w.strip() for w in args.workloads.split(",") if w.strip()]
    unknown = [w for w in names if w not in WORKLOADS]
    if unknown:
        raise SystemExit(f"unknown workload(s) {unknown}; valid: {', '.join(WORKLOADS)}")
    seed_everything(0, cfg.deterministic, device)
    torch.manual_seed(0)
    teacher = build_teacher(cfg.teacher, FASHION).to(device)
    if resolve_channels_last(cfg.teacher_train.channels_last, device):
        teacher.to(memory_format=torch.channels_last)
    prepared, errors = {}, {}
    for name in names:
        try:
            prepared[name] = prepare_workload(name, cfg, device, teacher.eval(), args)
        except Exception as e:  # e.g. torch.compile without a working toolchain: recorded, the others still run
            errors[name] = f"{type(e).__name__}: {str(e)[:500]}"
            print(f"[throughput] {name} failed: {errors[name]}", file=sys.stderr, flush=True)
    # The workloads' timed windows take turns (round robin), so a change in the machine's load (other
    # processes on a shared CPU, GPU clocks) hits them alike and the ratios stay fair; the fastest is kept.
    times: dict[str, list[float]] = {name: [] for name in prepared}
    for _ in range(max(1, args.repeats)):
        for name, (_, window, _) in prepared.items():
            times[name].append(window())
    rows = []
    for name, (row, _, profile) in prepared.items():
        row = finish_row(row, min(times[name]))
        if args.profile:
            row["profile"] = profile()
        print(json.dumps(row), flush=True)
        rows.append(row)
    result = {"device_kind": device.type, "tag": args.tag, "device_name": device_name(device), "torch": torch.__version__,
              "config": Path(config).name, "overrides": list(args.overrides), "steps": args.steps,
              "warmup": args.warmup, "repeats": args.repeats, "determinism": resolve_deterministic(cfg.deterministic, device).to_dict(),
              "rows": rows, "kd_overhead": add_ratios(rows), "errors": errors}
    path = write(result, Path(args.out))
    print(markdown(result))
    print(f"wrote {path}")
    return 1 if errors else 0


if __name__ == "__main__":
    raise SystemExit(main())
