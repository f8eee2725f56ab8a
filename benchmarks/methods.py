"""Every registered KD method on one table: same teacher, student, data and budget, >= 3 seeds, mean ± std.

Each (method, seed) is a whole ``edgekd.run`` (teacher loaded from one cached training, distill, qat,
export, check), measured by the check stage in onnxruntime on the test split:

- clean accuracy: the FP32 student (model.fp32.onnx);
- INT8 accuracy after QAT: model.int8.onnx;
- corruption mean, ECE, OOD AUROC (max-softmax, mean over the OOD sets): the INT8 file, the model shipped;
- held-out corruptions: the INT8 file's mean over ``HELD_OUT_CORRUPTIONS``, which no row trains on
  (augmix_kd and hinton_corrupt draw their corruptions from the other registered ones), so a
  corruption-trained row's gain there is not in-family;
- PGD-20 at ε = 0.03: white-box on the FP32 student (as issue 13 measured it);
- training time: distill + qat seconds.

The ``ce`` row is the no-KD student; ``hinton_corrupt`` (``VARIANTS``) is Hinton KD with the student's input
corrupted (robust KD option (a), at plain KD's cost: the cached logits are the teacher's on the clean image). The markdown says which methods beat Hinton KD by more than the
seed std (``beats``: the mean difference, in the better direction, exceeds the larger of the two stds).
Methods that need more than the base config (a second teacher for multi_teacher, an attack for ard/rslad,
self_distill's KD weight) get it from ``extras()``; a method whose run fails is a row that says so, never a
silent gap.

    python benchmarks/methods.py --budget small --methods ce hinton dkd --seeds 0 1 2   # minutes
    python benchmarks/methods.py                                                         # default budget: hours on 2 cores
    python benchmarks/methods.py --render --budget small                                 # re-render the markdown

At the default budget a cell (one method, one seed) is ~30 min on 2 idle cores (hinton/ce; augmix_kd ~2x),
so the table is built over several sittings: ``--resume`` keeps the cells the JSON already holds for the
same budget, overrides, student and teacher (sha256), runs only the missing ones of the requested methods,
and continues a cell killed mid-way from its last epoch checkpoint; it refuses to add cells to a row whose
kept cells ran with other settings (read from their run folders' manifests: ``check_kept_settings``); ``--teacher-run RUN`` reuses
the verified teacher of an earlier run of the same config (the default run's, for example) instead of
training one (~40 min):

    python benchmarks/methods.py --methods ce hinton augmix_kd --teacher-run export/fashion_mnist --resume

After a change to the quantization or check code, ``--rerun-from qat`` (with ``--resume``) re-runs the
requested cells the table holds from that stage on, reusing their trained students; each row records the
commit it ran (``code``), and the markdown lists which cells ran which code.
"""
from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from pathlib import Path
from typing import Any, Callable

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import edgekd  # noqa: E402
from edgekd.io import atomic_write_json, atomic_write_text, sha256_file  # noqa: E402

EPS = 0.03
EPS_KEY = f"{EPS:.4f}"  # the check metrics key epsilons as "%.4f"
SECOND_TEACHER = "wrn16_4"  # multi_teacher's extra teacher: another architecture than the run's resnet18
SELF_DISTILL_ALPHA = 0.5  # self_distill's KD weight (see extras)

# Budgets: config overrides on top of configs/fashion_mnist.yaml. "default" keeps its schedules and data
# (~30 min a run on 2 cores); "small" is a reduced budget for a CPU shared by other work (minutes a run).
COMMON = ["check.robustness.enabled=true", f"check.robustness.epsilons=[{EPS}]", "check.robustness.pgd_steps=20",
          "check.robustness.square_queries=0", "check.latency.batch_sizes=[1]", "check.latency.threads=[1]",
          "check.latency.runs=20", "check.latency.profile=false"]
BUDGETS: dict[str, list[str]] = {
    # default: the shipped INT8 file carries its fitted temperature (issue 13: calibration is judged on the
    # model users ship); 1000 corruption images (x 14 corruptions x 5 severities) keep the check stage ~6 min
    "default": COMMON + ["check.robustness.images=1000", "check.robustness.adversarial_images=500",
                         "export.temperature_scaling=true"],
    # small: a width-0.5 teacher (4x cheaper to train, export and attack), 2000 training images, 2 + 2 epochs
    # at batch 64 (62 steps each; 1000 images left the CE student at chance), 8 QAT steps, corruptions at
    # severities 1/3/5 on 100 test images
    "small": COMMON + [
        "data.train_subset=2000", "data.val_size=300", "data.test_subset=500", "data.batch_size=64",
        "teacher.width=0.5", "teacher_train.epochs=2", "distill.train.epochs=2",
        "qat.train.max_steps_per_epoch=8", "qat.calibration_batches=4", "export.parity_images=64",
        "check.robustness.images=100", "check.robustness.adversarial_images=50",
        "check.robustness.severities=[1,3,5]"],
}
# Rows that are a registered loss plus settings (not a loss of their own): name -> (loss, overrides).
# hinton_corrupt is robust KD option (a): Hinton KD with the student's input corrupted (a random
# corruption at severity <= 3 on half the batches, drawn from training_corruptions(); the teacher's cached
# logits are on the clean image).
VARIANTS: dict[str, tuple[str, list[str]]] = {
    "hinton_corrupt": ("hinton", ["data.augment.corruption_prob=0.5", "data.augment.corruption_max_severity=3"]),
}
# Corruptions no method of the table trains on: augmix_kd's views use the other registered ones, so its
# corruption mean over all of them is partly in-family and this column is not (the check stage measures
# every registered corruption; the mean over these six is read from the same numbers).
HELD_OUT_CORRUPTIONS = ("brightness", "contrast", "elastic", "occlusion", "rotate", "translate")
# Higher is better except ECE and training time.
COLUMNS = {"clean": "clean acc (FP32)", "int8": "INT8 acc after QAT", "corruption_mean": "corruption mean (INT8)",
           "corruption_heldout": "held-out corruptions (INT8)",
           f"pgd_{EPS_KEY}": f"PGD-20 ε={EPS} (FP32)", "ece": "ECE (INT8)", "ood_auroc": "OOD AUROC (INT8)",
           "train_seconds": "training time (s): fastest seed (slowest)"}
