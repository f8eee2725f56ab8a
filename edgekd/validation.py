"""Every check of a loaded config, run once at load: ranges, switches and registry names.

``validate_config`` is what ``load_config`` / ``config_from_dict`` call; ``validate_budgets`` is
also what ``edgekd gate`` calls on its command-line budget flags. Lower layers (engine, losses,
stages) trust these checks and do not repeat them. Every error names the config key, the value
and the fix, so a typo fails before any training starts.

Registry names are looked up in the registries themselves, so a new registered name is valid
without editing this file: the numpy-only ones (datasets, corruptions, OOD sets) are imported
lazily here; the torch-side ones (KD losses, teachers, students, attacks) are read from their
source until their module is imported (see ``registered_names``), so a typo fails in well under a
second instead of after a multi-second torch import. The gate validates budgets only and never
looks at a registry, which keeps it torch-free.
"""
from __future__ import annotations

import math
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Iterable

from .arch_names import check_arch, split_arch
from .errors import ConfigError
from .registry import declared_names, unknown_name
from .stage_specs import STAGE_NAMES, training_configs

if TYPE_CHECKING:  # config.py imports this module; at run time only the values are needed
    from .config import BudgetsConfig, Config, TrainConfig
    from .registry import Registry

SWITCHES = ("auto", "on", "off")  # amp, channels_last, compile, deterministic
OPTIMIZERS = ("sgd", "adamw")  # edgekd.train.optim.build_optimizer
SCHEDULES = ("onecycle", "cosine", "constant")  # edgekd.train.optim.Schedule
DEVICES = ("auto", "cpu", "cuda")  # cuda:N is cuda plus an index
ORT_TARGET_PLATFORMS = ("arm", "amd64")  # edgekd.deploy.runtime.ort_format
STEMS = ("auto", "small", "native")  # model stems (edgekd.models.stems)
STEM_STRIDES = (1, 2)  # 1 keeps a 28-32 px input's resolution in the stem; 2 halves it (edgekd.models)
SEVERITIES = (1, 5)  # corruption severities run 1..5 (Hendrycks & Dietterich 2019)

# The gate flag that sets each budget, so an error from `edgekd gate --min-accuracy` names the flag too.
BUDGET_FLAGS = {
    "max_size_mb": "--max-size-mb", "min_accuracy": "--min-accuracy", "max_accuracy_drop": "--max-accuracy-drop",
    "min_corruption_accuracy": "--min-corruption-accuracy", "min_adversarial_accuracy": "--min-adversarial-accuracy",
    "adversarial_epsilon": "--adversarial-epsilon", "max_latency_ms.value_ms": "--max-latency-ms",
    "max_latency_ms.batch": "--latency-batch", "max_latency_ms.threads": "--latency-threads",
}


# ------------------------------------------------------------------ primitives


def _name(key: str) -> str:
    """How an error names a key: ``config key 'budgets.min_accuracy' (--min-accuracy)``."""
    flag = BUDGET_FLAGS.get(key.removeprefix("budgets."))
    return f"config key '{key}'" + (f" ({flag})" if key.startswith("budgets.") and flag else "")


def _bad(key: str, value: Any, rule: str, fix: str) -> ConfigError:
    return ConfigError(f"{_name(key)} is {value!r}; it must be {rule}", fix)


def _number(key: str, value: Any) -> float:
    """``value`` as a finite float; NaN and infinity are never a meaningful setting."""
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
        raise _bad(key, value, "a finite number", f"set {key} to a finite number")
    return float(value)


def at_least(key: str, value: Any, minimum: float, fix: str | None = None) -> None:
    """``value >= minimum`` (and finite)."""
    if _number(key, value) < minimum:
        raise _bad(key, value, f">= {minimum:g}", fix or f"set {key} to {minimum:g} or more")


def positive(key: str, value: Any, fix: str | None = None) -> None:
    """``value > 0`` (and finite)."""
    if _number(key, value) <= 0:
        raise _bad(key, value, "> 0", fix or f"set {key} to a positive number")


