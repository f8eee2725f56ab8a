"""Typed, validated configuration.

A config is a tree of dataclasses. ``load_config`` reads YAML, applies ``--set key=value``
overrides, and validates: an unknown key names the valid ones, a wrong type names the key
and the value. The resolved config is written into every run folder.
"""
from __future__ import annotations

import dataclasses
import hashlib
import json
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Optional, Union

import yaml

from .errors import ConfigError
from .stage_specs import STAGE_NAMES
from .validation import validate_budgets, validate_config  # noqa: F401 - validate_budgets is re-exported for the gate

PACKAGE_ROOT = Path(__file__).resolve().parent
# The example configs ship inside the package (package data), so an installed edgekd finds them from
# any folder; the repository's top-level configs/ is the same folder (edgekd/configs links to it).
CONFIG_DIR = PACKAGE_ROOT / "configs"
DEFAULT_CONFIG = CONFIG_DIR / "fashion_mnist.yaml"


@dataclass
class AugmentConfig:
    """Train-time augmentation, applied on [0, 1] pixels in batches."""

    crop_padding: int = 2  # padded random crop; 0 disables
    hflip: bool = True  # random horizontal flip (turn off for digits or text)
    noise_std: float = 0.0  # robust KD (a): Gaussian noise on the student's input
    corruption_prob: float = 0.0  # robust KD (a): probability of a random corruption per batch
    corruption_max_severity: int = 3  # robust KD (a): highest severity (1-5) of those corruptions
    corruptions: list[str] = field(default_factory=list)  # robust KD (a): the corruptions drawn from; empty = all registered


@dataclass
class DataConfig:
    """The data set, its splits and batching."""

    dataset: str = "fashion_mnist"  # fashion_mnist | cifar10 | cifar100 | image_folder (the edgekd.data registry)
    root: Optional[str] = None  # else $EDGEKD_DATA, else the Debian package path, else download
    download: bool = True  # torchvision download when no local copy (needs network)
    val_size: int = 5000  # taken from the training set; the test set is never used to select
    train_subset: Optional[int] = None  # use N training images (smoke runs)
    test_subset: Optional[int] = None  # use N test images (smoke runs)
    image_size: Optional[int] = None  # ImageFolder: resize to this square size (None: the images' native size)
    on_corrupt: str = "fail"  # ImageFolder: an unreadable image fails the run naming it (fail) or is left out with a warning (skip)
    in_memory_mb: float = 1024.0  # ImageFolder: decode the training images into memory up to this many MB, else stream them from disk
    workers: int = 2  # ImageFolder streaming: decoding processes (0: decode in the training process)
    batch_size: int = 128  # training batch size
    eval_batch_size: int = 512  # batch size of evaluation and teacher-logit caching
    augment: AugmentConfig = field(default_factory=AugmentConfig)


@dataclass
class TrainConfig:
    """One schedule for the one training engine."""

    epochs: int = 1  # passes over the training set
    optimizer: str = "sgd"  # sgd | adamw
    lr: float = 0.1  # peak learning rate (onecycle's maximum, cosine's start)
    momentum: float = 0.9  # SGD momentum
    nesterov: bool = True  # SGD: Nesterov momentum
    weight_decay: float = 5e-4  # weight decay (AdamW: decoupled)
    schedule: str = "onecycle"  # onecycle | cosine | constant
    warmup_fraction: float = 0.15  # onecycle: fraction of steps rising; cosine: linear warm-up
    label_smoothing: float = 0.0  # label smoothing of the hard-label cross-entropy
    grad_clip: Optional[float] = None  # clip the gradient norm to this value (None: no clipping)
    amp: str = "auto"  # auto (cuda: fp16/bf16, cpu: bf16 where AMX or AVX512-BF16) | on | off
    channels_last: str = "auto"  # auto | on | off
    # torch.compile of the training model; auto = on for CUDA only (launch-bound steps; compiling takes
    # tens of seconds), not on CPU, where a short schedule does not pay the inductor's C++ build back.
    compile: str = "off"  # off | on | auto
    checkpoint_every: int = 1  # epochs between resume checkpoints (always after the last); >1 saves the write per epoch
    max_steps_per_epoch: Optional[int] = None  # cap for smoke runs
    log_every: int = 50  # steps between loss checks (a NaN/inf loss stops the stage) and log lines
    # stop the run after this stage when training diverged: loss not finite or rising, or validation
    # accuracy at chance (edgekd.train.health); the stage's outputs are then not kept
    divergence_check: bool = True