LOWER_IS_BETTER = {"ece", "train_seconds"}
# the stages a cell can be re-run from without retraining the student (--rerun-from)
STAGES_AFTER_DISTILL = ("qat", "export", "check")
FRACTIONS = {"clean", "int8", "corruption_mean", "corruption_heldout", f"pgd_{EPS_KEY}"}


def variant_overrides(method: str) -> tuple[str, list[str]]:
    """(loss, overrides) of a table row: a registered loss alone, or a ``VARIANTS`` row; a row trained on
    corrupted inputs draws them from ``training_corruptions`` only."""
    from edgekd.validation import uncacheable_losses

    loss, variant = VARIANTS.get(method, (method, []))
    if any(o.startswith("data.augment.corruption_prob=") for o in variant):
        variant = variant + [f"data.augment.corruptions=[{','.join(training_corruptions())}]"]
    if loss in uncacheable_losses():  # feature losses and a moving teacher need the teacher every step
        variant = variant + ["distill.cache_teacher_logits=false"]
    return loss, variant


def method_overrides(method: str) -> list[str]:
    """A row's overrides on top of the budget: its variant settings, then its loss (the cell adds seed and name)."""
    loss, variant = variant_overrides(method)
    return variant + [f"distill.loss={loss}"]


def training_corruptions() -> list[str]:
    """The registered corruptions a corruption-trained row may use: all but ``HELD_OUT_CORRUPTIONS``."""
    from edgekd.robustness.corruptions import CORRUPTIONS

    return [c for c in CORRUPTIONS.names() if c not in HELD_OUT_CORRUPTIONS]


def heldout_mean(corruption: dict[str, Any]) -> float:
    """Mean accuracy over ``HELD_OUT_CORRUPTIONS`` and every severity, from the check stage's ``by_corruption``."""
    by = corruption["by_corruption"]
    missing = [c for c in HELD_OUT_CORRUPTIONS if c not in by]
    if missing:
        raise BenchInputError(f"the check stage measured no {', '.join(missing)}; run it with every registered "
                              "corruption (check.robustness.corruptions empty)")
    return statistics.mean(statistics.mean(by[c]) for c in HELD_OUT_CORRUPTIONS)


def extras(base: dict[str, Any], teacher2: Callable[[], str]) -> dict[str, Callable[[], list[str]]]:
    """Per-method settings beyond the base config (a method not listed runs with the base config).

    Callables, so multi_teacher's second teacher is trained only when that method is benchmarked; it is
    built like the cached one (the base teacher section with another arch), so its weights fit.
    """
    t = base["teacher"]
    second = (f"{{arch: {SECOND_TEACHER}, width: {t['width']}, stem_stride: {t['stem_stride']}, "
              f"maxpool: {str(t['maxpool']).lower()}, weights: {{w}}}}")
    return {
        "multi_teacher": lambda: [f"distill.teachers=[{second.replace('{w}', teacher2())}]",
                                  "distill.teacher_weighting=confidence"],
        # AugMix keeps its augmentations apart from the test corruptions (Hendrycks et al. 2020, sec. 4)
        "augmix_kd": lambda: [f"distill.augmix.ops=[{','.join(training_corruptions())}]"],
        "ard": lambda: ["distill.robust.attack=fgsm_rs", f"distill.robust.epsilon={EPS}"],
        "rslad": lambda: ["distill.robust.attack=fgsm_rs", f"distill.robust.epsilon={EPS}"],
        # the base alpha 0.9 at T 4 weighs KD 144:1 against the labels; from the student's own average that
        # leaves the labels almost no say and slows learning (tests/test_self_distill.py's toy problem:
        # 11 pt behind CE at 0.9, level with it at 0.5); 0.5 weighs them 16:1
        "self_distill": lambda: [f"distill.alpha={SELF_DISTILL_ALPHA}"],
    }


