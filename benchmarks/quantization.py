"""Is QAT with the teacher's soft targets worth it? Every way to get INT8 from one FP32 student, one table.

Starting from a finished edgekd run (its distilled FP32 student and its exported ``model.fp32.onnx``),
the benchmark builds INT8 files in every way a user could, and measures them all the same way:

- ``qat_kd``: edgekd's QAT stage with KD (the run's own distill config), one run per seed;
- ``qat_ce``: the same QAT stage with ``distill.alpha=0`` (labels only), one run per seed;
- ``qat_kd_run``: the run's own INT8 file (QAT+KD at the run's seed; no re-training, for a quick table);
- ``qat_kd_float_stem``: QAT with KD and the stem conv kept in float (``qat.keep_float``), per seed;
- ``qat_kd_epoch``: QAT with KD over a whole training epoch instead of the config's step cap
  (``qat.train.max_steps_per_epoch``), per seed: does a longer fine-tune with the teacher buy accuracy?
- ``ptq_minmax`` / ``ptq_entropy`` / ``ptq_percentile``: onnxruntime static PTQ of the run's own
  FP32 file (``quant_pre_process``, then QDQ, per-channel int8 weights, uint8 activations), calibrated
  on exactly the training images edgekd's QAT calibrates on (the first ``qat.calibration_batches``
  batches of the un-augmented train loader, same seed); Entropy with 2048 histogram bins (see
  ``ENTROPY_BINS``: onnxruntime's default degenerates to MinMax);
- ``dynamic``: onnxruntime dynamic quantization (weights int8 offline, activations at run time);
- ``pt2e``: PyTorch's PT2E PTQ (torchao's X86InductorQuantizer, same calibration images), exported with
  ``torch.onnx.export(dynamo=True)``, when that yields a file onnxruntime runs; otherwise the row
  records why not.

For every file: top-1 on the full test set and the drop from FP32, top-1 agreement with the FP32
file, file size, median latency at batch 1 and 32 with 1 and 2 threads (measured back to back in this
process, reported with the FP32 ratio), and the mean accuracy over every registered corruption at
severities 1-5 on a fixed test subset. QAT rows are repeated over ``--seeds`` and reported as
mean ± std. QAT runs go through the real CLI (``python -m edgekd run --stages qat,export``) in a copy
of the run folder; the original run is never written.

Usage::

    python benchmarks/quantization.py --run export/fashion_mnist --tag mobilenet_v2_0.5
    python benchmarks/quantization.py --run R --student mobilenet_v3_small:1.0 --distill-epochs 3 --tag v3s

``--student ARCH:WIDTH`` first distills a different student from the same teacher (in the copy) and
benchmarks that one. Writes ``benchmarks/results/quantization_<tag>.{json,md}``.
"""
from __future__ import annotations

import argparse
import inspect
import json
import shutil
import subprocess
import sys
import tempfile
import time
from dataclasses import replace
from pathlib import Path
from typing import Any, Callable

import numpy as np
import yaml

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from edgekd.config import Config, load_config  # noqa: E402
from edgekd.data import build_dataset  # noqa: E402
from edgekd.deploy.runtime import make_session, measure_latency, onnx_logits  # noqa: E402
from edgekd.environment import cpu_info, package_versions  # noqa: E402
from edgekd.io import atomic_write_json, atomic_write_text  # noqa: E402
from edgekd.manifest import Manifest  # noqa: E402
from edgekd.pixels import to_float  # noqa: E402
from edgekd.robustness.corruptions import CORRUPTIONS  # noqa: E402
from edgekd.robustness.evaluate import corruption_accuracy  # noqa: E402

LATENCY_SETTINGS = [(1, 1), (1, 2), (32, 1), (32, 2)]  # (batch, threads)


# ------------------------------------------------------------------ data