@dataclass
class ModelConfig:
    """A teacher or student network."""

    arch: str = "resnet18"  # a registered teacher or student name, e.g. resnet18, mobilenet_v2
    width: float = 1.0  # width multiplier (students) or base-width factor (teachers)
    weights: Optional[str] = None  # "torchvision:DEFAULT" or a local weights file
    stem_stride: int = 1  # small inputs keep resolution in the stem
    maxpool: bool = True  # teachers: keep the stem max-pool
    # small: adapt the stem to small images (stride stem_stride, max-pool per `maxpool`; built-ins use a 3x3
    # kernel); native: the architecture's published stem (ResNet's 7x7/2 + max-pool), so pretrained stem
    # weights load; auto: native for images >= 128 px, else small (edgekd.models.stems)
    stem: str = "auto"


@dataclass
class RobustKDConfig:
    """Inner attack of the adversarial KD losses (distill.loss: ard | rslad)."""

    attack: str = "fgsm_rs"  # inner attack: fgsm_rs | pgd
    epsilon: float = 8 / 255  # L-inf radius of the inner attack on [0, 1] pixels
    steps: int = 1  # inner attack iterations
    step_size: Optional[float] = None  # inner attack step (None: 2.5 * epsilon / steps)
    beta: float = 1.0  # weight of the natural-input KD term (RSLAD/ARD)
    attack_objective: str = "kl"  # ard: what x' maximises: kl (the paper's KD term) | ce (the authors' released code)


@dataclass
class FeatureKDConfig:
    """Feature KD (distill.loss: fitnets | at): which teacher layer guides which student layer."""

    # "teacher_layer=student_layer" module names, e.g. "net.layer2=net.features.6"; empty: pair the teacher's
    # stages (net.layerN) with the last student block (net.features.i) of the same spatial size
    pairs: list[str] = field(default_factory=list)
    hint_weight: float = 1.0  # fitnets: weight of the hint (MSE) term beside Hinton KD
    at_beta: float = 1000.0  # at: beta of the attention term (Zagoruyko & Komodakis 2017 use 1e3)


@dataclass
class DKDConfig:
    """Decoupled KD (distill.loss: dkd; Zhao et al. 2022): loss = CE + alpha TCKD + beta NCKD."""

    alpha: float = 1.0  # target-class KD weight (paper: 1)
    beta: float = 8.0  # non-target-class KD weight (paper: 8 on CIFAR-100)


@dataclass
class CTKDConfig:
    """Curriculum temperature KD (distill.loss: ctkd; Li et al. AAAI 2023): a learned, adversarial temperature."""

    min_temperature: float = 1.0  # the learned temperature stays in (min, max); it starts at distill.temperature
    max_temperature: float = 21.0  # upper end of the learned temperature's range
    lambda_max: float = 1.0  # gradient-reversal strength reached by the cosine curriculum at the last epoch


@dataclass
class AugMixKDConfig:
    """Robust KD with AugMix-style views (distill.loss: augmix_kd; Hendrycks et al. ICLR 2020)."""

    js_weight: float = 12.0  # weight of the Jensen-Shannon consistency term (AugMix: 12)
    max_severity: int = 3  # corruption severities sampled per batch in 1..max_severity
    width: int = 3  # corruptions mixed per view (AugMix: 3)
    ops: list[str] = field(default_factory=list)  # corruption names the views use; empty = all registered