# What each row runs beyond the base config (``extras``, ``VARIANTS``), for the table's readers; a test keeps
# every key of those two here
SETTINGS_NOTES = {
    "multi_teacher": f"+ a {SECOND_TEACHER} teacher (the base teacher's width, stem and max-pool, trained once), "
                     "confidence-weighted per sample",
    "augmix_kd": "AugMix views from the training corruptions only (not the held-out six)",
    "ard": f"FGSM-RS inner attack at ε {EPS}",
    "rslad": f"FGSM-RS inner attack at ε {EPS}",
    "self_distill": f"α {SELF_DISTILL_ALPHA} (the base α 0.9 at T 4 leaves the labels almost no say against the "
                    "student's own average)",
    "hinton_corrupt": "Hinton KD with half the batches corrupted (severity ≤ 3, training corruptions only)",
}


def settings_line(methods: list[str]) -> str:
    """One line naming what the table's rows run beyond the base config ('' when none does)."""
    from edgekd.validation import uncacheable_losses

    notes = [f"{m}: {SETTINGS_NOTES[m]}" for m in methods if m in SETTINGS_NOTES]
    live = [m for m in methods if variant_overrides(m)[0] in uncacheable_losses()]
    if live:
        notes.append(f"{', '.join(live)}: no cached teacher logits (the teacher runs every step)")
    return ("Beyond the base config: " + "; ".join(notes) + ".\n") if notes else ""


def parse_args() -> argparse.Namespace:
    from edgekd.losses import KD_LOSSES

    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--config", default=str(ROOT / "configs" / "fashion_mnist.yaml"))
    p.add_argument("--budget", choices=list(BUDGETS), default="default",
                   help="default: the config's own schedules (~30 min a run on 2 cores); small: minutes a run")
    p.add_argument("--methods", nargs="+", default=KD_LOSSES.names(), choices=KD_LOSSES.names() + list(VARIANTS),
                   help="KD losses to compare (default: every registered one), run in this order; ce and hinton "
                        "are always added")
    p.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    p.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                   help="extra config override for every run (repeatable)")
    p.add_argument("--out", default=str(ROOT / "benchmarks" / "results"))
    p.add_argument("--runs", default=str(ROOT / "export" / "bench_methods"), help="where the runs land")
    p.add_argument("--render", action="store_true",
                   help="only re-render the markdown from the JSON (adding columns measured since from the run folders "
                        "under --runs)")
    p.add_argument("--resume", action="store_true",
                   help="keep the (method, seed) cells the JSON already measured with the same budget and teacher")
    p.add_argument("--rerun-from", default=None, choices=list(STAGES_AFTER_DISTILL), metavar="STAGE",
                   help="with --resume: re-run the requested cells the table already holds from this stage on "
                        f"({', '.join(STAGES_AFTER_DISTILL)}), reusing their verified earlier stages, and replace "
                        "their rows (after a change to the quantization or check code; no retraining of distill)")
    p.add_argument("--teacher-run", default=None, metavar="RUN",
                   help="use this run's verified teacher (same data and teacher config) instead of training one")
    a = p.parse_args()
    if a.rerun_from and not a.resume:
        p.error("--rerun-from re-measures cells an earlier sitting wrote: pass it with --resume")
    # the requested methods run first (within each seed), then the two references if not requested (a re-run
    # touches only the requested cells: the references are already on the table)
    a.methods = list(dict.fromkeys([*a.methods, *([] if a.rerun_from else ["ce", "hinton"])]))
    if len(a.seeds) < 3 and not a.render:
        print("[bench] note: fewer than 3 seeds; the std is not a meaningful spread", file=sys.stderr)
    return a


def measure(run: Any) -> dict[str, float]:
    """The table's numbers from the run's check stage (onnxruntime on the test split) and its training stages."""
    check = run.metrics("check")
    models = check["models"]
    rob = models["student_int8"]["robustness"]
    ood = [v["auroc_msp"] for v in rob["ood"].values()]
    return {
        "clean": models["student_fp32"]["accuracy"], "int8": models["student_int8"]["accuracy"],
        "corruption_mean": rob["corruption"]["mean_accuracy"],
        f"pgd_{EPS_KEY}": models["student_fp32"]["robustness"]["adversarial"]["pgd"][EPS_KEY],
        "ece": rob["calibration"]["ece"], "ood_auroc": statistics.mean(ood),
        "train_seconds": float(run.metrics("distill")["train_seconds"]) + float(run.metrics("qat")["train_seconds"]),
        **corruption_columns(check),
    }


def corruption_columns(check: dict[str, Any]) -> dict[str, Any]:
    """The INT8 student's held-out corruption mean and its accuracy per corruption (mean over severities),
    and its teacher's on the same draws (the check stage corrupts the same images with the run's seed for
    every model it measures)."""
    student, teacher = (check["models"][m]["robustness"]["corruption"] for m in ("student_int8", "teacher"))
    return {"corruption_heldout": heldout_mean(student), "teacher_corruption_mean": teacher["mean_accuracy"],
            "teacher_corruption_heldout": heldout_mean(teacher),
            "by_corruption": per_corruption(student), "teacher_by_corruption": per_corruption(teacher)}


def per_corruption(corruption: dict[str, Any]) -> dict[str, float]:
    """Accuracy per corruption, the mean over its severities, from the check stage's ``by_corruption``."""
    return {name: statistics.mean(accs) for name, accs in sorted(corruption["by_corruption"].items())}