def calibration_images(cfg: Config, bundle: Any) -> np.ndarray:
    """The images edgekd's QAT stage calibrates its observers on (same loader, same seed, no augmentation)."""
    from edgekd.data.loader import make_loaders

    data_cfg = replace(cfg.data, augment=replace(cfg.data.augment, crop_padding=0, hflip=False,
                                                  noise_std=0.0, corruption_prob=0.0))
    train = make_loaders(bundle, data_cfg, cfg.seed)[0]
    batches = []
    for i, batch in enumerate(train):
        if i >= cfg.qat.calibration_batches:
            break
        batches.append(batch[0].numpy())
    return np.concatenate(batches).astype(np.float32)


class _Reader:
    """onnxruntime CalibrationDataReader over fixed images, in batches of ``batch`` (one input)."""

    def __init__(self, input_name: str, images: np.ndarray, batch: int = 128) -> None:
        self.feeds = [{input_name: images[i:i + batch]} for i in range(0, len(images), batch)]
        self.pos = 0

    def get_next(self) -> dict[str, np.ndarray] | None:
        if self.pos >= len(self.feeds):
            return None
        self.pos += 1
        return self.feeds[self.pos - 1]

    def rewind(self) -> None:
        self.pos = 0


# ------------------------------------------------------------------ ways to get INT8


# Histogram sizes of the Entropy calibrator (TensorRT's recipe: 2048 bins searched for the 128-bin clip with
# the least KL divergence). onnxruntime's defaults are 128 and 128: its search then has exactly one candidate,
# the full range, so "Entropy" gives MinMax's scales (measured: identical files' scales and accuracy), and
# quantize_static has no extra_options key for the bin count; the ranges are computed here and handed over
# through its calibration cache.
ENTROPY_BINS, ENTROPY_QUANTIZED_BINS = 2048, 128


def _entropy_ranges(pre: Path, reader: "_Reader", cache: Path) -> None:
    """Entropy-calibrated ranges of ``pre`` (2048-bin histograms), saved where quantize_static reads its cache."""
    from onnxruntime.quantization.calibrate import CalibrationMethod, create_calibrator, save_tensors_data

    with tempfile.TemporaryDirectory(prefix="edgekd-entropy-") as tmp:
        cal = create_calibrator(pre, None, augmented_model_path=str(Path(tmp) / "augmented.onnx"),
                                calibrate_method=CalibrationMethod.Entropy,
                                extra_options={"num_bins": ENTROPY_BINS, "num_quantized_bins": ENTROPY_QUANTIZED_BINS})
        cal.collect_data(reader)
        save_tensors_data(cal.compute_data(), cache)


def ort_static_ptq(fp32: Path, out: Path, calib: np.ndarray, method: str) -> Path:
    """onnxruntime static PTQ: pre-process, then QDQ with per-channel int8 weights, uint8 activations."""
    from onnxruntime.quantization import CalibrationMethod, QuantFormat, QuantType, quantize_static
    from onnxruntime.quantization.shape_inference import quant_pre_process

    pre = out.with_suffix(".pre.onnx")
    cache = out.with_suffix(".ranges.json")
    cache.unlink(missing_ok=True)
    quant_pre_process(str(fp32), str(pre))
    reader = _Reader(make_session(pre).get_inputs()[0].name, calib)
    kwargs: dict[str, Any] = {}
    if method == "Entropy":
        if "calibration_cache_path" not in inspect.signature(quantize_static).parameters:
            raise RuntimeError("a 2048-bin Entropy calibration needs onnxruntime's quantize_static(calibration_cache_path=...) "
                               "(onnxruntime >= 1.32); with older versions its 128-bin default equals MinMax")
        _entropy_ranges(pre, reader, cache)
        reader.rewind()
        kwargs["calibration_cache_path"] = str(cache)
    quantize_static(str(pre), str(out), reader, quant_format=QuantFormat.QDQ,
                    per_channel=True, activation_type=QuantType.QUInt8, weight_type=QuantType.QInt8,
                    calibrate_method=getattr(CalibrationMethod, method), **kwargs)
    pre.unlink()
    cache.unlink(missing_ok=True)
    return out