@dataclass
class DistillConfig:
    """Knowledge distillation of the student from the frozen teacher (the distill stage)."""

    loss: str = "hinton"  # KD loss: a name in the KD_LOSSES registry (hinton, ard, rslad, ce, ...)
    temperature: float = 4.0  # softmax temperature T of the soft targets (KD term scaled by T^2)
    alpha: float = 0.9  # weight of the KD term; 1 - alpha weighs the hard-label cross-entropy
    cache_teacher_logits: bool = False  # one teacher pass for all epochs; needs crop_padding 0 and hflip off (noise/corruption: student-only, allowed)
    robust: RobustKDConfig = field(default_factory=RobustKDConfig)
    features: FeatureKDConfig = field(default_factory=FeatureKDConfig)
    dkd: DKDConfig = field(default_factory=DKDConfig)
    ctkd: CTKDConfig = field(default_factory=CTKDConfig)
    augmix: AugMixKDConfig = field(default_factory=AugMixKDConfig)
    # multi_teacher: extra teachers beside the run's own (teacher stage); each needs arch, width and weights
    # (a weights file, or a run folder whose teacher stage trained it)
    teachers: list[ModelConfig] = field(default_factory=list)
    teacher_weighting: str = "mean"  # multi_teacher: mean | fixed (teacher_weights) | confidence (per sample)
    teacher_weights: list[float] = field(default_factory=list)  # fixed: one per teacher, the run's own first
    ema_decay: float = 0.999  # self_distill: the teacher is this exponential moving average of the student
    train: TrainConfig = field(default_factory=lambda: TrainConfig(epochs=5))


@dataclass
class QATConfig:
    """INT8 quantization-aware training of the distilled student (the qat stage)."""

    enabled: bool = True  # false: no INT8 chain (drop qat, export and check from stages)
    freeze_observers_epoch: int = 1  # observers frozen from this epoch on (0-based)
    calibration_batches: int = 20  # batches that set the activation ranges before QAT trains
    # QAT's schedule: short, with a low learning rate (it fine-tunes the distilled student)
    train: TrainConfig = field(
        default_factory=lambda: TrainConfig(epochs=1, lr=0.005, schedule="cosine", warmup_fraction=0.0)
    )
    # mixed precision: Conv/Linear layers QAT trains in float and the INT8 file keeps in float, by the names
    # 'edgekd sensitivity RUN' prints (the student's module names, e.g. "features.0.0"); checked against the
    # student when the qat stage builds it (an unknown name lists the valid ones)
    keep_float: list[str] = field(default_factory=list)
    # also keep in float the k layers that a sensitivity ranking names first; 0 = none
    keep_float_most_sensitive: int = 0
    # that ranking: a run folder holding sensitivity.json, or the file ('edgekd sensitivity' on a full-int8 run)
    sensitivity: str = ""


@dataclass
class ExportConfig:
    """ONNX export and its parity checks against the torch models (the export stage)."""

    opset: int = 17  # ONNX opset of the exported files
    simplify: bool = True  # simplify the exported graphs with onnxsim
    parity_images: int = 256  # test images compared between torch and onnxruntime
    parity_batch_sizes: list[int] = field(default_factory=lambda: [1, 64])  # fp32 parity is checked at each batch size
    # fp32 parity: every logit within fp32_atol + fp32_rtol * max|logit| of its image (edgekd.exporting.parity).
    # rtol 1e-4: float32 eps is 1.2e-7; rounding grows ~sqrt(K) over K-term dot products (K up to ~10^4
    # here: x100) and again over ~50 layers (x7), and torch (oneDNN) and onnxruntime pick different kernels
    # per CPU. Measured: 6e-7 of max|logit| on an AMD EPYC (logits ~320), 1.8e-5 on an Intel Xeon (logits
    # ~6, where O(1) activations, not the logits, set the rounding). A real export bug (a wrong weight, a
    # missing normalization) moves logits by >= 1e-2 of their scale: two decades above.
    fp32_rtol: float = 1e-4
    # atol 1e-4: the floor for logits near zero whose inputs are O(1-10), so the activations' rounding,
    # not the logits', sets the error (it was the whole, absolute, tolerance before).
    fp32_atol: float = 1e-4
    # int8: top-1 agreement on images whose torch top-2 margin exceeds the quantization noise, and the
    # fraction of images whose logits lie within the scale-derived bound, must each reach this. 0.99 lets
    # a rare double rounding flip through and fails real damage (a wrong scale or weight moves most images).
    int8_min_agreement: float = 0.99
    # drift the int8 kernels may add to each input of the last layer, in its quantization steps
    # (edgekd.exporting.qnoise): onnxruntime requantizes with its own arithmetic, so values near a rounding
    # boundary land one step away, and such flips in earlier layers propagate. Measured on a correct
    # MobileNetV2-0.5 export: worst image 1.6x the one-step bound (99th percentile 1.3x); 3 leaves ~2x headroom.
    int8_noise_steps: float = 3.0
    # ORT Mobile: also write model.fp32.ort / model.int8.ort (onnxruntime.tools.convert_onnx_models_to_ort)
    # and check each gives the ONNX file's top-1 on the parity images (edgekd.deploy.runtime.ort_format)
    ort_format: bool = False
    ort_target_platform: str = "arm"  # arm (phones, boards: no x86 layouts baked in) | amd64
    # top-1 agreement .ort vs .onnx; below 1.0 because "arm" files skip x86 layout kernels, whose float
    # rounding differs in the last bits and may flip a near-tie image
    ort_min_agreement: float = 0.99
    # ship calibrated probabilities: fit a softmax temperature T on the validation split (Guo et al. 2017) for
    # each student file and end its graph with a Mul by 1/T (top-1 unchanged; edgekd.exporting.temperature).
    # Off by default: the files then output the raw logits the models were trained to produce.
    temperature_scaling: bool = False