def code_version() -> str:
    """The commit the benchmark process loaded its code from (``-dirty`` with uncommitted changes), so a table
    built over several sittings says which cells ran which code."""
    import subprocess

    def git(*args: str) -> str:
        return subprocess.run(["git", *args], cwd=ROOT, capture_output=True, text=True).stdout.strip()

    head = git("rev-parse", "--short", "HEAD")
    if not head:
        return "unknown (not a git checkout)"
    return head + ("-dirty" if git("status", "--porcelain", "--untracked-files=no", "--", "edgekd") else "")


class BenchInputError(Exception):
    """A bad argument to the benchmark: printed as one line, exit code 2."""


def teacher_from_run(base: dict[str, Any], run_dir: str) -> Any:
    """The verified teacher of an earlier run, refused unless it was trained on this benchmark's data and arch."""
    from edgekd.errors import ArtifactError
    from edgekd.manifest import Manifest
    from edgekd.tuning.teachers import CachedTeacher

    try:
        manifest = Manifest.load(run_dir)
        entry = manifest.stage("teacher")
        if not entry or entry.get("status") != "done":
            raise BenchInputError(f"--teacher-run {run_dir}: the run has no finished teacher stage; "
                                  "pass a run whose teacher stage ran, or drop --teacher-run to train one")
        weights = manifest.artifact("teacher", "weights")  # sha256-verified
    except ArtifactError as e:
        raise BenchInputError(f"--teacher-run {run_dir}: {e.problem}; {e.fix}") from None
    used = entry.get("config", {})
    # what decides the teacher's weights and the split the students are measured on
    keys = {"teacher": ["arch", "width", "stem_stride", "maxpool"],
            "data": ["dataset", "val_size", "train_subset", "image_size"]}
    diff = [f"{sec}.{k}: run {used.get(sec, {}).get(k)!r} vs benchmark {base[sec][k]!r}"
            for sec, ks in keys.items() for k in ks if used.get(sec, {}).get(k) != base[sec][k]]
    if used.get("seed") != base["seed"]:
        diff.append(f"seed: run {used.get('seed')!r} vs benchmark {base['seed']!r}")
    if diff:
        raise BenchInputError(f"--teacher-run {run_dir}: its teacher was trained with another config "
                              f"({'; '.join(diff)}); pass a run of the benchmark's config, or drop --teacher-run "
                              "to train one")
    m = entry.get("metrics", {})
    return CachedTeacher(arch=base["teacher"]["arch"], weights=weights, val_accuracy=float(m.get("val_accuracy", "nan")),
                         test_accuracy=float(m.get("test_accuracy", "nan")), trained=False)


def resumed(path: Path, budget: list[str], teacher_sha: str, student: str, methods: list[str]
            ) -> tuple[dict[str, list[dict[str, float]]], list[dict[str, Any]], float]:
    """Cells an earlier sitting measured with the same overrides, teacher and student; its failures and
    wall seconds. Methods of earlier sittings stay on the table (after ``methods``)."""
    runs: dict[str, list[dict[str, float]]] = {m: [] for m in methods}
    if not path.exists():
        return runs, [], 0.0
    old = json.loads(path.read_text())
    meta = old["meta"]
    if "teacher_sha256" not in meta:
        raise BenchInputError(f"--resume: {path} was written before --resume existed (it records no teacher "
                              "sha256); pass another --out, or drop --resume to start the table again")
    same = {"overrides": (meta.get("overrides"), budget), "teacher sha256": (meta["teacher_sha256"], teacher_sha),
            "student": (meta.get("student"), student)}
    differ = [f"{k} ({old_v!r} there, {new_v!r} now)" for k, (old_v, new_v) in same.items() if old_v != new_v]
    if differ:
        raise BenchInputError(f"--resume: {path} was measured with another {', '.join(differ)}; "
                              "pass another --out, or drop --resume to start the table again")
    for method, rows in old["runs"].items():
        runs[method] = list(rows)
    return runs, list(old.get("failures", [])), float(meta.get("seconds", 0.0))


_ABSENT = "<absent>"  # a key the cell's run did not record (it ran before the key existed)


def setting_differences(now: Any, there: Any, key: str) -> list[str]:
    """``key (there, now)`` wherever a run's recorded value disagrees with an override's: a dict (or a list of
    dicts) compares the keys the override names, so defaults added since do not count; ``weights`` are files,
    compared by sha256 (``kept_setting_differences``)."""
    if isinstance(now, dict):
        if not isinstance(there, dict):
            return [f"{key} ({there!r} there, {now!r} now)"]
        return [d for k, v in now.items() if k != "weights" for d in setting_differences(v, there.get(k, _ABSENT), f"{key}.{k}")]
    if isinstance(now, list) and any(isinstance(v, dict) for v in now):
        if not isinstance(there, list) or len(there) != len(now):
            return [f"{key} ({there!r} there, {now!r} now)"]
        return [d for i, (v, w) in enumerate(zip(now, there)) for d in setting_differences(v, w, f"{key}[{i}]")]
    return [] if now == there else [f"{key} ({there!r} there, {now!r} now)"]