def between(key: str, value: Any, lo: float, hi: float, fix: str | None = None, hi_open: bool = False) -> None:
    """``lo <= value <= hi`` (``< hi`` with ``hi_open``), and finite."""
    v = _number(key, value)
    if v < lo or (v >= hi if hi_open else v > hi):
        rule = f"in [{lo:g}, {hi:g}{')' if hi_open else ']'}"
        raise _bad(key, value, rule, fix or f"set {key} to a value {rule}")


def one_of(key: str, value: Any, valid: Iterable[str]) -> None:
    valid = list(valid)
    if value not in valid:
        raise ConfigError(f"{_name(key)} has value {value!r}; valid: {', '.join(valid)}",
                          f"set {key} to one of: {', '.join(valid)}")


def optional(check: Any, key: str, value: Any, *args: Any) -> None:
    """Run ``check`` only when the optional setting is given (None means "not set")."""
    if value is not None:
        check(key, value, *args)


# ------------------------------------------------------------------ budgets


def validate_budgets(b: "BudgetsConfig", prefix: str = "budgets") -> None:
    """Budgets are limits: finite, positive sizes and latencies, accuracies and fractions in [0, 1].

    A nonsense budget (``--min-accuracy 150``, ``--max-size-mb -1``, NaN) is bad input (exit 2),
    never a budget that the run then "misses" (exit 1).
    """
    optional(positive, f"{prefix}.max_size_mb", b.max_size_mb)
    for name in ("min_accuracy", "max_accuracy_drop", "min_corruption_accuracy", "min_adversarial_accuracy"):
        optional(between, f"{prefix}.{name}", getattr(b, name), 0.0, 1.0)
    between(f"{prefix}.adversarial_epsilon", b.adversarial_epsilon, 0.0, 1.0, "pixels are in [0, 1]: use e.g. 2/255")
    lat = b.max_latency_ms
    if lat is not None:
        positive(f"{prefix}.max_latency_ms.value_ms", lat.value_ms,
                 f"set {prefix}.max_latency_ms.value_ms (--max-latency-ms) to the limit in milliseconds, e.g. 5")
        at_least(f"{prefix}.max_latency_ms.batch", lat.batch, 1)
        at_least(f"{prefix}.max_latency_ms.threads", lat.threads, 0, "0 means all cores; otherwise 1 or more")
    if not b.model:
        raise _bad(f"{prefix}.model", b.model, "a model name", "set budgets.model, e.g. student_int8")


# ------------------------------------------------------------------ ranges


def _validate_train(key: str, tc: "TrainConfig") -> None:
    one_of(f"{key}.optimizer", tc.optimizer, OPTIMIZERS)
    one_of(f"{key}.schedule", tc.schedule, SCHEDULES)
    one_of(f"{key}.amp", tc.amp, SWITCHES)
    one_of(f"{key}.channels_last", tc.channels_last, SWITCHES)
    one_of(f"{key}.compile", tc.compile, SWITCHES)
    at_least(f"{key}.epochs", tc.epochs, 0, f"set {key}.epochs to 0 (skip training) or more")
    positive(f"{key}.lr", tc.lr, f"set {key}.lr to a positive learning rate, e.g. 0.1 (sgd) or 1e-3 (adamw)")
    between(f"{key}.momentum", tc.momentum, 0.0, 1.0, hi_open=True)
    at_least(f"{key}.weight_decay", tc.weight_decay, 0.0)
    between(f"{key}.warmup_fraction", tc.warmup_fraction, 0.0, 1.0, hi_open=True)
    between(f"{key}.label_smoothing", tc.label_smoothing, 0.0, 1.0, hi_open=True)
    optional(positive, f"{key}.grad_clip", tc.grad_clip)
    optional(at_least, f"{key}.max_steps_per_epoch", tc.max_steps_per_epoch, 1)
    at_least(f"{key}.log_every", tc.log_every, 1)
    at_least(f"{key}.checkpoint_every", tc.checkpoint_every, 1, f"set {key}.checkpoint_every to 1 (every epoch) or more")