@dataclass
class LatencyConfig:
    """onnxruntime latency measurement of every exported model."""

    batch_sizes: list[int] = field(default_factory=lambda: [1, 32])  # batch sizes timed
    threads: list[int] = field(default_factory=lambda: [1, 0])  # 0 = all cores
    warmup: int = 10  # untimed runs before timing
    runs: int = 100  # timed runs per setting; the median is reported
    provider: str = "CPUExecutionProvider"  # onnxruntime execution provider
    profile: bool = True  # record the top ops with onnxruntime's profiler


@dataclass
class RobustnessEvalConfig:
    """Robustness evaluation in the check stage: corruptions, attacks, calibration, OOD."""

    enabled: bool = True  # false skips robustness (accuracy, size, latency are still measured)
    corruptions: list[str] = field(default_factory=list)  # empty = all registered
    severities: list[int] = field(default_factory=lambda: [1, 2, 3, 4, 5])  # corruption severities (1-5) evaluated
    images: int = 1000  # test images used for corruption/adversarial evaluation
    # attack radii (L-inf, [0, 1] pixels; '8/255' accepted)
    epsilons: list[float] = field(default_factory=lambda: [2 / 255, 8 / 255, 0.1])
    pgd_steps: int = 20  # white-box PGD iterations
    square_queries: int = 200  # black-box Square attack on the ONNX file; 0 turns it off
    adversarial_images: int = 200  # images attacked, the first of the robustness subset
    # synthetic out-of-distribution sets (uniform, blobs, inverted)
    ood: list[str] = field(default_factory=lambda: ["uniform", "blobs", "inverted"])
    ood_folder: Optional[str] = None  # a folder of real outlier images, scored as OOD set 'folder'
    temperature_scaling: bool = True  # also report ECE after fitting a temperature on validation
    reference_run: Optional[str] = None  # mCE reference manifest; default: the teacher


@dataclass
class CheckConfig:
    """The check stage: onnxruntime accuracy, size, latency and robustness of every exported model."""

    latency: LatencyConfig = field(default_factory=LatencyConfig)
    robustness: RobustnessEvalConfig = field(default_factory=RobustnessEvalConfig)
    # run the student files in a second runtime (OpenCV DNN, OpenVINO) where installed and report top-1
    # agreement with onnxruntime; a runtime not installed is reported as skipped (edgekd.deploy.runtime.portability)
    portability: bool = False
    portability_images: int = 256  # test images each second runtime runs (one at a time)


@dataclass
class LatencyBudget:
    """A latency budget: median milliseconds of one model at one batch size and thread count."""

    value_ms: float = 0.0  # largest median latency, in ms
    batch: int = 1  # batch size it holds at (one of check.latency.batch_sizes)
    threads: int = 1  # onnxruntime threads (0 = all cores; one of check.latency.threads)
    model: str = "student_int8"  # the model it applies to