def kept_setting_differences(folder: Path, overrides: list[str], files: bool) -> list[str] | None:
    """How a measured cell's run folder disagrees with the settings this sitting gives its row (``overrides``:
    the row's ``method_overrides`` and ``extras``).

    Each ``key=value`` is compared with what the cell's distill and QAT stages ran with (each manifest entry
    keeps the config sections its stage read), so a QAT re-run with other settings than its distillation is
    caught too. With ``files``, ``distill.teachers``' weights files are compared by sha256 with the ones the
    distill stage recorded (``extra_teachers``). None when the manifest records no stage config to compare."""
    import yaml
    from edgekd.manifest import Manifest

    manifest = Manifest.load(folder)
    if not any("config" in (manifest.stage(st) or {}) for st in ("distill", "qat")):
        return None
    out: list[str] = []
    for item in overrides:
        key, _, raw = item.partition("=")
        now = yaml.safe_load(raw)
        for stage in ("distill", "qat"):
            there: Any = (manifest.stage(stage) or {}).get("config", {})
            if key.split(".")[0] not in there:
                continue  # a section this stage does not read
            for part in key.split("."):
                there = there.get(part, _ABSENT) if isinstance(there, dict) else _ABSENT
            out += [f"{stage}: {d}" for d in setting_differences(now, there, key)]
        if key == "distill.teachers" and files:
            now_sha = [sha256_file(t["weights"]) for t in now]
            there_sha = [t.get("sha256") for t in manifest.metrics("distill").get("extra_teachers", [])]
            if now_sha != there_sha:
                out.append(f"distill.teachers weights (sha256 {there_sha} there, {now_sha} now)")
    return list(dict.fromkeys(out))


def check_kept_settings(methods: list[str], runs: dict[str, list[dict[str, Any]]], seeds: list[int], runs_dir: Path,
                        budget: list[str], per_method: Callable[[str, bool], list[str]], rerun: bool) -> None:
    """Refuse (BenchInputError) a sitting that would add cells to, or re-measure, a row whose earlier cells ran
    with other settings than this code gives it (``extras`` or ``VARIANTS`` changed since): one row must be
    one configuration. ``per_method(method, files)`` gives the row's overrides; with ``files`` False it must
    not train anything (a second teacher's weights are then compared only when a cell of the row runs, which
    needs the teacher anyway). The budget (with ``--set``) is compared too: run folders are shared by every
    table of a budget. Cells whose run folder is not on this machine, or records no config, are named, not
    checked; an unreadable manifest is a problem."""
    from edgekd.errors import ArtifactError

    problems = []
    for method in methods:
        kept = [int(r["seed"]) for r in runs.get(method, []) if "seed" in r]
        if not kept:
            continue
        # a cell of the row runs: a missing seed, or (re-run) a kept one this sitting asks for
        runs_a_cell = any((s in kept) == rerun for s in seeds)
        overrides = budget + per_method(method, runs_a_cell)
        for seed in kept:
            folder = runs_dir / f"{method}_s{seed}"
            if not (folder / "manifest.json").is_file():
                print(f"[bench] {method} s{seed}: settings not checked (no run folder {folder})", flush=True)
                continue
            try:
                differ = kept_setting_differences(folder, overrides, runs_a_cell)
            except ArtifactError as e:
                differ = [f"its run folder cannot be read ({e.problem})"]
            if differ is None:
                print(f"[bench] {method} s{seed}: settings not checked (its manifest records no distill or QAT "
                      "config)", flush=True)
                continue
            problems += [f"{method} s{seed}: {d}" for d in differ]
    if problems:
        raise BenchInputError("--resume: cells of the table ran with other settings than this sitting gives their row: "
                              + "; ".join(problems) + ". Re-run those rows on another --out (or delete their cells "
                              "from the JSON), or restore the settings they ran with")


def backfill(runs: dict[str, list[dict[str, float]]], runs_dir: Path) -> int:
    """Add the corruption columns (``corruption_columns``) to rows measured before one existed, from their
    run folder's check stage (``RUNS/BUDGET/METHOD_sSEED``); rows whose folder is not on this machine stay
    without them. Returns how many rows gained them."""
    from edgekd.manifest import Manifest

    added = 0
    for method, rows in runs.items():
        for r in rows:
            folder = runs_dir / f"{method}_s{r['seed']}"
            if "by_corruption" in r or not (folder / "manifest.json").is_file():
                continue
            r.update(corruption_columns(Manifest.load(folder).metrics("check")))
            added += 1
    return added