def _validate_data(cfg: "Config") -> None:
    d = cfg.data
    at_least("data.batch_size", d.batch_size, 1, "set data.batch_size to 1 or more, e.g. 128")
    at_least("data.eval_batch_size", d.eval_batch_size, 1, "set data.eval_batch_size to 1 or more, e.g. 512")
    # the validation split selects checkpoints; an empty one would select nothing (edgekd.data.base)
    at_least("data.val_size", d.val_size, 1, "set data.val_size to the number of training images held out, e.g. 5000")
    optional(at_least, "data.train_subset", d.train_subset, 1)
    optional(at_least, "data.test_subset", d.test_subset, 1)
    optional(at_least, "data.image_size", d.image_size, 1)
    one_of("data.on_corrupt", d.on_corrupt, ("fail", "skip"))  # edgekd.data.files.ON_CORRUPT
    at_least("data.in_memory_mb", d.in_memory_mb, 0.0, "set data.in_memory_mb to 0 (always stream) or a size in MB, e.g. 1024")
    at_least("data.workers", d.workers, 0, "set data.workers to 0 (decode in the training process) or a few processes, e.g. 2")
    a = d.augment
    at_least("data.augment.crop_padding", a.crop_padding, 0, "set it to 0 (off) or a few pixels")
    at_least("data.augment.noise_std", a.noise_std, 0.0, "set it to 0 (off) or a positive std")
    between("data.augment.corruption_prob", a.corruption_prob, 0.0, 1.0)
    between("data.augment.corruption_max_severity", a.corruption_max_severity, *SEVERITIES)


def _validate_models_and_distill(cfg: "Config") -> None:
    extra_teachers = [(f"distill.teachers[{i}]", t) for i, t in enumerate(cfg.distill.teachers)]
    for key, m in (("teacher", cfg.teacher), ("student", cfg.student), *extra_teachers):
        positive(f"{key}.width", m.width, f"set {key}.width to a positive multiplier, e.g. 1.0")
        if m.stem_stride not in STEM_STRIDES:
            raise _bad(f"{key}.stem_stride", m.stem_stride, "1 or 2", f"set {key}.stem_stride to 1 (28-32 px inputs) or 2")
        one_of(f"{key}.stem", m.stem, STEMS)
        if split_arch(m.arch)[0] is not None and m.width != 1.0:
            raise _bad(f"{key}.width", m.width, f"1.0 for {m.arch} (width scales built-in models only)",
                       f"set {key}.width: 1.0 and pick a smaller model, e.g. torchvision:mobilenet_v3_small")
    ds = cfg.distill
    positive("distill.temperature", ds.temperature, "set distill.temperature to a positive number, e.g. 4")
    between("distill.alpha", ds.alpha, 0.0, 1.0, "alpha weighs the KD term against cross-entropy: use e.g. 0.9")
    r = ds.robust
    between("distill.robust.epsilon", r.epsilon, 0.0, 1.0, "pixels are in [0, 1]: use e.g. 8/255")
    at_least("distill.robust.steps", r.steps, 1)
    optional(positive, "distill.robust.step_size", r.step_size)
    at_least("distill.robust.beta", r.beta, 0.0)
    one_of("distill.robust.attack_objective", r.attack_objective, ATTACK_OBJECTIVES)
    _validate_kd_methods(cfg)
    aug = cfg.data.augment
    # the teacher's view must be fixed: crop/flip change it each epoch; noise/corruption (photometric)
    # go to the student's view only, so the teacher's logits on the clean image still serve
    if ds.cache_teacher_logits and (aug.crop_padding or aug.hflip):
        raise ConfigError(
            "distill.cache_teacher_logits needs the teacher's input fixed, but data.augment.crop_padding / hflip "
            "change it each epoch",
            "set data.augment.crop_padding=0 and hflip=false (noise_std and corruption_prob may stay: only the "
            "student sees them), or turn caching off",
        )
    q = cfg.qat
    at_least("qat.freeze_observers_epoch", q.freeze_observers_epoch, 0)
    at_least("qat.calibration_batches", q.calibration_batches, 1)
    _validate_keep_float(q)