@dataclass
class BudgetsConfig:
    """Pass/fail budgets of the gate (each has an 'edgekd gate' flag that overrides it)."""

    model: str = "student_int8"  # which model the size/accuracy budgets apply to
    max_size_mb: Optional[float] = None  # largest ONNX file size of `model`, in MB
    min_accuracy: Optional[float] = None  # lowest top-1 test accuracy of `model`, in [0, 1]
    max_latency_ms: Optional[LatencyBudget] = None  # a latency budget: {value_ms, batch, threads, model}
    max_accuracy_drop: Optional[float] = None  # largest top-1 loss vs the baseline run, in [0, 1]
    baseline: Optional[str] = None  # a baseline run's manifest.json or run folder
    min_corruption_accuracy: Optional[float] = None  # lowest mean accuracy over the corruptions
    min_adversarial_accuracy: Optional[float] = None  # lowest accuracy under the worst attack at adversarial_epsilon
    adversarial_epsilon: float = 2 / 255  # epsilon of the adversarial budget


@dataclass
class TuneConfig:
    """Search space and objective of ``edgekd tune`` (edgekd.tuning); ``edgekd run`` ignores it.

    The run's own values (distill.loss, temperature, alpha, student.width, teacher.arch) are always
    added to the space, so the unchanged config can be trial 0 and the tuned result is never worse.
    """

    methods: list[str] = field(default_factory=list)  # KD losses (distill.loss) to try; empty = every registered one
    teachers: list[str] = field(default_factory=list)  # teacher archs, each trained once and reused; empty = teacher.arch
    temperature: list[float] = field(default_factory=lambda: [1.0, 8.0])  # [low, high], sampled log-uniformly
    alpha: list[float] = field(default_factory=lambda: [0.5, 1.0])  # [low, high], uniform
    student_widths: list[float] = field(default_factory=lambda: [0.35, 0.5, 0.75])  # categorical
    max_latency_ms: Optional[float] = None  # INT8 latency budget; None: budgets.max_latency_ms, else unconstrained
    latency_batch: int = 1  # used when budgets.max_latency_ms does not say (it wins: the gate checks that one)
    latency_threads: int = 1  # threads of that latency measurement (0 = all cores)
    latency_runs: int = 50  # timed onnxruntime runs per trial (median taken), after 5 warm-up runs
    sampler_seed: int = 0  # TPE sampler seed: the same study repeats its suggestions
    source: Optional[str] = None  # set by edgekd tune in chosen.yaml: the tune folder (the report shows its Pareto front)


@dataclass
class LoggingConfig:
    """What the training stages log besides metrics.jsonl (edgekd.train.logging_hooks)."""

    # TensorBoard scalars per epoch (loss, accuracy, lr) in <run>/tensorboard/<stage>/: auto = when the
    # tensorboard package is installed; on = required (pip install 'edgekd[tensorboard]'); off = never
    tensorboard: str = "auto"


@dataclass
class Config:
    """A whole run: the pipeline's stages and every setting they read."""

    name: str = "fashion_mnist"  # run name: the run lands in <out_dir>/<name>/
    out_dir: str = "export"  # folder the runs land in (edgekd run --out overrides it)
    seed: int = 0  # seeds splits, initial weights, shuffling, augmentation and attacks
    device: str = "auto"  # auto | cpu | cuda | cuda:N
    # reproducible kernels: auto = on for CPU (bit-exact resume), off on CUDA (cudnn.benchmark, TF32);
    # on | off force it (YAML true/false mean on/off). The manifest's environment records the choice and why.
    deterministic: str = "auto"
    num_threads: Optional[int] = None  # torch threads in the training stages (None: torch default)
    # stages 'edgekd run' runs, always in pipeline order
    stages: list[str] = field(default_factory=lambda: list(STAGE_NAMES))
    data: DataConfig = field(default_factory=DataConfig)
    teacher: ModelConfig = field(default_factory=lambda: ModelConfig(arch="resnet18"))
    teacher_train: TrainConfig = field(default_factory=lambda: TrainConfig(epochs=4))
    student: ModelConfig = field(default_factory=lambda: ModelConfig(arch="mobilenet_v2", width=0.5))
    distill: DistillConfig = field(default_factory=DistillConfig)
    qat: QATConfig = field(default_factory=QATConfig)
    export: ExportConfig = field(default_factory=ExportConfig)
    check: CheckConfig = field(default_factory=CheckConfig)
    budgets: BudgetsConfig = field(default_factory=BudgetsConfig)
    tune: TuneConfig = field(default_factory=TuneConfig)  # edgekd tune only
    logging: LoggingConfig = field(default_factory=LoggingConfig)

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    def hash(self, *sections: str) -> str:
        """Stable hash of the whole config or of the named top-level sections."""
        d = self.to_dict()
        if sections:
            d = {k: d[k] for k in sections}
        return stable_hash(d)