def ort_dynamic(fp32: Path, out: Path) -> Path:
    """onnxruntime dynamic quantization (Conv -> ConvInteger, MatMul -> MatMulInteger; uint8 weights,
    the type ConvInteger runs with on CPU)."""
    from onnxruntime.quantization import QuantType, quantize_dynamic
    from onnxruntime.quantization.shape_inference import quant_pre_process

    pre = out.with_suffix(".pre.onnx")
    quant_pre_process(str(fp32), str(pre))
    quantize_dynamic(str(pre), str(out), weight_type=QuantType.QUInt8)
    pre.unlink()
    return out


def pt2e_ptq(run_dir: Path, cfg: Config, bundle: Any, out: Path, calib: np.ndarray) -> Path:
    """PyTorch PT2E PTQ (torchao X86InductorQuantizer: per-channel int8 weights, uint8 activations), then ONNX."""
    import torch
    from torchao.quantization.pt2e.quantize_pt2e import convert_pt2e, prepare_pt2e
    from torchao.quantization.pt2e.quantizer.x86_inductor_quantizer import (
        X86InductorQuantizer, get_default_x86_inductor_quantization_config)

    from edgekd.models import build_student
    from edgekd.models.weights import load_weights

    model = build_student(cfg.student, bundle)
    load_weights(model, Manifest.load(run_dir).artifact("distill", "weights"))
    model.eval()
    # batch 2, not 1: torch.export specializes a size-1 dimension to a constant
    example = (torch.from_numpy(calib[:2]),)
    dynamic = ({0: torch.export.Dim("batch", min=1, max=4096)},)
    exported = torch.export.export(model, example, dynamic_shapes=dynamic).module()
    quantizer = X86InductorQuantizer().set_global(get_default_x86_inductor_quantization_config())
    prepared = prepare_pt2e(exported, quantizer)
    with torch.no_grad():
        for i in range(0, len(calib), 128):
            prepared(torch.from_numpy(calib[i:i + 128]))
    converted = convert_pt2e(prepared)
    program = torch.export.export(converted, example, dynamic_shapes=dynamic)
    torch.onnx.export(program, example, str(out), dynamo=True, input_names=["input"], output_names=["logits"])
    # the dynamo exporter may put the weights in a side file (out.data); store them inline, as every
    # other row is, so the file size compares like with like
    import onnx

    model_proto = onnx.load(str(out))
    onnx.save_model(model_proto, str(out), save_as_external_data=False)
    Path(str(out) + ".data").unlink(missing_ok=True)
    return out


# ------------------------------------------------------------------ QAT through the CLI


def _edgekd(args: list[str], log: Path) -> None:
    cmd = [sys.executable, "-m", "edgekd", *args]
    with open(log, "a") as f:
        f.write("$ " + " ".join(cmd) + "\n")
        f.flush()
        rc = subprocess.run(cmd, stdout=f, stderr=subprocess.STDOUT, cwd=ROOT).returncode
    if rc != 0:
        raise RuntimeError(f"{' '.join(cmd)} exited {rc}; see {log}")


def copy_path(run_dir: Path, work: Path, label: str) -> tuple[Path, Path]:
    """Where the copy of ``run_dir`` for ``label`` lives: (``work/label``, ``work/label/<config name>``).

    Named after the run's config, not its folder: ``edgekd run --out OUT`` resumes ``OUT/<name>``,
    and a run folder may have been moved or renamed since.
    """
    out = work / label
    return out, out / str(yaml.safe_load((run_dir / "config.yaml").read_text())["name"])


def copy_run(run_dir: Path, work: Path, label: str) -> tuple[Path, Path]:
    """A fresh copy of the run folder (the out folder, the run folder), see ``copy_path``."""
    out, dst = copy_path(run_dir, work, label)
    if dst.exists():
        shutil.rmtree(dst)
    shutil.copytree(run_dir, dst, ignore=shutil.ignore_patterns(".staging", "failed"))
    return out, dst