def _validate_keep_float(q: Any) -> None:
    """Mixed precision: names are strings, k >= 0, and k needs a ranking that exists and holds k layers.

    The names themselves are checked against the student when the qat stage builds it (torch side).
    """
    if not all(isinstance(n, str) and n for n in q.keep_float):
        raise _bad("qat.keep_float", q.keep_float, "a list of layer names",
                   "list layer names as 'edgekd sensitivity RUN' prints them, e.g. [features.0.0]")
    at_least("qat.keep_float_most_sensitive", q.keep_float_most_sensitive, 0)
    if q.keep_float_most_sensitive == 0:
        return
    if not q.sensitivity:
        raise _bad("qat.sensitivity", q.sensitivity, "a run folder or sensitivity.json when "
                   "qat.keep_float_most_sensitive > 0", "run 'edgekd sensitivity RUN' on a full-int8 run and set "
                   "qat.sensitivity to that run folder")
    from .sensitivity_file import load_ranking

    ranking = load_ranking(q.sensitivity)
    if q.keep_float_most_sensitive > len(ranking):
        raise _bad("qat.keep_float_most_sensitive", q.keep_float_most_sensitive,
                   f"<= {len(ranking)}, the number of quantized layers ranked in {q.sensitivity}",
                   f"set qat.keep_float_most_sensitive to at most {len(ranking)}")


TEACHER_WEIGHTINGS = ("mean", "fixed", "confidence")  # edgekd.losses.multi_teacher
ATTACK_OBJECTIVES = ("kl", "ce")  # edgekd.losses.ard
# the built-in losses with ``live_teacher`` (features, or their own moving teacher): the teacher must run
# every step. Torch-free, for checks before torch is imported; tests/test_kd_contract.py checks it against
# the classes, and ``uncacheable_losses`` adds plugins once the live registry is loaded.
UNCACHEABLE_LOSSES = ("at", "fitnets", "self_distill")


def uncacheable_losses() -> tuple[str, ...]:
    """The KD losses cached teacher logits cannot serve: the live registry's ``live_teacher`` losses once
    ``edgekd.losses`` is imported (plugins included), else the built-in list."""
    module = sys.modules.get("edgekd.losses")
    if module is None or not hasattr(module, "loss_class"):  # not imported yet, or mid-import
        return UNCACHEABLE_LOSSES
    return tuple(n for n in module.KD_LOSSES.names() if module.loss_class(n).live_teacher)


def _validate_kd_methods(cfg: "Config") -> None:
    """The settings of the KD methods of edgekd/losses (docs/methods.md)."""
    ds = cfg.distill
    f = ds.features
    for i, pair in enumerate(f.pairs):
        teacher, sep, student = pair.partition("=")
        if not sep or not teacher.strip() or not student.strip():
            raise _bad(f"distill.features.pairs[{i}]", pair, "'teacher_layer=student_layer'",
                       "write each pair as module names, e.g. net.layer2=net.features.6")
    at_least("distill.features.hint_weight", f.hint_weight, 0.0)
    at_least("distill.features.at_beta", f.at_beta, 0.0)
    at_least("distill.dkd.alpha", ds.dkd.alpha, 0.0)
    at_least("distill.dkd.beta", ds.dkd.beta, 0.0)
    c = ds.ctkd
    positive("distill.ctkd.min_temperature", c.min_temperature)
    at_least("distill.ctkd.lambda_max", c.lambda_max, 0.0)
    if ds.loss == "ctkd" and not c.min_temperature < ds.temperature < c.max_temperature:
        raise _bad("distill.temperature", ds.temperature,
                   f"strictly between distill.ctkd.min_temperature ({c.min_temperature:g}) and max_temperature "
                   f"({c.max_temperature:g}) for ctkd", "set distill.temperature inside that range, e.g. 4")
    a = ds.augmix
    at_least("distill.augmix.js_weight", a.js_weight, 0.0)
    between("distill.augmix.max_severity", a.max_severity, *SEVERITIES)
    at_least("distill.augmix.width", a.width, 1)
    between("distill.ema_decay", ds.ema_decay, 0.0, 1.0, "use e.g. 0.999 (the teacher averages ~1000 steps)",
            hi_open=True)
    one_of("distill.teacher_weighting", ds.teacher_weighting, TEACHER_WEIGHTINGS)
    if ds.teachers and ds.loss != "multi_teacher":
        raise ConfigError(f"distill.teachers lists {len(ds.teachers)} extra teacher(s), but distill.loss is "
                          f"'{ds.loss}', which uses one teacher", "set distill.loss: multi_teacher, or remove distill.teachers")
    for i, t in enumerate(ds.teachers):  # arch, width and stem are checked with the run's own teacher
        if not t.weights:
            raise ConfigError(f"distill.teachers[{i}] ({t.arch}) has no weights",
                              f"set distill.teachers[{i}].weights to a weights file or to a run folder whose "
                              "teacher stage trained it")
    n = 1 + len(ds.teachers)
    if ds.teacher_weighting == "fixed":
        if len(ds.teacher_weights) != n or any(w < 0 for w in ds.teacher_weights) or sum(ds.teacher_weights) <= 0:
            raise _bad("distill.teacher_weights", ds.teacher_weights,
                       f"{n} non-negative numbers (the run's teacher, then distill.teachers), not all 0",
                       f"give one weight per teacher, e.g. {[1.0] * n}")
    elif ds.teacher_weights:
        raise ConfigError(f"distill.teacher_weights is set but distill.teacher_weighting is '{ds.teacher_weighting}'",
                          "set distill.teacher_weighting: fixed, or remove distill.teacher_weights")
    if ds.cache_teacher_logits and ds.loss in uncacheable_losses():
        raise ConfigError(f"distill.cache_teacher_logits cannot serve distill.loss '{ds.loss}': it needs the "
                          "teacher to run every step (features or a moving teacher)",
                          "set distill.cache_teacher_logits: false")