def stable_hash(data: Any) -> str:
    """The one hash of config-like data (configs, stage fingerprints): sha256 of sorted-key JSON, 16 hex digits."""
    return hashlib.sha256(json.dumps(data, sort_keys=True).encode()).hexdigest()[:16]


# ---------------------------------------------------------------- validation


def _type_name(tp: Any) -> str:
    return getattr(tp, "__name__", str(tp).replace("typing.", ""))


def _coerce(value: Any, tp: Any, key: str) -> Any:
    origin = typing.get_origin(tp)
    if origin in (Union, types.UnionType):
        args = [a for a in typing.get_args(tp) if a is not type(None)]
        if value is None:
            return None
        return _coerce(value, args[0], key)
    if dataclasses.is_dataclass(tp):
        if not isinstance(value, dict):
            raise ConfigError(
                f"config key '{key}' must be a mapping of {tp.__name__} fields, got {value!r}",
                f"write '{key}:' as a section with keys {', '.join(f.name for f in dataclasses.fields(tp))}",
            )
        return _build(tp, value, key)
    if origin is list:
        (item_tp,) = typing.get_args(tp)
        if not isinstance(value, (list, tuple)):
            raise ConfigError(f"config key '{key}' must be a list, got {value!r}", f"write '{key}: [...]'")
        return [_coerce(v, item_tp, f"{key}[{i}]") for i, v in enumerate(value)]
    if tp is float and isinstance(value, int) and not isinstance(value, bool):
        return float(value)
    if tp is float and isinstance(value, str):
        # allow "8/255" style fractions, common for epsilons
        try:
            num, _, den = value.partition("/")
            return float(num) / float(den) if den else float(num)
        except ValueError:
            pass
    if tp is str and isinstance(value, bool):
        # YAML 1.1 reads bare on/off as booleans; the switches here are spelled auto|on|off
        return "on" if value else "off"
    if tp in (int, float, str, bool):
        if isinstance(value, tp) and not (tp is int and isinstance(value, bool)):
            return value
        raise ConfigError(
            f"config key '{key}' must be {_type_name(tp)}, got {value!r} ({type(value).__name__})",
            f"set '{key}' to a {_type_name(tp)} value",
        )
    return value


# Keys that configs once accepted; setting one now fails with why it went (never silently ignored).
REMOVED_KEYS = {
    "qat.freeze_bn_epoch": "it was never read: BN is folded into the convolutions before QAT starts",
}


def _build(cls: type, data: dict[str, Any], prefix: str = "") -> Any:
    hints = typing.get_type_hints(cls)
    names = [f.name for f in dataclasses.fields(cls)]
    kwargs = {}
    for key, value in data.items():
        full = f"{prefix}.{key}" if prefix else key
        if full in REMOVED_KEYS:
            raise ConfigError(f"config key '{full}' was removed: {REMOVED_KEYS[full]}", f"delete '{full}' from the config")
        if key not in names:
            where = f"in '{prefix}'" if prefix else "at the top level"
            raise ConfigError(
                f"unknown config key '{full}' {where}; valid: {', '.join(names)}",
                "check the spelling, or remove the key",
            )
        kwargs[key] = _coerce(value, hints[key], full)
    return cls(**kwargs)