def qat_file(run_dir: Path, work: Path, label: str, sets: list[str], log: Path, stages: str = "qat,export") -> Path:
    """Run edgekd's stages (default qat, export) in a copy of ``run_dir`` with ``--set`` overrides; the INT8 file."""
    out, dst = copy_run(run_dir, work, label)
    args = ["run", "--config", str(dst / "config.yaml"), "--out", str(out), "--stages", stages, "--force"]
    for s in sets:
        args += ["--set", s]
    _edgekd(args, log)
    return Manifest.load(dst).artifact("export", "student_int8")


# ------------------------------------------------------------------ measurement


def measure(path: Path, fp32_pred: np.ndarray | None, test_x: np.ndarray, test_y: np.ndarray,
            corr_x: np.ndarray, corr_y: np.ndarray, runs: int) -> dict[str, Any]:
    """Accuracy, agreement with FP32, size, latency and corruption mean accuracy of one ONNX file."""
    sess = make_session(path, threads=0)
    logits = onnx_logits(sess, test_x)
    pred = logits.argmax(1)
    row: dict[str, Any] = {
        "file": str(path), "size_bytes": path.stat().st_size,
        "accuracy": float((pred == test_y).mean()),
        "agreement_fp32": float((pred == fp32_pred).mean()) if fp32_pred is not None else 1.0,
    }
    shape = tuple(test_x.shape[1:])
    row["latency_ms"] = {f"b{b}_t{t}": measure_latency(path, batch=b, threads=t, warmup=20, runs=runs,
                                                      input_shape=shape)["median_ms"]
                         for b, t in LATENCY_SETTINGS}
    predict: Callable[[np.ndarray], np.ndarray] = lambda x: onnx_logits(sess, x)  # noqa: E731
    corr = corruption_accuracy(predict, corr_x, corr_y, CORRUPTIONS.names(), [1, 2, 3, 4, 5], seed=0)
    row["corruption_mean"] = corr["mean_accuracy"]
    return row, pred


def _mean_std(values: list[float]) -> dict[str, float]:
    a = np.asarray(values, dtype=np.float64)
    return {"mean": float(a.mean()), "std": float(a.std(ddof=1)) if len(a) > 1 else 0.0, "n": int(len(a))}


def summarize(rows: dict[str, list[dict[str, Any]]], fp32: dict[str, Any]) -> list[dict[str, Any]]:
    """One line per method: mean ± std over its files (seeds), and ratios to FP32."""
    lines = []
    for method, rs in rows.items():
        ok = [r for r in rs if "error" not in r]
        if not ok:
            lines.append({"method": method, "error": rs[0]["error"]})
            continue
        line: dict[str, Any] = {"method": method, "n": len(ok)}
        for key in ("accuracy", "agreement_fp32", "corruption_mean", "size_bytes"):
            line[key] = _mean_std([r[key] for r in ok])
        line["drop_pt"] = _mean_std([100 * (fp32["accuracy"] - r["accuracy"]) for r in ok])
        line["size_ratio"] = line["size_bytes"]["mean"] / fp32["size_bytes"]
        line["latency_ratio"] = {k: float(np.mean([r["latency_ms"][k] for r in ok])) / fp32["latency_ms"][k]
                                 for k in fp32["latency_ms"]}
        line["latency_ms"] = {k: float(np.mean([r["latency_ms"][k] for r in ok])) for k in fp32["latency_ms"]}
        lines.append(line)
    return lines