def corruption_table(runs: dict[str, list[dict[str, Any]]], order: list[str]) -> str | None:
    """INT8 accuracy per corruption (mean over seeds and severities), one row per method in ``order`` whose
    every seed recorded it, then the teacher's (over every such row's draw); None before rows record it."""
    rows = {m: runs[m] for m in order if runs.get(m) and all("by_corruption" in r for r in runs[m])}
    if not rows:
        return None
    names = sorted({c for rs in rows.values() for r in rs for c in r["by_corruption"]},
                   key=lambda c: (c in HELD_OUT_CORRUPTIONS, c))
    head = ["method", *[f"{c}{' (held out)' if c in HELD_OUT_CORRUPTIONS else ''}" for c in names]]

    def line(label: str, dicts: list[dict[str, float]]) -> str:
        cells = [f"{100 * statistics.mean(d[c] for d in dicts):.2f}" if all(c in d for d in dicts) else "—"
                 for c in names]
        return f"| {label} | " + " | ".join(cells) + " |"

    teacher = {int(r["seed"]): r["teacher_by_corruption"] for rs in rows.values() for r in rs}
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    lines += [line(m, [r["by_corruption"] for r in rs]) for m, rs in rows.items()]
    lines.append(line(f"teacher (seeds' draws {sorted(teacher)})", list(teacher.values())))
    return ("INT8 accuracy per corruption (%, mean over seeds and the five severities; the held-out six last):\n\n"
            + "\n".join(lines) + "\n")


def teacher_line(runs: dict[str, list[dict[str, float]]]) -> str | None:
    """The teacher's corruption means (over the seeds' draws), and which INT8 students reach them on their
    own seed's draw; None before the rows record the teacher."""
    by_seed = {int(r["seed"]): r for rows in runs.values() for r in rows if "teacher_corruption_mean" in r}
    if not by_seed:
        return None
    parts = []
    for key, label in (("corruption_mean", "corruption mean"), ("corruption_heldout", "held-out corruptions")):
        vals = [100 * by_seed[s][f"teacher_{key}"] for s in sorted(by_seed)]
        spread = f" ± {statistics.stdev(vals):.2f}" if len(vals) > 1 else ""
        reach = [f"{m} {sum(r[key] >= r[f'teacher_{key}'] for r in rows)}/{len(rows)}" for m, rows in runs.items()
                 if rows and all(f"teacher_{key}" in r for r in rows)]
        parts.append(f"{label} {statistics.mean(vals):.2f}{spread} % (seeds' draws {sorted(by_seed)}); INT8 students "
                     f"at or above it on their seed's draw: {', '.join(reach)}")
    return "Teacher (the same file for every cell): " + "; ".join(parts) + ".\n"


def summarize(runs: dict[str, list[dict[str, float]]]) -> dict[str, dict[str, list[float] | None]]:
    """{method: {column: [mean, std]}} over the seeds that finished (sample std, n - 1); None for a column
    some of its rows lack (measured before the column existed, run folder not here)."""
    out: dict[str, dict[str, list[float] | None]] = {}
    for method, rows in runs.items():
        if rows:
            out[method] = {k: [statistics.mean(r[k] for r in rows),
                               statistics.stdev([r[k] for r in rows]) if len(rows) > 1 else 0.0]
                           if all(k in r for r in rows) else None for k in COLUMNS}
    return out


def beats(table: dict[str, dict[str, list[float] | None]], method: str, key: str, ref: str = "hinton") -> bool:
    """``method`` is better than ``ref`` on ``key`` by more than the larger of their seed stds."""
    if table[method][key] is None or table[ref][key] is None:
        return False
    (m, s), (r, rs) = table[method][key], table[ref][key]
    diff = (r - m) if key in LOWER_IS_BETTER else (m - r)
    return diff > max(s, rs)


def _time_cell(rows: list[dict[str, Any]]) -> str:
    """Training time as the fastest seed (and the slowest): it is wall time, and on a shared CPU a slow seed
    shared the cores or was paused, so a mean ± std mixes the method's cost with what else ran."""
    times = sorted(float(r["train_seconds"]) for r in rows)
    return f"{times[0]:.0f}" if len(times) < 2 else f"{times[0]:.0f} ({times[-1]:.0f})"


def _cell(key: str, mean: float, std: float, seeds: int) -> str:
    scale, digits = (100, 2) if key in FRACTIONS else (1, 4)  # training time: _time_cell
    text = f"{scale * mean:.{digits}f}"
    # one seed has no spread: "± 0.00" would read as a perfectly steady method
    return text if seeds < 2 else f"{text} ± {scale * std:.{digits}f}"


def order_of_rows(methods: list[str]) -> list[str]:
    """The references first (ce, then hinton), then the methods in the order they were benchmarked."""
    return sorted(methods, key=lambda m: (m not in ("ce", "hinton"), m != "ce"))