def _merge(base: dict[str, Any], over: dict[str, Any]) -> dict[str, Any]:
    out = dict(base)
    for k, v in over.items():
        out[k] = _merge(out[k], v) if isinstance(v, dict) and isinstance(out.get(k), dict) else v
    return out


def parse_override(item: str) -> dict[str, Any]:
    """``a.b.c=value`` -> ``{"a": {"b": {"c": value}}}``, the value parsed as YAML."""
    if "=" not in item:
        raise ConfigError(f"override '{item}' is not key=value", "write --set section.key=value")
    key, _, raw = item.partition("=")
    value: Any = yaml.safe_load(raw) if raw != "" else None
    for part in reversed(key.strip().split(".")):
        value = {part: value}
    return value


def config_from_dict(data: dict[str, Any], overrides: list[str] | None = None, *, registries: bool = True) -> Config:
    """Validate a plain dict (plus ``key=value`` overrides) into a Config.

    ``registries=False`` skips the registry-name checks (they import the dataset and robustness
    modules): the gate, which reads only the budgets, uses it and stays light.
    """
    if not isinstance(data, dict):
        raise ConfigError(f"a config must be a mapping of sections, got {type(data).__name__} {data!r:.80}",
                          "write the config as 'section: {key: value}' pairs")
    for item in overrides or []:
        data = _merge(data, parse_override(item))
    cfg = _build(Config, data)
    validate_config(cfg, registries=registries)
    return cfg


def budgets_from_dict(section: dict[str, Any] | None) -> BudgetsConfig:
    """A validated BudgetsConfig from a config's ``budgets`` section (None: no budgets); torch-free."""
    return config_from_dict({"budgets": section or {}}, registries=False).budgets


def builtin_configs() -> list[str]:
    """Names of the configs shipped inside the package (``smoke``, ``fashion_mnist``, ...)."""
    return sorted(p.stem for p in CONFIG_DIR.glob("*.yaml"))


def resolve_config_path(path: str | Path | None) -> Path:
    """The YAML file for ``--config``: an existing file, else a built-in config name, else a ConfigError.

    A path that exists always wins, so a local ``smoke.yaml`` is never shadowed by the built-in one.
    """
    if path is None:
        return DEFAULT_CONFIG
    p = Path(path)
    if p.is_file():
        return p
    if p.exists():
        raise ConfigError(f"config path {p} is a folder, not a YAML file", "pass a YAML file to --config")
    name = p.name.removesuffix(".yaml").removesuffix(".yml")
    builtin = CONFIG_DIR / f"{name}.yaml"
    if p.parent == Path(".") and builtin.is_file():
        return builtin
    raise ConfigError(f"config file not found: {p}",
                      f"pass an existing YAML file to --config, or a built-in name: {', '.join(builtin_configs())}")


def load_config(path: str | Path | None = None, overrides: list[str] | None = None, *,
                registries: bool = True) -> Config:
    """Load and validate a YAML config: a file, a built-in name (``smoke``), or None for the default.

    An empty file or one that is not a mapping is an error: silently running the defaults (the
    30-minute Fashion-MNIST run) is never what an empty file meant.
    """
    p = resolve_config_path(path)
    try:
        data = yaml.safe_load(p.read_text())
    except yaml.YAMLError as e:
        raise ConfigError(f"config file {p} is not valid YAML: {e}", "fix the YAML syntax") from None
    except (OSError, UnicodeDecodeError) as e:
        raise ConfigError(f"config file {p} cannot be read: {e}", "pass a readable UTF-8 YAML file") from None
    if data is None:
        raise ConfigError(f"config file {p} is empty",
                          "write the settings to change (e.g. 'name: my-run'), or pass a built-in config: "
                          + ", ".join(builtin_configs()))
    if not isinstance(data, dict):
        raise ConfigError(f"config file {p} must hold a mapping at the top level, got {type(data).__name__}",
                          "write 'section: {key: value}' pairs, e.g. 'distill: {temperature: 4}'")
    return config_from_dict(data, overrides, registries=registries)


def dump_config(cfg: Config) -> str:
    return yaml.safe_dump(cfg.to_dict(), sort_keys=False)