def markdown(title: str, fp32: dict[str, Any], lines: list[dict[str, Any]], meta: dict[str, Any]) -> str:
    def pm(d: dict[str, float], scale: float = 100.0, digits: int = 2) -> str:
        s = f"{scale * d['mean']:.{digits}f}"
        return s + (f" ± {scale * d['std']:.{digits}f}" if d["n"] > 1 else "")

    head = ("| method | n | top-1 % | drop pt | agree % | size × FP32 | lat b1 t1 | b1 t2 | b32 t1 | b32 t2 "
            "| corruption % |\n|---|---|---|---|---|---|---|---|---|---|---|\n")
    fl = fp32["latency_ms"]
    body = (f"| fp32 (reference) | 1 | {100 * fp32['accuracy']:.2f} | — | 100 | 1.000 | {fl['b1_t1']:.3f} ms "
            f"| {fl['b1_t2']:.3f} ms | {fl['b32_t1']:.3f} ms | {fl['b32_t2']:.3f} ms | {100 * fp32['corruption_mean']:.2f} |\n")
    for ln in lines:
        if "error" in ln:
            body += f"| {ln['method']} | 0 | not runnable: {ln['error'][:120]} |||||||||\n"
            continue
        lr = ln["latency_ratio"]
        body += (f"| {ln['method']} | {ln['n']} | {pm(ln['accuracy'])} | {pm(ln['drop_pt'], 1.0)} "
                 f"| {pm(ln['agreement_fp32'])} | {ln['size_ratio']:.3f} | ×{lr['b1_t1']:.2f} | ×{lr['b1_t2']:.2f} "
                 f"| ×{lr['b32_t1']:.2f} | ×{lr['b32_t2']:.2f} | {pm(ln['corruption_mean'])} |\n")
    notes = (f"\nFP32 latency in ms; INT8 rows give latency as a ratio to FP32 (median of {meta['runs']} runs, "
             f"measured back to back in one process). Test set: {meta['test_images']} images; corruption mean "
             f"over {meta['corruptions']} corruptions × 5 severities on {meta['corruption_images']} test images. "
             f"CPU: {meta['cpu']}.\n")
    return f"### {title}\n\n{head}{body}{notes}"