def _validate_export_and_check(cfg: "Config") -> None:
    e = cfg.export
    at_least("export.opset", e.opset, 17, "set export.opset to 17 or more (older opsets lack the QDQ ops used)")
    at_least("export.parity_images", e.parity_images, 1)
    one_of("export.ort_target_platform", e.ort_target_platform, ORT_TARGET_PLATFORMS)
    between("export.ort_min_agreement", e.ort_min_agreement, 0.0, 1.0)
    for i, bs in enumerate(e.parity_batch_sizes):
        at_least(f"export.parity_batch_sizes[{i}]", bs, 1)
    lat = cfg.check.latency
    for i, bs in enumerate(lat.batch_sizes):
        at_least(f"check.latency.batch_sizes[{i}]", bs, 1)
    for i, t in enumerate(lat.threads):
        at_least(f"check.latency.threads[{i}]", t, 0, "0 means all cores; otherwise 1 or more")
    at_least("check.latency.warmup", lat.warmup, 0)
    at_least("check.portability_images", cfg.check.portability_images, 1)
    if lat.provider != "CPUExecutionProvider":  # a typo fails at load; whether it is installed, where sessions open
        from .ort_providers import check_provider_name  # imports onnxruntime: only for a non-default provider

        check_provider_name(lat.provider)
    at_least("check.latency.runs", lat.runs, 1, "set check.latency.runs to 1 or more (the median is reported)")
    rob = cfg.check.robustness
    for i, s in enumerate(rob.severities):
        between(f"check.robustness.severities[{i}]", s, *SEVERITIES, "corruption severities run from 1 to 5")
    for i, eps in enumerate(rob.epsilons):
        between(f"check.robustness.epsilons[{i}]", eps, 0.0, 1.0, "pixels are in [0, 1]: use e.g. 8/255")
    at_least("check.robustness.images", rob.images, 1)
    at_least("check.robustness.adversarial_images", rob.adversarial_images, 1)
    at_least("check.robustness.pgd_steps", rob.pgd_steps, 1)
    at_least("check.robustness.square_queries", rob.square_queries, 0, "0 turns the Square attack off")
    if "folder" in rob.ood and not rob.ood_folder:
        raise ConfigError("check.robustness.ood lists 'folder' but check.robustness.ood_folder is not set",
                          "set check.robustness.ood_folder to a folder of images, or drop 'folder' from the list")


