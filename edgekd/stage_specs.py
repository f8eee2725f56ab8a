"""The stage registry: the one ordered list of pipeline stages, and what each one is.

Everything else derives its stage list from ``STAGES``: the config's default ``stages`` and its
validation (edgekd.config, edgekd.validation), the CLI's subcommands and their help (edgekd.cli),
the pipeline's order, fingerprints and ranks (edgekd.pipeline), the environment record
(edgekd.environment) and the report's stage tables (edgekd.deploy.report).

This module is torch-free (ground floor): the gate and the report read it without torch. Each
stage's ``run`` function lives in ``edgekd/stages/<name>.py``; ``edgekd.stages.stage_function``
imports those modules (which import torch) when a stage runs.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Optional


@dataclass(frozen=True)
class StageSpec:
    name: str  # also the module edgekd/stages/<name>.py and the CLI subcommand
    help: str  # one line, for the CLI
    sections: tuple[str, ...]  # config sections the stage reads (its fingerprint)
    inputs: tuple[tuple[str, str], ...] = ()  # (stage, artifact key) it consumes
    # artifacts it consumes when the producing stage wrote them (the distill stage's kd_state, for a loss
    # that carries it to QAT): in the fingerprint when present, so a new one re-runs the consumer
    optional_inputs: tuple[tuple[str, str], ...] = ()
    # config keys naming files the stage reads itself (weights, a TorchScript arch, a sensitivity ranking, a
    # reference run): their sha256 is in the fingerprint, so a file replaced at the same path re-runs the stage
    files: tuple[str, ...] = ()
    train_config: Optional[str] = None  # the TrainConfig key ("distill.train") of a stage that trains
    command: bool = True  # has its own `edgekd <name>` subcommand (the gate's is the deploy-side gate)
    always: bool = False  # cheap verdict stages run every time
    report_metrics: bool = True  # its metrics go into the report's stage tables (else it has its own section)

    @property
    def trains(self) -> bool:
        """A training stage: it runs the engine, on every torchrun rank (the rest run on rank 0 alone)."""
        return self.train_config is not None


STAGES: tuple[StageSpec, ...] = (
    StageSpec("teacher", "train (or load) the teacher",
              ("seed", "deterministic", "data", "teacher", "teacher_train"), files=("teacher.weights", "teacher.arch"),
              train_config="teacher_train"),
    StageSpec("distill", "distill the teacher into the student",
              ("seed", "deterministic", "data", "student", "distill"), (("teacher", "weights"),),
              files=("student.weights", "student.arch", "distill.teachers"), train_config="distill.train"),
    StageSpec("qat", "INT8 quantization-aware fine-tuning with KD",
              ("seed", "deterministic", "data", "student", "distill", "qat"),
              (("teacher", "weights"), ("distill", "weights")), train_config="qat.train",
              optional_inputs=(("distill", "kd_state"),), files=("distill.teachers", "qat.sensitivity")),
    StageSpec("export", "ONNX export (fp32 + int8 QDQ), onnxsim, parity checks",
              ("data", "teacher", "student", "export", "qat"),
              (("teacher", "weights"), ("distill", "weights"), ("qat", "weights"))),
    StageSpec("check", "onnxruntime accuracy, robustness, size and latency on CPU",
              ("seed", "device", "data", "check", "student", "teacher"),  # device: the white-box gradients run there
              (("export", "teacher_fp32"), ("export", "student_fp32"), ("export", "student_int8"),
               ("teacher", "weights"), ("distill", "weights")), files=("check.robustness.reference_run",),
              report_metrics=False),
    StageSpec("gate", "pass/fail the run against its budgets", ("budgets",), command=False, always=True,
              report_metrics=False),
)
STAGE_NAMES: tuple[str, ...] = tuple(s.name for s in STAGES)
BY_NAME: dict[str, StageSpec] = {s.name: s for s in STAGES}


def config_value(cfg: Any, key: str) -> Any:
    """The value of a dotted config key a StageSpec names (``distill.train``, ``qat.sensitivity``) in a Config."""
    value = cfg
    for part in key.split("."):
        value = getattr(value, part)
    return value


def training_configs(cfg: Any) -> list[tuple[StageSpec, Any]]:
    """``(spec, TrainConfig)`` of each training stage of a Config, in stage order."""
    return [(spec, config_value(cfg, spec.train_config)) for spec in STAGES if spec.train_config]