def render(data: dict[str, Any]) -> str:
    table, meta, failures = data["summary"], data["meta"], data["failures"]
    # every list in the table in the rows' order (the JSON stores its keys sorted, a sitting in run order)
    rows_order = [m for m in order_of_rows(meta["methods"]) if m in data["runs"]]
    head = "| method | seeds | " + " | ".join(COLUMNS.values()) + " |\n|---|---|" + "---|" * len(COLUMNS) + "\n"
    seeds = {method: len(rows) for method, rows in data["runs"].items()}
    lines = []
    for method in order_of_rows(meta["methods"]):
        if method not in table:  # no seed measured: every try failed, or none ran yet
            state = "failed" if any(f["method"] == method for f in failures) else "not run yet"
            lines.append(f"| {method} | 0 | " + " | ".join(state for _ in COLUMNS) + " |")
            continue
        n = seeds[method]
        cells = ["not measured" if table[method][k] is None else _time_cell(data["runs"][method])
                 if k == "train_seconds" else _cell(k, *table[method][k], n) for k in COLUMNS]
        lines.append(f"| {method}{' (no KD)' if method == 'ce' else ''} | {n} | " + " | ".join(cells) + " |")
    out = [head + "\n".join(lines) + "\n"]
    if not meta.get("complete", True):
        out.append("**Incomplete: not every method has run every seed yet; the seeds column says how many ran "
                   "per method.**\n")
    out.append(f"Budget: **{meta['budget']}**{' (REDUCED: not the default budget)' if meta['budget'] != 'default' else ''}; "
               f"overrides {meta['overrides']}. Mean ± std over seeds {meta['seeds']} (sample std). Same teacher "
               f"({meta['teacher']}, trained once, val {100 * meta['teacher_val_accuracy']:.2f} %), student "
               f"{meta['student']}, data and schedule for every method. Accuracies in % on the test split "
               f"(onnxruntime); wall time {meta['seconds'] / 60:.1f} min on {meta['cpu']}. Training time is distill + QAT "
               f"wall time; the fastest seed is the closest to the method's cost (a slower one shared the CPU).\n")
    settings = settings_line(rows_order)
    if settings:
        out.append(settings)
    teacher = teacher_line({m: data["runs"][m] for m in rows_order})
    if teacher:
        out.append(teacher)
    per = corruption_table(data["runs"], order_of_rows(meta["methods"]))
    if per:
        out.append(per)
    if seeds.get("hinton", 0) > 1:
        verdict = ["| method | beats Hinton KD by more than the seed std on |", "|---|---|"]
        for method in (m for m in rows_order if m in table):
            if method == "hinton":
                continue
            if seeds[method] < 2:  # no seed std to beat Hinton by
                verdict.append(f"| {method} | not ranked: {seeds[method]} seed, no seed std |")
                continue
            won = [COLUMNS[k] for k in COLUMNS if k != "train_seconds" and beats(table, method, k)]
            verdict.append(f"| {method} | {', '.join(won) if won else 'nothing'} |")
        out.append("\n".join(verdict) + "\n")
    elif "hinton" in table:
        out.append("Hinton KD has 1 seed, so no seed std: no method is ranked against it.\n")
    codes: dict[str, list[str]] = {}
    for method in rows_order:
        for r in data["runs"][method]:
            label = r.get("code", "not recorded (before cells recorded it)")
            codes.setdefault(label, []).append(f"{method} s{r['seed']}" + (f" (re-run from {r['rerun_from']})"
                                                                           if r.get("rerun_from") else ""))
    if codes:
        out.append("Code each cell ran (commit): " + "; ".join(f"{c}: {', '.join(cells)}" for c, cells in codes.items())
                   + ".\n")
    if failures:
        out.append("Failed runs (each kept as a row above when all its seeds failed):\n\n"
                   + "\n".join(f"- {f['method']} seed {f['seed']}: {f['error']}" for f in failures) + "\n")
    return "\n".join(out)


def main() -> int:
    a = parse_args()
    out = Path(a.out)
    stem = "methods" if a.budget == "default" else f"methods_{a.budget}"
    if a.render:
        data = json.loads((out / f"{stem}.json").read_text())
        backfill(data["runs"], Path(a.runs) / a.budget)  # columns added since, from the run folders
        data["summary"] = summarize(data["runs"])  # derived: in step with the columns of this code
        atomic_write_json(out / f"{stem}.json", data)
        text = render(data)
        atomic_write_text(out / f"{stem}.md", text)
        print(text)
        return 0
    try:
        return measure_table(a, out, stem)
    except BenchInputError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2


def preflight(config: str, common: list[str], methods: list[str]) -> None:
    """Every requested method's config validates before the first cell trains (a cell is ~20 min here);
    BenchInputError names the method and the problem otherwise. Settings that need a trained second
    teacher (``extras``) are checked when their cell runs."""
    from edgekd.config import load_config
    from edgekd.errors import ConfigError

    for method in methods:
        try:
            load_config(config, common + method_overrides(method))
        except ConfigError as e:
            raise BenchInputError(f"method {method}: {e.problem}" + (f"; {e.fix}" if e.fix else "")) from None


