"""Robust distillation benchmark: no KD vs KD vs KD+noise vs ARD vs RSLAD on the same student and budget.

For each seed and method it distills the same teacher into the same student with the same data
and schedule (through ``edgekd.run``), then measures the student on the test set: clean accuracy,
mean corruption accuracy (all registered corruptions, 5 severities), PGD-20 accuracy at each ε,
ECE and OOD AUROC (max-softmax, mean over the synthetic outlier sets). Writes
``benchmarks/results/robustness.json`` and ``robustness.md`` (mean ± std over seeds).

    python benchmarks/robustness.py                       # CPU budget (see --help)
    python benchmarks/robustness.py --train-subset 0 --epochs 6   # the default run's full budget
"""
from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import edgekd  # noqa: E402
from edgekd.config import load_config  # noqa: E402
from edgekd.io import atomic_write_json, atomic_write_text  # noqa: E402

METHODS: dict[str, list[str]] = {
    "no_kd": ["distill.loss=ce"],
    "kd": ["distill.loss=hinton"],
    # noise/corruptions change the student's inputs every epoch, so the teacher runs online (on the clean input)
    "kd_noise": ["distill.loss=hinton", "distill.cache_teacher_logits=false", "data.augment.noise_std=0.1",
                 "data.augment.corruption_prob=0.5"],
    "ard": ["distill.loss=ard", "distill.robust.attack=fgsm_rs", "distill.robust.epsilon=0.1"],
    "rslad": ["distill.loss=rslad", "distill.robust.attack=fgsm_rs", "distill.robust.epsilon=0.1"],
}


def parse_args() -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--config", default=str(ROOT / "configs" / "fashion_mnist.yaml"))
    p.add_argument("--teacher", help="teacher weights (.pt); default: train one once with the config's teacher schedule")
    p.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    p.add_argument("--methods", nargs="+", default=list(METHODS), choices=list(METHODS))
    p.add_argument("--train-subset", type=int, default=8000, help="training images (0 = all)")
    p.add_argument("--epochs", type=int, default=3)
    p.add_argument("--test-images", type=int, default=2000, help="stratified test subset for clean accuracy (0 = all)")
    p.add_argument("--eval-images", type=int, default=500)
    p.add_argument("--adv-images", type=int, default=200)
    p.add_argument("--out", default=str(ROOT / "benchmarks" / "results"))
    p.add_argument("--render", action="store_true", help="only re-render robustness.md from robustness.json")
    p.add_argument("--runs", default=str(ROOT / "export" / "bench"), help="where the benchmark's runs land")
    return p.parse_args()


def budget_overrides(a: argparse.Namespace) -> list[str]:
    sub = f"data.train_subset={a.train_subset}" if a.train_subset else "data.train_subset=null"
    return [sub, f"data.test_subset={a.test_images}" if a.test_images else "data.test_subset=null",
            f"distill.train.epochs={a.epochs}",
            f"check.robustness.images={a.eval_images}", f"check.robustness.adversarial_images={a.adv_images}",
            # the student is attacked white-box (PGD-20); the black-box square attack is off
            "check.robustness.square_queries=0", "check.robustness.pgd_steps=20"]


def teacher_weights(a: argparse.Namespace) -> str:
    if a.teacher:
        return a.teacher
    run = edgekd.run(a.config, overrides=["name=bench_teacher"], out=a.runs, stages=["teacher"])
    return str(run.manifest.artifact("teacher", "weights"))


def measure_student(run: Any) -> dict[str, float]:
    """Clean/corruption/PGD/ECE/OOD of the distilled FP32 student (torch, on the CPU)."""
    import numpy as np
    import torch

    from edgekd.data import build_dataset
    from edgekd.pixels import to_float
    from edgekd.models import build_student, load_weights
    from edgekd.robustness.evaluate import evaluate_robustness, torch_predict_fn

    cfg = load_config(run.run_dir / "config.yaml")
    bundle = build_dataset(cfg.data, cfg.seed)
    student = build_student(cfg.student, bundle)
    load_weights(student, run.manifest.artifact("distill", "weights"))
    student.eval()
    predict = torch_predict_fn(student)
    logits = np.concatenate([predict(to_float(bundle.test.images[i:i + 1000])) for i in range(0, len(bundle.test.images), 1000)])
    clean = float((logits.argmax(1) == bundle.test.labels).mean())
    rob = evaluate_robustness(predict, bundle.test.images, bundle.test.labels, cfg.check.robustness, cfg.seed,
                              val=(bundle.val.images, bundle.val.labels), torch_model=student)
    out = {"clean": clean, "corruption_mean": rob["corruption"]["mean_accuracy"],
           "ece": rob["calibration"]["ece"],
           "ood_auroc_msp": float(np.mean([v["auroc_msp"] for v in rob["ood"].values()]))}
    for eps, acc in rob["adversarial"]["pgd"].items():
        out[f"pgd_{eps}"] = acc
    torch.set_grad_enabled(True)
    return out


def summarize(rows: dict[str, list[dict[str, float]]]) -> dict[str, dict[str, tuple[float, float]]]:
    table: dict[str, dict[str, tuple[float, float]]] = {}
    for method, runs in rows.items():
        table[method] = {}
        for key in runs[0]:
            vals = [r[key] for r in runs]
            table[method][key] = (statistics.mean(vals), statistics.stdev(vals) if len(vals) > 1 else 0.0)
    return table