def _validate_range(key: str, pair: list[float], lo: float, hi: float) -> None:
    """A ``[low, high]`` search range inside ``[lo, hi]`` with low <= high."""
    if len(pair) != 2:
        raise _bad(key, pair, "[low, high]", f"write {key}: [low, high]")
    for i, v in enumerate(pair):
        between(f"{key}[{i}]", v, lo, hi)
    if pair[0] > pair[1]:
        raise _bad(key, pair, "[low, high] with low <= high", f"swap the two values of {key}")


def _validate_tune(cfg: "Config") -> None:
    """edgekd tune's search space (names are checked with the other registry names)."""
    t = cfg.tune
    _validate_range("tune.temperature", t.temperature, 1e-3, 1e3)
    if t.temperature[0] <= 0:
        raise _bad("tune.temperature[0]", t.temperature[0], "> 0", "temperatures are positive: use e.g. [1, 8]")
    _validate_range("tune.alpha", t.alpha, 0.0, 1.0)
    if not t.student_widths:
        raise _bad("tune.student_widths", t.student_widths, "a non-empty list", "list the widths to try, e.g. [0.35, 0.5]")
    for i, w in enumerate(t.student_widths):
        positive(f"tune.student_widths[{i}]", w)
    optional(positive, "tune.max_latency_ms", t.max_latency_ms,
             "set tune.max_latency_ms to the INT8 latency budget in milliseconds, or null for none")
    at_least("tune.latency_batch", t.latency_batch, 1)
    at_least("tune.latency_threads", t.latency_threads, 0, "0 means all cores; otherwise 1 or more")
    at_least("tune.latency_runs", t.latency_runs, 1)
    at_least("tune.sampler_seed", t.sampler_seed, 0)


def _validate_top(cfg: "Config") -> None:
    kind, _, index = cfg.device.partition(":")
    one_of("device", kind, DEVICES)
    if index and (kind != "cuda" or not index.isdigit()):
        raise _bad("device", cfg.device, "auto, cpu, cuda or cuda:N", "set device to e.g. cuda:0")
    at_least("seed", cfg.seed, 0, "set seed to a non-negative integer")
    one_of("deterministic", cfg.deterministic, SWITCHES)
    one_of("logging.tensorboard", cfg.logging.tensorboard, SWITCHES)
    optional(at_least, "num_threads", cfg.num_threads, 1)
    check_stage_names(cfg.stages, "in 'stages'", "set stages to a list of")


def check_stage_names(names: Iterable[str], where: str, fix: str) -> None:
    """Every name is a registered stage (the config's ``stages`` and ``edgekd run --stages`` alike)."""
    for s in names:
        if s not in STAGE_NAMES:
            raise ConfigError(f"unknown stage '{s}' {where}; valid: {', '.join(STAGE_NAMES)}",
                              f"{fix}: {', '.join(STAGE_NAMES)}")


# ------------------------------------------------------------------ registry names


def _numpy_registries() -> dict[str, "Registry"]:
    """Registries that import numpy only: safe wherever edgekd is installed."""
    from .data import DATASETS
    from .robustness.corruptions import CORRUPTIONS
    from .robustness.ood import OOD_SETS

    return {"dataset": DATASETS, "corruption": CORRUPTIONS, "ood": OOD_SETS}


@dataclass(frozen=True)
class TorchRegistry:
    """Where a training-side registry lives, and how its built-in names are declared in the source."""

    kind: str  # as the Registry names itself in errors
    module: str  # importing it registers every built-in name
    attr: str
    sources: str  # glob, relative to the package, of the files that register the built-ins
    registrars: tuple[str, ...]


TORCH_REGISTRIES = {
    "distill.loss": TorchRegistry("kd loss", "edgekd.losses", "KD_LOSSES", "losses/*.py", ("register_kd_loss",)),
    "teacher.arch": TorchRegistry("teacher", "edgekd.models", "TEACHERS", "models/teachers.py", ("TEACHERS.register",)),
    "student.arch": TorchRegistry("student", "edgekd.models", "STUDENTS", "models/students.py", ("STUDENTS.register",)),
    "distill.robust.attack": TorchRegistry("attack", "edgekd.robustness.attacks", "ATTACKS", "robustness/attacks.py",
                                           ("ATTACKS.register",)),
}
PACKAGE = Path(__file__).resolve().parent