def measure_table(a: argparse.Namespace, out: Path, stem: str) -> int:
    """Run the missing (method, seed) cells, writing the JSON and markdown after each."""
    from edgekd.config import load_config
    from edgekd.tuning.teachers import cached_teacher

    t0 = time.time()
    budget = BUDGETS[a.budget] + a.overrides
    cfg = load_config(a.config, budget)
    base = cfg.to_dict()
    student = f"{cfg.student.arch} x{cfg.student.width}"
    runs_dir = Path(a.runs) / a.budget
    teacher = (teacher_from_run(base, a.teacher_run) if a.teacher_run
               else cached_teacher(base, base["teacher"]["arch"], runs_dir / "teachers"))
    teacher_sha = sha256_file(teacher.weights)
    common = budget + [f"teacher.weights={teacher.weights}", "teacher_train.epochs=0"]
    per_method = extras(base, lambda: str(cached_teacher(base, SECOND_TEACHER, runs_dir / "teachers").weights))
    preflight(a.config, common, a.methods)
    runs, failures, earlier = (resumed(out / f"{stem}.json", budget, teacher_sha, student, a.methods) if a.resume
                               else ({m: [] for m in a.methods}, [], 0.0))
    t0 -= earlier  # the table's wall time covers every sitting
    backfill(runs, runs_dir)
    unbuilt = extras(base, lambda: "")  # the same settings with no second teacher trained (its file unused)

    def row_overrides(method: str, files: bool) -> list[str]:
        loss = variant_overrides(method)[0]
        table = per_method if files else unbuilt
        return method_overrides(method) + (table[loss]() if loss in table else [])

    check_kept_settings(a.methods, runs, a.seeds, runs_dir, budget, row_overrides, bool(getattr(a, "rerun_from", None)))

    def save(complete: bool) -> str:
        return write(out, stem, a, budget, teacher, teacher_sha, student, runs, failures, time.time() - t0, complete)

    code = code_version()
    rerun_from = getattr(a, "rerun_from", None)
    rerun = {"stages": list(STAGES_AFTER_DISTILL[STAGES_AFTER_DISTILL.index(rerun_from):]), "force": True} \
        if rerun_from else {}
    for seed in a.seeds:
        for method in a.methods:  # only the requested ones run; earlier sittings' other methods stay as they were
            measured = any(r.get("seed") == seed for r in runs[method])
            if measured and not rerun:
                print(f"[bench] seed {seed} {method}: kept from {stem}.json", flush=True)
                continue
            if not measured and rerun:
                print(f"[bench] seed {seed} {method}: not in {stem}.json, nothing to re-run", flush=True)
                continue
            failures[:] = [f for f in failures if (f["method"], f["seed"]) != (method, seed)]  # tried again
            try:
                # the row's settings (a second teacher trained on first use: a failure is the cell's), then the cell's
                overrides = common + row_overrides(method, True) + [f"seed={seed}", f"name={method}_s{seed}"]
                # resume: a cell killed in an earlier sitting continues from its last epoch checkpoint
                run = edgekd.run(a.config, overrides=overrides, out=runs_dir, resume=a.resume, **rerun)
                row = {**measure(run), "seed": seed, "code": code, **({"rerun_from": rerun_from} if rerun else {})}
                # a re-run replaces the cell's row only once it measured (a failed one keeps the earlier row)
                runs[method] = sorted([r for r in runs[method] if r.get("seed") != seed] + [row], key=lambda r: r["seed"])
            except Exception as e:  # recorded in the JSON and the table; the other methods still run
                fix = f" (fix: {e.fix})" if getattr(e, "fix", None) else ""
                failures.append({"method": method, "seed": seed, "error": f"{type(e).__name__}: {getattr(e, 'problem', e)}{fix}"
                                 + (f" (re-run from {rerun_from}; the earlier row is kept)" if rerun else "")})
                print(f"[bench] seed {seed} {method}: FAILED {failures[-1]['error']}", flush=True)
                save(complete=False)
                continue
            print(f"[bench] seed {seed} {method}: {json.dumps(row)}", flush=True)
            # after every run: an interrupted benchmark keeps what it measured (meta.complete says how far)
            save(complete=False)
    print(save(complete=True))
    return 0


def write(out: Path, stem: str, a: argparse.Namespace, budget: list[str], teacher: Any, teacher_sha: str,
          student: str, runs: dict[str, list[dict[str, float]]], failures: list[dict[str, Any]], seconds: float,
          complete: bool) -> str:
    """JSON + markdown of the runs so far (every sitting's); returns the markdown."""
    from edgekd.environment import cpu_info

    seeds = sorted({int(r["seed"]) for rows in runs.values() for r in rows if "seed" in r} | set(a.seeds)
                   | {int(f["seed"]) for f in failures})
    # complete = every method of the table has a result (or a recorded failure) for every seed of the table,
    # not only "this sitting finished": a sitting that ran two methods must not mark a third one's empty row done
    done = {(m, int(r["seed"])) for m, rows in runs.items() for r in rows} | {(f["method"], f["seed"]) for f in failures}
    complete = complete and all((m, s) in done for m in runs for s in seeds)
    meta = {"budget": a.budget, "overrides": budget, "seeds": seeds, "methods": list(runs), "complete": complete,
            "student": student, "teacher": teacher.arch,
            "teacher_val_accuracy": teacher.val_accuracy, "teacher_sha256": teacher_sha, "seconds": seconds, "cpu": cpu_info()["model"]}
    earlier = out / f"{stem}.json"
    # hand-made corrections of measured cells (with why) stay with the cells: only a resumed table keeps them
    # (resumed() has already read that file; a fresh table re-measures every cell)
    if getattr(a, "resume", False) and earlier.exists():
        corrections = json.loads(earlier.read_text()).get("meta", {}).get("corrections")
        if corrections:
            meta["corrections"] = corrections
    data = {"meta": meta, "runs": runs, "summary": summarize(runs), "failures": failures}
    atomic_write_json(out / f"{stem}.json", data)
    text = render(data)
    atomic_write_text(out / f"{stem}.md", text)
    return text


if __name__ == "__main__":
    sys.exit(main())