# ------------------------------------------------------------------ main


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--run", required=True, help="a finished edgekd run folder (teacher, distill, qat, export)")
    p.add_argument("--tag", required=True, help="name of the results files: quantization_<tag>.{json,md}")
    p.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2], help="seeds of the QAT rows")
    p.add_argument("--student", help="ARCH:WIDTH: distill this student from the run's teacher first")
    p.add_argument("--distill-epochs", type=int, help="with --student: distill epochs (default: the run's)")
    p.add_argument("--methods", nargs="+", default=["qat_kd", "qat_ce", "qat_kd_float_stem", "ptq_minmax", "ptq_entropy",
                                                     "ptq_percentile", "dynamic", "pt2e"])
    p.add_argument("--stem", default="features.0.0", help="the layer qat_kd_float_stem keeps in float")
    p.add_argument("--corruption-images", type=int, default=1000)
    p.add_argument("--runs", type=int, default=200, help="timed runs per latency setting")
    p.add_argument("--work", default="/tmp/edgekd-quant-bench", help="scratch folder for run copies")
    p.add_argument("--out", default=str(ROOT / "benchmarks" / "results"))
    a = p.parse_args()

    t_start = time.perf_counter()
    src = Path(a.run).resolve()
    work = Path(a.work) / a.tag
    work.mkdir(parents=True, exist_ok=True)
    log = work / "edgekd.log"
    if a.student:  # distill another student from the same teacher, in a copy of the run
        arch, _, width = a.student.partition(":")
        sets = [f"student.arch={arch}", f"student.width={width or '1.0'}"]
        if a.distill_epochs:
            sets.append(f"distill.train.epochs={a.distill_epochs}")
        qat_file(src, work, "student", sets, log, stages="distill,qat,export")
        src = copy_path(src, work, "student")[1]
    cfg = load_config(src / "config.yaml")
    manifest = Manifest.load(src)
    fp32_path = manifest.artifact("export", "student_fp32")
    bundle = build_dataset(cfg.data, cfg.seed)
    test_x, test_y = to_float(bundle.test.images), np.asarray(bundle.test.labels)
    n_corr = min(a.corruption_images, len(test_y))
    corr_x, corr_y = test_x[:n_corr], test_y[:n_corr]
    calib = calibration_images(cfg, bundle)
    print(f"student {cfg.student.arch} x{cfg.student.width}; test {len(test_y)} images; calibration {len(calib)} images",
          flush=True)

    fp32, fp32_pred = measure(fp32_path, None, test_x, test_y, corr_x, corr_y, a.runs)
    print("fp32", json.dumps({k: fp32[k] for k in ("accuracy", "size_bytes", "latency_ms")}), flush=True)
    rows: dict[str, list[dict[str, Any]]] = {}
    # qat_kd_float_stem: mixed precision, the 1-input-channel stem conv kept in float (see docs/quantization.md)
    seed_sets = {"qat_kd": [], "qat_ce": ["distill.alpha=0.0"], "qat_kd_float_stem": [f"qat.keep_float=[{a.stem}]"],
                 "qat_kd_epoch": ["qat.train.max_steps_per_epoch=null"]}
    for method in a.methods:
        rows[method] = []
        jobs: list[tuple[str, Callable[[], Path]]]
        if method in seed_sets:
            jobs = [(f"{method}-seed{s}", lambda s=s, m=method: qat_file(
                src, work, f"{m}-seed{s}", [f"seed={s}", *seed_sets[m]], log)) for s in a.seeds]
        elif method == "qat_kd_run":  # the run's own INT8 file (QAT+KD at the run's seed), no re-training
            jobs = [(method, lambda: manifest.artifact("export", "student_int8"))]
        elif method.startswith("ptq_"):
            calibrator = {"ptq_minmax": "MinMax", "ptq_entropy": "Entropy", "ptq_percentile": "Percentile"}[method]
            jobs = [(method, lambda c=calibrator, m=method: ort_static_ptq(fp32_path, work / f"{m}.onnx", calib, c))]
        elif method == "dynamic":
            jobs = [(method, lambda: ort_dynamic(fp32_path, work / "dynamic.onnx"))]
        elif method == "pt2e":
            jobs = [(method, lambda: pt2e_ptq(src, cfg, bundle, work / "pt2e.onnx", calib))]
        else:
            raise SystemExit(f"unknown method {method!r}")
        for label, build in jobs:
            t0 = time.perf_counter()
            try:
                path = build()
                row, _ = measure(path, fp32_pred, test_x, test_y, corr_x, corr_y, a.runs)
            except Exception as e:  # recorded in the table (e.g. a file onnxruntime cannot run), not hidden
                first = (str(e).strip().splitlines() or [type(e).__name__])[0]
                row = {"error": f"{type(e).__name__}: {first}"}
            row.update(label=label, seconds=time.perf_counter() - t0)
            rows[method].append(row)
            print(label, json.dumps({k: v for k, v in row.items() if k != "latency_ms"}), flush=True)

    lines = summarize(rows, fp32)
    meta = {"runs": a.runs, "test_images": int(len(test_y)), "corruption_images": int(n_corr),
            "corruptions": len(CORRUPTIONS.names()), "cpu": cpu_info().get("model", "unknown"),
            "seeds": a.seeds, "student": f"{cfg.student.arch} x{cfg.student.width}", "source_run": str(Path(a.run)),
            "distill_epochs": cfg.distill.train.epochs, "seconds": time.perf_counter() - t_start}
    title = f"INT8 from one FP32 student: {meta['student']} ({a.tag})"
    out = Path(a.out)
    atomic_write_json(out / f"quantization_{a.tag}.json", {
        "fp32": fp32, "rows": rows, "summary": lines, "meta": meta,
        "environment": {"cpu": cpu_info(), "versions": package_versions()}})
    atomic_write_text(out / f"quantization_{a.tag}.md", markdown(title, fp32, lines, meta))
    print(markdown(title, fp32, lines, meta))
    return 0


if __name__ == "__main__":
    sys.exit(main())