def registered_names(spec: TorchRegistry) -> list[str]:
    """The names of a torch-side registry, without importing torch when its module is not loaded yet.

    Once the module is imported, the live registry answers (it includes plugins registered at run
    time, which can only happen after that import). Before, the names are read from the source
    files that register the built-ins (``declared_names``): importing torch costs seconds, and a
    typo must fail in well under one. tests/test_config.py checks both give the same names.
    """
    module = sys.modules.get(spec.module)
    if module is not None and hasattr(module, spec.attr):
        return getattr(module, spec.attr).names()
    return sorted(declared_names(sorted(PACKAGE.glob(spec.sources)), spec.registrars))


def validate_registry_names(cfg: "Config") -> None:
    """Every name the config takes from a registry is registered; a miss lists the valid names."""
    reg = _numpy_registries()
    reg["dataset"].check(cfg.data.dataset, "data.dataset")
    for i, name in enumerate(cfg.check.robustness.corruptions):
        reg["corruption"].check(name, f"check.robustness.corruptions[{i}]")
    for i, name in enumerate(cfg.check.robustness.ood):
        reg["ood"].check(name, f"check.robustness.ood[{i}]")
    values = {"distill.loss": cfg.distill.loss, "teacher.arch": cfg.teacher.arch, "student.arch": cfg.student.arch,
              "distill.robust.attack": cfg.distill.robust.attack}
    for key, spec in TORCH_REGISTRIES.items():
        if key.endswith(".arch") and split_arch(values[key])[0] is not None:
            check_arch(key, values[key])  # torchvision:NAME, timm:NAME, torchscript:PATH (edgekd.arch_names)
            continue
        valid = registered_names(spec)
        if values[key] not in valid:
            err = unknown_name(spec.kind, values[key], key, valid)
            if key.endswith(".arch"):  # outside models are named by their source (edgekd.arch_names)
                err = ConfigError(f"{err.problem}; or torchvision:NAME, timm:NAME, torchscript:PATH", err.fix)
            raise err
    for i, name in enumerate(cfg.distill.augmix.ops):
        reg["corruption"].check(name, f"distill.augmix.ops[{i}]")
    for i, name in enumerate(cfg.data.augment.corruptions):
        reg["corruption"].check(name, f"data.augment.corruptions[{i}]")
    for i, teacher in enumerate(cfg.distill.teachers):
        key = f"distill.teachers[{i}].arch"
        if split_arch(teacher.arch)[0] is not None:
            check_arch(key, teacher.arch)
        elif teacher.arch not in registered_names(TORCH_REGISTRIES["teacher.arch"]):
            raise unknown_name("teacher", teacher.arch, key, registered_names(TORCH_REGISTRIES["teacher.arch"]))
    for key, names in (("tune.methods", cfg.tune.methods), ("tune.teachers", cfg.tune.teachers)):
        spec = TORCH_REGISTRIES["distill.loss" if key == "tune.methods" else "teacher.arch"]
        valid = registered_names(spec)
        for i, name in enumerate(names):
            if key == "tune.teachers" and split_arch(name)[0] is not None:
                check_arch(f"{key}[{i}]", name)
            elif name not in valid:
                raise unknown_name(spec.kind, name, f"{key}[{i}]", valid)


# ------------------------------------------------------------------ entry point


def validate_config(cfg: "Config", registries: bool = True) -> None:
    """All checks of a whole config; ``registries=False`` skips the registry names (the torch-free gate)."""
    _validate_top(cfg)
    _validate_data(cfg)
    for spec, tc in training_configs(cfg):
        _validate_train(str(spec.train_config), tc)
    _validate_models_and_distill(cfg)
    _validate_export_and_check(cfg)
    validate_budgets(cfg.budgets)
    _validate_tune(cfg)
    if registries:
        validate_registry_names(cfg)