def markdown(table: dict[str, dict[str, tuple[float, float]]], meta: dict[str, Any]) -> str:
    keys = list(next(iter(table.values())))
    pct = {k for k in keys if k != "ece" and k != "ood_auroc_msp"}
    head = "| method | " + " | ".join(keys) + " |\n|---|" + "---|" * len(keys) + "\n"
    lines = []
    for method, vals in table.items():
        cells = [f"{100 * m:.2f} ± {100 * s:.2f}" if k in pct else f"{m:.4f} ± {s:.4f}" for k, (m, s) in vals.items()]
        lines.append(f"| {method} | " + " | ".join(cells) + " |")
    note = (f"\nMean ± std over seeds {meta['seeds']}; student {meta['student']}, teacher {meta['teacher_arch']}; "
            f"{meta['train_images']} training images, {meta['epochs']} epochs; accuracies in % on a stratified "
            f"{meta['test_images']}-image Fashion-MNIST test subset ({meta['eval_images']} of them for "
            f"corruptions/OOD, {meta['adv_images']} for PGD-20); "
            f"pgd_<ε> keys are ε on the [0,1] scale. Wall time {meta['seconds'] / 60:.1f} min on {meta['cpu']}.\n")
    return head + "\n".join(lines) + "\n" + note


def targets(table: dict[str, dict[str, tuple[float, float]]]) -> str:
    """The Robustness issue's targets, judged on the seed means (met or not, never hidden)."""
    def m(method: str, key: str) -> float:
        return table[method][key][0]

    rows = []
    if "kd" in table and "no_kd" in table:
        rows.append(("KD corruption mean ≥ no-KD", f"{100 * m('kd', 'corruption_mean'):.2f} % vs {100 * m('no_kd', 'corruption_mean'):.2f} %",
                     m("kd", "corruption_mean") >= m("no_kd", "corruption_mean")))
        rows.append(("KD ECE ≤ no-KD", f"{m('kd', 'ece'):.4f} vs {m('no_kd', 'ece'):.4f}", m("kd", "ece") <= m("no_kd", "ece")))
        rows.append(("KD OOD AUROC ≥ no-KD", f"{m('kd', 'ood_auroc_msp'):.4f} vs {m('no_kd', 'ood_auroc_msp'):.4f}",
                     m("kd", "ood_auroc_msp") >= m("no_kd", "ood_auroc_msp")))
    robust = [r for r in ("ard", "rslad") if r in table]
    if robust and "kd" in table:
        best = max(robust, key=lambda r: m(r, "pgd_0.1000"))
        gain = m(best, "pgd_0.1000") - m("kd", "pgd_0.1000")
        loss = m("kd", "clean") - m(best, "clean")
        rows.append((f"best robust option ({best}): PGD-20 ε=0.1 ≥ KD + 30 pt", f"{100 * gain:+.1f} pt", gain >= 0.30))
        rows.append((f"… losing ≤ 5 pt clean accuracy", f"{100 * loss:.1f} pt lost", loss <= 0.05))
    lines = ["| target | measured (seed means) | met |", "|---|---|---|"]
    lines += [f"| {t} | {v} | {'yes' if ok else 'no'} |" for t, v, ok in rows]
    return "\n".join(lines) + "\n"


def render(out: Path) -> str:
    """Markdown of a finished benchmark (table, notes and targets) from its JSON."""
    data = json.loads((out / "robustness.json").read_text())
    table = {k: {kk: tuple(vv) for kk, vv in v.items()} for k, v in data["summary"].items()}
    return markdown(table, data["meta"]) + "\n" + targets(table)


def main() -> int:
    a = parse_args()
    if a.render:  # re-render the markdown of the last run
        atomic_write_text(Path(a.out) / "robustness.md", render(Path(a.out)))
        print(render(Path(a.out)))
        return 0
    t0 = time.time()
    teacher = teacher_weights(a)
    common = budget_overrides(a) + [f"teacher.weights={teacher}", "teacher_train.epochs=0"]
    rows: dict[str, list[dict[str, float]]] = {m: [] for m in a.methods}
    for seed in a.seeds:
        for method in a.methods:
            overrides = common + METHODS[method] + [f"seed={seed}", f"name=bench_{method}_s{seed}"]
            run = edgekd.run(a.config, overrides=overrides, out=a.runs, stages=["teacher", "distill"])
            rows[method].append(measure_student(run))
            print(f"[bench] seed {seed} {method}: {json.dumps(rows[method][-1])}", flush=True)
    from edgekd.environment import cpu_info

    cfg = load_config(a.config)
    meta = {"seeds": a.seeds, "student": f"{cfg.student.arch} x{cfg.student.width}", "teacher_arch": cfg.teacher.arch,
            "train_images": a.train_subset or "all", "epochs": a.epochs, "test_images": a.test_images or "all", "eval_images": a.eval_images,
            "adv_images": a.adv_images, "seconds": time.time() - t0, "cpu": cpu_info()["model"], "teacher": teacher}
    table = summarize(rows)
    out = Path(a.out)
    atomic_write_json(out / "robustness.json", {"meta": meta, "runs": rows, "summary": table})
    atomic_write_text(out / "robustness.md", render(out))
    print(render(out))
    return 0


if __name__ == "__main__":
    sys.exit(main())
